"""Sparse graphs for BM3 and FREEDOM: the normalised user-item adjacency, FREEDOM's frozen kNN item graph and its
degree-sensitive edge pruning."""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEGREE_EPS = 1e-7  # added to every degree before the inverse square root, so isolated nodes give 0, not inf


def _sparse(indices: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    return torch.sparse_coo_tensor(indices, values, (n, n), check_invariants=False).coalesce()


def edge_norm(users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int) -> torch.Tensor:
    """1/sqrt(d_u d_i) for each (u, i) edge, degrees counted over these edges (+1e-7)."""
    d_u = torch.bincount(users, minlength=n_users).double() + DEGREE_EPS
    d_i = torch.bincount(items, minlength=n_items).double() + DEGREE_EPS
    return (d_u[users].rsqrt() * d_i[items].rsqrt()).float()


def bipartite_adj(users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int,
                  values: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric (|U|+|I|)^2 sparse matrix D^-1/2 A D^-1/2 from train edges; `values` overrides the normalisation."""
    if values is None:
        values = edge_norm(users, items, n_users, n_items)
    rows = torch.cat([users, items + n_users])
    cols = torch.cat([items + n_users, users])
    return _sparse(torch.stack([rows, cols]), torch.cat([values, values]), n_users + n_items)


def knn_graph(features: torch.Tensor, k: int, chunk: int = 4096) -> torch.Tensor:
    """Directed top-k cosine graph (self included), every kept entry 1/k: row and column degrees are both taken
    as the row sum k, as FREEDOM does, so D_r^-1/2 A D_r^-1/2 puts 1/sqrt(k)*1/sqrt(k) on each edge."""
    n = features.shape[0]
    k = min(k, n)
    x = F.normalize(features.float(), dim=1)
    cols = []
    for start in range(0, n, chunk):
        sim = x[start:start + chunk] @ x.T
        cols.append(torch.topk(sim, k, dim=1).indices)
    col = torch.cat(cols).flatten()
    row = torch.arange(n, device=features.device).repeat_interleave(k)
    indices = torch.stack([row, col])
    ones = torch.ones(indices.shape[1], device=features.device)
    deg = torch.zeros(n, device=features.device).index_add_(0, row, ones)
    inv = deg.pow(-0.5)
    return _sparse(indices, inv[row] * inv[col], n)


def mm_item_graph(text: torch.Tensor | None, image: torch.Tensor | None, k: int, image_weight: float) -> torch.Tensor:
    """S_mm = w*A_v + (1-w)*A_t; a modality given as None is off and the other one is used alone."""
    if text is None and image is None:
        raise ValueError("FREEDOM needs at least one modality")
    if text is None:
        return knn_graph(image, k)
    if image is None:
        return knn_graph(text, k)
    return (image_weight * knn_graph(image, k) + (1.0 - image_weight) * knn_graph(text, k)).coalesce()


def prune_edges(users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int, drop: float,
                weights: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """FREEDOM's per-epoch graph: keep floor(|E|(1-drop)) edges sampled without replacement with probability
    proportional to `weights` (1/sqrt(d_u d_i) on the full graph), re-normalise the kept edges with their own
    degrees and symmetrise."""
    n_keep = int(len(users) * (1.0 - drop))
    keep = torch.multinomial(weights, n_keep, replacement=False, generator=generator)
    u, i = users[keep], items[keep]
    return bipartite_adj(u, i, n_users, n_items)
