"""A generated meta file of N lines (realistic shape, ~10% ineligible) and a timed scan: `python -m
mmpc_rl.bench.data_scan [lines] [path]` prints lines/s and the peak RSS of the parse + filter pass."""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

from mmpc_rl.data.reader import Stats, scan_meta

_LINE = ('{{"main_category": "Home & Kitchen", "title": "{title}", "average_rating": 4.3, "rating_number": {n}, '
         '"features": ["Durable stainless steel", "Dishwasher safe"], "description": ["Product Description", '
         '"A sturdy item for every kitchen."], "price": {price}, "images": {images}, "videos": [], '
         '"store": "Acme Home", "categories": ["Home & Kitchen", "Kitchen & Dining"], "details": {{"Brand": '
         '"Acme", "Material": "Steel", "Item Weight": "1.2 pounds"}}, "parent_asin": "B{asin:09d}", '
         '"bought_together": null}}\n')
_IMG = ('[{{"thumb": "https://m.media-amazon.com/images/I/{k}._SS40_.jpg", "large": '
        '"https://m.media-amazon.com/images/I/{k}.jpg", "variant": "MAIN", "hi_res": null}}]')


def generate_meta(path: str | Path, lines: int) -> Path:
    """Every 10th item has a short title and every 10th+5 no image, so 80% are eligible."""
    path = Path(path)
    with open(path, "w", encoding="utf-8", buffering=1 << 20) as f:
        for n in range(lines):
            title = "Mug" if n % 10 == 0 else f"Acme Stainless Steel Travel Mug {n % 977} oz"
            images = "[]" if n % 10 == 5 else _IMG.format(k=f"71{n:08d}L")
            f.write(_LINE.format(title=title, n=n % 5000, price="null" if n % 3 else "19.99", images=images,
                                 asin=n))
    return path


def peak_rss_mb() -> float:
    """This process's own peak RSS. ru_maxrss is not enough: Linux carries the parent's high-water mark across
    fork+exec, so a child of a large process (pytest) would report its parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def bench(path: str | Path) -> dict:

    t0, cpu0 = time.perf_counter(), time.process_time()
    stats = Stats()
    eligible = scan_meta(Path(path), stats, progress=False)
    dt, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    rss_mb = peak_rss_mb()
    lines = stats.counts["lines_read"]
    return {"lines": lines, "eligible": len(eligible), "seconds": round(dt, 2),
            "lines_per_s": round(lines / dt), "cpu_lines_per_s": round(lines / cpu), "peak_rss_mb": round(rss_mb)}


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    p = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("/tmp/mmpc_meta_bench.jsonl")
    if not p.exists():
        generate_meta(p, n)
    print(bench(p))
