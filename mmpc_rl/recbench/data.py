"""One category's RecBench folder, read the way MMRec reads it.

`<data_dir>/<Category>/recbench/` holds `<category_lower>.inter` (TSV: userID, itemID, rating, timestamp, x_label;
0-based ids; x_label 0/1/2 = train/valid/test), `u_id_mapping.csv`, `i_id_mapping.csv` and `items.jsonl`.
Only userID, itemID and x_label are used; n_users / n_items are max id + 1 over all splits; valid/test rows of users
with no training row are dropped (MMRec's `filter_out_cod_start_users`).

A malformed `.inter` line (not integers, a negative id, an x_label outside 0/1/2, an id beyond the id mapping) is
skipped, counted and reported (`RecData.malformed`, a printed line, summary.json): ids are checked against the
mappings' sizes (else the number of rows, which bounds a dense 0-based id) before any table is sized from them, so
one stray id of 1e9 cannot ask for gigabytes. A category left without validation or test rows is an error: every
metric would read 0.0.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmpc_rl.data.images import resolve_image
from mmpc_rl.errors import DataError

REQUIRED_COLUMNS = ("userID", "itemID", "x_label")
MAX_EXAMPLES = 5


@dataclass
class RecData:
    name: str
    n_users: int
    n_items: int
    train: np.ndarray  # [E, 2] (user, item) int64
    valid: np.ndarray
    test: np.ndarray
    items: list[dict] = field(default_factory=list)  # items.jsonl records, row i = itemID i
    dropped_cold: int = 0
    malformed: dict = field(default_factory=dict)  # {"count", "reasons", "examples"} of skipped .inter lines

    @property
    def train_items(self) -> np.ndarray:
        """Items that occur in the training split: MMRec draws negatives from these only."""
        return np.unique(self.train[:, 1])

    def csr(self, pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(indptr, indices) of a pair array grouped by user, items sorted within a user."""
        order = np.lexsort((pairs[:, 1], pairs[:, 0]))
        users, items = pairs[order, 0], pairs[order, 1]
        indptr = np.zeros(self.n_users + 1, dtype=np.int64)
        np.add.at(indptr, users + 1, 1)
        return np.cumsum(indptr), items.astype(np.int64)

    def summary(self) -> dict:
        return {"users": self.n_users, "items": self.n_items, "train": len(self.train), "valid": len(self.valid),
                "test": len(self.test), "dropped_cold_start_rows": self.dropped_cold,
                "malformed_lines": self.malformed.get("count", 0)}


def category_dir(data_dir: str | Path, category: str) -> Path:
    return Path(data_dir) / category / "recbench"


def list_categories(data_dir: str | Path) -> list[str]:
    return sorted(p.parent.name for p in Path(data_dir).glob("*/recbench") if p.is_dir())


def mapping_size(path: str | Path) -> int | None:
    """Rows of an id mapping CSV (`original_id,new_id` + one line per id), or None without one."""
    path = Path(path)
    if not path.is_file():
        return None
    with open(path, encoding="utf-8", errors="replace") as f:
        return max(0, sum(1 for line in f if line.strip()) - 1)


def read_inter(path: str | Path, limits: tuple[int | None, int | None] = (None, None),
               malformed: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(pairs [N, 2], labels [N]) from a `.inter` TSV. Malformed lines are skipped and counted in `malformed`
    (`count`, `reasons`, `examples` as `file:line: reason`); ids must be below `limits` (users, items; None: the
    number of rows). No usable line at all is a DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"interaction file {path} does not exist")
    bad: Counter[str] = Counter()
    examples: list[str] = []

    def skip(lineno: int, reason: str, n: int = 1) -> None:
        bad[reason] += n
        if len(examples) < MAX_EXAMPLES:
            examples.append(f"{path.name}:{lineno}: {reason}")

    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None) or []
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise DataError(f"{path}: header lacks column(s) {', '.join(missing)} (found: {', '.join(header)})")
        cols = [header.index(c) for c in REQUIRED_COLUMNS]
        rows = []
        for lineno, row in enumerate(reader, start=2):
            if not any(cell.strip() for cell in row):
                continue
            try:
                user, item, label = (int(row[c]) for c in cols)
            except (ValueError, IndexError):
                skip(lineno, "not_integer_userID_itemID_x_label")
                continue
            if user < 0 or item < 0:
                skip(lineno, "negative_id")
            elif label not in (0, 1, 2):
                skip(lineno, "x_label_not_0_1_2")
            else:
                rows.append((user, item, label, lineno))
    arr = np.asarray(rows, dtype=np.int64).reshape(-1, 4)
    for col, limit, what in ((0, limits[0], "user"), (1, limits[1], "item")):
        limit = len(arr) if limit is None else limit  # dense 0-based ids: never more ids than rows
        beyond = arr[:, col] >= limit
        if beyond.any():
            skip(int(arr[beyond, 3][0]), f"{what}_id_beyond_mapping", int(beyond.sum()))
        arr = arr[~beyond]
    if malformed is not None and bad:
        malformed.update(count=sum(bad.values()), reasons=dict(bad), examples=examples)
    if not len(arr):
        why = f": {sum(bad.values())} malformed line(s), e.g. {examples[0]}" if bad else ""
        raise DataError(f"{path} has no usable interactions{why}")
    return arr[:, :2], arr[:, 2]


def read_items(path: str | Path, n_items: int) -> list[dict]:
    """items.jsonl, one record per itemID in order; a gap or a wrong order is a DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"item file {path} does not exist")
    items: list[dict] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except (ValueError, RecursionError):
                raise DataError(f"{path}:{lineno}: not valid JSON") from None
            if not isinstance(rec, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object (an item record), got {type(rec).__name__}")
            if rec.get("itemID") != len(items):
                raise DataError(f"{path}:{lineno}: expected itemID {len(items)}, got {rec.get('itemID')!r}")
            items.append(rec)
    if len(items) < n_items:
        raise DataError(f"{path} lists {len(items)} items but the interactions use {n_items}")
    return items


def load_category(data_dir: str | Path, category: str) -> RecData:
    folder = category_dir(data_dir, category)
    if not folder.is_dir():
        raise DataError(f"no RecBench folder {folder} (build it with `mmpc-rl data build`)")
    inter = folder / f"{category.lower()}.inter"
    if not inter.is_file():
        found = sorted(p.name for p in folder.glob("*.inter"))
        if len(found) != 1:
            raise DataError(f"{folder} has no {inter.name}")
        inter = folder / found[0]
    malformed: dict = {}
    pairs, labels = read_inter(inter, (mapping_size(folder / "u_id_mapping.csv"),
                                       mapping_size(folder / "i_id_mapping.csv")), malformed)
    if malformed:
        reasons = ", ".join(f"{k}: {v}" for k, v in malformed["reasons"].items())
        print(f"mmpc-rl: {category}: skipped {malformed['count']} malformed line(s) of {inter.name} ({reasons}; "
              f"e.g. {malformed['examples'][0]})")
    n_users, n_items = int(pairs[:, 0].max()) + 1, int(pairs[:, 1].max()) + 1
    train = pairs[labels == 0]
    if len(train) == 0:
        raise DataError(f"{inter} has no training rows (x_label 0)")
    has_train = np.zeros(n_users, dtype=bool)
    has_train[train[:, 0]] = True
    splits, dropped = [], 0
    for label in (1, 2):
        rows = pairs[labels == label]
        warm = has_train[rows[:, 0]]
        dropped += int((~warm).sum())
        splits.append(rows[warm])
    for rows, label, name in ((splits[0], 1, "validation"), (splits[1], 2, "test")):
        if not len(rows):
            cold = " (after dropping the rows of users with no training row)" if dropped else ""
            raise DataError(f"{category}: no {name} rows (x_label {label}) in {inter}{cold}: every RecBench metric "
                            "would read 0.0; rebuild the category or leave it out (categories=[...])")
    # MMRec sizes the item table from the interactions; extra item records (no interaction at all) are ignored.
    items = read_items(folder / "items.jsonl", n_items)[:n_items]
    for rec in items:  # stored relative to the dataset folder by `data build`
        rec["image"] = resolve_image(data_dir, rec.get("image"))
    return RecData(category, n_users, n_items, train, splits[0], splits[1], items, dropped, malformed)
