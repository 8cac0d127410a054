"""Counted skips when a dataset is loaded: rows whose image the policy cannot be given leave with a record of why.

The test is the build's (mmpc_rl.data.images): a regular file that decodes, within the pixel cap, of a size the
policy's image processor takes. TRL would otherwise stop the run mid-epoch (and again after a resume) when the row
is sampled: a PIL error from inside `datasets`, or the processor's "absolute aspect ratio must be smaller than 200".
"""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

from PIL import Image

from mmpc_rl.data.images import usable_image
from mmpc_rl.errors import DataError
from mmpc_rl.io import atomic_write_text

SKIP_KEY = "unusable_image"  # the key in output_dir/skips.json


def image_problem(src, *, policy: bool = True, decode: bool = True) -> str | None:
    """Why an image (a path or a file object) cannot be used, or None. `policy`: the policy's processor will read
    it (i2t), so its size must fit too; else it is only opened (a t2i reference image)."""
    try:
        usable_image(src, fit=policy, decode=decode)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        return getattr(e, "reason", type(e).__name__)
    return None


def _report(bad: list[tuple[int, str, str]], total: int, what: str, output_dir: str | Path | None) -> None:
    reasons = Counter(reason for _, reason, _ in bad)
    print(f"mmpc-rl: skipped {len(bad)} of {total} {what} whose image cannot be used "
          f"({', '.join(f'{r}: {n}' for r, n in reasons.most_common())}; e.g. {bad[0][2]}: {bad[0][1]})")
    if output_dir is not None:
        record = {"count": len(bad), "reasons": dict(reasons), "examples": [f"{p}: {r}" for _, r, p in bad[:10]]}
        atomic_write_text(Path(output_dir) / "skips.json", json.dumps({SKIP_KEY: record}, indent=2) + "\n")


def drop_unusable_images(ds, output_dir: str | Path | None = None):
    """The dataset without the rows whose `image` (the policy's input) or `reference_image` (t2i: opened by the
    reward) cannot be used; the rows dropped are counted on stdout and in output_dir/skips.json."""
    from datasets import Image as ImageFeature  # `datasets` only where a Dataset exists already

    bad: list[tuple[int, str, str]] = []
    for column, policy in (("image", True), ("reference_image", False)):
        if column not in ds.column_names:
            continue
        values = ds.cast_column(column, ImageFeature(decode=False))[column] if policy else ds[column]
        for i, v in enumerate(values):
            path = v.get("path") if isinstance(v, dict) else v
            src = path or io.BytesIO((v.get("bytes") if isinstance(v, dict) else None) or b"")
            problem = image_problem(src, policy=policy)
            if problem:
                bad.append((i, problem, str(path)))
    if not bad:
        return ds
    drop = {i for i, _, _ in bad}
    if len(drop) == len(ds):
        raise DataError(f"none of the {len(ds)} rows has an image that can be used (e.g. {bad[0][2]}: {bad[0][1]}); "
                        "rebuild the data")
    _report(bad, len(ds), "rows", output_dir)
    return ds.select([i for i in range(len(ds)) if i not in drop])


def usable_items(items: list[dict], *, policy: bool) -> list[dict]:
    """Items whose image can be used (header checks only: a benchmark pass reads each image once anyway); the
    rest are counted on stdout."""
    bad, kept = [], []
    for i, it in enumerate(items):
        problem = image_problem(it["image"], policy=policy, decode=False) if it.get("image") else None
        if problem:
            bad.append((i, problem, str(it["image"])))
        else:
            kept.append(it)
    if bad:
        _report(bad, len(items), "items", None)
    return kept
