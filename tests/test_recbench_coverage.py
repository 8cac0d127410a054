"""Generated features for the RecBench items: records written in CQBench's items layout for every item of
`load_items(split="recbench")` replace the whole category at rate 1.0, summary.json says so, and a partial generation
is flagged in the log, summary.json and the tables. Plus `profile=paper` (select_by=test; explicit keys win)."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch

from mmpc_rl.cli import main as cli_main
from mmpc_rl.errors import ConfigError


def _cqbench_record(it: dict, answer: str, image: str | None = None) -> dict:
    """A per-item record as `mmpc-rl eval cqbench` appends it to items/<model>/<task>.jsonl (eval/runner.py)."""
    rec = {"key": f"{it['category']}/{it['parent_asin']}", "parent_asin": it["parent_asin"],
           "category": it["category"], "reference": it["title"] if image is None else it["image"],
           "completion": json.dumps({"title": answer}), "answer": answer, "status": "ok", "metrics": {}}
    return rec if image is None else {**rec, "image": image}


@pytest.fixture(scope="module")
def coverage_run(tmp_path_factory):
    import timm
    from PIL import Image
    from safetensors.torch import save_file

    from mmpc_rl.data import load_items

    root = tmp_path_factory.mktemp("coverage")
    items = load_items("sample", "recbench", categories=["Video_Games"])
    gen = root / "cq" / "items" / "tiny_vlm"
    gen.mkdir(parents=True)
    i2t = [_cqbench_record(it, " ".join(it["title"].split()[1:])) for it in items]  # every RecBench item
    t2i = []
    for i, it in enumerate(items[:10]):  # a few only: the image condition stays mostly ground truth
        Image.new("RGB", (40, 40), (20 * i, 90, 30)).save(gen / f"{i}.png")
        t2i.append(_cqbench_record(it, f"a photo of item {i}", str(gen / f"{i}.png")))
    for task, recs in (("i2t", i2t), ("t2i", t2i)):
        (gen / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    torch.manual_seed(0)
    vit = timm.create_model("test_vit", pretrained=False)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, root / "vit.safetensors")
    out = root / "out"
    argv = ["recbench", "data_dir=sample", "categories=[Video_Games]", f"out={out}", f"generated=[{root / 'cq'}]",
            "models=[VBPR]", "epochs=2", "baselines=[]", "profile=paper", "grid.VBPR.reg_weight=[0.1,0.0001]",
            f"image_model={root / 'vit.safetensors'}", "image_arch=test_vit", "device=cpu", "threads=1"]
    old = torch.get_num_threads()
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        rc = cli_main(argv)
    torch.set_num_threads(old)
    return rc, out, len(items), log.getvalue()


def test_generations_for_every_recbench_item_replace_them_all(coverage_run):
    rc, out, n, log = coverage_run
    assert rc == 0 and n > 50
    summary = json.loads((out / "summary.json").read_text())
    text = summary["coverage"]["Video_Games"]["tiny_vlm|text|1.0"]
    assert text == {"missing": n, "replaced": n} and text["replaced"] >= 0.9 * text["missing"]
    assert summary["coverage"]["Video_Games"]["tiny_vlm|image|1.0"] == {"missing": n, "replaced": 10}
    assert summary["low_coverage"] == [
        f"low coverage: Video_Games tiny_vlm|image|1.0 replaced 10 of {n} missing image rows ({10 / n:.0%} < 90%); "
        f"the other {n - 10} keep their ground-truth features"]
    assert not [line for line in (out / "tables" / "VBPR_i2t.md").read_text().splitlines() if "low coverage" in line]
    assert summary["low_coverage"][0] in (out / "tables" / "VBPR_t2i.md").read_text()
    assert summary["low_coverage"][0] in (out / "tables" / "table6.md").read_text()
    assert [line for line in log.splitlines() if "low coverage" in line] == [f"mmpc-rl: {summary['low_coverage'][0]}"]


def test_profile_paper_selects_on_test(coverage_run):
    rc, out, _, _ = coverage_run
    summary = json.loads((out / "summary.json").read_text())
    res = json.loads((out / "results.json").read_text())
    assert summary["profile"] == res["profile"] == "paper" and summary["select_by"] == res["select_by"] == "test"
    for r in res["results"]:
        assert len(r["grid"]) == 2
        best = max(r["grid"], key=lambda g: g["test"]["recall@20"])  # first of ties, as MMRec's strict >
        assert r["hyper"] == best["hyper"]


def test_profile_keys_and_explicit_keys():
    from mmpc_rl.recbench.bench import with_profile
    from mmpc_rl.recbench.cli import parse_config

    assert with_profile(parse_config([])).select_by == "valid"
    assert with_profile(parse_config(["profile=paper"])).select_by == "test"
    assert with_profile(parse_config(["profile=paper", "select_by=valid"])).select_by == "valid"  # explicit wins
    assert with_profile(parse_config(["select_by=test"])).select_by == "test"
    with pytest.raises(ConfigError, match="profile='papers'; valid choices: default, paper"):
        with_profile(parse_config(["profile=papers"]))


def test_select_by_does_not_retrain():
    """Both selection rules read the same finished grid points: select_by is not part of a run's key."""
    from mmpc_rl.recbench.bench import RecBenchConfig, _fingerprint

    assert _fingerprint(RecBenchConfig(select_by="test"), None, None) == _fingerprint(RecBenchConfig(), None, None)
