"""Which items go where: seeded disjoint CQBench/GRPO sets over sorted parent_asins."""

from __future__ import annotations

import random


def seeded_order(asins: list[str], seed: int) -> list[str]:
    """A seeded permutation of the *sorted* ids, so the order never depends on file order or hashing."""
    pool = sorted(asins)
    return random.Random(seed).sample(pool, len(pool))


def set_sizes(pool: int, n_cqbench: int, n_train: int) -> tuple[int, int]:
    """Requested sizes, or a proportional share of a pool too small for both (CQBench rounded up)."""
    if n_cqbench + n_train <= pool:
        return n_cqbench, n_train
    cq = min(n_cqbench, -(-pool * n_cqbench // max(1, n_cqbench + n_train)))
    return cq, min(n_train, pool - cq)
