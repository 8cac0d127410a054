"""The measurement harness: what `mmpc-rl benchmark` (and its `suite=gpu` check) and `mmpc-rl eval speed` run, and
the throughput probes behind the figures in docs/. It sits above train/, eval/ and rewards/ (it runs them); none of
them, and nothing in the core, imports it.

- `cli`: `mmpc-rl benchmark`; `grpo_options`: its options; `grpo_arms`: the project arm vs plain TRL.
- `gpu_check`: `mmpc-rl benchmark suite=gpu` (bench/gpu_check.sh), every GPU speed figure in one run.
- `cqbench_speed`: `mmpc-rl eval speed`, CQBench generation throughput.
- `recbench_speed`: `python -m mmpc_rl.bench.recbench_speed`, seconds per recommender epoch and evaluation.
- `data_scan`: `python -m mmpc_rl.bench.data_scan`, lines/s and peak RSS of the metadata scan.
- `plan_anchors`: `python -m mmpc_rl.bench.plan_anchors`, the H100 measurements the memory planner is held to.
- `reproduce`: `bench/reproduce_paper.sh NAME`, the commands behind each table and figure of the paper
  (docs/reproduce.md); it runs the CLI, so it sits here with the other runners of the whole stack.
"""
