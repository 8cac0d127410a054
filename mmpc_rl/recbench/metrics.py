"""MMRec's full-ranking evaluator: every item is scored, the user's training items are masked, top-50 is ranked.

Recall@k = hits in the top k / |T_u|; NDCG@k = DCG@k / IDCG over min(|T_u|, k) positions. Each metric is averaged
over the evaluated users and rounded to 4 decimals, as MMRec reports it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

KS = (5, 10, 20, 50)
MASK_VALUE = -1e10  # what MMRec writes over training items before top-k


def metric_names(ks: Sequence[int] = KS) -> list[str]:
    return [f"{m}@{k}" for m in ("recall", "ndcg") for k in ks]


def _hit_sums(topk_idx: torch.Tensor, test_dense: torch.Tensor, n_test: torch.Tensor, ks: Sequence[int]) -> dict:
    """Per-metric sums over the users of one batch (not yet averaged)."""
    hits = torch.gather(test_dense, 1, topk_idx).to(torch.float64)  # [B, K]
    max_k = topk_idx.shape[1]
    discount = 1.0 / torch.log2(torch.arange(2, max_k + 2, dtype=torch.float64, device=hits.device))
    dcg = torch.cumsum(hits * discount, dim=1)
    idcg_table = torch.cumsum(discount, dim=0)
    cum_hits = torch.cumsum(hits, dim=1)
    n_test = n_test.to(torch.float64)
    out = {}
    for k in ks:
        kk = min(k, max_k)
        out[f"recall@{k}"] = (cum_hits[:, kk - 1] / n_test).sum().item()
        ideal_len = torch.clamp(n_test, max=kk).long() - 1
        out[f"ndcg@{k}"] = (dcg[:, kk - 1] / idcg_table[ideal_len]).sum().item()
    return out


def topk_metrics(scores: torch.Tensor, train_mask: torch.Tensor, test_items: Sequence[Iterable[int]],
                 ks: Sequence[int] = KS) -> dict[str, float]:
    """Recall@k and NDCG@k for a users x items score matrix, as MMRec computes them.

    `train_mask[u, i]` marks the items to exclude from user u's ranking (its training items); `test_items[u]` is
    the set of held-out items of user u. Users with an empty test set are not evaluated (MMRec only evaluates
    users that appear in the split). Keys: `recall@5`, `ndcg@5`, ... for each k; values rounded to 4 decimals.
    """
    if scores.shape != train_mask.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and train_mask {tuple(train_mask.shape)} differ in shape")
    if len(test_items) != scores.shape[0]:
        raise ValueError(f"test_items has {len(test_items)} users, scores has {scores.shape[0]}")
    sets = [sorted(set(int(i) for i in t)) for t in test_items]
    keep = [u for u, t in enumerate(sets) if t]
    if not keep:
        return {name: 0.0 for name in metric_names(ks)}
    scores = scores[keep].float().masked_fill(train_mask[keep].bool(), MASK_VALUE)
    test_dense = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    for row, u in enumerate(keep):
        test_dense[row, sets[u]] = True
    n_test = test_dense.sum(1)
    topk_idx = torch.topk(scores, min(max(ks), scores.shape[1]), dim=1).indices
    sums = _hit_sums(topk_idx, test_dense, n_test, ks)
    return {name: round(sums[name] / len(keep), 4) for name in metric_names(ks)}


class Evaluator:
    """Batched full ranking for one split: built once per dataset, called every epoch.

    `train_csr` and `split_csr` are (indptr, indices) over users; only users with split items are evaluated.
    """

    def __init__(self, train_csr: tuple[np.ndarray, np.ndarray], split_csr: tuple[np.ndarray, np.ndarray],
                 n_items: int, ks: Sequence[int] = KS, batch_users: int = 4096, device: str | torch.device = "cpu",
                 max_batch_elements: int = 2**26):
        self.ks, self.n_items, self.device = tuple(ks), n_items, torch.device(device)
        # a users x items score block of at most ~64M floats, so large catalogs do not run out of memory
        self.batch_users = max(1, min(batch_users, max_batch_elements // max(n_items, 1)))
        self.train_ptr, self.train_idx = (torch.as_tensor(a, dtype=torch.long, device=self.device) for a in train_csr)
        self.split_ptr, self.split_idx = (torch.as_tensor(a, dtype=torch.long, device=self.device) for a in split_csr)
        counts = self.split_ptr[1:] - self.split_ptr[:-1]
        self.users = torch.nonzero(counts > 0).flatten()
        # the batches and their train/split item coordinates never change: worked out once, not every epoch
        self.batches = []
        for start in range(0, len(self.users), self.batch_users):
            users = self.users[start:start + self.batch_users]
            self.batches.append((users, self._coords(self.train_ptr, self.train_idx, users),
                                 self._coords(self.split_ptr, self.split_idx, users),
                                 self.split_ptr[users + 1] - self.split_ptr[users]))

    def _coords(self, ptr: torch.Tensor, idx: torch.Tensor, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(row in the batch, item) of every interaction of `users` in a CSR matrix."""
        starts, ends = ptr[users], ptr[users + 1]
        lens = ends - starts
        dev = self.device
        rows = torch.repeat_interleave(torch.arange(len(users), device=dev), lens)
        offs = torch.arange(int(lens.sum()), device=dev) - torch.repeat_interleave(torch.cumsum(lens, 0) - lens, lens)
        return rows, idx[torch.repeat_interleave(starts, lens) + offs]

    def _dense(self, coords: tuple[torch.Tensor, torch.Tensor], n_users: int) -> torch.Tensor:
        out = torch.zeros(n_users, self.n_items, dtype=torch.bool, device=self.device)
        out[coords] = True
        return out

    @torch.no_grad()
    def evaluate(self, score_fn) -> dict[str, float]:
        """`score_fn(user_ids: LongTensor on device) -> [B, n_items]` scores."""
        totals = dict.fromkeys(metric_names(self.ks), 0.0)
        if len(self.users) == 0:
            return totals
        max_k = min(max(self.ks), self.n_items)
        for users, train_coords, split_coords, n_test in self.batches:
            scores = score_fn(users).float()
            scores = scores.masked_fill(self._dense(train_coords, len(users)), MASK_VALUE)
            topk_idx = torch.topk(scores, max_k, dim=1).indices
            for name, value in _hit_sums(topk_idx, self._dense(split_coords, len(users)), n_test, self.ks).items():
                totals[name] += value
        return {name: round(value / len(self.users), 4) for name, value in totals.items()}
