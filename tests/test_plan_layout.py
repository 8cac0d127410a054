"""The trainer obeys the memory planner: an open layout is chosen to fit the GPU before any model loads, a pinned
layout that does not fit stops with one line naming one that does, and CPU runs keep one group per micro-batch."""

from __future__ import annotations

import pytest

from mmpc_rl.errors import ConfigError
from mmpc_rl.train import builder
from mmpc_rl.train.recipe import load_training_recipe

PINNED = ["trainer.gradient_checkpointing=false", "trainer.per_device_train_batch_size=16",
          "trainer.gradient_accumulation_steps=1"]


def layout(recipe) -> tuple:
    return tuple(recipe.trainer.get(k) for k in builder.LAYOUT_KEYS)


def test_the_shipped_gpu_recipes_leave_the_layout_open():
    for name in ("i2t", "t2i"):
        recipe = load_training_recipe([f"recipe={name}"])
        assert layout(recipe) == (None, None, None)


def test_an_open_layout_is_planned_to_fit_the_gpu(monkeypatch, capsys):
    monkeypatch.setattr(builder, "on_gpu", lambda recipe: True)  # as on a GPU box: the device's size is asked for
    monkeypatch.setattr(builder, "device_gb", lambda: 80.0)
    resolved = builder.resolve_layout(load_training_recipe(["recipe=i2t"]))
    micro, accum, ckpt = layout(resolved)
    assert micro * accum == 16 and isinstance(ckpt, bool)
    assert "mmpc-rl: memory plan: trainer.per_device_train_batch_size=" in capsys.readouterr().out
    # a smaller GPU gets a layout that trades speed for memory, never a different objective
    small = layout(builder.resolve_layout(load_training_recipe(["recipe=i2t"]), gpu_gb=40))
    assert small[0] * small[1] == 16 and (small[0] < micro or small[2] and not ckpt)


def test_a_pinned_layout_that_does_not_fit_stops_before_loading(monkeypatch):
    monkeypatch.setattr(builder, "load_policy", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(ConfigError) as e:
        builder.resolve_layout(load_training_recipe(["recipe=i2t", *PINNED]), gpu_gb=80)
    msg = str(e.value)
    assert "\n" not in msg and "predicted peak" in msg and "of 80 GiB" in msg
    assert "a layout that fits: trainer.per_device_train_batch_size=" in msg


def test_a_pinned_layout_that_fits_is_kept():
    recipe = load_training_recipe(["recipe=i2t", "trainer.gradient_checkpointing=true",
                                   "trainer.per_device_train_batch_size=16", "trainer.gradient_accumulation_steps=1"])
    assert layout(builder.resolve_layout(recipe, gpu_gb=80)) == (16, 1, True)


def test_cpu_keeps_one_group_per_micro_batch_without_checkpointing():
    resolved = builder.resolve_layout(load_training_recipe(["recipe=i2t", "trainer.use_cpu=true"]))
    assert layout(resolved) == (16, 1, False)
    demo = builder.resolve_layout(load_training_recipe(["recipe=demo-i2t"]))
    assert layout(demo) == (16, 1, False)  # its pinned micro-batch (two prompts of 8) stays
