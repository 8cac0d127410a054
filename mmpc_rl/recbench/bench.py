"""The RecBench run: per category, features per condition, every model's grid to early stopping, the selection,
results.json and the reports. Each finished grid point is appended to `runs.jsonl`, so a killed run resumes."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from mmpc_rl.checks import at_least
from mmpc_rl.data import DEFAULT_SEED, DEFAULT_TEXT_FIELD, build_cached, default_cache_dir, resolve_source
from mmpc_rl.data.reader import resolve_categories
from mmpc_rl.errors import ConfigError, DataError
from mmpc_rl.io import append_jsonl, atomic_write_json, prepare_output_dir, read_jsonl
from mmpc_rl.recbench import conditions as C
from mmpc_rl.recbench.data import RecData, list_categories, load_category
from mmpc_rl.recbench.features import ImageEncoder, TextEncoder
from mmpc_rl.recbench.graph import mm_item_graph
from mmpc_rl.recbench.models import GRIDS, MODELS
from mmpc_rl.recbench.report import write_reports
from mmpc_rl.recbench.trainer import TrainConfig, make_evaluators, select_best, train_one
from mmpc_rl.recbench.trainer import grid_points as default_grid_points

# What `profile=` sets unless the key is given itself. paper: the authors' Recbench/src/main.py runs MMRec's
# quick_start, which keeps the grid point with the highest *test* Recall@20 (enoche/MMRec src/utils/quick_start.py,
# `best_test_upon_valid[val_metric] > best_test_value`).
PROFILES: dict[str, dict[str, Any]] = {"default": {"select_by": "valid"}, "paper": {"select_by": "test"}}


@dataclass
class RecBenchConfig(TrainConfig):
    """The CLI's flat options: TrainConfig's (epochs=, batch_size=, select_by=, ...) plus the run's own."""

    profile: str = "default"  # a key of PROFILES
    select_by: str | None = None  # None: the profile's ("valid"; "test" under profile=paper)
    data_dir: str = "sample"  # a `mmpc-rl data build` output, or "sample" (built from the sample catalog)
    out: str = "runs/recbench"
    categories: list[str] | None = None  # None: every <data_dir>/<Category>/recbench found
    models: list[str] = field(default_factory=lambda: ["VBPR", "BM3", "FREEDOM"])
    generated: list[str] = field(default_factory=list)  # CQBench results files (JSON/JSONL)
    rates: list[float] = field(default_factory=lambda: [1.0])  # fractions for generated conditions
    baselines: list[str] = field(default_factory=lambda: ["zeros", "random"])
    baseline_missing: list[str] = field(default_factory=lambda: ["text", "image"])
    baseline_rates: list[float] = field(default_factory=lambda: [1.0])
    modalities: list[str] = field(default_factory=lambda: ["text", "image"])
    text_field: str = "text"
    text_model: str | None = None  # None: the packaged all-MiniLM-L6-v2, else a hub id or folder
    image_model: str = "vit_base_patch16_224"  # a timm name / hf-hub id, a weights file or a folder holding one
    image_arch: str = "vit_base_patch16_224"
    cache_dir: str | None = None  # feature cache; None: <out>/feature_cache
    device: str = "auto"
    # torch CPU threads; 1 is much faster than 2 on a busy shared box
    threads: int | None = field(default=None, metadata=at_least(1))
    knn_k: int = field(default=10, metadata=at_least(1))
    mm_image_weight: float = 0.1
    grid: dict[str, Any] | None = None  # e.g. grid.VBPR.reg_weight=[0.1]; models not named keep the spec's grid

    def train_config(self) -> TrainConfig:
        return TrainConfig(**{f.name: getattr(self, f.name) for f in fields(TrainConfig)})


def with_profile(cfg: RecBenchConfig) -> RecBenchConfig:
    """The config with each key left unset (None) filled from its profile; keys given one by one win."""
    if cfg.profile not in PROFILES:
        raise ConfigError(f"profile={cfg.profile!r}; valid choices: {', '.join(PROFILES)}")
    return replace(cfg, **{k: v for k, v in PROFILES[cfg.profile].items() if getattr(cfg, k) is None})


def validate(cfg: RecBenchConfig) -> None:
    for m in cfg.models:
        if m not in MODELS:
            raise ConfigError(f"unknown model {m!r}; valid choices: {', '.join(MODELS)}")
    for b in cfg.baselines:
        if b not in C.BASELINES:
            raise ConfigError(f"unknown baseline {b!r}; valid choices: {', '.join(C.BASELINES)}")
    for m in [*cfg.baseline_missing, *cfg.modalities]:
        if m not in ("text", "image"):
            raise ConfigError(f"unknown modality {m!r}; valid choices: text, image")
    if not cfg.modalities:
        raise ConfigError("modalities must name at least one of text, image")
    for r in [*cfg.rates, *cfg.baseline_rates]:
        if not 0.0 < float(r) <= 1.0:
            raise ConfigError(f"rate {r} must be in (0, 1]")
    if cfg.select_by not in ("valid", "test"):
        raise ConfigError(f"select_by={cfg.select_by!r}; valid choices: valid, test")
    for model, grid in (cfg.grid or {}).items():
        if model not in GRIDS:
            raise ConfigError(f"grid.{model}: unknown model; valid choices: {', '.join(GRIDS)}")
        for key in grid:
            if key not in GRIDS[model]:
                raise ConfigError(f"grid.{model}.{key} is not a grid key; valid choices: {', '.join(GRIDS[model])}")


def resolve_data_dir(cfg: RecBenchConfig) -> Path:
    """A folder of <Category>/recbench/; "sample" or a raw Amazon-2023 folder is built once through the data
    pipeline into the same cache `load_items` uses, so CQBench and RecBench see the same sample items."""
    cache = default_cache_dir()
    source = resolve_source(cfg.data_dir, cache)
    if not source.is_dir():
        raise DataError(f"data_dir {source} does not exist")
    if any(source.glob("*/recbench")):
        return source
    cats = resolve_categories(source, None)
    if not cats:
        raise DataError(f"{source} holds neither <Category>/recbench/ folders nor raw meta_<Category>.jsonl files")
    return build_cached(source, cats, DEFAULT_SEED, DEFAULT_TEXT_FIELD, cache)


def _conditions(cfg: RecBenchConfig, generated_keys: list[tuple[str, str]]) -> list[C.Condition]:
    conds = [C.Condition("ground_truth")]
    for method, task in generated_keys:
        if C.TASK_MODALITY[task] in cfg.modalities:
            conds += [C.Condition(method, C.TASK_MODALITY[task], float(r)) for r in cfg.rates]
    for b in cfg.baselines:
        for m in cfg.baseline_missing:
            if m in cfg.modalities:
                conds += [C.Condition(b, m, float(r)) for r in cfg.baseline_rates]
    return conds


class CategoryFeatures:
    """Ground-truth features of one category and the features of each condition (generated ones encoded lazily)."""

    def __init__(self, data: RecData, cfg: RecBenchConfig, text_enc, image_enc, generated: dict):
        self.data, self.cfg, self.text_enc, self.image_enc, self.generated = data, cfg, text_enc, image_enc, generated
        self.asin_to_item = {str(r.get("parent_asin")): i for i, r in enumerate(data.items)}
        self.gt: dict[str, np.ndarray] = {}
        self.info: dict[str, dict] = {}
        self._encoded: dict[tuple[str, str], tuple[dict[int, np.ndarray], int]] = {}
        if "text" in cfg.modalities:
            self.gt["text"] = text_enc.encode([r.get(cfg.text_field) or "" for r in data.items],
                                              desc=f"{data.name} text")
        if "image" in cfg.modalities:
            feats, ok = image_enc.encode([r.get("image") for r in data.items], desc=f"{data.name} images")
            self.gt["image"] = feats
            self.info["ground_truth"] = {"images_missing_mean_filled": int((~ok).sum())}

    def _replacements(self, cond: C.Condition) -> tuple[dict[int, np.ndarray], int]:
        """Features of every usable generation for this category, encoded once per (method, task) whatever the
        number of rates: each rate only picks which of them replace the ground truth."""
        key = (cond.method, cond.task)
        if key not in self._encoded:
            self._encoded[key] = self._encode_generated(cond)
        return self._encoded[key]

    def _encode_generated(self, cond: C.Condition) -> tuple[dict[int, np.ndarray], int]:
        content = C.for_category(self.generated[(cond.method, cond.task)], self.data.name, self.asin_to_item)
        ids = sorted(content)
        if not ids:
            return {}, 0
        if cond.missing == "text":
            vecs, ok = self.text_enc.encode([content[i] for i in ids], desc=f"{cond.method} titles"), None
        else:
            vecs, ok = self.image_enc.encode([content[i] for i in ids], desc=f"{cond.method} images")
        good = [k for k in range(len(ids)) if ok is None or ok[k]]
        return {ids[k]: vecs[k] for k in good}, len(ids) - len(good)

    def coverage(self, cond: C.Condition) -> dict:
        """{"missing": rows the condition replaces, "replaced": rows that get other features} (+ generation counts)."""
        missing = C.missing_ids(self.data.n_items, cond.rate)
        if cond.method in C.BASELINES:
            return {"missing": len(missing), "replaced": len(missing)}
        repl, unusable = self._replacements(cond)
        return {"missing": len(missing), "replaced": sum(i in repl for i in missing),
                "generations_for_category": len(repl), "unloadable_generations": unusable}

    def features(self, cond: C.Condition) -> dict[str, torch.Tensor | None]:
        feats = dict(self.gt)
        if cond.method != "ground_truth":
            base = self.gt[cond.missing]
            if cond.method in C.BASELINES:
                feats[cond.missing], _ = C.baseline_features(base, cond.method, cond.rate)
            else:
                feats[cond.missing], _ = C.generated_features(base, self._replacements(cond)[0], cond.rate)
        return {m: (torch.from_numpy(np.ascontiguousarray(feats[m], dtype=np.float32)) if m in feats else None)
                for m in ("text", "image")}


def _postfix(bar):
    return lambda epoch, loss, valid, best: bar.set_postfix(epoch=epoch, loss=f"{loss:.4f}", valid=valid, best=best,
                                                            refresh=False)


def _fingerprint(cfg: RecBenchConfig, text_enc, image_enc) -> str:
    """What a finished grid point depends on besides (category, condition, model, hyper): a rerun with other
    epochs, seed, encoders or graph settings into the same `out` trains again instead of reusing stale runs."""
    def enc_key(enc) -> str | None:  # an encoder without a cache key (a plain callable) never matches across runs
        return None if enc is None else (enc.cache.dir.name if enc.cache.dir else f"uncached-{id(enc)}")

    # select_by only reads finished runs, so both rules share them
    train = {k: v for k, v in asdict(cfg.train_config()).items() if k != "select_by"}
    parts = [train, cfg.modalities, cfg.text_field, cfg.knn_k, cfg.mm_image_weight, enc_key(text_enc),
             enc_key(image_enc)]
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _key(fingerprint: str, category: str, cond: C.Condition, model: str, hyper: dict) -> str:
    return json.dumps([fingerprint, category, cond.name, model, hyper], sort_keys=True)


def run(cfg: RecBenchConfig, text_encoder=None, image_encoder=None) -> dict:
    """Run the benchmark; encoders may be given as objects (tests, notebooks) instead of cfg's model names."""
    cfg = with_profile(cfg)
    validate(cfg)
    out = prepare_output_dir(cfg.out)
    data_dir = resolve_data_dir(cfg)
    categories = cfg.categories or list_categories(data_dir)
    if not categories:
        raise DataError(f"no <Category>/recbench folders in {data_dir}")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    cache = cfg.cache_dir or out / "feature_cache"
    text_enc = (text_encoder if isinstance(text_encoder, TextEncoder) else
                TextEncoder(text_encoder or cfg.text_model, cache)) if "text" in cfg.modalities else None
    image_enc = (image_encoder if isinstance(image_encoder, ImageEncoder) else
                 ImageEncoder(image_encoder or cfg.image_model, cache, arch=cfg.image_arch)
                 ) if "image" in cfg.modalities else None
    generated, gen_skips = {}, {}
    for path in cfg.generated:
        got, skipped = C.read_generated(path)
        gen_skips[str(path)] = skipped
        for k, v in got.items():
            generated.setdefault(k, {}).update(v)
    conds = _conditions(cfg, sorted(generated))
    runs_path = out / "runs.jsonl"
    done = {r["key"]: r for r in read_jsonl(runs_path, repair=True)}
    tcfg = cfg.train_config()
    fingerprint = _fingerprint(cfg, text_enc, image_enc)
    selected, summaries, cond_info, notes = [], {}, {}, []
    for cat in categories:
        data = load_category(data_dir, cat)
        summaries[cat] = data.summary()
        feats = CategoryFeatures(data, cfg, text_enc, image_enc, generated)
        cond_info[cat] = {**feats.info, **{c.name: feats.coverage(c) for c in conds[1:]}}
        for c in conds[1:]:
            note = C.low_coverage_note(cat, c, cond_info[cat][c.name])
            if note:
                print(f"mmpc-rl: {note}")
                notes.append({"category": cat, "condition": c.name, "task": c.task, "note": note})
        _write_summary(out, cfg, summaries, cond_info, notes, gen_skips)
        evaluators = make_evaluators(data, tcfg, device)
        for cond in conds:
            if cond_info[cat].get(cond.name, {}).get("generations_for_category") == 0:
                continue  # no generation for this category: the run would repeat ground truth
            f = feats.features(cond)
            for model in cfg.models:
                grid = default_grid_points(model, {**GRIDS[model], **((cfg.grid or {}).get(model) or {})})
                extra = {}
                if model == "FREEDOM":  # rebuilt from this condition's features: the channel generated ones act on
                    extra = {"knn_k": cfg.knn_k, "mm_image_weight": cfg.mm_image_weight,
                             "mm_adj": mm_item_graph(f["text"], f["image"], cfg.knn_k, cfg.mm_image_weight).to(device)}
                runs = []
                bar = tqdm(grid, desc=f"{cat} {cond.name} {model}", leave=False)
                for hyper in bar:
                    key = _key(fingerprint, cat, cond, model, hyper)
                    if key not in done:
                        res = train_one(model, data, f["text"], f["image"], hyper, tcfg, device, evaluators, extra,
                                        progress=_postfix(bar))
                        done[key] = {"key": key, "category": cat, "condition": cond.name, "model": model, **res}
                        append_jsonl(runs_path, done[key])
                    runs.append(done[key])
                best = select_best(runs, cfg.select_by)
                selected.append({"category": cat, "condition": cond.name, "method": cond.method,
                                 "missing": cond.missing, "rate": cond.rate, "task": cond.task, "model": model,
                                 "hyper": best["hyper"], "best_epoch": best["best_epoch"], "valid": best["valid"],
                                 "test": best["test"], "grid": [{k: r[k] for k in ("hyper", "best_epoch", "valid",
                                                                                   "test", "sec_per_epoch",
                                                                                   "sec_per_eval")} for r in runs]})
    reports = write_reports(selected, out, notes)
    results = {"config": asdict(cfg), "device": str(device), "profile": cfg.profile, "select_by": cfg.select_by,
               "data": summaries, "conditions": cond_info, "low_coverage": notes, "generated_skipped": gen_skips,
               "results": selected, "table6": reports["table6"], "files": reports["files"]}
    atomic_write_json(out / "results.json", results)
    return results


def _write_summary(out: Path, cfg: RecBenchConfig, data: dict, info: dict, notes: list[dict], skipped: dict) -> None:
    """`<out>/summary.json`, rewritten as each category's conditions are known (before its training starts): the
    selection rule, the data sizes and each condition's coverage."""
    coverage = {cat: {name: {"missing": i["missing"], "replaced": i["replaced"]} for name, i in conds.items()
                      if "missing" in i} for cat, conds in info.items()}
    atomic_write_json(out / "summary.json", {"profile": cfg.profile, "select_by": cfg.select_by,
                                             "coverage_floor": C.COVERAGE_FLOOR, "data": data, "coverage": coverage,
                                             "low_coverage": [n["note"] for n in notes],
                                             "generated_skipped": skipped})
