"""VBPR, BM3 and FREEDOM, written from the RecBench spec (shared/reference/recbench.md section 3.4).

Every model takes `(n_users, n_items, train_pairs, text_feat, image_feat, **hyper)`; a feature matrix given as None
means that modality is off. `loss(batch)` takes a LongTensor [B, 3] of (user, pos, neg) (BM3 ignores the negative);
`score_tables()` returns (user table, item table) whose
products are the scores; `pre_epoch()` runs before each training epoch (FREEDOM's pruning).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmpc_rl.recbench.graph import bipartite_adj, edge_norm, mm_item_graph, prune_edges


def _xavier_embedding(n: int, d: int) -> nn.Parameter:
    w = torch.empty(n, d)
    nn.init.xavier_uniform_(w)
    return nn.Parameter(w)


def _xavier_normal_linear(d_in: int, d_out: int, zero_bias: bool = True) -> nn.Linear:
    layer = nn.Linear(d_in, d_out)
    nn.init.xavier_normal_(layer.weight)
    if zero_bias:  # VBPR: MMRec applies its xavier init helper, which zeroes the bias, to the whole model
        nn.init.zeros_(layer.bias)
    return layer


def _concat_features(text: torch.Tensor | None, image: torch.Tensor | None) -> torch.Tensor:
    feats = [f for f in (text, image) if f is not None]  # text first, as in the spec
    if not feats:
        raise ValueError("at least one of text_feat / image_feat is needed")
    return torch.cat(feats, dim=1).float()


def _trainable(feat: torch.Tensor | None) -> nn.Parameter | None:
    return None if feat is None else nn.Parameter(feat.detach().clone().float())


class Recommender(nn.Module):
    uses_negatives = True

    def pre_epoch(self) -> None:
        pass


class VBPR(Recommender):
    """q_i = [I_id[i]; Linear([t_i; v_i])] with fixed raw features; s(u, i) = U_u . q_i; BPR + EmbLoss."""

    def __init__(self, n_users, n_items, train_pairs, text_feat=None, image_feat=None, *, embedding_size=64,
                 reg_weight=0.0):
        super().__init__()
        d = embedding_size
        self.reg_weight = reg_weight
        self.u_emb = _xavier_embedding(n_users, 2 * d)
        self.i_emb = _xavier_embedding(n_items, d)
        self.register_buffer("raw", _concat_features(text_feat, image_feat))
        self.item_linear = _xavier_normal_linear(self.raw.shape[1], d)

    def item_table(self) -> torch.Tensor:
        return torch.cat([self.i_emb, self.item_linear(self.raw)], dim=1)

    def loss(self, batch: torch.Tensor) -> torch.Tensor:
        users, pos, neg = batch.T
        items = self.item_table()
        u, q_pos, q_neg = self.u_emb[users], items[pos], items[neg]
        diff = (u * q_pos).sum(1) - (u * q_neg).sum(1)
        bpr = -torch.log(1e-10 + torch.sigmoid(diff)).mean()
        reg = (u.norm() + q_pos.norm() + q_neg.norm()) / len(users)
        return bpr + self.reg_weight * reg

    @torch.no_grad()
    def score_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.u_emb, self.item_table()


class _SymmetricSpMM(torch.autograd.Function):
    """A @ X for a symmetric sparse A: the backward reuses A instead of letting torch transpose and re-coalesce it
    on every step, which dominated BM3's step time on CPU."""

    @staticmethod
    def forward(ctx, adj, x):
        ctx.save_for_backward(adj)
        return torch.sparse.mm(adj, x)

    @staticmethod
    def backward(ctx, grad):
        (adj,) = ctx.saved_tensors
        return None, torch.sparse.mm(adj, grad)


def _lightgcn(adj: torch.Tensor, ego: torch.Tensor, n_layers: int) -> torch.Tensor:
    layers = [ego]
    for _ in range(n_layers):
        layers.append(_SymmetricSpMM.apply(adj, layers[-1]))
    return torch.stack(layers, dim=1).mean(dim=1)


class BM3(Recommender):
    """Bootstrapped multimodal latent embeddings: no negatives, a predictor and dropout-perturbed stopped targets."""

    uses_negatives = False

    def __init__(self, n_users, n_items, train_pairs, text_feat=None, image_feat=None, *, embedding_size=64,
                 n_layers=1, dropout=0.5, reg_weight=0.1, cl_weight=2.0):
        super().__init__()
        d = embedding_size
        self.n_users, self.n_items, self.n_layers = n_users, n_items, n_layers
        self.dropout, self.reg_weight, self.cl_weight = dropout, reg_weight, cl_weight
        self.u_emb = _xavier_embedding(n_users, d)
        self.i_emb = _xavier_embedding(n_items, d)
        # MMRec's BM3 sets only these layers' weights (xavier_normal); their biases keep nn.Linear's default init
        self.predictor = _xavier_normal_linear(d, d, zero_bias=False)
        self.text = _trainable(text_feat)
        self.image = _trainable(image_feat)
        self.text_trs = None if text_feat is None else _xavier_normal_linear(text_feat.shape[1], d, zero_bias=False)
        self.image_trs = None if image_feat is None else _xavier_normal_linear(image_feat.shape[1], d,
                                                                                zero_bias=False)
        users, items = torch.as_tensor(train_pairs, dtype=torch.long).T
        self.register_buffer("adj", bipartite_adj(users, items, n_users, n_items))

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        h = _lightgcn(self.adj, torch.cat([self.u_emb, self.i_emb]), self.n_layers)
        h_u, h_i = h[: self.n_users], h[self.n_users:]
        return h_u, h_i + self.i_emb

    def _target(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x.detach(), p=self.dropout, training=True)

    def loss(self, batch: torch.Tensor) -> torch.Tensor:
        users, items = batch[:, 0], batch[:, 1]
        h_u, h_i = self.forward()
        p_u, p_i = self.predictor(h_u[users]), self.predictor(h_i[items])
        t_u, t_i = self._target(h_u[users]), self._target(h_i[items])

        def c(a, b):
            return F.cosine_similarity(a, b, dim=-1).mean()

        loss = (1 - c(p_u, t_i)) + (1 - c(p_i, t_u))
        cl = torch.zeros((), device=h_u.device)
        for table, trs in ((self.text, self.text_trs), (self.image, self.image_trs)):
            if table is None:
                continue
            h_m = trs(table[items])
            p_m = self.predictor(h_m)
            cl = cl + (1 - c(p_m, t_i)) + (1 - c(p_m, self._target(h_m)))
        reg = (h_u.norm() + h_i.norm()) / self.n_items
        return loss + self.reg_weight * reg + self.cl_weight * cl

    @torch.no_grad()
    def score_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        h_u, h_i = self.forward()
        return self.predictor(h_u), self.predictor(h_i)


class FREEDOM(Recommender):
    """A frozen kNN item graph built from the given features plus LightGCN over a degree-pruned user-item graph."""

    def __init__(self, n_users, n_items, train_pairs, text_feat=None, image_feat=None, *, embedding_size=64,
                 feat_embed_dim=64, knn_k=10, mm_image_weight=0.1, n_mm_layers=1, n_ui_layers=2, dropout=0.8,
                 reg_weight=0.0, generator: torch.Generator | None = None, mm_adj: torch.Tensor | None = None):
        super().__init__()
        d = embedding_size
        self.n_users, self.n_items = n_users, n_items
        self.n_mm_layers, self.n_ui_layers = n_mm_layers, n_ui_layers
        self.dropout, self.reg_weight, self.generator = dropout, reg_weight, generator
        self.u_emb = _xavier_embedding(n_users, d)
        self.i_emb = _xavier_embedding(n_items, d)
        self.text = _trainable(text_feat)
        self.image = _trainable(image_feat)
        self.text_trs = None if text_feat is None else nn.Linear(text_feat.shape[1], feat_embed_dim)
        self.image_trs = None if image_feat is None else nn.Linear(image_feat.shape[1], feat_embed_dim)
        if mm_adj is None:  # built from the raw features of *this* condition, never shared across conditions
            mm_adj = mm_item_graph(text_feat, image_feat, knn_k, mm_image_weight)
        self.register_buffer("mm_adj", mm_adj)
        users, items = torch.as_tensor(train_pairs, dtype=torch.long).T
        self.register_buffer("edge_users", users)
        self.register_buffer("edge_items", items)
        self.register_buffer("edge_weights", edge_norm(users, items, n_users, n_items))
        self.register_buffer("norm_adj", bipartite_adj(users, items, n_users, n_items))
        self.masked_adj = self.norm_adj

    def pre_epoch(self) -> None:
        self.masked_adj = prune_edges(self.edge_users, self.edge_items, self.n_users, self.n_items, self.dropout,
                                      self.edge_weights, self.generator)

    def forward(self, adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.i_emb
        for _ in range(self.n_mm_layers):
            h = torch.sparse.mm(self.mm_adj, h)
        out = _lightgcn(adj, torch.cat([self.u_emb, self.i_emb]), self.n_ui_layers)
        return out[: self.n_users], out[self.n_users:] + h

    def loss(self, batch: torch.Tensor) -> torch.Tensor:
        users, pos, neg = batch.T
        u_all, i_all = self.forward(self.masked_adj)
        u = u_all[users]

        def bpr(x_pos, x_neg):
            return -F.logsigmoid((u * x_pos).sum(1) - (u * x_neg).sum(1)).mean()

        loss = bpr(i_all[pos], i_all[neg])
        for table, trs in ((self.text, self.text_trs), (self.image, self.image_trs)):
            if table is not None:
                proj = trs(table)
                loss = loss + self.reg_weight * bpr(proj[pos], proj[neg])
        return loss

    @torch.no_grad()
    def score_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward(self.norm_adj)


MODELS: dict[str, type[Recommender]] = {"VBPR": VBPR, "BM3": BM3, "FREEDOM": FREEDOM}

# Grids from the spec (MMRec's model yamls); the cartesian product of these lists is searched.
GRIDS: dict[str, dict[str, list]] = {
    "VBPR": {"reg_weight": [2.0, 1.0, 0.1, 0.01, 1e-3, 1e-4, 1e-5]},
    "BM3": {"n_layers": [1, 2], "reg_weight": [0.1, 0.01], "dropout": [0.3, 0.5]},  # MMRec's key order: ties
    "FREEDOM": {"dropout": [0.8, 0.9], "reg_weight": [0.0, 1e-5, 1e-4, 1e-3]},
}
