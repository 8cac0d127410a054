"""Streaming readers for the raw category files: one line at a time, bad lines counted with examples, never fatal.

Memory stays bounded by what the caller keeps (ids, not records): the meta scan keeps only eligible parent_asins,
and records are fetched in a second pass for the few thousand items actually used.
"""

from __future__ import annotations

import gzip
import math
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson

from mmpc_rl.data.schema import clean_title, cover_url, ineligible_reason, is_eligible, item_text
from mmpc_rl.errors import DataError, did_you_mean

CATEGORIES = ("All_Beauty", "Arts_Crafts_and_Sewing", "Electronics", "Home_and_Kitchen", "Industrial_and_Scientific",
              "Musical_Instruments", "Office_Products", "Toys_and_Games", "Video_Games")
_SUBDIRS = {"meta": ("", "raw/meta_categories", "meta_categories"),
            "review": ("", "raw/review_categories", "review_categories")}
MAX_EXAMPLES = 5
# Errors a record of the wrong shape can raise in the schema helpers: counted per record, never fatal.
RECORD_ERRORS = (TypeError, ValueError, AttributeError, KeyError, RecursionError, OverflowError)
MAX_TIMESTAMP_MS = 2**62  # numpy int64 columns hold the timestamps; 2^64 is valid JSON


class Stats:
    """Counts by reason, plus a few `file:line` examples of each problem for the summary."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}

    def add(self, reason: str, where: str | None = None, n: int = 1) -> None:
        self.counts[reason] += n
        if where is not None:
            ex = self.examples.setdefault(reason, [])
            if len(ex) < MAX_EXAMPLES:
                ex.append(where)

    def as_dict(self) -> dict:
        return {"counts": dict(sorted(self.counts.items())), "examples": dict(sorted(self.examples.items()))}


def find_file(source: Path, category: str, kind: str) -> Path | None:
    name = f"meta_{category}" if kind == "meta" else category
    for sub in _SUBDIRS[kind]:
        for ext in (".jsonl", ".jsonl.gz"):
            p = source / sub / f"{name}{ext}"
            if p.is_file():
                return p
    return None


def categories_in(source: Path) -> list[str]:
    metas = (p for sub in _SUBDIRS["meta"] for p in (source / sub).glob("meta_*.jsonl*"))
    found = {p.name.split(".")[0][len("meta_"):] for p in metas}
    return sorted(found)


def iter_json_lines(path: Path, stats: Stats, progress=None) -> Iterator[tuple[int, dict]]:
    """(line number, record) for every line that parses to a JSON object; the rest are counted."""
    opener = gzip.open if path.name.endswith(".gz") else open
    lineno = 0
    try:
        with opener(path, "rb") as f:
            for raw in f:
                lineno += 1
                if progress is not None:
                    progress.update(len(raw))
                if not raw.strip():
                    continue
                try:
                    rec = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    stats.add("malformed_json", f"{path.name}:{lineno}")
                    continue
                if not isinstance(rec, dict):
                    stats.add("not_an_object", f"{path.name}:{lineno}")
                    continue
                yield lineno, rec
    except (EOFError, OSError, zlib.error) as e:  # a truncated .gz download: keep what was read
        stats.add("truncated_file", f"{path.name}:{lineno}: {type(e).__name__}")
    stats.add("lines_read", n=lineno)


def _bar(path: Path, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=desc, leave=False, mininterval=1.0)


def scan_meta(path: Path, stats: Stats, *, progress: bool = True) -> list[str]:
    """Sorted parent_asins of eligible items (title >= 5 chars and a cover image); duplicates keep the first."""
    seen: set[str] = set()
    eligible: list[str] = []
    bar = _bar(path, f"meta {path.name}") if progress else None
    try:
        for lineno, rec in iter_json_lines(path, stats, bar):
            asin = rec.get("parent_asin")
            if not isinstance(asin, str) or not asin:
                stats.add("missing_parent_asin", f"{path.name}:{lineno}")
                continue
            if asin in seen:
                stats.add("duplicate_parent_asin", f"{path.name}:{lineno}: {asin}")
                continue
            seen.add(asin)
            try:
                reason = ineligible_reason(rec)
            except RECORD_ERRORS as e:
                reason = f"malformed_record_{type(e).__name__}"
            if reason:
                stats.add(reason, f"{path.name}:{lineno}: {asin}")
            else:
                eligible.append(asin)
    finally:
        if bar is not None:
            bar.close()
    stats.add("items", n=len(seen))
    stats.add("eligible_items", n=len(eligible))
    eligible.sort()
    return eligible


def fetch_meta(path: Path, wanted: set[str], text_field: str = "title") -> dict[str, dict]:
    """parent_asin -> {title, text, url} for the wanted eligible items (the first line of a duplicate id wins)."""
    out: dict[str, dict] = {}
    for _, rec in iter_json_lines(path, Stats()):
        asin = rec.get("parent_asin")
        if not isinstance(asin, str) or asin not in wanted or asin in out:
            continue
        try:
            if is_eligible(rec):
                out[asin] = {"title": clean_title(rec), "text": item_text(rec, text_field),
                             "url": cover_url(rec.get("images"))}
        except RECORD_ERRORS:  # counted by scan_meta; here such an item is simply not fetched
            continue
        if len(out) == len(wanted):
            break
    return out


def iter_reviews(path: Path, stats: Stats, *, progress: bool = True) -> Iterator[tuple[str, str, float, int]]:
    """(user_id, parent_asin, rating, timestamp ms) of well-formed review lines."""
    bar = _bar(path, f"reviews {path.name}") if progress else None
    try:
        for lineno, rec in iter_json_lines(path, stats, bar):
            user, asin, rating = rec.get("user_id"), rec.get("parent_asin"), rec.get("rating")
            ts = rec.get("timestamp", rec.get("sort_timestamp"))
            if not (isinstance(user, str) and user and isinstance(asin, str) and asin
                    and isinstance(rating, (int, float)) and isinstance(ts, (int, float))):
                stats.add("review_missing_field", f"{path.name}:{lineno}")
                continue
            if not (math.isfinite(rating) and math.isfinite(ts) and 0 <= ts < MAX_TIMESTAMP_MS):
                stats.add("review_bad_value", f"{path.name}:{lineno}")
                continue
            yield user, asin, float(rating), int(ts)
    finally:
        if bar is not None:
            bar.close()


def resolve_categories(source: Path, categories: list[str] | None) -> list[str]:
    """Requested categories checked against the nine (and against what the folder holds)."""
    if categories is None:
        return categories_in(source) if source.is_dir() else list(CATEGORIES)

    for c in categories:
        if c not in CATEGORIES:
            raise DataError(f"unknown category {c!r}" + did_you_mean(c, CATEGORIES))
    return list(categories)
