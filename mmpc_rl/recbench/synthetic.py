"""Generated RecBench folders in the data pipeline's layout, for the tests and the speed measurement.

Users and items belong to latent clusters; a user mostly interacts with items of its own cluster, and an item's
title (and colour, if images are written) names its cluster, so content features carry real signal.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmpc_rl.data.recsel import split_labels as chronological_labels  # the pipeline's per-user split
from mmpc_rl.io import atomic_write_jsonl, atomic_write_text

WORDS = ["red", "blue", "green", "wooden", "steel", "plush", "retro", "travel", "kitchen", "garden", "gaming",
         "studio"]
NOUNS = ["mug", "lamp", "controller", "brush", "chair", "kit", "case", "headset", "pan", "toy", "pen", "cable"]
COLOURS = [(220, 40, 40), (40, 40, 220), (40, 180, 40), (150, 100, 50), (160, 160, 170), (230, 150, 200),
           (240, 200, 60), (60, 200, 200), (120, 60, 160), (30, 30, 30), (250, 250, 250), (250, 120, 20)]


def make_category(root: str | Path, category: str = "Toy", n_users: int = 60, n_items: int = 40,
                  n_interactions: int = 600, n_clusters: int = 4, images: bool = False, seed: int = 0,
                  purity: float = 0.9) -> Path:
    """Write `<root>/<category>/recbench/` and return it. Each user gets >= 5 distinct items."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / category / "recbench"
    folder.mkdir(parents=True, exist_ok=True)
    item_cluster = np.arange(n_items) % n_clusters
    user_cluster = rng.integers(0, n_clusters, n_users)
    by_cluster = [np.flatnonzero(item_cluster == c) for c in range(n_clusters)]
    per_user = np.full(n_users, 5)
    extra = max(n_interactions - per_user.sum(), 0)
    per_user += np.bincount(rng.integers(0, n_users, extra), minlength=n_users)
    per_user = np.minimum(per_user, n_items)
    lines = ["userID\titemID\trating\ttimestamp\tx_label"]
    ts = 1_600_000_000
    for u in range(n_users):
        own = by_cluster[user_cluster[u]]
        n_own = min(int(round(per_user[u] * purity)), len(own))
        chosen = list(rng.choice(own, n_own, replace=False))
        others = np.setdiff1d(np.arange(n_items), chosen)
        chosen += list(rng.choice(others, per_user[u] - n_own, replace=False))
        for item, label in zip(chosen, chronological_labels(len(chosen)), strict=True):
            ts += 1
            lines.append(f"{u}\t{int(item)}\t5.0\t{ts}\t{label}")
    atomic_write_text(folder / f"{category.lower()}.inter", "\n".join(lines) + "\n")
    atomic_write_text(folder / "u_id_mapping.csv",
                      "original_id,new_id\n" + "".join(f"U{u:06d},{u}\n" for u in range(n_users)))
    atomic_write_text(folder / "i_id_mapping.csv",
                      "original_id,new_id\n" + "".join(f"B{i:09d},{i}\n" for i in range(n_items)))
    if images:
        (folder / "images").mkdir(exist_ok=True)
    records = []
    for i in range(n_items):
        c = int(item_cluster[i])
        title = f"{WORDS[c % len(WORDS)]} {NOUNS[c % len(NOUNS)]} model {i}"
        image = None
        if images:
            image = str(folder / "images" / f"B{i:09d}.png")
            _write_image(image, COLOURS[c % len(COLOURS)], rng)
        records.append({"itemID": i, "parent_asin": f"B{i:09d}", "title": title, "text": title, "image": image})
    atomic_write_jsonl(folder / "items.jsonl", records)
    return folder


def _write_image(path: str, colour: tuple[int, int, int], rng: np.random.Generator) -> None:
    from PIL import Image

    pixels = np.clip(np.array(colour)[None, None, :] + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


def random_features(n_items: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n_items, dim)).astype(np.float32)
