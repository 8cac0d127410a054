"""RecBench against MMRec on the same data : a NaN loss ends that grid point and keeps its best
result; BM3's linear biases keep PyTorch's default init; BM3's grid order is MMRec's."""

from __future__ import annotations

import math

import pytest
import torch

from mmpc_rl.recbench.models import BM3, GRIDS, MODELS, VBPR
from mmpc_rl.recbench.trainer import TrainConfig, grid_points, make_evaluators, select_best, train_one

pytestmark = pytest.mark.usefixtures("one_thread")


def test_bm3_grid_order_is_mmrecs():
    assert list(GRIDS["BM3"]) == ["n_layers", "reg_weight", "dropout"]
    assert [tuple(p.values()) for p in grid_points("BM3")][:3] == [(1, 0.1, 0.3), (1, 0.1, 0.5), (1, 0.01, 0.3)]


def test_bm3_biases_keep_pytorch_default_init_vbpr_zero(toy):
    data, text, image = toy
    torch.manual_seed(0)
    bm3 = BM3(data.n_users, data.n_items, data.train, text, image, embedding_size=8)
    for layer, fan_in in ((bm3.predictor, 8), (bm3.text_trs, 12), (bm3.image_trs, 16)):
        assert not torch.all(layer.bias == 0)
        assert layer.bias.abs().max() <= 1 / math.sqrt(fan_in)  # nn.Linear's own uniform(-1/sqrt(in), 1/sqrt(in))
    vbpr = VBPR(data.n_users, data.n_items, data.train, text, image, embedding_size=8)
    assert torch.all(vbpr.item_linear.bias == 0)  # the spec's zero bias for VBPR stays


def test_nan_loss_ends_the_grid_point_and_keeps_its_best(toy, monkeypatch):
    data, text, image = toy
    calls = {"n": 0}

    class Flaky(VBPR):
        def loss(self, batch):
            calls["n"] += 1
            loss = super().loss(batch)
            return loss * float("nan") if calls["n"] > 3 else loss  # one batch an epoch: NaN from epoch 3

    monkeypatch.setitem(MODELS, "Flaky", Flaky)
    cfg = TrainConfig(epochs=50, stopping_step=20)
    evals = make_evaluators(data, cfg, torch.device("cpu"))
    res = train_one("Flaky", data, text, image, {"reg_weight": 0.1}, cfg, torch.device("cpu"), evals)
    assert res["epochs_run"] == 4 and "nan" in res["stopped"] and "epoch 3" in res["stopped"]
    assert 0 <= res["best_epoch"] <= 2 and res["valid"] is not None and res["test"] is not None
    ok = train_one("VBPR", data, text, image, {"reg_weight": 0.1}, TrainConfig(epochs=3), torch.device("cpu"), evals)
    assert ok["stopped"] is None
    assert select_best([res, ok]) in (res, ok)  # both take part in the selection
