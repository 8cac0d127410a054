"""Cover images: concurrent download with timeouts and retries, a content check, and a disk cache keyed by URL.

`index.jsonl` in the cache records every outcome (append-only, so a kill loses at most the downloads in flight).
A rerun fetches nothing that succeeded or failed for good (404, an HTML page, a broken file); only transient
failures (timeouts, connection errors, 5xx) are tried again. `file://` URLs and plain paths are checked, not copied.
"""

from __future__ import annotations

import hashlib
import io
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from urllib.parse import unquote, urlparse

from mmpc_rl.io import append_jsonl, atomic_write_bytes, read_jsonl

USER_AGENT = "mmpc-rl/0.1 (+https://github.com/; image fetch for research)"
TRANSIENT = ("timeout", "connection_error", "http_5xx", "http_429")


class BadImage(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def check_image(data: bytes, min_size: int) -> None:
    """Raise BadImage unless `data` decodes fully to an image at least min_size pixels on each side."""
    from PIL import Image

    if not data:
        raise BadImage("zero_bytes")
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")):
        raise BadImage("html_page")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # decodes every byte: a truncated JPEG fails here, not later in the trainer
            w, h = img.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise BadImage("truncated" if "truncated" in str(e).lower() else "undecodable") from None
    if min(w, h) < min_size:
        raise BadImage("too_small")


def local_path(url: str) -> Path | None:
    if url.startswith("file://"):
        return Path(unquote(urlparse(url).path))
    return Path(url) if "://" not in url else None


class ImageCache:
    def __init__(self, root: str | Path, *, timeout: float = 10.0, retries: int = 3, backoff: float = 0.5,
                 workers: int = 16, min_size: int = 32, progress: bool = True) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.workers, self.min_size, self.progress = workers, min_size, progress
        self.index_path = self.root / "index.jsonl"
        self._lock = threading.Lock()
        self.known: dict[str, dict] = {}
        for rec in read_jsonl(self.index_path, repair=True):
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
            return rec if Path(rec["path"]).is_file() else None
        return None if rec["reason"] in TRANSIENT and url not in self._tried else rec

    def _download(self, url: str) -> bytes:
        req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        last = "connection_error"
        for attempt in range(self.retries):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    with self._lock:
                        self.downloaded += 1
                    if "text/html" in (resp.headers.get("Content-Type") or ""):
                        raise BadImage("html_page")
                    return resp.read()
            except urllib.error.HTTPError as e:
                if e.code == 429 or e.code >= 500:
                    last = "http_5xx" if e.code >= 500 else "http_429"
                    continue
                raise BadImage(f"http_{e.code}") from None
            except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as e:
                reason = getattr(e, "reason", e)
                timed_out = isinstance(reason, TimeoutError) or "timed out" in str(reason)
                last = "timeout" if timed_out else "connection_error"
        raise BadImage(last)

    def _fetch_one(self, url: str) -> dict:
        path = local_path(url)
        try:
            if path is not None:
                if not path.is_file():
                    raise BadImage("missing_file")
                check_image(path.read_bytes(), self.min_size)
            else:
                data = self._download(url)
                check_image(data, self.min_size)
                path = atomic_write_bytes(self.path_for(url), data)
            rec = {"url": url, "ok": True, "path": str(path), "reason": None}
        except BadImage as e:
            rec = {"url": url, "ok": False, "path": None, "reason": e.reason}
        with self._lock:
            append_jsonl(self.index_path, rec)
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
