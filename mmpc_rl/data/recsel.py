"""RecBench user/item selection (the procedure of the authors' download_amazon_data_rec.py and process_all.py, or a
literal k-core) and the per-user chronological split.

Interactions of a whole category (tens of millions for Home & Kitchen) are held as three numpy columns with users as
64-bit hashes, not as Python objects; user id strings are recovered only for the final, small set in a second pass.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from mmpc_rl.data.reader import Stats, iter_reviews


def user_hash(user: str) -> int:
    return int.from_bytes(hashlib.blake2b(user.encode(), digest_size=8).digest(), "little", signed=True)


def collect(path: Path, item_index: dict[str, int], stats: Stats, *, min_rating: float = 0.0,
            progress: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user hash, item index, timestamp) columns of the reviews of indexed items rated >= min_rating."""
    users, items, times = array("q"), array("l"), array("q")
    for user, asin, rating, ts in iter_reviews(path, stats, progress=progress):
        i = item_index.get(asin)
        if i is not None and rating >= min_rating:
            users.append(user_hash(user))
            items.append(i)
            times.append(ts)
    return np.frombuffer(users, np.int64), np.asarray(items, np.int64), np.frombuffer(times, np.int64)


def user_sequences(users: np.ndarray, items: np.ndarray, times: np.ndarray, *, min_len: int = 5,
                   max_len: int = 20) -> dict[int, list[int]]:
    """Each user's items in time order (first `max_len`; equal times keep file order), for users with at least
    `min_len` interactions, keyed in the order of each user's first row: the authors' dict of users is filled while
    reading the review file, and the selection's stable sorts break ties by that order."""
    if len(users) == 0:
        return {}
    order = np.lexsort((times, users))  # stable: rows of one user at one time keep their file order
    u, it = users[order], items[order]
    cut = np.flatnonzero(np.diff(u)) + 1
    starts, ends = np.r_[0, cut], np.r_[cut, len(u)]
    first_row = np.minimum.reduceat(order, starts)
    keep = np.flatnonzero((ends - starts) >= min_len)
    keep = keep[np.argsort(first_row[keep], kind="stable")]
    return {int(u[starts[k]]): it[starts[k]:min(ends[k], starts[k] + max_len)].tolist() for k in keep}


def select_users(seqs: dict[int, list[int]], target: int = 1000) -> list[int]:
    """`_select_users_with_minimal_overlap` (download_amazon_data_rec.py): users by sequence length, a tie keeping
    the order of `seqs` (a stable sort); a pass admits a user bringing at most 20 new items, then, below 80 % of the
    target, 40; below 90 %, and then below the target, anyone."""
    order = sorted(seqs, key=lambda u: len(seqs[u]))
    chosen: list[int] = []
    taken: set[int] = set()
    items: set[int] = set()
    for limit, below in ((20, None), (40, 0.8), (None, 0.9), (None, 1.0)):
        if below is not None and len(chosen) >= below * target:
            continue
        for u in order:
            if len(chosen) >= target:
                break
            if u in taken or (limit is not None and len(set(seqs[u]) - items) > limit):
                continue
            chosen.append(u)
            taken.add(u)
            items.update(seqs[u])
    return chosen


def refilter(chosen: list[int], seqs: dict[int, list[int]], ok: set[int], *, min_len: int = 5) -> list[int]:
    """Drop items without an image; keep users with >= min_len left; replace lost users past 10%, most surviving
    items first, a tie keeping the order of `seqs` (`_find_replacement_users`' stable sort)."""
    kept = [u for u in chosen if sum(i in ok for i in seqs[u]) >= min_len]
    if len(chosen) - len(kept) > 0.1 * len(chosen):
        taken = set(kept)
        spare = [(sum(i in ok for i in seq), u) for u, seq in seqs.items() if u not in taken]
        spare = sorted((s for s in spare if s[0] >= min_len), key=lambda s: -s[0])
        kept += [u for _, u in spare[: len(chosen) - len(kept)]]
    return kept


def kcore(users: np.ndarray, items: np.ndarray, k_user: int, k_item: int) -> np.ndarray:
    """Mask of rows left once every user has >= k_user and every item >= k_item rows (iterated to a fixed point)."""
    mask = np.ones(len(users), bool)
    while True:
        _, uinv, ucnt = np.unique(users[mask], return_inverse=True, return_counts=True)
        _, iinv, icnt = np.unique(items[mask], return_inverse=True, return_counts=True)
        good = (ucnt[uinv] >= k_user) & (icnt[iinv] >= k_item)
        if good.all():
            return mask
        idx = np.flatnonzero(mask)
        mask[idx[~good]] = False


def earliest_per_pair(users: np.ndarray, items: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Mask keeping each (user, item)'s earliest review (the published k-core scripts' dedup)."""
    order = np.lexsort((times, items, users))
    first = np.ones(len(order), bool)
    first[1:] = (users[order][1:] != users[order][:-1]) | (items[order][1:] != items[order][:-1])
    mask = np.zeros(len(users), bool)
    mask[order[first]] = True
    return mask


def split_labels(n: int) -> list[int]:
    """x_label for one user's n time-ordered rows: n < 10 -> last test, second-to-last valid; else 80/10/10."""
    if n < 10:
        return [0] * max(0, n - 2) + [1, 2][-min(n, 2):] if n else []
    val_test = int(0.2 * n)
    val = val_test // 2
    return [0] * (n - val_test) + [1] * val + [2] * (val_test - val)


def final_interactions(path: Path, whitelist: set[str], stats: Stats, *, users: set[int] | None = None,
                       dedup: str = "triple", k_user: int = 8, k_item: int = 1, progress: bool = True,
                       ) -> list[tuple[str, str, float, int]]:
    """Every review of whitelisted items (of `users` if given), deduplicated, then k-cored.

    dedup="triple": process_all.py's drop_duplicates on (user, item, timestamp); "pair": earliest per (user, item).
    """
    rows = [r for r in iter_reviews(path, stats, progress=progress)
            if r[1] in whitelist and (users is None or user_hash(r[0]) in users)]
    if dedup == "triple":
        rows = list({(u, i, t): (u, i, r, t) for u, i, r, t in rows}.values())
    else:
        rows.sort(key=lambda r: (r[0], r[1], r[3]))
        rows = [r for j, r in enumerate(rows) if j == 0 or rows[j - 1][:2] != r[:2]]
    if not rows:
        return []
    uid = {u: n for n, u in enumerate(sorted({r[0] for r in rows}))}
    iid = {i: n for n, i in enumerate(sorted({r[1] for r in rows}))}
    u = np.array([uid[r[0]] for r in rows], np.int64)
    i = np.array([iid[r[1]] for r in rows], np.int64)
    mask = kcore(u, i, k_user, k_item)
    return [r for r, m in zip(rows, mask, strict=True) if m]


def reindex(rows: Iterable[tuple[str, str, float, int]]) -> tuple[list[tuple], dict[str, int], dict[str, int]]:
    """Rows (userID, itemID, rating, timestamp, x_label) with 0-based ids over sorted originals, split per user."""
    rows = list(rows)
    umap = {u: n for n, u in enumerate(sorted({r[0] for r in rows}))}
    imap = {i: n for n, i in enumerate(sorted({r[1] for r in rows}))}
    rows.sort(key=lambda r: (umap[r[0]], r[3]))
    out: list[tuple] = []
    start = 0
    while start < len(rows):
        end = start
        while end < len(rows) and rows[end][0] == rows[start][0]:
            end += 1
        labels = split_labels(end - start)
        out += [(umap[u], imap[i], r, t, x) for (u, i, r, t), x in zip(rows[start:end], labels, strict=True)]
        start = end
    return out, umap, imap
