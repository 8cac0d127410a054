"""Raw data that misbehaves: a bad line in a built item file or the image index, downloads that fail in every way
a server can, pixel bombs, malformed catalog records, and dataset-relative image paths read from another folder."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from mmpc_rl.io import read_jsonl


# ------------------------------------------------------------------------------------ a bad line in a file
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
    odd = ['{"url": "u1", "ok": true, "path": null}', '{"url": "u2", "ok": false}', '{"url": 5, "ok": true}',
           '{"url": "u3", "ok": "yes", "path": "x"}']
    (tmp_path / "c" / "index.jsonl").write_text("\n".join(odd) + "\n" + recs)
    again = ImageCache(tmp_path / "c", progress=False)
    assert list(again.known) == [str(good)]  # records of another shape are refetched, not trusted or fatal


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


# ------------------------------------------------------------------------------- downloads that misbehave
class RawServer:
    """A loopback TCP server that answers each path in its own broken way (below HTTP, so anything goes)."""

    def __init__(self, png: bytes) -> None:
        import socketserver
        import threading
        import time

        def reply(path: str, w) -> None:
            ok = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nConnection: close\r\n"
            if path == "/ok.png":
                w(ok + b"Content-Length: %d\r\n\r\n" % len(png) + png)
            elif path == "/short.png":  # the body ends before its Content-Length: IncompleteRead
                w(ok + b"Content-Length: %d\r\n\r\n" % (len(png) + 1000) + png)
            elif path == "/nothttp.png":
                w(b"SSH-2.0-OpenSSH_9.6\r\n")
            elif path == "/trickle.png":  # a byte at a time, for ever: each read is quick, the whole never ends
                w(ok + b"Content-Length: 50000\r\n\r\n")
                for _ in range(100_000):
                    w(b"x")
                    time.sleep(0.05)
            elif path == "/huge.png":
                w(ok + b"Content-Length: 600000000\r\n\r\n" + png)
            elif path == "/endless.png":  # no Content-Length: only the size cap stops it
                w(ok + b"\r\n")
                for _ in range(100_000):
                    w(b"\0" * 65536)
            else:
                w(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                try:
                    line = self.rfile.readline(65536).decode("latin-1")
                    while self.rfile.readline(65536) not in (b"\r\n", b"\n", b""):
                        pass
                    reply(line.split(" ")[1].split("?")[0] if " " in line else "/", self.wfile.write)
                except (BrokenPipeError, ConnectionResetError, IndexError):
                    pass

        class Srv(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.srv = Srv(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()


def _png(size=(64, 64), mode="RGB") -> bytes:
    import io

    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def raw():
    srv = RawServer(_png())
    yield srv
    srv.srv.shutdown()


def test_every_download_failure_is_a_recorded_skip(raw, tmp_path):
    import time

    from mmpc_rl.data.images import ImageCache

    port = raw.url.rsplit(":", 1)[1]
    urls = {f"{raw.url}/ok.png": None, f"{raw.url}/short.png": "incomplete_body",
            f"{raw.url}/nothttp.png": "bad_reply", f"{raw.url}/trickle.png": "too_slow",
            f"{raw.url}/huge.png": "too_large", f"{raw.url}/endless.png": "too_large",
            f"{raw.url}/a b.png": "bad_url", "http://127.0.0.1:abc/x.png": "bad_url",
            f"http://[::1:{port}/x.png": "bad_url", "http://[zz::1]/x.png": "bad_url", f"{raw.url}/\udcff.png": None}
    cache = ImageCache(tmp_path / "c", timeout=2.0, retries=0, progress=False, workers=4, deadline=1.0,
                       max_bytes=1_000_000)
    t0 = time.monotonic()
    got = cache.fetch(list(urls))
    assert time.monotonic() - t0 < 20  # the trickle is cut at the deadline, not after 100000 bytes
    assert got[f"{raw.url}/ok.png"]["ok"]
    reasons = {u: r["reason"] for u, r in got.items()}
    for url, want in urls.items():
        if want is not None:
            assert reasons[url] == want, url
    assert all(not got[u]["ok"] for u in urls if u != f"{raw.url}/ok.png")
    index = list(read_jsonl(tmp_path / "c" / "index.jsonl"))
    assert len(index) == len(urls)  # every outcome recorded: a rerun neither crashes nor refetches the permanent ones
    again = ImageCache(tmp_path / "c", timeout=2.0, retries=0, progress=False, deadline=1.0, max_bytes=1_000_000)
    assert again.fetch([f"{raw.url}/huge.png", f"{raw.url}/a b.png"])[f"{raw.url}/huge.png"]["reason"] == "too_large"
    assert again.downloaded == 0


def test_retries_zero_still_tries_once(raw, tmp_path):
    from mmpc_rl.data.images import ImageCache

    cache = ImageCache(tmp_path / "c", retries=0, progress=False)
    assert cache.fetch([f"{raw.url}/ok.png"])[f"{raw.url}/ok.png"]["ok"] and cache.downloaded == 1


def _catalog_with_urls(tmp_path, url_of) -> Path:
    from mmpc_rl.data.sample import build_sample_catalog

    src = build_sample_catalog(tmp_path / "cat")
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    lines = []
    for line in (src / "meta_All_Beauty.jsonl").read_text().splitlines():
        rec = json.loads(line)
        for im in rec["images"]:
            im["large"] = url_of(rec["parent_asin"], im["large"])
        lines.append(json.dumps(rec))
    (raw_dir / "meta_All_Beauty.jsonl").write_text("\n".join(lines) + "\n")
    return raw_dir


def test_build_with_no_image_at_all_fails_in_one_line(tmp_path):
    from mmpc_rl.cli import main

    raw_dir = _catalog_with_urls(tmp_path, lambda asin, url: "http://127.0.0.1:9/nothing.jpg")  # port 9: refused
    (raw_dir / "All_Beauty.jsonl").write_bytes((tmp_path / "cat" / "All_Beauty.jsonl").read_bytes())
    argv = ["data", "build", f"source={raw_dir}", f"out={tmp_path / 'out'}", "cqbench_per_category=4",
            "train_per_category=2", "progress=false", "retries=0", "timeout=1"]
    assert main(argv) == 2
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["categories"]["All_Beauty"]["cqbench"] == 0
    assert main(argv) == 2  # the rerun retries (connection errors are transient) and fails the same clean way


# ------------------------------------------------------------------------------------------------ pixel bombs
def test_pixel_bomb_is_refused_before_decoding_at_build_and_load(tmp_path):
    from mmpc_rl.data.images import MAX_PIXELS, BadImage, ImageCache, open_image, verify_image

    assert MAX_PIXELS <= 40_000_000
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png((3000, 3000), "1"))  # 9 MP in a few KB
    assert bomb.stat().st_size < 100_000
    with pytest.raises(BadImage, match="too_many_pixels"):
        verify_image(bomb, max_pixels=4_000_000)
    with pytest.raises(BadImage, match="too_many_pixels"):
        open_image(bomb, max_pixels=4_000_000)
    assert verify_image(bomb, max_pixels=10_000_000) == (3000, 3000)
    got = ImageCache(tmp_path / "c", progress=False, max_pixels=4_000_000).fetch([str(bomb)])
    assert got[str(bomb)]["reason"] == "too_many_pixels"


def test_training_and_eval_open_images_through_the_pixel_cap(tmp_path, monkeypatch):
    from datasets import Dataset

    from mmpc_rl.data import images
    from mmpc_rl.data.skips import drop_unusable_images
    from mmpc_rl.eval.generate import open_image as eval_open

    monkeypatch.setattr(images, "MAX_PIXELS", 4_000_000)  # the default cap, as training and eval use it
    bomb, ok = tmp_path / "bomb.png", tmp_path / "ok.png"
    bomb.write_bytes(_png((3000, 3000), "1"))
    ok.write_bytes(_png())
    ds = drop_unusable_images(Dataset.from_dict({"image": [str(ok), str(bomb), str(ok)]}), tmp_path)
    assert len(ds) == 2
    assert "too_many_pixels" in json.loads((tmp_path / "skips.json").read_text())["unusable_image"]["examples"][0]
    from mmpc_rl.errors import DataError

    with pytest.raises(DataError, match="too_many_pixels"):
        eval_open(bomb)
    assert eval_open(ok).size == (64, 64)


# ----------------------------------------------------------------------------- dataset-relative image paths
def test_relative_out_works_from_another_folder(raw, tmp_path, monkeypatch):
    from mmpc_rl.data import load_items
    from mmpc_rl.data.build import build
    from mmpc_rl.recbench.data import load_category

    src = _catalog_with_urls(tmp_path, lambda asin, url: f"{raw.url}/ok.png?{asin}")  # downloaded into the cache
    (src / "All_Beauty.jsonl").write_bytes((tmp_path / "cat" / "All_Beauty.jsonl").read_bytes())
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    build(source=src, out="data/built", categories=["All_Beauty"], cqbench_per_category=5, train_per_category=3,
          progress=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    items = load_items(tmp_path / "work" / "data" / "built", "train")
    assert len(items) == 3 and all(Path(i["image"]).is_absolute() and Path(i["image"]).is_file() for i in items)
    rec = load_category(tmp_path / "work" / "data" / "built", "All_Beauty")
    assert all(Path(i["image"]).is_file() for i in rec.items if i["image"])
    # a file written by an older build (paths relative to where it ran) still reads from there
    built = tmp_path / "work" / "data" / "built"
    rows = [json.loads(x) for x in (built / "All_Beauty" / "train.jsonl").read_text().splitlines()]
    old = [{**r, "image": str(Path("data/built") / r["image"])} for r in rows]
    (built / "All_Beauty" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    monkeypatch.chdir(tmp_path / "work")
    assert all(Path(i["image"]).is_file() for i in load_items(built, "train"))


# ---------------------------------------------------------------------------------------- malformed records
@pytest.mark.parametrize("images", [{"large": 5}, {"large": ["u"], "variant": 7}, {"large": {"a": 1}},
                                    {"large": "http://x/y.jpg", "variant": "MAIN"}, [None, 5, {"large": 3}], 7])
def test_cover_url_never_raises(images):
    from mmpc_rl.data.schema import cover_url, ineligible_reason

    cover_url(images)
    ineligible_reason({"title": "long enough", "images": images})


def test_malformed_records_are_counted_not_fatal(tmp_path):
    from mmpc_rl.data.build import build
    from mmpc_rl.data.sample import build_sample_catalog

    src = build_sample_catalog(tmp_path / "cat")
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    meta = [json.loads(x) for x in (src / "meta_All_Beauty.jsonl").read_text().splitlines()]
    deep = "[" * 100_000 + "]" * 100_000
    hostile = [{**meta[0], "parent_asin": "HF1", "images": {"large": 5, "variant": ["MAIN"]}},
               {**meta[0], "parent_asin": "HF2", "images": {"large": ["x"], "variant": 7}},
               {**meta[0], "parent_asin": ["not", "a", "string"]},
               {**meta[0], "parent_asin": "DEEP", "details": deep, "store": None}]
    (raw_dir / "meta_All_Beauty.jsonl").write_text("".join(json.dumps(r) + "\n" for r in hostile + meta))
    reviews = (src / "All_Beauty.jsonl").read_text().splitlines()
    bad = {**json.loads(reviews[0]), "timestamp": 2**64}
    bad_float = {**json.loads(reviews[0]), "timestamp": 1e300}
    (raw_dir / "All_Beauty.jsonl").write_text("\n".join([json.dumps(bad), json.dumps(bad_float)] + reviews) + "\n")
    out = build(source=raw_dir, out=tmp_path / "out", categories=["All_Beauty"], cqbench_per_category=10,
                train_per_category=5, text_field="mmrec", progress=False)
    s = json.loads((out / "summary.json").read_text())["categories"]["All_Beauty"]
    assert s["skipped_lines"]["reviews"]["counts"]["review_bad_value"] == 2
    assert s["skipped_lines"]["meta"]["counts"]["missing_parent_asin"] == 1
    assert s["cqbench"] == 10 and s["train"] == 5 and s["recbench"]["users"] > 0


def test_deeply_nested_details_do_not_break_mmrec_text():
    from mmpc_rl.data.schema import item_text

    rec = {"title": "A fine title", "details": "[" * 100_000 + "]" * 100_000, "description": ["d"]}
    assert item_text(rec, "mmrec") == "A fine title d"


def _no_hang(fn, seconds: float = 20.0):
    """fn() in a thread: a FIFO opened for reading would block it for ever."""
    import threading

    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("value", fn()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "blocked (opened a FIFO?)"
    return out["value"]


def test_images_the_processor_cannot_take_are_counted_skips_at_build_and_at_load(tmp_path, capsys):
    import os

    from datasets import Dataset

    from mmpc_rl.data.images import BadImage, ImageCache, check_image
    from mmpc_rl.data.skips import drop_unusable_images, usable_items

    paths = {"ok": tmp_path / "ok.png", "strip": tmp_path / "strip.png", "tiny": tmp_path / "tiny.png",
             "fifo": tmp_path / "fifo.png"}
    paths["ok"].write_bytes(_png((64, 48)))
    paths["strip"].write_bytes(_png((2000, 4)))  # decodes fine; smart_resize refuses aspect ratios over 200
    paths["tiny"].write_bytes(_png((10, 10)))  # under one 14-px patch
    os.mkfifo(paths["fifo"])
    for name, reason in (("strip", "aspect_ratio_over_200"), ("tiny", "smaller_than_a_patch")):
        with pytest.raises(BadImage, match=reason):
            check_image(paths[name].read_bytes(), min_size=0)  # build: the same helper
    cache = ImageCache(tmp_path / "cache", progress=False, min_size=0)
    got = _no_hang(lambda: cache.fetch([str(p) for p in paths.values()]))
    assert {k: got[str(p)]["reason"] for k, p in paths.items()} == {
        "ok": None, "strip": "aspect_ratio_over_200", "tiny": "smaller_than_a_patch", "fifo": "not_a_regular_file"}

    ds = Dataset.from_dict({"image": [str(paths[k]) for k in ("ok", "strip", "fifo", "tiny", "ok")]})
    kept = _no_hang(lambda: drop_unusable_images(ds, tmp_path))  # load: the same helper
    assert kept["image"] == [str(paths["ok"])] * 2
    skips = json.loads((tmp_path / "skips.json").read_text())["unusable_image"]
    assert skips["reasons"] == {"aspect_ratio_over_200": 1, "not_a_regular_file": 1, "smaller_than_a_patch": 1}
    assert "skipped 3 of 5 rows whose image cannot be used" in capsys.readouterr().out
    items = [{"image": str(paths[k]), "parent_asin": k} for k in ("ok", "strip", "fifo")]
    assert [it["parent_asin"] for it in _no_hang(lambda: usable_items(items, policy=True))] == ["ok"]
    assert [it["parent_asin"] for it in _no_hang(lambda: usable_items(items, policy=False))] == ["ok", "strip"]


def test_an_image_cached_before_a_rule_existed_is_that_rules_skip(tmp_path):
    from mmpc_rl.data.images import ImageCache
    from mmpc_rl.io import append_jsonl

    strip = tmp_path / "cache" / "ab" / "strip.jpg"
    strip.parent.mkdir(parents=True)
    strip.write_bytes(_png((2000, 4)))
    append_jsonl(tmp_path / "cache" / "index.jsonl", {"url": "http://x/strip.jpg", "ok": True,
                                                       "path": "ab/strip.jpg", "reason": None})
    got = ImageCache(tmp_path / "cache", progress=False).fetch(["http://x/strip.jpg"])
    assert got["http://x/strip.jpg"]["ok"] is False and got["http://x/strip.jpg"]["reason"] == "aspect_ratio_over_200"


def test_hand_made_dataset_records_of_the_wrong_shape_are_counted_skips(tmp_path, capsys):
    from mmpc_rl.data import load_items

    (tmp_path / "summary.json").write_text(json.dumps({"categories": {"All_Beauty": {}}}))
    (tmp_path / "All_Beauty").mkdir()
    rows = [{"parent_asin": "A1", "title": "Red kite", "image": "a.png"},
            {"parent_asin": ["A2"], "title": "list id"}, {"parent_asin": "A3", "title": 7, "image": "c.png"},
            {"parent_asin": "A4", "title": "dict image", "image": {"path": "d.png"}}, {"title": "no id"},
            {"parent_asin": 5, "title": "numeric id", "image": None}]
    (tmp_path / "All_Beauty" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = load_items(str(tmp_path), split="train")
    assert [(it["parent_asin"], it["title"], it["category"]) for it in items] == [
        ("A1", "Red kite", "All_Beauty"), ("5", "numeric id", "All_Beauty")]
    assert "skipped 4 record(s) of the wrong shape" in capsys.readouterr().out
