"""Amazon Reviews 2023 data: the sample catalog, the `mmpc-rl data build` pipeline, and `load_items`."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from mmpc_rl.data.build import DEFAULTS, PIPELINE_VERSION, build
from mmpc_rl.data.images import resolve_image
from mmpc_rl.data.reader import resolve_categories
from mmpc_rl.data.sample import build_sample_catalog
from mmpc_rl.errors import DataError
from mmpc_rl.io import read_jsonl

SPLITS = ("train", "cqbench", "recbench")
__all__ = ["DEFAULT_SEED", "DEFAULT_TEXT_FIELD", "SPLITS", "build_cached", "default_cache_dir", "load_items",
           "read_built", "resolve_source"]


def default_cache_dir() -> Path:
    return Path(os.environ.get("MMPC_RL_CACHE", "~/.cache/mmpc_rl")).expanduser()


def read_built(out: Path, split: str, categories: list[str] | None) -> list[dict]:
    """Items of one split from a `mmpc-rl data build` output folder."""
    built = sorted(json.loads((out / "summary.json").read_text())["categories"])
    cats = built if categories is None else resolve_categories(out, categories)
    items = []
    for cat in cats:
        path = out / cat / ("recbench/items.jsonl" if split == "recbench" else f"{split}.jsonl")
        if not (out / cat).is_dir():
            raise DataError(f"{out} holds no {cat} data; categories there: {', '.join(built)}")
        if not path.is_file():
            why = " (built without its review file)" if split == "recbench" else ""
            raise DataError(f"{out} has no {split} items for {cat}{why}; categories there: {', '.join(built)}")
        bad = []
        for row in read_jsonl(path):  # image paths are stored relative to the dataset folder
            item = _item(row, cat, keep_extra=split != "recbench")
            if item is None:
                bad.append(row)
                continue
            items.append({**item, "image": resolve_image(out, item["image"])})
        if bad:
            print(f"mmpc-rl: {path}: skipped {len(bad)} record(s) of the wrong shape (parent_asin text, title/text/"
                  f"image text or null; e.g. {str(bad[0])[:120]})")
    return items


def _item(row: dict, category: str, keep_extra: bool) -> dict | None:
    """A dataset record as the loaders use it, or None when a field has the wrong type (a hand-made file)."""
    asin = row.get("parent_asin")
    if isinstance(asin, bool) or not isinstance(asin, (str, int)) or str(asin) == "":
        return None
    if any(row.get(k) is not None and not isinstance(row[k], str) for k in ("title", "text", "image")):
        return None
    core = {"parent_asin": str(asin), "title": row.get("title") or "", "text": row.get("text") or "",
            "image": row.get("image"), "category": category}
    return {**row, **core} if keep_extra else core


# The build a raw folder or the sample gets when none is named: CQBench and RecBench must agree on it to see the
# same items (see build_cached).
DEFAULT_SEED = 42
DEFAULT_TEXT_FIELD = "title"


def resolve_source(path: str | os.PathLike, cache: Path) -> Path:
    """The folder behind a data path: "sample" is the generated catalog (built into `cache` on first use)."""
    if str(path) == "sample":

        return build_sample_catalog(cache / "sample-catalog")
    return Path(path).expanduser().resolve()


def load_items(path: str | os.PathLike = "sample", split: str = "train", categories: list[str] | None = None,
               limit_per_category: int | None = None, seed: int = DEFAULT_SEED,
               cache_dir: str | os.PathLike | None = None, text_field: str = DEFAULT_TEXT_FIELD) -> list[dict]:
    """Items `{parent_asin, title, text, image, category}` of one split, category by category.

    Splits: `train` (GRPO), `cqbench`, and `recbench`: every item of the category's RecBench dataset
    (`<Category>/recbench/items.jsonl`, in itemID order, which is sorted parent_asin order as the authors'
    imagine_amazon_data_rec.py takes `sorted(images)[:max_items]`), for generating the features RecBench replaces.
    `path`: "sample" (the generated catalog, built into `cache_dir` first), a raw folder of `meta_*.jsonl[.gz]`
    (run through `mmpc-rl data build` with its defaults into `cache_dir/built/...`, once), or the output of
    `mmpc-rl data build`. The train and cqbench splits never share an item; with the default
    `cqbench_population=filtered` every cqbench item is also a recbench item.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; valid choices: {', '.join(SPLITS)}")
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    source = resolve_source(path, cache)
    if not source.is_dir():
        raise DataError(f"data path {str(path)!r} does not exist; give 'sample', a raw Amazon-2023 folder or a "
                        "`mmpc-rl data build` output folder")
    if (source / "summary.json").is_file():
        items = read_built(source, split, categories)
    else:
        cats = resolve_categories(source, categories)
        if not cats:
            raise DataError(f"no meta_<Category>.jsonl[.gz] files and no summary.json in {source}")
        items = read_built(build_cached(source, cats, seed, text_field, cache), split, cats)
    if limit_per_category is not None:
        kept, counts = [], dict.fromkeys((i["category"] for i in items), 0)
        for item in items:
            if counts[item["category"]] < limit_per_category:
                kept.append(item)
                counts[item["category"]] += 1
        items = kept
    return items


def build_cached(source: Path, cats: list[str], seed: int, text_field: str, cache: Path) -> Path:
    """Build a raw folder once per (source, categories, seed, text field, CQBench population, pipeline version);
    later calls reuse the output."""
    population = DEFAULTS["cqbench_population"]
    key = json.dumps([str(source), cats, seed, text_field, population, PIPELINE_VERSION])
    out = cache / "built" / hashlib.sha1(key.encode()).hexdigest()[:16]
    done = out / "summary.json"
    summary = json.loads(done.read_text()) if done.is_file() else {}
    if (summary.get("options", {}).get("source") != str(source)
            or summary.get("pipeline_version") != PIPELINE_VERSION):
        build(source=str(source), out=str(out), categories=cats, seed=seed, text_field=text_field, progress=False)
    return out
