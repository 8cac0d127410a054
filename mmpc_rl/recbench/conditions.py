"""Feature conditions: ground truth, one modality replaced by features of generated content for a fraction of the
items, and the zeros / random baselines; plus a tolerant reader for CQBench results files.

Missing items: `random.Random(42).sample(sorted item ids, int(N * rate))` (the authors'
`extract_features_missing.py` samples an unsorted set, which is not reproducible across processes; the sort is the
fix the spec asks for). Generated features replace the missing items that have a generation; the others keep their
original features (as the authors' `extract_features_missing.py` does). A condition's coverage counts both, and one
that replaces fewer than `COVERAGE_FLOOR` of its missing rows is reported: it mostly measures the ground truth.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmpc_rl.errors import DataError
from mmpc_rl.io import read_jsonl

TASK_MODALITY = {"i2t": "text", "t2i": "image"}  # the modality a task's generations stand in for
MODALITY_TASK = {v: k for k, v in TASK_MODALITY.items()}
BASELINES = ("zeros", "random")
COVERAGE_FLOOR = 0.9

ASIN_KEYS = ("parent_asin", "asin", "item_id", "id")
# CQBench's per-item records keep the parsed title in `answer` (`completion` is the raw model output)
TEXT_KEYS = ("generated", "answer", "generated_title", "title_generated", "prediction", "completion")
IMAGE_KEYS = ("image", "generated_image", "image_path", "path")
METHOD_KEYS = ("model", "method", "policy", "model_name")
CONTAINER_KEYS = ("records", "items", "results", "per_item")


@dataclass(frozen=True)
class Condition:
    method: str  # "ground_truth", "zeros", "random", or a generation method (e.g. qwen_vl_7b)
    missing: str = "none"  # "none", "text" or "image"
    rate: float = 0.0

    @property
    def name(self) -> str:
        if self.method == "ground_truth":
            return "ground_truth"
        return f"{self.method}|{self.missing}|{self.rate:.1f}"

    @property
    def task(self) -> str | None:
        return MODALITY_TASK.get(self.missing)


def missing_ids(n_items: int, rate: float, seed: int = 42) -> list[int]:
    return random.Random(seed).sample(list(range(n_items)), int(n_items * rate))


def baseline_features(feat: np.ndarray, method: str, rate: float, seed: int = 42) -> tuple[np.ndarray, int]:
    """`zeros`: missing rows set to 0; `random`: rows drawn from default_rng(42 + int(rate*100)).standard_normal."""
    ids = missing_ids(len(feat), rate, seed)
    out = feat.copy()
    if method == "zeros":
        out[ids] = 0.0
    elif method == "random":
        out[ids] = np.random.default_rng(42 + int(rate * 100)).standard_normal((len(ids), feat.shape[1]))
    else:
        raise ValueError(f"unknown baseline {method!r}")
    return out, len(ids)


def low_coverage_note(category: str, cond: Condition, coverage: dict) -> str | None:
    """One line when a generated condition replaces fewer than COVERAGE_FLOOR of its missing rows, else None."""
    missing, replaced = coverage["missing"], coverage["replaced"]
    if cond.method in BASELINES or not missing or replaced >= COVERAGE_FLOOR * missing:
        return None
    skipped = " (not run: no generation for this category)" if not coverage.get("generations_for_category") else ""
    return (f"low coverage: {category} {cond.name} replaced {replaced} of {missing} missing {cond.missing} rows "
            f"({replaced / missing:.0%} < {COVERAGE_FLOOR:.0%}); the other {missing - replaced} keep their "
            f"ground-truth features{skipped}")


def generated_features(feat: np.ndarray, replacements: dict[int, np.ndarray], rate: float,
                       seed: int = 42) -> tuple[np.ndarray, int]:
    """Missing rows that have a generation get its features; returns (features, rows replaced)."""
    out = feat.copy()
    n = 0
    for i in missing_ids(len(feat), rate, seed):
        if i in replacements:
            out[i] = replacements[i]
            n += 1
    return out, n


def norm_category(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_")


def _records(path: Path) -> list[tuple[dict, str | None, str | None]]:
    """(record, default method, default task) from a file or a CQBench output folder."""
    if path.is_dir():  # a CQBench output_dir: items/<model>/<task>.jsonl
        files = sorted(path.glob("items/*/*.jsonl")) or sorted(path.glob("*/*.jsonl"))
        files = [f for f in files if f.stem in TASK_MODALITY]
        if not files:
            raise DataError(f"{path} holds no items/<model>/<i2t|t2i>.jsonl")
        return [r for f in files for r in _records(f)]
    if not path.is_file():
        raise DataError(f"generated-results file {path} does not exist")
    # CQBench names its per-item files <model>/<task>.jsonl
    method, task = (path.parent.name, path.stem) if path.stem in TASK_MODALITY else (None, None)
    if path.suffix == ".jsonl":
        return [(r, method, task) for r in read_jsonl(path)]
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return [(r, method, task) for r in read_jsonl(path)]  # JSON Lines under another suffix
    if isinstance(obj, dict) and isinstance(obj.get("results"), dict):  # CQBench results.json: results[model][task]
        out = []
        for model, tasks in obj["results"].items():
            for task_name, agg in (tasks.items() if isinstance(tasks, dict) else ()):
                if isinstance(agg, dict) and isinstance(agg.get("per_item"), list):
                    out += [(r, model, task_name) for r in agg["per_item"]]
        return out
    if isinstance(obj, dict):
        for key in CONTAINER_KEYS:
            if isinstance(obj.get(key), list):
                return [(r, method, task) for r in obj[key]]
        raise DataError(f"{path}: a JSON object needs a list under one of: {', '.join(CONTAINER_KEYS)}")
    if not isinstance(obj, list):
        raise DataError(f"{path}: expected a list of per-item records")
    return [(r, method, task) for r in obj]


def _first(rec: dict, keys: tuple[str, ...]):
    for key in keys:
        if rec.get(key) not in (None, ""):
            return rec[key]
    return None


def _text(rec: dict):
    """The first text field present: an empty `answer` (CQBench parsed an empty title) is that empty title, not a
    reason to fall back to the raw completion."""
    for key in TEXT_KEYS:
        if isinstance(rec.get(key), str):
            return rec[key]
    return None


def read_generated(path: str | Path, method: str | None = None) -> tuple[dict, dict]:
    """{(method, task): {(category, parent_asin): title-or-image-path}} from a CQBench results file, and skip counts.

    `path` is a JSON/JSONL file, a CQBench `results.json` (results[model][task].per_item), or a CQBench output folder
    (items/<model>/<task>.jsonl). Records need an id (`parent_asin`/`asin`/`item_id`), a `task` ("i2t"/"t2i"; else
    the CQBench file name, else inferred from which field is present) and the content: `generated` (or CQBench's
    `answer`, generated_title, prediction, completion) for i2t, `image` (or generated_image/image_path) for t2i;
    a relative image path that does not exist from the working directory is taken from the results file's folder.
    The method is `method`, else the record's `model` (or method/policy/model_name), else the CQBench model folder,
    else the file stem. `category` is optional: a record without one applies to every category.
    """
    path = Path(path)
    out: dict[tuple[str, str], dict[tuple[str, str], str]] = {}
    skipped = {"no_id": 0, "no_content": 0, "bad_task": 0}
    for rec, default_method, default_task in _records(path):
        if not isinstance(rec, dict):
            skipped["no_content"] += 1
            continue
        asin = _first(rec, ASIN_KEYS)
        if asin is None:
            skipped["no_id"] += 1
            continue
        task = rec.get("task") or default_task
        text, image = _text(rec), _first(rec, IMAGE_KEYS)
        if task is None:
            task = "t2i" if (image is not None and text is None) else "i2t"
        if not isinstance(task, str) or task not in TASK_MODALITY:  # a hand-made record may hold any JSON here
            skipped["bad_task"] += 1
            continue
        content = text if task == "i2t" else image
        if content is None or not isinstance(content, str):
            skipped["no_content"] += 1
            continue
        if task == "t2i" and not Path(content).is_absolute() and not Path(content).exists():
            content = str((path if path.is_dir() else path.parent) / content)
        name = str(method or _first(rec, METHOD_KEYS) or default_method or path.stem)
        cat = norm_category(rec["category"]) if rec.get("category") else "*"
        out.setdefault((name, task), {})[(cat, str(asin))] = content
    return out, skipped


def for_category(generated: dict[tuple[str, str], str], category: str, asin_to_item: dict[str, int]) -> dict[int, str]:
    """Item id -> generated content for one category (records without a category apply everywhere)."""
    cat = norm_category(category)
    out = {}
    for (c, asin), content in generated.items():
        if c in (cat, "*") and asin in asin_to_item:
            out[asin_to_item[asin]] = content
    return out
