"""reward_curves.png from a run's metrics.jsonl, and `mmpc-rl curves out=DIR` to redraw it."""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from pathlib import Path

from mmpc_rl.errors import ConfigError, run_cli
from mmpc_rl.io import atomic_write_bytes, read_jsonl
from mmpc_rl.options import parse_options

CURVE_GROUPS = (
    ("reward", ("reward", "rewards/")),
    ("kl", ("kl",)),
    ("completion length", ("completions/mean_length",)),
    ("frac_reward_zero_std", ("frac_reward_zero_std",)),
    ("format failures", ("completions/format_fail_rate",)),
    ("step time (s)", ("step_time",)),
    ("reward time (s)", ("timing/reward/",)),
)


def plot_curves(output_dir: str | Path, filename: str = "reward_curves.png") -> Path | None:
    """reward_curves.png from metrics.jsonl: total reward and each term, the CQBench gold curve beside it, KL, length,
    zero-std fraction, format failures, timings."""
    import matplotlib  # matplotlib's import and backend choice cost ~1 s: only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(output_dir)
    # a record without a numeric step (a hand-edited or foreign file) has no place on the x axis: left out
    every = [r for r in read_jsonl(out / "metrics.jsonl")
             if isinstance(r.get("step"), (int, float)) and not isinstance(r.get("step"), bool)]
    recs = [r for r in every if "reward" in r or "loss" in r]
    if not recs:
        return None
    keys = sorted({k for r in recs for k in r})
    panels = [(title, [k for k in keys if any(k == p or (p.endswith("/") and k.startswith(p)) for p in pre)
                       and not k.endswith("/std")]) for title, pre in CURVE_GROUPS]
    panels = [(t, ks) for t, ks in panels if ks]
    gold = gold_points(every)
    if gold:
        panels.insert(1, (GOLD_TITLE, None))
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.2 * len(panels)), sharex=True, squeeze=False)
    for ax, (title, ks) in zip(axes[:, 0], panels, strict=True):
        if ks is None:
            plot_gold(ax, gold)
            continue
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


GOLD = "cqbench/gold/"
GOLD_TITLE = "CQBench on held-out items (gold): step 0 = before training, last point = after"


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
    handles = [h for a in (ax, right) if a is not None for h in a.get_legend_handles_labels()[0]]
    ax.legend(handles=handles, fontsize=7, loc="best")


@dataclass
class CurvesOptions:
    """Redraw OUTPUT_DIR/reward_curves.png from OUTPUT_DIR/metrics.jsonl (also while the run trains)."""

    out: str | None = None  # a run's trainer.output_dir


def main(argv: list[str]) -> int:
    """`mmpc-rl curves out=DIR`: (re)draw DIR/reward_curves.png from DIR/metrics.jsonl."""
    usage = "usage: mmpc-rl curves out=OUTPUT_DIR (a run's trainer.output_dir); valid keys: out"
    try:
        opts = parse_options(CurvesOptions, argv, "mmpc-rl curves", usage=usage)
    except ConfigError as e:
        raise ConfigError(f"{e}; {usage}") from None
    if not opts.out:
        raise ConfigError(usage)
    path = plot_curves(opts.out)
    if path is None:
        raise ConfigError(f"no training records in {opts.out}/metrics.jsonl")
    print(f"mmpc-rl: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(lambda: main(sys.argv[1:])))
