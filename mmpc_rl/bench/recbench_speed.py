"""Seconds per training epoch and per full (valid) evaluation for each recommender on a generated category.

    python -m mmpc_rl.bench.recbench_speed [users=25500 items=3500 interactions=190000 epochs=2 device=auto out=FILE]

Defaults are the size of Video Games. The grid estimate assumes MMRec's early stopping ends a run after `est_epochs`
epochs (a run always takes at least 21).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

import torch

from mmpc_rl.errors import run_cli
from mmpc_rl.io import atomic_write_json
from mmpc_rl.options import parse_options
from mmpc_rl.recbench.data import load_category
from mmpc_rl.recbench.models import MODELS
from mmpc_rl.recbench.synthetic import make_category, random_features
from mmpc_rl.recbench.trainer import (
    NegativeSampler,
    TrainConfig,
    _evaluate,
    grid_points,
    make_evaluators,
    seed_everything,
    train_epoch,
)


@dataclass
class SpeedOptions:
    users: int = 25500
    items: int = 3500
    interactions: int = 190000
    epochs: int = 2
    device: str = "auto"
    out: str | None = None
    est_epochs: int = 60
    models: str = "VBPR,BM3,FREEDOM"
    threads: int | None = None


def measure(opts: dict) -> dict:
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if opts["device"] == "auto"
                          else opts["device"])
    if opts["threads"]:
        torch.set_num_threads(int(opts["threads"]))
    with tempfile.TemporaryDirectory() as tmp:
        make_category(tmp, "Speed", int(opts["users"]), int(opts["items"]), int(opts["interactions"]),
                      n_clusters=50, seed=0)
        data = load_category(tmp, "Speed")
    text = torch.from_numpy(random_features(data.n_items, 384, 1))
    image = torch.from_numpy(random_features(data.n_items, 768, 2))
    cfg = TrainConfig()
    evaluators = make_evaluators(data, cfg, device)
    report = {"device": str(device), "torch_threads": torch.get_num_threads(), "data": data.summary(), "models": {}}
    for name in opts["models"].split(","):
        seed_everything(cfg.seed)
        t0 = time.perf_counter()
        model = MODELS[name](data.n_users, data.n_items, data.train, text.to(device), image.to(device)).to(device)
        build = time.perf_counter() - t0
        opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
        sampler = NegativeSampler(data) if model.uses_negatives else None
        epoch_secs = []
        for epoch in range(int(opts["epochs"])):
            _sync(device)
            t0 = time.perf_counter()
            train_epoch(model, data, sampler, opt, cfg, device, name, epoch)  # the loop train_one runs
            _sync(device)
            epoch_secs.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        _evaluate(model, evaluators[0])
        _sync(device)
        eval_sec = time.perf_counter() - t0
        per_epoch = sum(epoch_secs) / len(epoch_secs)
        n_grid = len(grid_points(name))
        est = n_grid * int(opts["est_epochs"]) * (per_epoch + eval_sec)
        report["models"][name] = {"build_sec": round(build, 3), "sec_per_epoch": round(per_epoch, 3),
                                  "sec_per_eval": round(eval_sec, 3), "grid_points": n_grid,
                                  "est_grid_minutes": round(est / 60, 1)}
        print(name, json.dumps(report["models"][name]), flush=True)
    report["est_total_grid_minutes"] = round(sum(m["est_grid_minutes"] for m in report["models"].values()), 1)
    return report


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str]) -> int:
    opts = asdict(parse_options(SpeedOptions, argv, "python -m mmpc_rl.bench.recbench_speed"))
    report = measure(opts)
    print(json.dumps(report, indent=2))
    if opts["out"]:
        atomic_write_json(opts["out"], report)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(lambda: main(sys.argv[1:])))
