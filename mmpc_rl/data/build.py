"""`mmpc-rl data build`: raw Amazon Reviews 2023 files -> CQBench, GRPO and RecBench sets with cached cover images.

Per category: scan meta (eligible ids only) -> RecBench users from the reviews -> fetch the few records needed ->
download images -> fill CQBench then GRPO from a seeded order over sorted ids, skipping items whose image failed ->
RecBench whitelist, all its reviews, k-core, chronological split. A rerun reuses the image cache.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

from mmpc_rl.data import recsel
from mmpc_rl.data.images import DEADLINE_S, MAX_BYTES, MAX_PIXELS, ImageCache, relative_image
from mmpc_rl.data.reader import CATEGORIES, Stats, categories_in, fetch_meta, find_file, resolve_categories, scan_meta
from mmpc_rl.data.schema import TEXT_FIELDS
from mmpc_rl.data.select import seeded_order, set_sizes
from mmpc_rl.errors import ConfigError, DataError
from mmpc_rl.io import atomic_write_json, atomic_write_jsonl, atomic_write_text

HF_REPO = "McAuley-Lab/Amazon-Reviews-2023"
DEFAULTS: dict[str, object] = {
    "source": None, "out": None, "categories": None, "cqbench_per_category": 1000, "train_per_category": 500,
    "seed": 42, "text_field": "title", "selection": "authors", "k": 5, "rec_users": 1000, "image_cache": None,
    "workers": 16, "timeout": 10.0, "retries": 3, "min_image_size": 32, "progress": True,
    "deadline": DEADLINE_S, "max_image_bytes": MAX_BYTES, "max_image_pixels": MAX_PIXELS,
}


def _hub_file(category: str, kind: str) -> Path:
    try:
        from huggingface_hub import hf_hub_download

        sub = "meta_categories/meta_" if kind == "meta" else "review_categories/"
        return Path(hf_hub_download(HF_REPO, f"raw/{sub}{category}.jsonl", repo_type="dataset"))
    except Exception as e:  # network, auth and missing-file errors all mean the same thing to the user
        raise DataError(f"cannot fetch {kind} file of {category} from the hub ({type(e).__name__}: {e}); "
                        "download it elsewhere and pass source=FOLDER") from None


def locate(source: str, category: str) -> tuple[Path, Path | None]:
    if source == "hub":
        return _hub_file(category, "meta"), _hub_file(category, "review")
    root = Path(source).expanduser()
    meta = find_file(root, category, "meta")
    if meta is None:
        raise DataError(f"no meta_{category}.jsonl[.gz] in {root}; categories there: "
                        + (", ".join(categories_in(root)) or "none"))
    return meta, find_file(root, category, "review")


def _fill(order: list[str], sizes: tuple[int, ...], meta: Path, text_field: str, cache: ImageCache,
          stats: Stats, cat: str, out: Path, prefetch: set[str] = frozenset()) -> tuple[list[list[dict]], dict | None]:
    """Take items in `order` into sets of the given sizes, skipping (and counting) items whose image fails.

    The first meta pass also fetches the `prefetch` records (RecBench's items), so the meta file, millions of lines
    for the big categories, is not read once more for them; they are returned (None if no pass was made)."""
    sets: list[list[dict]] = [[] for _ in sizes]
    prefetched = None
    pos, need = 0, sum(sizes)
    while pos < len(order) and sum(map(len, sets)) < need:
        missing = need - sum(map(len, sets))
        chunk = order[pos: pos + missing + max(8, missing // 10)]  # a margin for failures saves a meta pass
        pos += len(chunk)
        recs = fetch_meta(meta, set(chunk) | (prefetch if prefetched is None else set()), text_field)
        if prefetched is None:
            prefetched = {a: recs[a] for a in prefetch if a in recs}
        got = cache.fetch([recs[a]["url"] for a in chunk if a in recs], desc=f"images {cat}")
        for asin in chunk:
            res = got.get(recs[asin]["url"]) if asin in recs else None
            if res is None or not res["ok"]:
                stats.add(f"image_{res['reason'] if res else 'no_record'}", f"{asin} {recs.get(asin, {}).get('url')}")
                continue
            target = next((s for s, n in zip(sets, sizes, strict=True) if len(s) < n), None)
            if target is None:
                break
            target.append({"parent_asin": asin, "title": recs[asin]["title"], "text": recs[asin]["text"],
                           "image": relative_image(out, res["path"]), "category": cat})
    return sets, prefetched


def _rec_candidates(reviews: Path, eligible: list[str], opts: dict, stats: Stats) -> tuple[list[str], dict]:
    """RecBench's candidate items and the selection state, from the reviews alone (no meta needed)."""
    index = {a: n for n, a in enumerate(eligible)}
    progress = bool(opts["progress"])
    if opts["selection"] == "authors":
        cols = recsel.collect(reviews, index, stats, min_rating=4.0, progress=progress)
        seqs = recsel.user_sequences(*cols)
        chosen = recsel.select_users(seqs, int(opts["rec_users"]))
        candidates = sorted({i for u in chosen for i in seqs[u]})
        state = {"index": index, "seqs": seqs, "chosen": chosen}
    else:
        u, i, t = recsel.collect(reviews, index, stats, progress=progress)
        mask = recsel.earliest_per_pair(u, i, t)
        mask[mask] = recsel.kcore(u[mask], i[mask], int(opts["k"]), int(opts["k"]))
        candidates = sorted(set(i[mask].tolist()))
        state = {"users": set(u[mask].tolist())}
    return [eligible[i] for i in candidates], state


def _rec_finish(reviews: Path, eligible: list[str], asins: list[str], state: dict, recs: dict | None, meta: Path,
                opts: dict, cache: ImageCache, image_stats: Stats, cat: str, out: Path) -> dict:
    progress = bool(opts["progress"])
    if recs is None:  # no set was filled, so no meta pass fetched them
        recs = fetch_meta(meta, set(asins), str(opts["text_field"]))
    got = cache.fetch([recs[a]["url"] for a in asins if a in recs], desc=f"rec images {cat}")
    ok_asins = {a for a in asins if a in recs and got[recs[a]["url"]]["ok"]}
    for a in sorted(set(asins) - ok_asins):
        res = got.get(recs[a]["url"]) if a in recs else None
        image_stats.add(f"rec_image_{res['reason'] if res else 'no_record'}", a)
    if opts["selection"] == "authors":
        seqs = state["seqs"]
        ok = {state["index"][a] for a in ok_asins}
        final = recsel.refilter(state["chosen"], seqs, ok)
        whitelist = {eligible[i] for u in final for i in seqs[u] if i in ok}
        rows = recsel.final_interactions(reviews, whitelist, Stats(), progress=progress)  # lines counted once
    else:
        rows = recsel.final_interactions(reviews, ok_asins, Stats(), users=state["users"], dedup="pair",
                                         k_user=int(opts["k"]), k_item=int(opts["k"]), progress=progress)
    inter, umap, imap = recsel.reindex(rows)
    _write_recbench(out / "recbench", cat, inter, umap, imap, recs, got, Path(opts["out"]))
    return {"users": len(umap), "items": len(imap), "interactions": len(inter)}


def _write_recbench(d: Path, cat: str, inter: list[tuple], umap: dict, imap: dict, recs: dict, got: dict,
                    root: Path) -> None:
    lines = ["userID\titemID\trating\ttimestamp\tx_label"] + ["\t".join(map(str, r)) for r in inter]
    atomic_write_text(d / f"{cat.lower()}.inter", "\n".join(lines) + "\n")
    for name, mapping in (("u_id_mapping.csv", umap), ("i_id_mapping.csv", imap)):
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["original_id", "new_id"])
        w.writerows(mapping.items())
        atomic_write_text(d / name, buf.getvalue())
    items = []
    for asin, n in imap.items():
        rec = recs.get(asin, {})
        res = got.get(rec.get("url"))
        items.append({"itemID": n, "parent_asin": asin, "title": rec.get("title", ""), "text": rec.get("text", ""),
                      "image": relative_image(root, res["path"]) if res and res["ok"] else None})
    atomic_write_jsonl(d / "items.jsonl", items)


def build_category(cat: str, opts: dict, cache: ImageCache) -> dict:
    out = Path(str(opts["out"])) / cat
    meta, reviews = locate(str(opts["source"]), cat)
    meta_stats, review_stats, image_stats = Stats(), Stats(), Stats()
    eligible = scan_meta(meta, meta_stats, progress=bool(opts["progress"]))
    sizes = set_sizes(len(eligible), int(opts["cqbench_per_category"]), int(opts["train_per_category"]))
    order = seeded_order(eligible, int(opts["seed"]))
    rec_asins, rec_state = _rec_candidates(reviews, eligible, opts, review_stats) if reviews is not None else ([], {})
    (cq, train), rec_recs = _fill(order, sizes, meta, str(opts["text_field"]), cache, image_stats, cat,
                                  Path(opts["out"]), prefetch=set(rec_asins))
    for name, items in (("cqbench", cq), ("train", train)):
        atomic_write_jsonl(out / f"{name}.jsonl", items)
    atomic_write_json(out / "ids.json", {"seed": opts["seed"], "cqbench": [r["parent_asin"] for r in cq],
                                         "train": [r["parent_asin"] for r in train]})
    rec = (_rec_finish(reviews, eligible, rec_asins, rec_state, rec_recs, meta, opts, cache, image_stats, cat, out)
           if reviews is not None else {"skipped": "no review file"})
    return {"meta_file": str(meta), "review_file": str(reviews) if reviews else None,
            "items": meta_stats.counts["items"], "eligible": len(eligible),
            "cqbench": len(cq), "train": len(train), "recbench": rec,
            "skipped_lines": {"meta": meta_stats.as_dict(), "reviews": review_stats.as_dict()},
            "failed_images": image_stats.as_dict()}


AT_LEAST = {"workers": 1, "k": 1, "cqbench_per_category": 0, "train_per_category": 0, "rec_users": 0,
            "retries": 0, "min_image_size": 0}


def check_values(opts: dict) -> None:
    """Numbers are numbers of a sane size, before any file is read: `workers=0` or `timeout=abc` would otherwise
    stop the build deep inside the download pool, and a negative set size silently builds nothing."""
    import math

    for key, default in DEFAULTS.items():
        value = opts.get(key)
        if value is None or isinstance(default, bool) or not isinstance(default, (int, float)):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{key}={value!r}: must be a finite number")
        if isinstance(default, int) and value != int(value):
            raise ConfigError(f"{key}={value!r}: must be a whole number")
        if key in AT_LEAST and value < AT_LEAST[key]:
            raise ConfigError(f"{key}={value}: must be at least {AT_LEAST[key]}")
    if opts.get("timeout") is not None and opts["timeout"] <= 0:
        raise ConfigError(f"timeout={opts['timeout']}: must be more than 0 seconds")


def build(**kwargs) -> Path:
    """Run the pipeline (keyword options as on the command line); returns the output folder."""
    opts = dict(DEFAULTS)
    opts.update(kwargs)
    check_values(opts)
    if not opts["source"] or not opts["out"]:
        raise ConfigError("source= and out= are required (source: a folder of raw .jsonl[.gz] files, or hub)")
    if opts["text_field"] not in TEXT_FIELDS:
        raise ConfigError(f"text_field={opts['text_field']!r}; valid choices: {', '.join(TEXT_FIELDS)}")
    if opts["selection"] not in ("authors", "kcore"):
        raise ConfigError(f"selection={opts['selection']!r}; valid choices: authors, kcore")
    if opts["source"] != "hub" and not Path(str(opts["source"])).expanduser().is_dir():
        raise DataError(f"source folder {opts['source']} does not exist")
    cats = opts["categories"]
    if cats is None and opts["source"] != "hub":  # a folder holding some of the nine: those it holds
        found = set(categories_in(Path(str(opts["source"])).expanduser()))
        cats = [c for c in CATEGORIES if c in found]
        if not cats:
            raise DataError(f"no meta_<Category>.jsonl[.gz] of the nine categories in {opts['source']}")
    elif cats is None:
        cats = list(CATEGORIES)
    elif isinstance(cats, str):
        cats = [c.strip() for c in cats.strip("[]").split(",") if c.strip()]
    cats = resolve_categories(Path("."), list(cats))
    if opts["source"] != "hub":
        for cat in cats:  # fail before any work, not after an hour on the first category
            locate(str(opts["source"]), cat)
    out = Path(str(opts["out"])).expanduser()
    opts["out"] = out
    cache = ImageCache(opts["image_cache"] or out / "images", timeout=float(opts["timeout"]),
                       retries=int(opts["retries"]), workers=int(opts["workers"]),
                       min_size=int(opts["min_image_size"]), progress=bool(opts["progress"]),
                       deadline=float(opts["deadline"]), max_bytes=int(opts["max_image_bytes"]),
                       max_pixels=int(opts["max_image_pixels"]))
    t0 = time.time()
    summary = {"options": {k: str(v) if isinstance(v, Path) else v for k, v in opts.items()}, "categories": {}}
    for cat in cats:
        summary["categories"][cat] = build_category(cat, opts, cache)
    summary["images_downloaded_this_run"] = cache.downloaded
    summary["seconds"] = round(time.time() - t0, 1)
    atomic_write_json(out / "summary.json", summary)
    _no_images_is_an_error(summary["categories"])
    return out


def _no_images_is_an_error(categories: dict) -> None:
    """A category with eligible items but not one usable image (server down, every URL refused) fails the build
    (after summary.json is written, for the reasons) instead of exiting 0 with empty sets."""
    for cat, s in categories.items():
        if s["eligible"] and not s["cqbench"] and not s["train"]:
            counts = s["failed_images"]["counts"]
            top = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])[:3])
            raise DataError(f"{cat}: no image could be fetched for any of {s['eligible']} eligible items "
                            f"({top or 'no attempt'}); is the image server reachable? rerun to retry")

