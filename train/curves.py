"""reward_curves.png from a run's metrics.jsonl, and `mmpc-rl curves out=DIR` to redraw it.

Each training panel shows a curve's logged points faint and, over them, their running mean (SMOOTH_FRACTION of the
run's steps, centred): one GRPO step scores one group of prompts, so the raw total reward jumps with the prompt and
hides a rise that the mean shows. The reward panel also marks the mean of the first and of the last quarter of the
steps (the numbers the README and tests/test_demo.py quote). Beside it, the CQBench gold curve (held-out items,
before training to after). Legends sit to the right of the panels, clear of the data.
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from mmpc_rl.errors import ConfigError, run_cli
from mmpc_rl.io import atomic_write_bytes, read_jsonl
from mmpc_rl.options import parse_options

# (panel title, y-axis label, metric keys or prefixes ending in "/")
CURVE_GROUPS = (
    ("reward", "reward", ("reward", "rewards/")),
    ("kl", "KL to the reference", ("kl",)),
    ("completion length", "tokens", ("completions/mean_length",)),
    ("frac_reward_zero_std", "fraction of groups", ("frac_reward_zero_std",)),
    ("format failures", "share of completions", ("completions/format_fail_rate",)),
    ("step time", "seconds", ("step_time",)),
    ("reward time", "seconds", ("timing/reward/",)),
)
SMOOTH_FRACTION = 1 / 6  # the running mean spans this share of the steps (at least 3)
TOTAL = "reward"
GOLD = "cqbench/gold/"
GOLD_TITLE = "CQBench on held-out items (gold): step 0 = before training, last point = after"


def quarter_means(values: list[float]) -> tuple[float, float]:
    """Mean of the first and of the last quarter of `values` (at least one value each)."""
    q = max(len(values) // 4, 1)
    return sum(values[:q]) / q, sum(values[-q:]) / q


def running_mean(values: list[float], window: int) -> list[float]:
    """Centred running mean over `window` points (fewer at the ends)."""
    half = window // 2
    out = []
    for i in range(len(values)):
        part = values[max(0, i - half): i + half + 1]
        out.append(sum(part) / len(part))
    return out


def smoothing_window(n: int) -> int:
    return max(3, round(n * SMOOTH_FRACTION)) | 1


def step_records(output_dir: str | Path) -> list[dict]:
    """metrics.jsonl's records; one without a numeric step (a hand-edited or foreign file) has no place on the x axis
    and is left out."""
    return [r for r in read_jsonl(Path(output_dir) / "metrics.jsonl")
            if isinstance(r.get("step"), (int, float)) and not isinstance(r.get("step"), bool)]


def training_records(output_dir: str | Path) -> list[dict]:
    return [r for r in step_records(output_dir) if "reward" in r or "loss" in r]


def series(recs: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in recs if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [float(p[1]) for p in pts]


def draw_curve(ax, steps: list[int], values: list[float], label: str, color, *, bold: bool = False) -> None:
    """The raw points faint, their running mean over them."""
    window = smoothing_window(len(values))
    ax.plot(steps, values, color=color, alpha=0.25, lw=0.8, marker=".", ms=3)
    ax.plot(steps, running_mean(values, window), color=color, lw=2.2 if bold else 1.4,
            label=f"{label} (running mean of {window})" if len(values) >= window else label)


def draw_quarter_means(ax, steps: list[int], values: list[float], color) -> None:
    """Dashed: the mean of the first and of the last quarter of the steps, with its value."""
    q = max(len(values) // 4, 1)
    first, last = quarter_means(values)
    for span, mean in ((steps[:q], first), (steps[-q:], last)):
        ax.hlines(mean, span[0], span[-1], colors=color, linestyles="--", lw=1.2)
        ax.annotate(f"{mean:.2f}", (span[-1], mean), xytext=(3, 3), textcoords="offset points", fontsize=8,
                    color=color)
    ax.plot([], [], color=color, ls="--", lw=1.2, label=f"first / last quarter mean: {first:.2f} → {last:.2f}")


def reward_panel(ax, recs: list[dict]) -> None:
    """The total reward (bold) with its quarter means, and each reward term."""
    keys = sorted({k for r in recs for k in r if k.startswith("rewards/") and k.endswith("/mean")})
    colors = iter(["tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray"])
    steps, values = series(recs, TOTAL)
    if values:
        draw_curve(ax, steps, values, "total reward", "tab:blue", bold=True)
        draw_quarter_means(ax, steps, values, "black")
    for key in keys:
        s, v = series(recs, key)
        if v:
            draw_curve(ax, s, v, key.removeprefix("rewards/").removesuffix("/mean"), next(colors, "tab:olive"))


def metric_panel(ax, recs: list[dict], keys: list[str]) -> None:
    colors = iter(["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"])
    for key in keys:
        s, v = series(recs, key)
        if v:
            draw_curve(ax, s, v, key, next(colors, "tab:gray"))


def gold_points(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """metric -> [(step, value)] of the gold curve (`cqbench/gold/<metric>`), in logged order."""
    points: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        for k, v in r.items():
            if k.startswith(GOLD) and isinstance(v, (int, float)) and not isinstance(v, bool):
                points.setdefault(k[len(GOLD):], []).append((r["step"], v))
    return points


def plot_gold(ax, gold: dict[str, list[tuple[int, float]]]) -> None:
    """One line per CQBench metric; metrics on another scale than [0, 1] (PSNR in dB) on a right-hand axis."""
    right = None
    for metric, pts in gold.items():
        wide = max(abs(v) for _, v in pts) > 1.5
        if wide and right is None:
            right = ax.twinx()
        target = right if wide else ax
        target.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3,
                    linestyle="--" if wide else "-", label=metric)
    ax.set_title(GOLD_TITLE, fontsize=9)
    ax.set_ylabel("score", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.2)
    handles = [h for a in (ax, right) if a is not None for h in a.get_legend_handles_labels()[0]]
    # beside the panel (and past a right-hand axis), clear of the points
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.08 if right else 1.01, 1.0),
              borderaxespad=0, frameon=False)


def panels_of(recs: list[dict]) -> list[tuple[str, str, list[str]]]:
    keys = sorted({k for r in recs for k in r})
    panels = [(title, ylabel, [k for k in keys if any(k == p or (p.endswith("/") and k.startswith(p)) for p in pre)
                               and not k.endswith("/std")]) for title, ylabel, pre in CURVE_GROUPS]
    return [p for p in panels if p[2]]


def _finish(ax, title: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.2)
    if ax.get_legend_handles_labels()[0]:  # a panel whose curves logged no number has nothing to name
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, frameon=False)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def _pyplot():
    import matplotlib  # matplotlib's import and backend choice cost ~1 s: only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(output_dir: str | Path, path: str | Path | None = None) -> Path | None:
    """OUTPUT_DIR/reward_curves.png (or `path`) from metrics.jsonl: total reward and each term, the CQBench gold curve
    beside it, KL, completion length, zero-std fraction, format failures, timings. None when nothing was logged."""
    every = step_records(output_dir)
    recs = [r for r in every if "reward" in r or "loss" in r]
    if not recs:
        return None
    plt = _pyplot()
    panels: list = panels_of(recs)
    gold = gold_points(every)
    if gold:
        panels.insert(1, (GOLD_TITLE, "score", None))
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.4 * len(panels)), sharex=True, squeeze=False)
    for ax, (title, ylabel, keys) in zip(axes[:, 0], panels, strict=True):
        if keys is None:
            plot_gold(ax, gold)
            continue
        reward_panel(ax, recs) if title == "reward" else metric_panel(ax, recs, keys)
        _finish(ax, title, ylabel)
    axes[-1, 0].set_xlabel("GRPO step", fontsize=8)
    return _save(fig, Path(path) if path else Path(output_dir) / "reward_curves.png")


def plot_reward(output_dir: str | Path, path: str | Path, title: str | None = None) -> Path | None:
    """The reward panel alone (docs/img/demo-reward.png is this figure of the README's demo run)."""
    recs = training_records(output_dir)
    if not recs:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 3.2))
    reward_panel(ax, recs)
    _finish(ax, title or "reward per GRPO step", "reward")
    ax.set_xlabel("GRPO step", fontsize=8)
    return _save(fig, Path(path))


def run_title(output_dir: Path) -> str | None:
    """`RECIPE (seed N): reward per GRPO step` from the run's config.yaml."""
    try:
        cfg = OmegaConf.load(output_dir / "config.yaml")
        return f"{cfg.recipe} (seed {cfg.trainer.seed}): reward per GRPO step"
    except Exception:  # noqa: BLE001 - a title is a nicety: any unreadable config just leaves the plain one
        return None


@dataclass
class CurvesOptions:
    """Redraw OUTPUT_DIR/reward_curves.png from OUTPUT_DIR/metrics.jsonl (also while the run trains)."""

    out: str | None = None  # a run's trainer.output_dir
    reward_only: bool = False  # the reward panel alone
    png: str | None = None  # where to write (default: OUT/reward_curves.png, or OUT/reward.png with reward_only)


def main(argv: list[str]) -> int:
    """`mmpc-rl curves out=DIR [reward_only=true] [png=PATH]`: (re)draw a run's curves from DIR/metrics.jsonl."""
    usage = "usage: mmpc-rl curves out=OUTPUT_DIR (a run's trainer.output_dir) [reward_only=true] [png=PATH]; " \
            "valid keys: out, reward_only, png"
    try:
        opts = parse_options(CurvesOptions, argv, "mmpc-rl curves", usage=usage)
    except ConfigError as e:
        raise ConfigError(f"{e}; {usage}") from None
    if not opts.out:
        raise ConfigError(usage)
    out = Path(opts.out)
    if opts.reward_only:
        path = plot_reward(out, opts.png or out / "reward.png", run_title(out))
    else:
        path = plot_curves(out, opts.png)
    if path is None:
        raise ConfigError(f"no training records in {opts.out}/metrics.jsonl")
    print(f"mmpc-rl: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(lambda: main(sys.argv[1:])))
