"""W&B monitoring and the on-disk record of a run: reward curves, per-reward timings, a completions table with images.

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

Hook for rewards that render images (text->image): call `log_images("render", images)` inside the reward, one PIL
image (or a list of them) per completion; they become an image column of the table.
"""

from __future__ import annotations

import inspect
import io
import os
import threading
import time
from pathlib import Path
from typing import Any

from mmpc_rl.io import atomic_write_text

RUN_ID_FILE = "wandb_run_id.txt"
TABLE_KEY = "completions_table"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")

_pending_images: dict[str, list] = {}
_lock = threading.Lock()


def log_images(column: str, images: list) -> None:
    """Called by a reward: one image (or list of images) per completion for the completions table's `column`."""
    with _lock:
        _pending_images[column] = list(images)


def _take_images() -> dict[str, list]:
    with _lock:
        out = dict(_pending_images)
        _pending_images.clear()
    return out


def wants_wandb(report_to: Any) -> bool:
    return report_to is not None and "wandb" in (report_to if isinstance(report_to, (list, tuple)) else [report_to])


# --------------------------------------------------------------------------------------------------------- W&B run
def prepare_args(args, task) -> None:
    """Turn TRL's completions table off where it crashes (W&B + image prompts); ours replaces it."""
    if args.log_completions and wants_wandb(args.report_to) and task.uses_image_input:
        print("mmpc-rl: TRL's completions table crashes W&B with image prompts; logging mmpc-rl's "
              f"'{TABLE_KEY}' (with images) instead")
        args.log_completions = False


def init_wandb(cfg, args):
    """Start (or, on resume, continue) the W&B run with the recipe's settings. Credentials come only from the
    environment (WANDB_API_KEY / `wandb login`); nothing secret is passed or saved here."""
    if not wants_wandb(args.report_to) or args.process_index != 0:
        return None
    import wandb

    from mmpc_rl.config import scrub, section, to_dict
    from mmpc_rl.errors import ConfigError

    wb = section(cfg, "wandb")
    out = Path(args.output_dir)
    id_file = out / RUN_ID_FILE
    run_id = id_file.read_text().strip() if id_file.is_file() else None
    os.environ.setdefault("WANDB_PROJECT", wb.project)  # HF's WandbCallback reads it if it ever inits itself
    if wandb.run is not None:
        wandb.finish()
    try:
        run = wandb.init(project=wb.project, entity=wb.entity, name=wb.name or args.run_name or out.name,
                         tags=list(dict.fromkeys([*wb.tags, str(cfg.task)])), dir=str(out), id=run_id,
                         resume="allow" if run_id else None, config={"recipe": scrub(to_dict(cfg))})
    except wandb.errors.Error as e:  # no API key, bad entity, server refused...
        raise ConfigError(f"W&B: {str(e).splitlines()[0]} (set WANDB_API_KEY or run `wandb login`; "
                          "WANDB_MODE=offline logs locally; or trainer.report_to=none)") from None
    if run is not None and run_id is None and run.id:
        atomic_write_text(id_file, run.id + "\n")
    return run


def log_summary(values: dict[str, float], output_dir: str | Path | None = None) -> None:
    """Put final numbers (e.g. CQBench before/after) in the W&B run summary and in output_dir/summary.json."""
    import json

    if output_dir is not None:
        path = Path(output_dir) / "summary.json"
        old = json.loads(path.read_text()) if path.is_file() else {}
        atomic_write_text(path, json.dumps({**old, **values}, indent=2) + "\n")
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is not None:
        for k, v in values.items():
            wandb.run.summary[k] = v


def finish(trainer) -> None:
    """End of a run (main process): reward_curves.png, the pickled training_args.bin replaced by JSON, W&B closed."""
    if not trainer.is_world_process_zero():
        return
    from mmpc_rl.callbacks import replace_pickled_args

    out = Path(trainer.args.output_dir)
    replace_pickled_args(out, trainer.args)
    png = plot_curves(out)
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is not None:
        if png is not None:
            wandb.log({"reward_curves": wandb.Image(str(png))})
        wandb.finish()


# --------------------------------------------------------------------------------------------------- counted skips
def drop_undecodable_images(ds, output_dir: str | Path | None = None, column: str = "image"):
    """Rows whose image file does not decode are dropped and counted (stdout + output_dir/skips.json): TRL would
    otherwise stop the run mid-epoch with a PIL error from inside `datasets`."""
    from datasets import Image as ImageFeature
    from PIL import Image

    from mmpc_rl.data.images import verify_image

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
        from mmpc_rl.errors import DataError

        raise DataError(f"none of the {len(paths)} images decodes (e.g. {bad[0][1]}); rebuild the data")
    print(f"mmpc-rl: skipped {len(bad)} of {len(paths)} rows whose image does not decode (e.g. {bad[0][1]})")
    if output_dir is not None:
        import json

        atomic_write_text(Path(output_dir) / "skips.json", json.dumps(
            {"undecodable_image": {"count": len(bad), "examples": [b[1] for b in bad[:10]]}}, indent=2) + "\n")
    drop = {i for i, _ in bad}
    return ds.select([i for i in range(len(paths)) if i not in drop])


# ------------------------------------------------------------------------------------------------ reward wrapping
def _text(x: Any) -> str:
    from mmpc_rl.tasks import completion_text

    if isinstance(x, list) and x and isinstance(x[0], dict) and "role" in x[0]:
        parts = []
        for msg in x:
            content = msg.get("content")
            if isinstance(content, list):
                content = " ".join("<image>" if c.get("type") == "image" else str(c.get("text") or "")
                                   for c in content if isinstance(c, dict))
            parts.append(str(content or ""))
        return "\n".join(parts)
    return completion_text(x)


def _is_image(v: Any) -> bool:
    from PIL import Image

    if isinstance(v, Image.Image):
        return True
    if isinstance(v, list) and v and all(isinstance(i, Image.Image) or hasattr(i, "ndim") for i in v):
        return True
    return isinstance(v, str) and v.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(v)


class CompletionRecorder:
    """The latest generation batch as the rewards saw it: prompt, completion, columns, per-reward scores, images."""

    def __init__(self):
        self.batch: dict | None = None
        self._key = None

    def record(self, name: str, step: int, prompts, completions, columns: dict, scores, images: dict) -> None:
        key = id(completions)  # every reward of one batch gets the same list object
        if key != self._key or self.batch is None:
            self._key = key
            self.batch = {"step": step, "prompt": [_text(p) for p in prompts or []],
                          "completion": [_text(c) for c in completions], "columns": {}, "images": {}, "rewards": {}}
        n = len(completions)
        for col, vals in columns.items():
            if isinstance(vals, list) and len(vals) == n and col not in self.batch["columns"]:
                if any(_is_image(v) for v in vals):
                    self.batch["images"][col] = vals
                elif all(v is None or isinstance(v, (str, int, float, bool)) for v in vals):
                    self.batch["columns"][col] = vals
        for col, vals in images.items():
            if len(vals) == n:
                self.batch["images"][col] = vals
        self.batch["rewards"][name] = [None if s is None else float(s) for s in scores]


def _renders_of(reward, n: int) -> dict[str, list]:
    """Renders a text->image reward kept from its last call (`last = {"renders", "job_of"}`, as sd35_clip does):
    per completion, its images (PIL or CHW tensors; converted only when a table is written)."""
    last = getattr(getattr(reward, "fn", reward), "last", None)
    if not isinstance(last, dict) or "renders" not in last or len(last.get("job_of") or []) != n:
        return {}
    renders = last["renders"]
    return {"render": [[renders[j] for j in jobs] for jobs in last["job_of"]]}


def instrument_rewards(rewards: list, recorder: CompletionRecorder | None = None) -> list:
    """Wrap rewards so each logs its time (`timing/reward/<name>`, through TRL's `log_metric`) and feeds the table."""
    return [_wrap(r, recorder) for r in rewards]


def _wrap(reward, recorder):
    name = getattr(reward, "__name__", type(reward).__name__)
    is_async = inspect.iscoroutinefunction(reward) or inspect.iscoroutinefunction(type(reward).__call__)

    def after(t0, kwargs, prompts, completions, scores):
        if kwargs.get("log_metric") is not None:
            kwargs["log_metric"](f"timing/reward/{name}", time.perf_counter() - t0)
        images = {**_renders_of(reward, len(completions or [])), **_take_images()}
        if recorder is not None:
            state = kwargs.get("trainer_state")
            columns = {k: v for k, v in kwargs.items() if k not in ("trainer_state", "log_extra", "log_metric")}
            recorder.record(name, getattr(state, "global_step", 0), prompts, completions, columns, scores, images)
        return scores

    if is_async:
        async def timed(prompts=None, completions=None, completion_ids=None, **kwargs):
            t0 = time.perf_counter()
            scores = await reward(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)
            return after(t0, kwargs, prompts, completions, scores)
    else:
        def timed(prompts=None, completions=None, completion_ids=None, **kwargs):
            t0 = time.perf_counter()
            scores = reward(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)
            return after(t0, kwargs, prompts, completions, scores)
    timed.__name__ = name  # TRL names the curves rewards/<__name__>/mean
    timed.__wrapped__ = reward
    return timed


# ---------------------------------------------------------------------------------------------------- curves plot
CURVE_GROUPS = (
    ("reward", ("reward", "rewards/")),
    ("kl", ("kl",)),
    ("completion length", ("completions/mean_length",)),
    ("frac_reward_zero_std", ("frac_reward_zero_std",)),
    ("step time (s)", ("step_time",)),
    ("reward time (s)", ("timing/reward/",)),
)


def plot_curves(output_dir: str | Path, filename: str = "reward_curves.png") -> Path | None:
    """reward_curves.png from metrics.jsonl: total reward and each term, KL, length, zero-std fraction, timings."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mmpc_rl.io import atomic_write_bytes, read_jsonl

    out = Path(output_dir)
    recs = [r for r in read_jsonl(out / "metrics.jsonl") if "reward" in r or "loss" in r]
    if not recs:
        return None
    keys = sorted({k for r in recs for k in r})
    panels = [(title, [k for k in keys if any(k == p or (p.endswith("/") and k.startswith(p)) for p in pre)
                       and not k.endswith("/std")]) for title, pre in CURVE_GROUPS]
    panels = [(t, ks) for t, ks in panels if ks]
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.2 * len(panels)), sharex=True, squeeze=False)
    for ax, (title, ks) in zip(axes[:, 0], panels, strict=True):
        for k in ks:
            pts = [(r["step"], r[k]) for r in recs if isinstance(r.get(k), (int, float))]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=k)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, loc="best")
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return atomic_write_bytes(out / filename, buf.getvalue())


def main(argv: list[str]) -> int:
    """`python -m mmpc_rl.monitoring out=DIR`: (re)draw DIR/reward_curves.png from DIR/metrics.jsonl."""
    from mmpc_rl.errors import ConfigError

    opts = dict(a.split("=", 1) for a in argv if "=" in a)
    if set(opts) != {"out"} or len(argv) != 1:
        raise ConfigError("usage: out=OUTPUT_DIR (a run's trainer.output_dir); valid keys: out")
    path = plot_curves(opts["out"])
    if path is None:
        raise ConfigError(f"no training records in {opts['out']}/metrics.jsonl")
    print(f"mmpc-rl: wrote {path}")
    return 0


if __name__ == "__main__":
    import sys

    from mmpc_rl.errors import run_cli

    sys.exit(run_cli(lambda: main(sys.argv[1:])))
