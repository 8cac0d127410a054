"""Training callbacks that keep a run's record on disk whatever the logger, and survive a kill and a resume:
metrics.jsonl (one line per log), the completions table with images, CQBench numbers in the summary, and
checkpoints with nothing pickled beyond what the HF Trainer needs to resume."""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

from transformers import TrainerCallback

from mmpc_rl.io import append_jsonl, atomic_write_bytes, atomic_write_jsonl, atomic_write_text, read_jsonl
from mmpc_rl.monitoring import TABLE_KEY, log_summary

SUMMARY_PREFIXES = ("cqbench",)  # logged keys that are end-of-run numbers: they also go to the W&B run summary


def _truncate_jsonl(path: Path, last_step: int) -> None:
    """Keep the records up to `last_step`: after a resume from checkpoint-N the steps past N are trained (and
    logged) again, and would otherwise appear twice. A torn last line from the kill goes too."""
    if not path.exists():
        return
    keep = [r for r in read_jsonl(path) if r.get("step", 0) <= last_step]
    atomic_write_jsonl(path, keep)


class MetricsLogger(TrainerCallback):
    """Appends every `trainer.log` call (rewards, KL, lengths, timings, CQBench numbers) to output_dir/metrics.jsonl,
    on the main process only. Each line is fsynced, so a killed run keeps every step it logged."""

    def __init__(self, output_dir: str | Path, filename: str = "metrics.jsonl"):
        self.path = Path(output_dir) / filename
        self._t0 = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._t0 = time.time()
        if state.is_world_process_zero and state.global_step > 0:
            _truncate_jsonl(self.path, state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch, "time": round(time.time() - (self._t0 or 0), 3)}
        for k, v in logs.items():
            if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
                record[k] = v
            elif isinstance(v, str):
                record[k] = v
        append_jsonl(self.path, record)
        summary = {k: v for k, v in record.items() if k.startswith(SUMMARY_PREFIXES)}
        if summary:
            log_summary(summary, self.path.parent)


class CompletionsTable(TrainerCallback):
    """Every `every` steps (and at the last step): the latest generation batch as a table: prompt, completion,
    data columns, each reward, and images (the input image for i2t, renders for t2i). Written to
    output_dir/completions/step_NNNNN.jsonl (+ PNGs) and, when a W&B run is active, logged as a wandb.Table."""

    def __init__(self, output_dir: str | Path, recorder, every: int = 10, max_rows: int = 16):
        self.dir = Path(output_dir) / "completions"
        self.recorder = recorder
        self.every = max(1, int(every))
        self.max_rows = max_rows
        self._done: set[int] = set()

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and state.global_step > 0 and self.dir.is_dir():
            for f in self.dir.glob("step_*"):  # tables from steps the resumed run will train again
                if f.name[5:10].isdigit() and int(f.name[5:10]) > state.global_step:
                    f.unlink()

    def on_log(self, args, state, control, logs=None, **kwargs):
        step = state.global_step
        due = step % self.every == 0 or step == state.max_steps or step == 1
        if not state.is_world_process_zero or not due or step in self._done or self.recorder.batch is None:
            return
        self._done.add(step)
        columns, rows = self.rows(step)
        self.write(step, columns, rows)

    def rows(self, step: int) -> tuple[list[str], list[list]]:
        b = self.recorder.batch
        data_cols, img_cols, rew_cols = sorted(b["columns"]), sorted(b["images"]), list(b["rewards"])
        columns = ["step", "prompt", "completion", *rew_cols, *data_cols, *img_cols]
        rows = []
        for i in range(min(len(b["completion"]), self.max_rows)):
            rows.append([step, b["prompt"][i] if i < len(b["prompt"]) else "", b["completion"][i],
                         *[b["rewards"][c][i] for c in rew_cols],
                         *["" if b["columns"][c][i] is None else str(b["columns"][c][i]) for c in data_cols],
                         *[_images_of(b["images"][c][i]) for c in img_cols]])
        return columns, rows

    def write(self, step: int, columns: list[str], rows: list[list]) -> None:
        import io

        n_img = sum(1 for c in columns if c in self.recorder.batch["images"])
        first_img = len(columns) - n_img
        disk_rows = []
        for r, row in enumerate(rows):
            rec = dict(zip(columns[:first_img], row[:first_img], strict=True))
            for c, imgs in zip(columns[first_img:], row[first_img:], strict=True):
                paths = []
                for k, img in enumerate(imgs):
                    buf = io.BytesIO()
                    img.convert("RGB").save(buf, format="PNG")
                    name = f"step_{step:05d}_r{r:02d}_{c}_{k}.png"
                    atomic_write_bytes(self.dir / "images" / name, buf.getvalue())
                    paths.append(f"images/{name}")
                rec[c] = paths
            disk_rows.append(rec)
        atomic_write_jsonl(self.dir / f"step_{step:05d}.jsonl", disk_rows)
        try:
            import wandb
        except ImportError:
            return
        if wandb.run is not None:
            data = [[*row[:first_img], *[_wandb_image(wandb, imgs) for imgs in row[first_img:]]] for row in rows]
            wandb.log({TABLE_KEY: wandb.Table(columns=columns, data=data), "train/global_step": step})
            # W&B keeps a table's images in a run artifact (outside the run folder when offline); a copy of our
            # self-contained table in the run's files makes `wandb sync` and a look at the folder show them too.
            dest = Path(wandb.run.dir) / "completions"
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(self.dir / f"step_{step:05d}.jsonl", dest / f"step_{step:05d}.jsonl")
            for rec in disk_rows:
                for c in columns[first_img:]:
                    for rel in rec[c]:
                        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(self.dir / rel, dest / rel)


def _images_of(value) -> list:
    """PIL images for a table cell: a PIL image, a list of them, or an image file path."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return [value]
    if isinstance(value, list):
        return [v if isinstance(v, Image.Image) else _tensor_to_pil(v) for v in value
                if isinstance(v, Image.Image) or getattr(v, "ndim", 0) == 3]
    if isinstance(value, str):
        try:
            with Image.open(value) as im:
                return [im.convert("RGB")]
        except OSError:  # an undecodable file shows as an empty cell, never a crash in logging
            return []
    return []


def _tensor_to_pil(t):
    """A CHW float tensor in [0, 1] (a diffusers "pt" render) as a PIL image."""
    import numpy as np
    from PIL import Image

    arr = (t.detach().float().clamp(0, 1).cpu().permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(arr)


def _wandb_image(wandb, imgs: list):
    # One image per cell keeps the column a single type (wandb.Image); several renders are tiled side by side.
    if not imgs:
        return None
    if len(imgs) == 1:
        return wandb.Image(imgs[0])
    from PIL import Image

    h = max(i.height for i in imgs)
    canvas = Image.new("RGB", (sum(i.width for i in imgs), h), "white")
    x = 0
    for im in imgs:
        canvas.paste(im.convert("RGB"), (x, 0))
        x += im.width
    return wandb.Image(canvas)


class SafeCheckpoints(TrainerCallback):
    """The HF Trainer pickles TrainingArguments into training_args.bin (loading it needs weights_only=False, i.e.
    arbitrary code); resuming never reads it. Replace it by a JSON copy (`to_json_string` redacts *_token fields)."""

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            replace_pickled_args(ckpt, args)


def replace_pickled_args(folder: str | Path, args) -> None:
    folder = Path(folder)
    if not folder.is_dir():
        return
    atomic_write_text(folder / "training_args.json", args.to_json_string())
    (folder / "training_args.bin").unlink(missing_ok=True)

