"""Cover images: concurrent download with timeouts and retries, a content check, and a disk cache keyed by URL.

`index.jsonl` in the cache records every outcome (append-only, so a kill loses at most the downloads in flight).
A rerun fetches nothing that succeeded or failed for good (404, an HTML page, a broken file); only transient
failures (timeouts, connection errors, 5xx, short bodies, deadlines) are tried again. `file://` URLs and plain paths
are checked, not copied. Any failure, whatever raised it, is a recorded skip: one URL never stops a build.
Each URL has a total deadline (`deadline`; the socket timeout bounds each read, so a trickling server could
otherwise hold a worker for ever) and a size cap (`max_bytes`); an image above `max_pixels` is a counted skip
before it is decoded. `open_image`/`verify_image` are the one way the rest of the code opens an image: only regular
files (a FIFO would block the reader for ever). `processor_problem` is the one test of whether the policy's image
processor can take an image's size, at build time (`check_image`) and when a dataset is loaded (data/skips.py).
"""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import stat
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from urllib.parse import unquote, urlparse

from mmpc_rl.io import append_jsonl, atomic_write_bytes, read_jsonl

USER_AGENT = "mmpc-rl/0.1 (+https://github.com/; image fetch for research)"
TRANSIENT = ("timeout", "connection_error", "http_5xx", "http_429", "incomplete_body", "bad_reply", "too_slow")
MAX_PIXELS = 40_000_000  # 40 MP: far above any catalog photo; a 12000x12000 PNG (144 MP) is 445 KB on disk
MAX_BYTES = 50 * 2**20
DEADLINE_S = 60.0
# Qwen2-VL/Qwen2.5-VL's image processor (transformers' image_processing_qwen2_vl.py, `smart_resize`) raises on an
# aspect ratio above 200; a side under one 14-px vision patch is upsampled from less than a patch of real pixels
# (and transformers 4.x's smart_resize refused sides under 28 px).
MAX_ASPECT_RATIO = 200
MIN_SIDE = 14


class BadImage(ValueError):
    """Why an image is unusable; a ValueError so callers that already catch PIL's errors catch it too."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def processor_problem(width: int, height: int) -> str | None:
    """Why the policy's image processor cannot take a width x height image, or None."""
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        return "aspect_ratio_over_200"
    if min(width, height) < MIN_SIDE:
        return "smaller_than_a_patch"
    return None


def regular_file(src) -> None:
    """BadImage unless a path names a regular file: opening a FIFO (or a device) blocks, a folder is no image."""
    if isinstance(src, (str, os.PathLike)):
        try:
            mode = os.stat(src).st_mode
        except OSError:
            raise BadImage("missing_file") from None
        if not stat.S_ISREG(mode):
            raise BadImage("not_a_regular_file")


def _decoded(src, max_pixels: int | None, decode: bool = True):
    from PIL import Image

    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels  # read per call; 0 turns the cap off
    regular_file(src)
    try:
        img = Image.open(src)
        try:
            w, h = img.size  # from the header: a pixel bomb is refused before any decoding
            if max_pixels and w * h > max_pixels:
                raise BadImage("too_many_pixels")
            if decode:
                img.load()  # decodes every byte: a truncated JPEG fails here, not later in the trainer
        except BaseException:
            img.close()
            raise
    except BadImage:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise BadImage("truncated" if "truncated" in str(e).lower() else "undecodable") from None
    return img


def verify_image(src, max_pixels: int | None = None) -> tuple[int, int]:
    """(width, height) of an image file or file object that decodes fully and is within the pixel cap, else
    BadImage."""
    with _decoded(src, max_pixels) as img:
        return img.size


def usable_image(src, *, fit: bool = True, decode: bool = True, max_pixels: int | None = None) -> tuple[int, int]:
    """(width, height) of an image that can be used: `verify_image`'s checks (only the header with `decode=False`)
    and, with `fit` (the policy's processor reads it), `processor_problem`'s; else BadImage."""
    with _decoded(src, max_pixels, decode) as img:
        size = img.size
    problem = processor_problem(*size) if fit else None
    if problem:
        raise BadImage(problem)
    return size


def open_image(src, max_pixels: int | None = None):
    """An RGB PIL image, or BadImage (undecodable, truncated, over the pixel cap)."""
    with _decoded(src, max_pixels) as img:
        return img.convert("RGB")


def check_image(data: bytes, min_size: int, max_pixels: int | None = None) -> None:
    """Raise BadImage unless `data` decodes fully to an image at least min_size pixels on each side."""
    if not data:
        raise BadImage("zero_bytes")
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")):
        raise BadImage("html_page")
    w, h = verify_image(io.BytesIO(data), max_pixels)
    if min(w, h) < min_size:
        raise BadImage("too_small")
    problem = processor_problem(w, h)
    if problem:
        raise BadImage(problem)


def resolve_image(root: str | os.PathLike, path: str | None) -> str | None:
    """An image path stored relative to a dataset folder (or an older absolute / cwd-relative one), made absolute."""
    if not path:
        return path
    p = Path(path)
    if p.is_absolute():
        return str(p)
    under = Path(root) / p
    if not under.exists() and p.exists():  # written by an older build, relative to where it ran
        return str(p.resolve())
    return str(under.resolve())


def relative_image(root: str | os.PathLike, path: str | os.PathLike) -> str:
    """How a dataset file stores an image path: relative to the dataset folder when under it, else absolute."""
    p, root = Path(path).resolve(), Path(root).resolve()
    return p.relative_to(root).as_posix() if p.is_relative_to(root) else str(p)


def local_path(url: str) -> Path | None:
    if url.startswith("file://"):
        return Path(unquote(urlparse(url).path))
    return Path(url) if "://" not in url else None


class ImageCache:
    def __init__(self, root: str | Path, *, timeout: float = 10.0, retries: int = 3, backoff: float = 0.5,
                 workers: int = 16, min_size: int = 32, progress: bool = True, deadline: float = DEADLINE_S,
                 max_bytes: int = MAX_BYTES, max_pixels: int | None = None) -> None:
        self.root = Path(root).expanduser().resolve()  # absolute: records must not depend on the working directory
        self.root.mkdir(parents=True, exist_ok=True)
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.deadline, self.max_bytes, self.max_pixels = deadline, max_bytes, max_pixels
        self.workers, self.min_size, self.progress = workers, min_size, progress
        self.index_path = self.root / "index.jsonl"
        self._lock = threading.Lock()
        self.known: dict[str, dict] = {}
        for rec in read_jsonl(self.index_path, repair=True):
            ok, path, reason = rec.get("ok"), rec.get("path"), rec.get("reason")
            if not isinstance(rec.get("url"), str) or not (ok is True and isinstance(path, str) and path
                                                           or ok is False and isinstance(reason, str)):
                continue  # a record of another shape: the URL is simply fetched again
            if ok:  # stored relative to the cache, so a cache moved or used from elsewhere works
                rec["path"] = resolve_image(self.root, path)
            self.known[rec["url"]] = rec
        self._tried: set[str] = set()  # a transient failure is retried by the next run, not again by this one
        self.downloaded = 0  # network fetches made by this process (tests and the summary read it)

    def path_for(self, url: str) -> Path:
        key = hashlib.sha1(url.encode()).hexdigest()
        return self.root / key[:2] / f"{key}.jpg"

    def _cached(self, url: str) -> dict | None:
        rec = self.known.get(url)
        if rec is None:
            return None
        if rec["ok"]:
            if not Path(rec["path"]).is_file():
                return None
            try:  # the header only: a cached image a newer rule refuses is that rule's skip
                usable_image(rec["path"], decode=False, max_pixels=self.max_pixels)
            except BadImage as e:
                return {**rec, "ok": False, "path": None, "reason": e.reason}
            return rec
        return None if rec["reason"] in TRANSIENT and url not in self._tried else rec

    def _get(self, url: str, deadline: float) -> bytes:
        """One attempt: the whole body within the deadline and the size cap."""
        req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            with self._lock:
                self.downloaded += 1
            if "text/html" in (resp.headers.get("Content-Type") or ""):
                raise BadImage("html_page")
            length = resp.headers.get("Content-Length")
            if length and length.strip().isdigit() and int(length) > self.max_bytes:
                raise BadImage("too_large")
            body = bytearray()
            while chunk := resp.read1(65536):
                body += chunk
                if len(body) > self.max_bytes:
                    raise BadImage("too_large")
                if time.monotonic() > deadline:  # each read is bounded by `timeout`, the sum by this
                    raise BadImage("too_slow")
            if length and length.strip().isdigit() and len(body) < int(length):
                raise BadImage("incomplete_body")
            return bytes(body)

    def _download(self, url: str) -> bytes:
        deadline = time.monotonic() + self.deadline
        last = "connection_error"
        for attempt in range(1 + max(0, self.retries)):  # retries=0: one attempt, not none
            if attempt:
                pause = self.backoff * 2 ** (attempt - 1)
                if time.monotonic() + pause > deadline:
                    raise BadImage("too_slow")
                time.sleep(pause)
            try:
                return self._get(url, deadline)
            except urllib.error.HTTPError as e:
                if e.code == 429 or e.code >= 500:
                    last = "http_5xx" if e.code >= 500 else "http_429"
                    continue
                raise BadImage(f"http_{e.code}") from None
            except http.client.IncompleteRead:
                last = "incomplete_body"
            except (http.client.InvalidURL, ValueError, UnicodeError) as e:
                if isinstance(e, BadImage):
                    raise
                raise BadImage("bad_url") from None  # a space, a non-numeric port, a malformed IPv6 host
            except (http.client.BadStatusLine, http.client.HTTPException) as e:
                last = "connection_error" if isinstance(e, ConnectionError) else "bad_reply"
            except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as e:
                reason = getattr(e, "reason", e)
                if isinstance(reason, (http.client.InvalidURL, ValueError)):
                    raise BadImage("bad_url") from None
                timed_out = isinstance(reason, TimeoutError) or "timed out" in str(reason)
                last = "timeout" if timed_out else "connection_error"
        raise BadImage(last)

    def _fetch_one(self, url: str) -> dict:
        path = local_path(url)
        try:
            if path is not None:
                regular_file(path)
                if path.stat().st_size > self.max_bytes:
                    raise BadImage("too_large")
                check_image(path.read_bytes(), self.min_size, self.max_pixels)
                path = path.resolve()
            else:
                data = self._download(url)
                check_image(data, self.min_size, self.max_pixels)
                path = atomic_write_bytes(self.path_for(url), data)
            rec = {"url": url, "ok": True, "path": str(path), "reason": None}
        except BadImage as e:
            rec = {"url": url, "ok": False, "path": None, "reason": e.reason}
        except Exception as e:  # whatever else a hostile URL or reply raises: a recorded skip, not a dead build
            rec = {"url": url, "ok": False, "path": None, "reason": f"error_{type(e).__name__}"}
        with self._lock:
            append_jsonl(self.index_path, {**rec, "path": rec["path"] and relative_image(self.root, rec["path"])})
            self.known[url] = rec
            self._tried.add(url)
        return rec

    def fetch(self, urls: list[str], desc: str = "images") -> dict[str, dict]:
        """url -> {ok, path, reason} for every url, fetching only what the cache does not already settle."""
        out: dict[str, dict] = {}
        todo = []
        for url in dict.fromkeys(urls):
            rec = self._cached(url)
            if rec is None:
                todo.append(url)
            else:
                out[url] = rec
        if not todo:
            return out
        from tqdm.auto import tqdm

        with ThreadPoolExecutor(max_workers=self.workers) as pool, \
                tqdm(total=len(todo), desc=desc, unit="img", disable=not self.progress, leave=False) as bar:
            futures = [pool.submit(self._fetch_one, url) for url in todo]
            for fut in as_completed(futures):
                rec = fut.result()
                out[rec["url"]] = rec
                bar.update(1)
        return out
