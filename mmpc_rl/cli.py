"""The `mmpc-rl` console command: one subcommand per capability, each taking recipe-style `key=value` options.

Subcommands import their module lazily so that `mmpc-rl data ...` never pays for importing TRL.
"""

from __future__ import annotations

import importlib
import sys

from mmpc_rl.errors import run_cli

# name -> (module, function, one-line help). The function takes the remaining argv and returns an exit code.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("mmpc_rl.train.grpo", "main", "GRPO fine-tuning: mmpc-rl train recipe=i2t [key=value ...]"),
    "demo": ("mmpc_rl.train.grpo", "demo", "the CPU demo: tiny policy, real MiniLM, sample catalog"),
    "eval": ("mmpc_rl.eval.cli", "main", "benchmarks: mmpc-rl eval cqbench models=[...] [key=value ...]"),
    "data": ("mmpc_rl.data.cli", "main", "data: mmpc-rl data build source=DIR out=DIR | mmpc-rl data sample out=DIR"),
    "recbench": ("mmpc_rl.recbench.cli", "main", "RecBench: VBPR, BM3, FREEDOM on ground-truth vs generated features"),
    "benchmark": ("mmpc_rl.bench.cli", "main", "GRPO speed harness: project arm vs plain TRL"),
    "plan": ("mmpc_rl.train.plan_cli", "main",
             "predicted GPU memory: mmpc-rl plan recipe=i2t [gpu_gb=80] [format=json]"),
    "curves": ("mmpc_rl.train.curves", "main", "redraw a run's reward_curves.png: mmpc-rl curves out=OUTPUT_DIR"),
}
# A subcommand whose code is not its command's package: `mmpc-rl eval speed` is a measurement (mmpc_rl.bench sits above
# eval/, which never imports it), so it is routed here.
SUBCOMMANDS: dict[tuple[str, str], tuple[str, str]] = {("eval", "speed"): ("mmpc_rl.bench.cqbench_speed", "main")}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: mmpc-rl <command> [key=value ...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"mmpc-rl: unknown command {name!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[name]
    if tuple(argv[:2]) in SUBCOMMANDS:
        (module, func), rest = SUBCOMMANDS[tuple(argv[:2])], argv[2:]
    return run_cli(lambda: getattr(importlib.import_module(module), func)(rest))


if __name__ == "__main__":
    sys.exit(main())
