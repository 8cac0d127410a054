"""`mmpc-rl eval BENCHMARK key=value ...`: the benchmarks of this package."""

from __future__ import annotations

import importlib

from mmpc_rl.errors import ConfigError, did_you_mean

BENCHMARKS = {"cqbench": "mmpc_rl.eval.cqbench"}
# `mmpc-rl eval speed` is a measurement: mmpc_rl.cli routes it to the harness above eval/ (mmpc_rl.bench)
ROUTED_ABOVE = ("speed",)
USAGE = """usage: mmpc-rl eval cqbench [key=value ...]   CQBench: frozen MLLMs, or a LoRA adapter against its base
       mmpc-rl eval speed [key=value ...]     image->text generation throughput, batched vs one at a time

`mmpc-rl eval cqbench --help` and `mmpc-rl eval speed --help` list each one's keys with their defaults."""


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {name!r}" + did_you_mean(name, [*BENCHMARKS, *ROUTED_ABOVE]))
    return importlib.import_module(BENCHMARKS[name]).main(rest)
