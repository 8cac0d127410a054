"""Tables like the paper's 12-17 (per recommender and task), the averaged Table 6 with the relative difference to
ground truth, and a Figure-4-style heatmap, from the selected results (one per category x condition x model)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from mmpc_rl.io import atomic_write_bytes, atomic_write_text
from mmpc_rl.recbench.conditions import TASK_MODALITY

COLUMNS = ["recall@5", "ndcg@5", "recall@10", "ndcg@10", "recall@20", "ndcg@20", "recall@50", "ndcg@50"]
TABLE6_COLUMNS = ["recall@5", "recall@10", "recall@20", "recall@50", "ndcg@5", "ndcg@10", "ndcg@20", "ndcg@50"]
HEADER = {c: ("R" if c.startswith("recall") else "N") + "@" + c.split("@")[1] for c in COLUMNS}
TASK_TITLE = {"i2t": "Image-to-Text (text replaced)", "t2i": "Text-to-Image (image replaced)"}


def method_label(rec: dict) -> str:
    if rec["method"] == "ground_truth":
        return "Ground Truth"
    return rec["method"] if rec["rate"] == 1.0 else f"{rec['method']} ({rec['rate']:.0%})"


def _md(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _csv(header: list[str], rows: list[list[str]]) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _rows_for(results: list[dict], task: str) -> list[dict]:
    modality = TASK_MODALITY[task]
    return [r for r in results if r["method"] == "ground_truth" or r["missing"] == modality]


def coverage_lines(notes: list[dict], task: str | None = None) -> str:
    """The low-coverage lines (of one task), one per (category, condition), as a markdown block ("" if none)."""
    lines = [n["note"] for n in notes if task is None or n["task"] == task]
    return "".join(f"\n- **{line}**" for line in lines) + ("\n" if lines else "")


def per_model_tables(results: list[dict], out_dir: Path, notes: list[dict] = ()) -> list[Path]:
    """tables/<MODEL>_<task>.md|.csv: Dataset | Completion Method | R@5 N@5 ... N@50 (test, at the best valid); the
    markdown lists the task's low-coverage conditions under the table."""
    written = []
    for model in sorted({r["model"] for r in results}):
        for task in TASK_MODALITY:
            recs = [r for r in _rows_for(results, task) if r["model"] == model]
            if not any(r["method"] != "ground_truth" for r in recs):
                continue
            rows = []
            for cat in sorted({r["category"] for r in recs}):
                cat_recs = sorted((r for r in recs if r["category"] == cat),
                                  key=lambda r: (r["method"] == "ground_truth", r["method"], r["rate"]))
                for r in cat_recs:
                    rows.append([cat, method_label(r)] + [f"{r['test'][c]:.4f}" for c in COLUMNS])
            header = ["Dataset", "Completion Method"] + [HEADER[c] for c in COLUMNS]
            title = f"# {model}: {TASK_TITLE[task]}\n\nTest metrics at the best-valid epoch. R = Recall, N = NDCG.\n\n"
            md = title + _md(header, rows) + coverage_lines(list(notes), task)
            for ext, text in (("md", md), ("csv", _csv(header, rows))):
                written.append(atomic_write_text(out_dir / "tables" / f"{model}_{task}.{ext}", text))
    return written


def _gt_lookup(results: list[dict]) -> dict[tuple[str, str], dict]:
    return {(r["category"], r["model"]): r["test"] for r in results if r["method"] == "ground_truth"}


def _rel(x: dict, gt: dict) -> dict:
    return {c: (x[c] - gt[c]) / gt[c] if gt[c] else 0.0 for c in TABLE6_COLUMNS}


def table6(results: list[dict]) -> dict:
    """Per task: each method's metrics averaged over (category, recommender) pairs that also have ground truth,
    the ground truth averaged over the same pairs, and the Rel. Diff. of the best completion vs GT (what the paper's
    "Rel. Diff. (vs. GT)" row holds by its numbers: I->T R@5 -0.58 % is its best 0.0344 against 0.0346) plus the mean
    completion's."""
    gt = _gt_lookup(results)
    out = {}
    for task in TASK_MODALITY:
        recs = [r for r in _rows_for(results, task) if r["method"] != "ground_truth"]
        methods = sorted({method_label(r) for r in recs})
        if not methods:
            continue
        pairs = sorted({(r["category"], r["model"]) for r in recs} & set(gt))
        if not pairs:
            continue
        rows = {}
        for m in methods:
            vals = [r["test"] for r in recs if method_label(r) == m and (r["category"], r["model"]) in pairs]
            rows[m] = {c: float(np.mean([v[c] for v in vals])) for c in TABLE6_COLUMNS}
        gt_row = {c: float(np.mean([gt[p][c] for p in pairs])) for c in TABLE6_COLUMNS}
        # zeros/random are baselines, never "the best completion": a task with none generated gets no Rel. Diff.
        completions = [m for m in methods if m.split(" (")[0] not in ("zeros", "random")]
        rel_best = rel_mean = None
        if completions:
            best = {c: max(rows[m][c] for m in completions) for c in TABLE6_COLUMNS}
            mean = {c: float(np.mean([rows[m][c] for m in completions])) for c in TABLE6_COLUMNS}
            rel_best, rel_mean = _rel(best, gt_row), _rel(mean, gt_row)
        out[task] = {"pairs": [list(p) for p in pairs], "ground_truth": gt_row, "methods": rows,
                     "rel_diff_best": rel_best, "rel_diff_mean": rel_mean, "completions": completions}
    return out


def table6_markdown(t6: dict, notes: list[dict] = ()) -> str:
    header = ["Task", "Completion"] + [HEADER[c] for c in TABLE6_COLUMNS]
    rows = []
    for task, t in t6.items():
        rows.append([task, "Ground Truth"] + [f"{t['ground_truth'][c]:.4f}" for c in TABLE6_COLUMNS])
        for m, vals in t["methods"].items():
            rows.append([task, m] + [f"{vals[c]:.4f}" for c in TABLE6_COLUMNS])
        for label, key in (("best", "rel_diff_best"), ("mean", "rel_diff_mean")):
            na = ["n/a (no completion)"] * len(TABLE6_COLUMNS)
            cells = [f"{t[key][c]:+.2%}" for c in TABLE6_COLUMNS] if t[key] else na
            rows.append([task, f"Rel. Diff. {label} (vs. GT)"] + cells)
    return ("# Table 6: averaged over categories and recommenders\n\n"
            "Rel. Diff. best = best completion vs ground truth (what the paper's row holds); mean = mean completion. "
            "zeros/random baselines are listed but not counted as completions.\n\n" + _md(header, rows)
            + coverage_lines(list(notes)))


def heatmap_matrix(results: list[dict], metric: str = "recall@20") -> tuple[list[str], list[str], np.ndarray]:
    """Rows `task: method`, columns categories; relative difference (%) vs ground truth averaged over recommenders."""
    gt = _gt_lookup(results)
    cats = sorted({r["category"] for r in results})
    labels = sorted({f"{t}: {method_label(r)}" for t in TASK_MODALITY for r in _rows_for(results, t)
                     if r["method"] != "ground_truth"})
    mat = np.full((len(labels), len(cats)), np.nan)
    for i, label in enumerate(labels):
        task, m = label.split(": ", 1)
        for j, cat in enumerate(cats):
            diffs = [(r["test"][metric] - gt[(cat, r["model"])][metric]) / gt[(cat, r["model"])][metric] * 100
                     for r in _rows_for(results, task) if r["method"] != "ground_truth" and method_label(r) == m
                     and r["category"] == cat and (cat, r["model"]) in gt and gt[(cat, r["model"])][metric]]
            if diffs:
                mat[i, j] = float(np.mean(diffs))
    return labels, cats, mat


def heatmap(results: list[dict], path: Path, metric: str = "recall@20") -> Path | None:
    labels, cats, mat = heatmap_matrix(results, metric)
    if not labels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    finite = mat[np.isfinite(mat)]
    span = max(float(np.abs(finite).max()) if finite.size else 1.0, 1e-6)
    width = max(7.0, 3.0 + 1.1 * len(cats))
    fig, ax = plt.subplots(figsize=(width, 2.2 + 0.45 * len(labels)))
    # blue = worse than ground truth, as in the paper's Figure 4
    im = ax.imshow(mat, cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -span, span), aspect="auto")
    ax.set_xticks(range(len(cats)), cats, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for i in range(len(labels)):
        for j in range(len(cats)):
            if np.isfinite(mat[i, j]):
                dark = abs(mat[i, j]) > 0.6 * span
                ax.text(j, i, f"{mat[i, j]:+.1f}", ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")
    fig.colorbar(im, ax=ax, label="% vs ground truth")
    ax.set_title(f"{metric}: relative difference to ground truth (mean over recommenders)", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def write_reports(results: list[dict], out_dir: Path, notes: list[dict] = ()) -> dict:
    """The tables and the heatmap; `notes`: the low-coverage conditions ({category, condition, task, note})."""
    out_dir = Path(out_dir)
    paths = [str(p) for p in per_model_tables(results, out_dir, notes)]
    t6 = table6(results)
    paths.append(str(atomic_write_text(out_dir / "tables" / "table6.md", table6_markdown(t6, notes))))
    png = heatmap(results, out_dir / "heatmap.png")
    if png:
        paths.append(str(png))
    return {"table6": t6, "files": paths}
