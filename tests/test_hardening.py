"""Issue 13 part A: hostile ids, JSONL with a bad middle line, downloads that misbehave, malformed records, pixel
bombs, corrupt checkpoints, dataset-relative image paths, and RecBench's NaN / BM3 parity."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from mmpc_rl.io import append_jsonl, read_jsonl, safe_name

HOSTILE = ["../../x", "/abs/path", "..", ".", "", "a/b", "a\\b", "~", "%2F", "x" * 400, "é/..", "B07ABC-12_x"]


# ------------------------------------------------------------------------------------------- item 1: file names
def test_safe_name_is_one_component_and_unique(tmp_path):
    names = [safe_name(s) for s in HOSTILE]
    assert len(set(names)) == len(HOSTILE)
    for n in names:
        assert n and "/" not in n and "\\" not in n and ".." not in n and n not in (".", "..")
        assert not Path(n).is_absolute() and len(n) <= 150
        assert (tmp_path / n).resolve().parent == tmp_path.resolve()
    assert safe_name("B07ABC-12_x") == "B07ABC-12_x" and safe_name("All_Beauty") == "All_Beauty"  # names unchanged


def test_cqbench_t2i_images_stay_in_image_dir(tmp_path):
    from mmpc_rl.eval.runner import Scorers, score_batch
    from mmpc_rl.tasks import get_task

    ref = tmp_path / "ref.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(ref)
    items = [{"parent_asin": a, "category": c, "title": "t", "image": str(ref)}
             for a, c in (("../../escape", "All_Beauty"), ("/abs/path/x", "../../cat"), ("ok", "/etc"))]
    scorers = Scorers(renderer=lambda prompts, seeds: [Image.new("RGB", (32, 32)) for _ in prompts])
    img_dir = tmp_path / "run" / "images"
    _, paths = score_batch(get_task("t2i"), items, ["a", "b", "c"], scorers, image_dir=img_dir, seed=0)
    assert len(set(paths)) == 3
    for p in paths:
        assert Path(p).resolve().is_relative_to(img_dir.resolve()) and Path(p).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.png", "run"]  # nothing created outside


# ---------------------------------------------------------------------------------------------- item 8: JSONL
def test_bad_middle_line_is_skipped_not_truncated(tmp_path, caplog):
    path = tmp_path / "r.jsonl"
    for i in range(5):
        append_jsonl(path, {"i": i})
    lines = path.read_text().splitlines(keepends=True)
    lines.insert(2, '{"i": broken\n')
    lines.insert(4, "[1, 2]\n")
    path.write_text("".join(lines) + '{"i": 99, "torn')
    skipped: list[int] = []
    with caplog.at_level(logging.WARNING, logger="mmpc_rl"):
        got = [r["i"] for r in read_jsonl(path, repair=True, skipped=skipped)]
    assert got == [0, 1, 2, 3, 4] and skipped == [3, 5]
    assert "skipped 2 malformed line(s)" in caplog.text
    assert path.read_text() == "".join(lines)  # only the torn tail went
    append_jsonl(path, {"i": 5})
    assert [r["i"] for r in read_jsonl(path)] == [0, 1, 2, 3, 4, 5]


def test_image_cache_index_keeps_records_after_a_bad_line(tmp_path):
    from mmpc_rl.data.images import ImageCache

    good = tmp_path / "a.png"
    Image.new("RGB", (40, 40)).save(good)
    cache = ImageCache(tmp_path / "c", progress=False)
    cache.fetch([str(good)])
    recs = (tmp_path / "c" / "index.jsonl").read_text()
    (tmp_path / "c" / "index.jsonl").write_text("garbage\n" + recs)
    again = ImageCache(tmp_path / "c", progress=False)
    assert str(good) in again.known
    assert (tmp_path / "c" / "index.jsonl").read_text() == "garbage\n" + recs


def test_load_items_keeps_items_after_a_bad_line(tmp_path, caplog):
    from mmpc_rl.data import load_items
    from mmpc_rl.data.build import build
    from mmpc_rl.data.sample import build_sample_catalog

    src = build_sample_catalog(tmp_path / "cat")
    out = build(source=src, out=tmp_path / "out", categories=["All_Beauty"], cqbench_per_category=40,
                train_per_category=2, progress=False)
    path = out / "All_Beauty" / "cqbench.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:2] + ['{"parent_asin": \n'] + lines[3:]))
    with caplog.at_level(logging.WARNING, logger="mmpc_rl"):
        items = load_items(out, "cqbench")
    assert len(items) == 39 and "skipped 1 malformed line" in caplog.text
