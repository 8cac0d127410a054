"""`mmpc-rl data build`: raw Amazon Reviews 2023 files -> CQBench, GRPO and RecBench sets with cached cover images.

Per category: scan meta (eligible ids only) -> RecBench candidates from the reviews -> one meta pass for the records
needed -> download images -> RecBench whitelist, all its reviews, k-core, chronological split -> CQBench drawn from
the RecBench items (`cqbench_population=filtered`) or from the whole catalog (`catalog`) -> GRPO from the rest, in a
seeded order over sorted ids, skipping items whose image failed. A rerun reuses the image cache.
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
from mmpc_rl.io import atomic_write_json, atomic_write_jsonl, atomic_write_text, prepare_output_dir

HF_REPO = "McAuley-Lab/Amazon-Reviews-2023"
DEFAULTS: dict[str, object] = {
    "source": None, "out": None, "categories": None, "cqbench_per_category": 1000, "train_per_category": 500,
    "seed": 42, "text_field": "title", "selection": "authors", "k": 5, "rec_users": 1000,
    "cqbench_population": "filtered", "image_cache": None,
    "workers": 16, "timeout": 10.0, "retries": 3, "min_image_size": 32, "progress": True,
    "deadline": DEADLINE_S, "max_image_bytes": MAX_BYTES, "max_image_pixels": MAX_PIXELS,
}
# What a build selects, for the cache key of `load_items`' builds: a change to the pipeline that changes the items,
# users or splits a build holds bumps it, so no cached build made by other rules is reused.
PIPELINE_VERSION = 3
# filtered: the paper's "we follow the five-core filtering procedure ... we further sample 1,000 items from each
# category", i.e. CQBench items are RecBench items; catalog: any eligible item of the category.
POPULATIONS = ("filtered", "catalog")


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


def _margin(n: int) -> int:
    return max(8, n // 10)  # spare ids for failed images, so one meta pass usually fills a set


def _fetch_records(meta: Path, wanted, text_field: str, records: dict) -> None:
    """Add the records of `wanted` ids not looked up yet to `records` (None for an id the meta file lacks)."""
    todo = {a for a in wanted if a not in records}
    if todo:
        got = fetch_meta(meta, todo, text_field)
        records.update({a: got.get(a) for a in todo})


def _item(asin: str, rec: dict, image: str, cat: str) -> dict:
    return {"parent_asin": asin, "title": rec["title"], "text": rec["text"], "image": image, "category": cat}


def _fill(order: list[str], sizes: tuple[int, ...], meta: Path, text_field: str, cache: ImageCache,
          stats: Stats, cat: str, out: Path, records: dict) -> list[list[dict]]:
    """Take items in `order` into sets of the given sizes, skipping (and counting) items whose image fails; meta
    records not already in `records` are fetched a chunk at a time."""
    sets: list[list[dict]] = [[] for _ in sizes]
    pos, need = 0, sum(sizes)
    while pos < len(order) and sum(map(len, sets)) < need:
        missing = need - sum(map(len, sets))
        chunk = order[pos: pos + missing + _margin(missing)]
        pos += len(chunk)
        _fetch_records(meta, chunk, text_field, records)
        got = cache.fetch([records[a]["url"] for a in chunk if records[a]], desc=f"images {cat}")
        for asin in chunk:
            rec = records[asin]
            res = got.get(rec["url"]) if rec else None
            if res is None or not res["ok"]:
                stats.add(f"image_{res['reason'] if res else 'no_record'}", f"{asin} {(rec or {}).get('url')}")
                continue
            target = next((s for s, n in zip(sets, sizes, strict=True) if len(s) < n), None)
            if target is None:
                break
            target.append(_item(asin, rec, relative_image(out, res["path"]), cat))
    return sets


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


def _rec_finish(reviews: Path, eligible: list[str], asins: list[str], state: dict, recs: dict, meta: Path,
                opts: dict, cache: ImageCache, image_stats: Stats, cat: str, out: Path) -> tuple[dict, list[dict]]:
    """The RecBench folder of one category; returns its summary and its items (`parent_asin, title, text, image,
    category`, in itemID order, every one with a fetched image)."""
    progress = bool(opts["progress"])
    _fetch_records(meta, asins, str(opts["text_field"]), recs)
    got = cache.fetch([recs[a]["url"] for a in asins if recs[a]], desc=f"rec images {cat}")
    ok_asins = {a for a in asins if recs[a] and got[recs[a]["url"]]["ok"]}
    for a in sorted(set(asins) - ok_asins):
        res = got.get(recs[a]["url"]) if recs[a] else None
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
    root = Path(opts["out"])
    items = [_item(a, recs[a], relative_image(root, got[recs[a]["url"]]["path"]), cat) for a in imap]
    _write_recbench(out / "recbench", cat, inter, umap, imap, items)
    train_rows = sum(1 for r in inter if r[4] == 0)
    return {"users": len(umap), "items": len(imap), "interactions": len(inter),
            "train_interactions": train_rows}, items


def _write_recbench(d: Path, cat: str, inter: list[tuple], umap: dict, imap: dict, items: list[dict]) -> None:
    lines = ["userID\titemID\trating\ttimestamp\tx_label"] + ["\t".join(map(str, r)) for r in inter]
    atomic_write_text(d / f"{cat.lower()}.inter", "\n".join(lines) + "\n")
    for name, mapping in (("u_id_mapping.csv", umap), ("i_id_mapping.csv", imap)):
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["original_id", "new_id"])
        w.writerows(mapping.items())
        atomic_write_text(d / name, buf.getvalue())
    atomic_write_jsonl(d / "items.jsonl", [{"itemID": imap[it["parent_asin"]], "parent_asin": it["parent_asin"],
                                           "title": it["title"], "text": it["text"], "image": it["image"]}
                                          for it in items])


def _no_reviews(cat: str, source: str) -> DataError:
    return DataError(f"{cat}: cqbench_population=filtered draws CQBench from the RecBench items, which come from the "
                     f"reviews, and {source} has no {cat}.jsonl[.gz]; add it or pass cqbench_population=catalog")


def _population_note(pool: int, eligible: int, asked: int, drawn: int, population: str) -> str | None:
    """Why CQBench holds fewer items than asked, or None."""
    if drawn >= asked:
        return None
    if population == "filtered" and drawn == pool:
        return f"the RecBench item set holds {pool} items, fewer than the {asked} asked: CQBench uses all of them"
    return (f"the {eligible} eligible items cannot fill both the CQBench and the GRPO set: CQBench takes a "
            f"proportional share, {drawn} of the {asked} asked")


def build_category(cat: str, opts: dict, cache: ImageCache) -> dict:
    out = Path(str(opts["out"])) / cat
    root = Path(str(opts["out"]))
    text_field, population = str(opts["text_field"]), str(opts["cqbench_population"])
    meta, reviews = locate(str(opts["source"]), cat)
    if reviews is None and population == "filtered":
        raise _no_reviews(cat, str(opts["source"]))
    meta_stats, review_stats, image_stats = Stats(), Stats(), Stats()
    eligible = scan_meta(meta, meta_stats, progress=bool(opts["progress"]))
    asked = int(opts["cqbench_per_category"])
    n_cq, n_train = set_sizes(len(eligible), asked, int(opts["train_per_category"]))
    order = seeded_order(eligible, int(opts["seed"]))
    rec_asins, rec_state = _rec_candidates(reviews, eligible, opts, review_stats) if reviews is not None else ([], {})
    records: dict = {}
    # one meta pass (millions of lines for the big categories) for the RecBench candidates and the head of the order
    head = n_cq + n_train
    _fetch_records(meta, [*rec_asins, *order[: head + _margin(head) if head else 0]], text_field, records)
    rec, rec_items = {"skipped": "no review file"}, []
    if population == "filtered":
        rec, rec_items = _rec_finish(reviews, eligible, rec_asins, rec_state, records, meta, opts, cache,
                                     image_stats, cat, out)
        pool = len(rec_items)
        by_asin = {it["parent_asin"]: it for it in rec_items}
        cq = [by_asin[a] for a in seeded_order(list(by_asin), int(opts["seed"]))[:n_cq]]
        taken = {it["parent_asin"] for it in cq}
        (train,) = _fill([a for a in order if a not in taken], (n_train,), meta, text_field, cache, image_stats,
                         cat, root, records)
    else:
        pool = len(eligible)
        cq, train = _fill(order, (n_cq, n_train), meta, text_field, cache, image_stats, cat, root, records)
        if reviews is not None:
            rec, rec_items = _rec_finish(reviews, eligible, rec_asins, rec_state, records, meta, opts, cache,
                                         image_stats, cat, out)
    for name, items in (("cqbench", cq), ("train", train)):
        atomic_write_jsonl(out / f"{name}.jsonl", items)
    atomic_write_json(out / "ids.json", {"seed": opts["seed"], "cqbench_population": population,
                                         "cqbench": [r["parent_asin"] for r in cq],
                                         "train": [r["parent_asin"] for r in train]})
    return {"meta_file": str(meta), "review_file": str(reviews) if reviews else None,
            "items": meta_stats.counts["items"], "eligible": len(eligible),
            "cqbench": len(cq), "train": len(train),
            "cqbench_population": {"population": population, "pool": pool, "asked": asked, "drawn": len(cq),
                                   "note": _population_note(pool, len(eligible), asked, len(cq), population)},
            "recbench": rec,
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
    if opts["cqbench_population"] not in POPULATIONS:
        raise ConfigError(f"cqbench_population={opts['cqbench_population']!r}; valid choices: "
                          + ", ".join(POPULATIONS))
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
            if locate(str(opts["source"]), cat)[1] is None and opts["cqbench_population"] == "filtered":
                raise _no_reviews(cat, str(opts["source"]))
    out = prepare_output_dir(str(opts["out"]))
    opts["out"] = out
    cache = ImageCache(opts["image_cache"] or out / "images", timeout=float(opts["timeout"]),
                       retries=int(opts["retries"]), workers=int(opts["workers"]),
                       min_size=int(opts["min_image_size"]), progress=bool(opts["progress"]),
                       deadline=float(opts["deadline"]), max_bytes=int(opts["max_image_bytes"]),
                       max_pixels=int(opts["max_image_pixels"]))
    t0 = time.time()
    summary = {"options": {k: str(v) if isinstance(v, Path) else v for k, v in opts.items()},
               "pipeline_version": PIPELINE_VERSION, "categories": {}}
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

