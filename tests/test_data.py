"""The sample catalog, the schema helpers and load_items."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from mmpc_rl.data import DEFAULT_SEED, DEFAULT_TEXT_FIELD, build_cached, default_cache_dir, load_items
from mmpc_rl.data.sample import SAMPLE_CATEGORIES, build_sample_catalog
from mmpc_rl.data.schema import cover_url, is_eligible, item_text
from mmpc_rl.data.select import seeded_order, set_sizes
from mmpc_rl.errors import DataError

META_KEYS = {"main_category", "title", "average_rating", "rating_number", "features", "description", "price",
             "images", "videos", "store", "categories", "details", "parent_asin", "bought_together"}
REVIEW_KEYS = {"rating", "title", "text", "images", "asin", "parent_asin", "user_id", "timestamp", "helpful_vote",
               "verified_purchase"}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    return build_sample_catalog(tmp_path_factory.mktemp("cat"))


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_sample_is_deterministic_and_idempotent(tmp_path):
    a = build_sample_catalog(tmp_path / "a", base_url="http://127.0.0.1:9")
    b = build_sample_catalog(tmp_path / "b", base_url="http://127.0.0.1:9")
    assert _digest(a) == _digest(b)
    assert len(_digest(a)) == 3 * 2 + 1 + 414  # meta + reviews per category, marker, images (+thumbs, +PT01)
    img = a / "images" / f"{_lines(a / 'meta_All_Beauty.jsonl')[0]['parent_asin']}.jpg"
    mtime = img.stat().st_mtime_ns
    assert build_sample_catalog(tmp_path / "a", base_url="http://127.0.0.1:9") == a
    assert img.stat().st_mtime_ns == mtime  # complete: nothing rewritten
    c = build_sample_catalog(tmp_path / "c", base_url="http://127.0.0.1:9", seed=1)
    assert _lines(c / "meta_All_Beauty.jsonl")[0]["title"] != _lines(a / "meta_All_Beauty.jsonl")[0]["title"]


def test_sample_schema_and_eligibility(catalog):
    for cat in SAMPLE_CATEGORIES:
        metas = _lines(catalog / f"meta_{cat}.jsonl")
        assert len(metas) == 72 and all(set(m) == META_KEYS for m in metas)
        assert sum(map(is_eligible, metas)) == 64
        assert all(isinstance(m["price"], float) or m["price"] is None for m in metas)
        for m in filter(is_eligible, metas):
            assert cover_url(m["images"]) == f"{catalog.as_uri()}/images/{m['parent_asin']}.jpg"
            assert (catalog / "images" / f"{m['parent_asin']}.jpg").is_file()
        variants = Counter(tuple(i["variant"] for i in m["images"]) for m in metas)
        assert variants[("PT01",)] == 4 and variants[("PT01", "MAIN")] == 4
        reviews = _lines(catalog / f"{cat}.jsonl")
        assert all(set(r) == REVIEW_KEYS for r in reviews)
        per_user = Counter(r["user_id"] for r in reviews)
        assert len(per_user) == 120 and min(per_user.values()) >= 8 and max(per_user.values()) <= 20
        assert sum(r["rating"] >= 4 for r in reviews) / len(reviews) > 0.75
        assert all(r["timestamp"] > 1_400_000_000_000 for r in reviews)


def test_sample_image_follows_title(catalog):
    from PIL import Image

    meta = next(m for m in _lines(catalog / "meta_Toys_and_Games.jsonl") if " Red " in m["title"])
    img = Image.open(catalog / "images" / f"{meta['parent_asin']}.jpg").convert("RGB")
    assert 232 <= img.width <= 288 and 232 <= img.height <= 288
    r, g, b = img.getpixel((img.width // 2, img.height // 2))
    assert r > 150 and g < 80 and b < 80  # the fill is red: (200, 30, 40) before JPEG


def test_cover_url_both_schemas():
    raw = [{"large": "http://x/1.jpg", "variant": "PT01"}, {"large": "http://x/2.jpg", "variant": "MAIN"}]
    assert cover_url(raw) == "http://x/2.jpg"
    assert cover_url(raw[:1]) == "http://x/1.jpg"
    hf = {"large": ["http://x/1.jpg", "http://x/2.jpg"], "variant": ["PT01", "MAIN"], "thumb": [None, None]}
    assert cover_url(hf) == "http://x/2.jpg"
    assert cover_url({"large": [], "variant": []}) is None
    assert cover_url([{"large": None, "variant": "MAIN"}]) is None
    assert cover_url(None) is None


def test_item_text_fields():
    meta = {"title": " Acme Red Kite ", "store": "", "details": '{"Brand": "Acme"}', "categories": ["Toys", "Kites"],
            "description": ["Description", "Flies high."]}
    assert item_text(meta, "title") == "Acme Red Kite"
    assert item_text(meta, "description") == "Description Flies high."
    assert item_text(meta, "mmrec") == "Acme Red Kite Acme Toys Kites Description Flies high."


def test_set_sizes_and_order():
    assert set_sizes(5000, 1000, 500) == (1000, 500)
    assert set_sizes(64, 1000, 500) == (43, 21)
    assert set_sizes(64, 20, 10) == (20, 10)
    assert set_sizes(9, 20, 10) == (6, 3)
    assert seeded_order(["c", "a", "b"], 3) == seeded_order(["b", "c", "a"], 3)


def test_load_items_splits(tmp_path, catalog):
    train = load_items(catalog, split="train")
    cq = load_items(catalog, split="cqbench")
    assert len(train) == 3 * 21 and len(cq) == 3 * 43
    assert not {i["parent_asin"] for i in train} & {i["parent_asin"] for i in cq}
    assert all(set(i) == {"parent_asin", "title", "text", "image", "category"} for i in train)
    assert all(Path(i["image"]).is_file() and len(i["title"]) >= 5 for i in train)
    assert [i["parent_asin"] for i in load_items(catalog, "train")] == [i["parent_asin"] for i in train]
    two = load_items(catalog, "train", categories=["Video_Games"], limit_per_category=2)
    assert [i["parent_asin"] for i in two] == [i["parent_asin"] for i in train if i["category"] == "Video_Games"][:2]
    sample = load_items("sample", "train", categories=["All_Beauty"], cache_dir=tmp_path)
    assert len(sample) == 21 and (tmp_path / "sample-catalog" / "meta_All_Beauty.jsonl").is_file()


def test_load_items_recbench_split(catalog):
    """`split="recbench"`: every RecBench item, in itemID order, with the fields of the other splits; the CQBench
    items are among them (the default population)."""
    rec = load_items(catalog, "recbench")
    assert all(set(i) == {"parent_asin", "title", "text", "image", "category"} for i in rec)
    assert all(Path(i["image"]).is_file() and len(i["title"]) >= 5 for i in rec)
    built = build_cached(catalog, sorted(SAMPLE_CATEGORIES), DEFAULT_SEED, DEFAULT_TEXT_FIELD, default_cache_dir())
    for cat in SAMPLE_CATEGORIES:
        rows = _lines(built / cat / "recbench" / "items.jsonl")
        assert [i["parent_asin"] for i in rec if i["category"] == cat] == [r["parent_asin"] for r in rows]
        assert [r["parent_asin"] for r in rows] == sorted(r["parent_asin"] for r in rows)  # the authors' order
        assert [i["title"] for i in rec if i["category"] == cat] == [r["title"] for r in rows]
    assert {i["parent_asin"] for i in load_items(catalog, "cqbench")} <= {i["parent_asin"] for i in rec}
    two = load_items(catalog, "recbench", categories=["Video_Games"], limit_per_category=2)
    assert two == [i for i in rec if i["category"] == "Video_Games"][:2]


def test_load_items_errors(tmp_path, catalog):
    with pytest.raises(DataError, match="unknown category 'Video_Game'.*did you mean 'Video_Games'"):
        load_items(catalog, categories=["Video_Game"])
    with pytest.raises(DataError, match="does not exist"):
        load_items(tmp_path / "nope")
    with pytest.raises(DataError, match="unknown split"):
        load_items(catalog, split="test")
    with pytest.raises(DataError, match="no meta_Electronics.*All_Beauty, Toys_and_Games, Video_Games"):
        load_items(catalog, categories=["Electronics"])


def test_cli_sample(tmp_path, capsys):
    from mmpc_rl.cli import main

    assert main(["data", "sample", f"out={tmp_path}", "seed=2"]) == 0
    assert (tmp_path / "meta_Video_Games.jsonl").is_file()
    assert main(["data", "sample", f"out={tmp_path}", "sed=2"]) == 2
    assert "unknown key 'sed'" in capsys.readouterr().err
