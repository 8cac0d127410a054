"""Counted skips at training time: rows whose image does not decode leave the dataset with a record of why."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

from mmpc_rl.data.images import verify_image
from mmpc_rl.errors import DataError
from mmpc_rl.io import atomic_write_text


def drop_undecodable_images(ds, output_dir: str | Path | None = None, column: str = "image"):
    """Rows whose image file does not decode are dropped and counted (stdout + output_dir/skips.json): TRL would
    otherwise stop the run mid-epoch with a PIL error from inside `datasets`."""
    from datasets import Image as ImageFeature  # `datasets` only where a Dataset exists already

    if column not in ds.column_names:
        return ds
    paths = ds.cast_column(column, ImageFeature(decode=False))[column]
    bad = []
    for i, p in enumerate(paths):
        try:
            src = p.get("path") or io.BytesIO(p.get("bytes") or b"")
            verify_image(src)  # the shared check: decodes, and refuses a pixel bomb before decoding it
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            bad.append((i, f"{p.get('path')}: {getattr(e, 'reason', type(e).__name__)}"))
    if not bad:
        return ds
    if len(bad) == len(paths):
        raise DataError(f"none of the {len(paths)} images decodes (e.g. {bad[0][1]}); rebuild the data")
    print(f"mmpc-rl: skipped {len(bad)} of {len(paths)} rows whose image does not decode (e.g. {bad[0][1]})")
    if output_dir is not None:
        atomic_write_text(Path(output_dir) / "skips.json", json.dumps(
            {"undecodable_image": {"count": len(bad), "examples": [b[1] for b in bad[:10]]}}, indent=2) + "\n")
    drop = {i for i, _ in bad}
    return ds.select([i for i in range(len(paths)) if i not in drop])
