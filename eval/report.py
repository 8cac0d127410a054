"""Aggregation as the authors' evaluators (CQBench/*benchmark_all_models_bench.py: per category, mean/std over items;
per model, mean/std over category means; numpy ddof=0; None values such as LPIPS on small images left out), markdown
tables, and the Figure 3 radar chart."""

from __future__ import annotations

import math
import os
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from mmpc_rl.eval.metrics import METRICS, metrics_for
from mmpc_rl.io import atomic_write_bytes
from mmpc_rl.prompts import caption
from mmpc_rl.tasks import TASKS


def _stats(values: list[float]) -> dict:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    arr = np.asarray(vals, dtype=np.float64)
    with np.errstate(invalid="ignore"):  # inf PSNR (identical images) gives nan std, as numpy did for the authors
        return {"mean": float(arr.mean()), "std": float(arr.std()), "n": len(vals)}


def aggregate(records: list[dict], task: str) -> dict:
    names = [m for m in metrics_for(task) if any(m in r["metrics"] for r in records)]
    by_cat: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_cat[r["category"]].append(r)
    per_category = {cat: {m: _stats([r["metrics"].get(m) for r in recs]) for m in names}
                    for cat, recs in sorted(by_cat.items())}
    summary = {m: _stats([per_category[c][m]["mean"] for c in per_category]) for m in names}
    status = dict(Counter(r["status"] for r in records))
    return {"task": task, "n_items": len(records), "status": status, "summary": summary,
            "per_category": per_category, "per_item": records}


def _fmt(stat: dict | None, digits: int = 4) -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    mean, std = stat["mean"], stat["std"]
    if math.isinf(mean):
        return "inf"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None and not math.isnan(std) else f"{mean:.{digits}f}"


def _header(names: list[str], first: list[str]) -> list[str]:
    cols = first + [METRICS[m].label + (" ↑" if METRICS[m].higher_is_better else " ↓") for m in names]
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]


TASK_TITLES = {"i2t": "Image→Text", "t2i": "Text→Image"}


def markdown_tables(results: dict[str, dict[str, dict]]) -> str:
    """results[model][task] = aggregate(...). One summary table per task (as Tables 2/3) and one by category."""
    out = []
    for task in TASKS:
        models = [m for m in results if task in results[m]]
        if not models:
            continue
        names = [m for m in metrics_for(task) if any(m in results[x][task]["summary"] for x in models)]
        out += [f"## {TASK_TITLES[task]}: mean ± std over category means", "", *_header(names, ["Model"])]
        for model in models:
            s = results[model][task]["summary"]
            out.append(f"| {model} | " + " | ".join(_fmt(s.get(m)) for m in names) + " |")
        fails = {m: results[m][task]["status"] for m in models}
        out += ["", prompt_caption([results[m][task] for m in models])]
        out += ["", "Parse status per model (failures are scored as the text \"error\"): "
                + "; ".join(f"{m}: " + ", ".join(f"{k} {v}" for k, v in sorted(st.items())) for m, st in
                            fails.items()), ""]
        out += [f"## {TASK_TITLES[task]} by category: mean ± std over items", "",
                *_header(names, ["Category", "Model"])]
        cats = sorted({c for m in models for c in results[m][task]["per_category"]})
        for cat in cats:
            for model in models:
                pc = results[model][task]["per_category"].get(cat)
                if pc:
                    out.append(f"| {cat} | {model} | " + " | ".join(_fmt(pc.get(m)) for m in names) + " |")
        out.append("")
    return "\n".join(out)


TABLE_NUMBERS = {"i2t": 4, "t2i": 5}


def across_models(results: dict[str, dict[str, dict]]) -> dict[str, dict]:
    """Tables 4/5: per task, category and metric, the mean and the sample std (numpy ddof=1, as the paper's Tables
    4/5: "0.018" for All Beauty's cosine is the ddof=1 std of Table 10's six model means) of the models' category
    means. Only tasks two or more models ran; a model without the category (or the metric) is left out of its cell,
    and `n` counts the models in it."""
    out: dict[str, dict] = {}
    for task in ("i2t", "t2i"):
        models = [m for m in results if task in results[m]]
        if len(models) < 2:
            continue
        names = [m for m in metrics_for(task) if any(m in results[x][task]["summary"] for x in models)]
        cats = sorted({c for m in models for c in results[m][task]["per_category"]})
        out[task] = {}
        for cat in cats:
            out[task][cat] = {}
            for name in names:
                vals = [results[m][task]["per_category"].get(cat, {}).get(name, {}).get("mean") for m in models]
                arr = np.asarray([v for v in vals if v is not None], dtype=np.float64)
                with np.errstate(invalid="ignore"):  # an inf PSNR mean gives a nan std, as in the other tables
                    out[task][cat][name] = {"mean": float(arr.mean()) if len(arr) else None,
                                            "std": float(arr.std(ddof=1)) if len(arr) >= 2 else None,
                                            "n": len(arr)}
    return out


def across_models_table(across: dict[str, dict], task: str, results: dict[str, dict[str, dict]]) -> str:
    """Table 4 (i2t) / Table 5 (t2i) as markdown: one row per category, mean ± sample std across the models."""
    models = [m for m in results if task in results[m]]
    cats = across[task]
    names = [m for m in metrics_for(task) if any(m in cells for cells in cats.values())]
    lines = [f"# Table {TABLE_NUMBERS[task]}: {TASK_TITLES[task]} by category, mean ± sample std (ddof=1) across "
             f"{len(models)} models", "", *_header(names, ["Category"])]
    for cat, cells in cats.items():
        lines.append(f"| {cat} | " + " | ".join(_fmt(cells.get(m)) for m in names) + " |")
    partial = sorted({c for c, cells in cats.items() if any(s["n"] < len(models) for s in cells.values())})
    lines += ["", "Models: " + ", ".join(models) + "."]
    if partial:
        lines.append("Categories some models lack (their cells average the others): " + ", ".join(partial) + ".")
    return "\n".join([*lines, "", prompt_caption([results[m][task] for m in models])]) + "\n"


def delta_table(base: dict, lora: dict, task: str, base_name: str = "Base", lora_name: str = "LoRA") -> str:
    """Tables 7/9: base, adapter and delta rows (overall and per category); the delta is adapter − base."""
    names = [m for m in metrics_for(task) if m in base["summary"] and m in lora["summary"]]
    lines = [f"## {TASK_TITLES[task]}: {base_name} vs {lora_name}", "", *_header(names, ["Category", "Method"])]
    scopes = [("All (mean over categories)", base["summary"], lora["summary"])]
    scopes += [(c, base["per_category"][c], lora["per_category"][c]) for c in base["per_category"]
               if c in lora["per_category"]]
    for scope, b, a in scopes:
        lines.append(f"| {scope} | {base_name} | " + " | ".join(_fmt(b.get(m)) for m in names) + " |")
        lines.append(f"| {scope} | {lora_name} | " + " | ".join(_fmt(a.get(m)) for m in names) + " |")
        lines.append(f"| {scope} | Δ | " + " | ".join(_delta(b.get(m), a.get(m)) for m in names) + " |")
    return "\n".join([*lines, "", prompt_caption([base, lora])]) + "\n"


def prompt_caption(results: list[dict]) -> str:
    """Which prompt produced these numbers; a table mixing prompts says so, since the rows are then not comparable."""
    names = list(dict.fromkeys(r.get("prompt") for r in results))
    if len(names) == 1:
        return caption(names[0])
    return "Prompts differ between rows, so they are not comparable: " + "; ".join(caption(n) for n in names)


def _delta(b: dict | None, a: dict | None) -> str:
    if not b or not a or b.get("mean") is None or a.get("mean") is None:
        return "–"
    d = a["mean"] - b["mean"]
    return "–" if math.isnan(d) else f"{d:+.4f}"


def radar_scores(results: dict[str, dict[str, dict]], task: str) -> dict[str, dict[str, float]]:
    """Figure 3: per (model, category), each metric min-max normalised over all plotted cells (inverted where lower
    is better) and summed. A metric that is constant over the cells contributes 0.5."""
    models = [m for m in results if task in results[m]]
    cats = sorted({c for m in models for c in results[m][task]["per_category"]})
    names = [m for m in metrics_for(task) if any(m in results[x][task]["summary"] for x in models)]
    cell = {(mo, c, n): results[mo][task]["per_category"].get(c, {}).get(n, {}).get("mean")
            for mo in models for c in cats for n in names}
    scores = {mo: dict.fromkeys(cats, 0.0) for mo in models}
    for n in names:
        vals = [v for (_, _, nn), v in cell.items() if nn == n and v is not None and math.isfinite(v)]
        lo, hi = (min(vals), max(vals)) if vals else (0.0, 0.0)
        for mo in models:
            for c in cats:
                v = cell[(mo, c, n)]
                if v is None or not vals:
                    continue
                x = 0.5 if hi == lo else (min(max(v, lo), hi) - lo) / (hi - lo)
                scores[mo][c] += x if METRICS[n].higher_is_better else 1.0 - x
    return scores


def radar_png(results: dict[str, dict[str, dict]], path: str | os.PathLike) -> Path | None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in TASKS if any(t in r for r in results.values())]
    if not tasks:
        return None
    fig, axes = plt.subplots(1, len(tasks), subplot_kw={"projection": "polar"}, figsize=(6 * len(tasks), 5.5))
    axes = np.atleast_1d(axes)
    for ax, task in zip(axes, tasks, strict=True):
        scores = radar_scores(results, task)
        cats = sorted({c for s in scores.values() for c in s})
        angles = np.linspace(0, 2 * np.pi, len(cats), endpoint=False).tolist()
        for model, per_cat in scores.items():
            vals = [per_cat[c] for c in cats]
            ax.plot(angles + angles[:1], vals + vals[:1], label=model)
            ax.fill(angles + angles[:1], vals + vals[:1], alpha=0.1)
        ax.set_xticks(angles)
        ax.set_xticklabels([c.replace("_", " ") for c in cats], fontsize=8)
        ax.set_ylim(0, len([m for m in metrics_for(task) if any(m in results[x][task]["summary"]
                                                               for x in results if task in results[x])]))
        ax.set_title(f"{TASK_TITLES[task]} (sum of normalised metrics)")
        ax.legend(loc="lower right", fontsize=7, bbox_to_anchor=(1.25, -0.1))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
