"""Amazon Reviews 2023 data: the sample catalog, the `mmpc-rl data build` pipeline, and `load_items`."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlparse

from mmpc_rl.errors import DataError

SPLITS = ("train", "cqbench")
__all__ = ["SPLITS", "default_cache_dir", "load_items"]


def default_cache_dir() -> Path:
    return Path(os.environ.get("MMPC_CACHE", "~/.cache/mmpc_rl")).expanduser()


def _file_path(url: str) -> str | None:
    if url.startswith("file://"):
        return unquote(urlparse(url).path)
    return url if "://" not in url else None


def load_items(path: str | os.PathLike = "sample", split: str = "train", categories: list[str] | None = None,
               limit_per_category: int | None = None, seed: int = 42, cache_dir: str | os.PathLike | None = None,
               ) -> list[dict]:
    """Items `{parent_asin, title, text, image, category}` of one split, category by category.

    `path`: "sample" (the generated catalog, built into `cache_dir` first), a raw folder of `meta_*.jsonl[.gz]`,
    or the output of `mmpc-rl data build`. The train and cqbench splits never share an item.
    """
    from mmpc_rl.data.reader import Stats, fetch_meta, find_file, resolve_categories, scan_meta
    from mmpc_rl.data.select import seeded_order, set_sizes

    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; valid choices: {', '.join(SPLITS)}")
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    if str(path) == "sample":
        from mmpc_rl.data.sample import build_sample_catalog

        source = build_sample_catalog(cache / "sample-catalog")
    else:
        source = Path(path).expanduser()
    if not source.is_dir():
        raise DataError(f"data path {str(path)!r} does not exist; give 'sample', a raw Amazon-2023 folder or a "
                        "`mmpc-rl data build` output folder")
    cats = resolve_categories(source, categories)
    items: list[dict] = []
    for cat in cats:
        meta = find_file(source, cat, "meta")
        if meta is None:
            raise DataError(f"no meta_{cat}.jsonl[.gz] in {source}; categories there: "
                            + ", ".join(resolve_categories(source, None)))
        order = seeded_order(scan_meta(meta, Stats(), progress=False), seed)
        n_cq, n_train = set_sizes(len(order), 1000, 500)
        chosen = order[:n_cq] if split == "cqbench" else order[n_cq:n_cq + n_train]
        chosen = chosen[:limit_per_category] if limit_per_category is not None else chosen
        recs = fetch_meta(meta, set(chosen))
        for asin in chosen:
            image = _file_path(recs[asin]["url"])
            if image is None or not Path(image).is_file():
                continue
            items.append({"parent_asin": asin, "title": recs[asin]["title"], "text": recs[asin]["text"],
                          "image": image, "category": cat})
    return items
