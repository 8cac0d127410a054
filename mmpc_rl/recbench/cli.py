"""`mmpc-rl recbench [key=value ...]`: see docs/recbench.md. Every key of RecBenchConfig is an option."""

from __future__ import annotations

from mmpc_rl.options import parse_options
from mmpc_rl.recbench.bench import RecBenchConfig, run
from mmpc_rl.recbench.conditions import COVERAGE_FLOOR

USAGE = ("usage: mmpc-rl recbench data_dir=DIR|sample out=DIR [generated=[cqbench_results.jsonl,...]] "
         "[models=[VBPR,BM3,FREEDOM]] [rates=[1.0]] [profile=default|paper] [select_by=valid|test] [key=value ...]")


def parse_config(argv: list[str]) -> RecBenchConfig:
    # generated=file.jsonl: a one-element list
    return parse_options(RecBenchConfig, argv, "mmpc-rl recbench", usage=USAGE)


def main(argv: list[str]) -> int:
    cfg = parse_config(["--help" if a == "help" else a for a in argv])
    results = run(cfg)
    t6 = results["table6"]
    for task, t in t6.items():
        gt = f"{task}: ground truth Recall@20 {t['ground_truth']['recall@20']:.4f}"
        if t["rel_diff_best"]:
            print(f"{gt}, best completion {t['rel_diff_best']['recall@20']:+.2%}")
        else:
            print(f"{gt}; no generated completion for this task (baselines only)")
    if results["low_coverage"]:
        print(f"{len(results['low_coverage'])} condition(s) replaced fewer than {COVERAGE_FLOOR:.0%} of their missing "
              "rows (listed above, in summary.json and under the tables)")
    print(f"results: {cfg.out}/results.json; summary (coverage): {cfg.out}/summary.json; tables: {cfg.out}/tables/; "
          f"heatmap: {cfg.out}/heatmap.png")
    return 0
