"""Training callbacks that keep a run's record on disk whatever the logger, and survive a kill and a resume:
metrics.jsonl (one line per log), the completions table with images, CQBench numbers in the summary, checkpoints
with nothing pickled beyond what the HF Trainer needs to resume, and the end of the run (final adapter, curves, W&B
closed). Also the W&B run itself.

With W&B (`trainer.report_to=[wandb]`; `WANDB_MODE=offline` works without network) the run gets the recipe's
project/name/tags/entity, the resolved recipe (secrets scrubbed) as its config, every curve TRL logs
(`rewards/<name>/mean|std`, `reward`, `kl`, `completions/*`, `frac_reward_zero_std`, `step_time`) plus
`timing/reward/<name>`, a `completions_table` with images every `wandb.log_completions_every` steps, and the CQBench
numbers in its summary. Without W&B the same curves are in `output_dir/metrics.jsonl` and `reward_curves.png`, and the
tables in `output_dir/completions/step_NNNNN.jsonl` (images as PNG files beside them).

Why not TRL's own table: with image prompts TRL 1.16 hands wandb.Table a prompt column whose cells are lists that
mix `{"type": "image"}` and `{"type": "text", ...}` dicts, and wandb stops the run with `TypeError: Data row contained
incompatible types`. Our table is built from what the rewards see (flat text, numbers, images), so every column has
one type. `prepare_args` turns TRL's table off when it would crash.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from PIL import Image
from transformers import TrainerCallback

from mmpc_rl.config import Recipe
from mmpc_rl.errors import ConfigError
from mmpc_rl.io import append_jsonl, atomic_write_bytes, atomic_write_jsonl, atomic_write_text, read_jsonl
from mmpc_rl.render import to_pil
from mmpc_rl.tracking import active_wandb
from mmpc_rl.train.curves import plot_curves
from mmpc_rl.train.run_config import scrub, scrub_argv

RUN_ID_FILE = "wandb_run_id.txt"
TABLE_KEY = "completions_table"

SUMMARY_PREFIXES = ("cqbench",)  # logged keys that are end-of-run numbers: they also go to the W&B run summary


def _truncate_jsonl(path: Path, last_step: int) -> None:
    """Keep the records up to `last_step`: after a resume from checkpoint-N the steps past N are trained (and
    logged) again, and would otherwise appear twice. A torn last line from the kill goes too."""
    if not path.exists():
        return
    # a run that starts again from step 0 (no checkpoint yet) logs everything again, CQBench's "before" included
    keep = [r for r in read_jsonl(path) if r.get("step", 0) <= last_step] if last_step > 0 else []
    atomic_write_jsonl(path, keep)


class MetricsLogger(TrainerCallback):
    """Appends every `trainer.log` call (rewards, KL, lengths, timings, CQBench numbers) to output_dir/metrics.jsonl,
    on the main process only. Each line is fsynced, so a killed run keeps every step it logged."""

    def __init__(self, output_dir: str | Path, filename: str = "metrics.jsonl"):
        self.path = Path(output_dir) / filename
        self._t0 = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._t0 = time.time()
        if state.is_world_process_zero:  # a resume trains the steps past its checkpoint again (from 0: all of them)
            _truncate_jsonl(self.path, state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch, "time": round(time.time() - (self._t0 or 0), 3)}
        record.update(finite_record(logs))
        append_jsonl(self.path, record)
        summary = {k: v for k, v in record.items() if k.startswith(SUMMARY_PREFIXES)}
        if summary:
            log_summary(summary, self.path.parent)


def finite_record(logs: dict) -> dict:
    """Logged numbers and strings as strict JSON. A non-finite number (NaN/Infinity are not JSON) is kept, not
    dropped: its key holds null and `nonfinite` maps the key to "nan", "inf" or "-inf"."""
    record, bad = {}, {}
    for k, v in logs.items():
        if v is None or isinstance(v, bool) or isinstance(v, str):  # None: TRL's mean of a batch with no value
            record[k] = v
        elif isinstance(v, (int, float)):
            if math.isfinite(v):
                record[k] = v
            else:
                record[k], bad[k] = None, "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if bad:
        record["nonfinite"] = bad
    return record


class StopOnNonFinite(TrainerCallback):
    """A loss or gradient norm that is NaN/inf never recovers: the run stops there with one line naming the step
    (exit 2), before the all-NaN adapter is checkpointed or saved as the result."""

    KEYS = ("loss", "grad_norm")

    def on_log(self, args, state, control, logs=None, **kwargs):
        bad = {k: logs[k] for k in self.KEYS if isinstance((logs or {}).get(k), (int, float))
               and not math.isfinite(logs[k])}
        if bad:
            values = ", ".join(f"{k}={v}" for k, v in bad.items())
            raise ConfigError(f"training diverged at step {state.global_step}: {values}; nothing after the last "
                              "checkpoint was saved (lower trainer.learning_rate, or check the rewards)")


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
        if state.is_world_process_zero and self.dir.is_dir():
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
        wandb = active_wandb()  # optional: the table is on disk without it
        if wandb is not None:
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
    if isinstance(value, Image.Image):
        return [value]
    if isinstance(value, list):
        return [v if isinstance(v, Image.Image) else to_pil(v) for v in value
                if isinstance(v, Image.Image) or getattr(v, "ndim", 0) == 3]
    if isinstance(value, str):
        try:
            with Image.open(value) as im:
                return [im.convert("RGB")]
        except OSError:  # an undecodable file shows as an empty cell, never a crash in logging
            return []
    return []


def _wandb_image(wandb, imgs: list):
    # One image per cell keeps the column a single type (wandb.Image); several renders are tiled side by side.
    if not imgs:
        return None
    if len(imgs) == 1:
        return wandb.Image(imgs[0])
    h = max(i.height for i in imgs)
    canvas = Image.new("RGB", (sum(i.width for i in imgs), h), "white")
    x = 0
    for im in imgs:
        canvas.paste(im.convert("RGB"), (x, 0))
        x += im.width
    return wandb.Image(canvas)


class SafeCheckpoints(TrainerCallback):
    """The HF Trainer pickles TrainingArguments into training_args.bin (loading it needs weights_only=False, i.e.
    arbitrary code); resuming never reads it. `no_pickled_args` keeps the trainer from ever writing it; this callback
    removes one that another code path (a checkpoint of an older run) left behind."""

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


def no_pickled_args(trainer):
    """Make the JSON copy of the arguments part of every save (checkpoints and the final adapter): `Trainer._save`
    ends with `torch.save(self.args, .../training_args.bin)`; here training_args.json is written first and that one
    `torch.save` of the args object is skipped, so no instant exists at which a kill leaves a pickle behind (replacing
    it afterwards, in on_save, left one in every checkpoint a kill hit between the save and the callback)."""
    import torch

    original = trainer._save

    def _save(output_dir=None, state_dict=None):
        folder = Path(output_dir if output_dir is not None else trainer.args.output_dir)
        if trainer.args.should_save:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(folder / "training_args.json", trainer.args.to_json_string())
        real_save = torch.save

        def save(obj, f, *a, **k):
            if obj is trainer.args:  # the args pickle only: weights, optimizer and RNG states go through
                return None
            return real_save(obj, f, *a, **k)

        torch.save = save
        try:
            return original(output_dir, state_dict=state_dict)
        finally:
            torch.save = real_save

    trainer._save = _save
    return trainer


class RunEnd(TrainerCallback):
    """The end of a run, after every other callback's `on_train_end` (put it last; CQBench's "after" pass logs
    there): the final adapter and processor saved (every rank: ZeRO-3 gathers), then on the main process the pickled
    training_args.bin replaced by JSON, reward_curves.png drawn, the model card (README.md) written and
    trainer_state.json written last (a resume reads the run as finished only with it: train.resume.final_problem),
    then with `trainer.push_to_hub=true` the folder pushed through the Trainer's own `push_to_hub` (card included),
    the W&B run closed and the folder's lock released."""

    def __init__(self, trainer=None):
        self.trainer = trainer
        self.lock = None

    def bind(self, trainer, lock=None) -> RunEnd:
        self.trainer, self.lock = trainer, lock
        return self

    def on_train_end(self, args, state, control, **kwargs):
        if self.trainer is None:
            raise RuntimeError("RunEnd must be bound to its trainer (RunEnd().bind(trainer))")
        # adapter (safetensors) + processor; not pushed yet: the hub gets the folder once the card is written
        self.trainer.save_model(args.output_dir, _internal_call=True)
        out, png = Path(args.output_dir), None
        if state.is_world_process_zero:
            replace_pickled_args(out, args)
            png = plot_curves(out)
            self.trainer.create_model_card()  # train.card: ours, from what the run left on disk
            # the state beside the final adapter, last: a later resume of this output_dir sees the run finished only
            # with it (train.resume.final_problem)
            atomic_write_text(out / "trainer_state.json", json.dumps(dataclasses.asdict(state), indent=2) + "\n")
        if args.push_to_hub:
            self.trainer.push_to_hub(commit_message="End of training")  # every rank: it saves (ZeRO-3 gathers)
        if not state.is_world_process_zero:
            return
        wandb = active_wandb()  # only runs that report to W&B have a run to close
        if wandb is not None:
            if png is not None:
                wandb.log({"reward_curves": wandb.Image(str(png))})
            wandb.finish()
        if self.lock is not None:
            self.lock.release()
            self.lock = None


# --------------------------------------------------------------------------------------------------------- W&B run
def wants_wandb(report_to: Any) -> bool:
    return report_to is not None and "wandb" in (report_to if isinstance(report_to, (list, tuple)) else [report_to])


def prepare_args(args, task) -> None:
    """Turn TRL's completions table off where it crashes (W&B + image prompts); ours replaces it."""
    if args.log_completions and wants_wandb(args.report_to) and task.uses_image_input:
        print("mmpc-rl: TRL's completions table crashes W&B with image prompts; logging mmpc-rl's "
              f"'{TABLE_KEY}' (with images) instead")
        args.log_completions = False


def init_wandb(recipe: Recipe, args):
    """Start (or, on resume, continue) the W&B run with the recipe's settings. Credentials come only from the
    environment (WANDB_API_KEY / `wandb login`); nothing secret is passed or saved here."""
    if not wants_wandb(args.report_to) or args.process_index != 0:
        return None
    import wandb  # optional at run time: only a run that reports to W&B imports it

    wb = recipe.wandb
    out = Path(args.output_dir)
    id_file = out / RUN_ID_FILE
    run_id = id_file.read_text().strip() if id_file.is_file() else None
    os.environ.setdefault("WANDB_PROJECT", wb.project)  # HF's WandbCallback reads it if it ever inits itself
    if active_wandb() is not None:
        wandb.finish()
    # W&B records the command line (sys.argv) in the run's metadata: `trainer.hub_token=...` given there would be
    # stored verbatim, so the run starts with the secrets in it redacted, as in config.yaml.
    argv = sys.argv
    sys.argv = [*argv[:1], *scrub_argv(argv[1:])]
    try:
        run = wandb.init(project=wb.project, entity=wb.entity, name=wb.name or args.run_name or out.name,
                         tags=list(dict.fromkeys([*wb.tags, recipe.task])), id=run_id,
                         dir=os.environ.get("WANDB_DIR") or str(out),  # the user's WANDB_DIR wins when set
                         resume="allow" if run_id else None, config={"recipe": scrub(recipe.to_dict())})
    except wandb.errors.Error as e:  # no API key, bad entity, server refused...
        raise ConfigError(f"W&B: {str(e).splitlines()[0]} (set WANDB_API_KEY or run `wandb login`; "
                          "WANDB_MODE=offline logs locally; or trainer.report_to=none)") from None
    finally:
        sys.argv = argv
    if run is not None and run_id is None and run.id:
        atomic_write_text(id_file, run.id + "\n")
    return run


def log_summary(values: dict[str, float], output_dir: str | Path | None = None) -> None:
    """Put final numbers (e.g. CQBench before/after) in the W&B run summary and in output_dir/summary.json."""
    if output_dir is not None:
        path = Path(output_dir) / "summary.json"
        old = json.loads(path.read_text()) if path.is_file() else {}
        atomic_write_text(path, json.dumps({**old, **values}, indent=2) + "\n")
    wandb = active_wandb()  # optional: the summary file above is the record without it
    if wandb is not None:
        for k, v in values.items():
            wandb.run.summary[k] = v
