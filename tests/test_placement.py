"""CQBench model placement on a faked device list: whole per rank, sharded over one node's GPUs, 4-bit, or a
one-line error; the public Qwen2.5-VL shapes counted on the meta device; the CQBench CLI loads as planned."""

from __future__ import annotations

import pytest

from mmpc_rl.errors import ModelLoadError
from mmpc_rl.plan import placement
from mmpc_rl.plan.placement import GIB, Device, plan_placement

Q72 = "Qwen/Qwen2.5-VL-72B-Instruct"
Q7 = "Qwen/Qwen2.5-VL-7B-Instruct"


@pytest.fixture(scope="module")
def shapes():
    return {name: placement.model_shape(name) for name in (Q7, Q72)}


def fake_gpus(monkeypatch, *free_gib: float, total_gib: float = 80):
    gpus = [Device(i, int(f * GIB), int(total_gib * GIB)) for i, f in enumerate(free_gib)]
    monkeypatch.setattr(placement, "devices", lambda: gpus)
    return gpus


def test_public_shapes_count_the_published_parameter_totals(shapes):
    # Qwen2.5-VL-7B-Instruct: 8.29 B parameters, 72B-Instruct: 73.4 B (model cards / safetensors index)
    assert shapes[Q7].total_params / 1e9 == pytest.approx(8.29, rel=0.01)
    assert shapes[Q72].total_params / 1e9 == pytest.approx(73.4, rel=0.01)
    assert (shapes[Q72].layers, shapes[Q72].kv_heads, shapes[Q72].head_dim) == (80, 8, 128)
    assert shapes[Q72].source == "built-in"  # the planner's one shape reader, nothing downloaded
    assert 0.9 < shapes[Q72].linear_params / shapes[Q72].total_params < 0.97  # embeddings + lm_head stay bf16 in 4-bit


def test_no_gpu_plans_nothing_and_counts_nothing(monkeypatch):
    fake_gpus(monkeypatch)
    monkeypatch.setattr(placement, "model_shape", lambda name, **_: pytest.fail("nothing to plan on CPU"))
    plan = plan_placement(Q72)
    assert (plan.mode, plan.device_map, plan.max_memory, plan.qlora) == ("cpu", None, None, False)


def test_a_model_that_fits_one_gpu_loads_whole_on_each_rank(monkeypatch, shapes):
    fake_gpus(monkeypatch, 79, 79)
    plan = plan_placement(Q7, shape=shapes[Q7], world_size=2, local_rank=1, batch_size=16, max_new_tokens=128)
    assert (plan.mode, plan.device_map, plan.qlora) == ("per_rank", {"": "cuda:1"}, False)


@pytest.mark.parametrize("n_gpus", [2, 4])
def test_72b_is_sharded_over_the_node_in_one_process(monkeypatch, shapes, n_gpus):
    fake_gpus(monkeypatch, *[79] * n_gpus)
    plan = plan_placement(Q72, shape=shapes[Q72], world_size=1, batch_size=8, max_new_tokens=128)
    assert (plan.mode, plan.device_map, plan.qlora) == ("sharded", "auto", False)
    assert sorted(plan.max_memory) == list(range(n_gpus))
    weights = plan.need["weights"]
    assert weights == shapes[Q72].total_params * 2
    assert sum(plan.max_memory.values()) >= weights
    # every GPU keeps room for the batch: its budget is below its free memory by more than the reserve
    share = plan.need["kv_cache"] // n_gpus + plan.need["activations"]
    assert all(b == 79 * GIB - placement.RESERVE_BYTES - share for b in plan.max_memory.values())


def test_72b_on_one_gpu_falls_back_to_4bit(monkeypatch, shapes):
    fake_gpus(monkeypatch, 79)
    plan = plan_placement(Q72, shape=shapes[Q72], batch_size=8, max_new_tokens=128)
    assert (plan.mode, plan.device_map, plan.qlora) == ("4bit", {"": "cuda:0"}, True)
    assert plan.need["weights_4bit"] < 79 * GIB < plan.need["weights"]
    assert "4-bit" in plan.note


def test_two_gpus_too_tight_for_the_batch_go_4bit_and_say_a_smaller_batch_would_shard(monkeypatch, shapes):
    fake_gpus(monkeypatch, 79, 79)
    plan = plan_placement(Q72, shape=shapes[Q72], world_size=1, batch_size=16, max_new_tokens=128)
    assert (plan.mode, plan.qlora) == ("4bit", True)
    assert "a batch_size below 16 would shard it in bfloat16 over 2 GPUs" in plan.note


def test_qlora_asked_for_is_4bit_even_when_bf16_fits(monkeypatch, shapes):
    fake_gpus(monkeypatch, 79)
    plan = plan_placement(Q7, shape=shapes[Q7], qlora=True)
    assert (plan.mode, plan.qlora) == ("4bit", True)


def test_the_batch_counts_a_model_that_fits_only_with_a_small_batch(monkeypatch, shapes):
    fake_gpus(monkeypatch, 20)  # 7B bf16 is ~15.4 GiB: batch 1 fits beside it, 32 only beside 4-bit
    assert plan_placement(Q7, shape=shapes[Q7], batch_size=1, max_new_tokens=128).mode == "per_rank"
    assert plan_placement(Q7, shape=shapes[Q7], batch_size=32, max_new_tokens=128).mode == "4bit"


def test_nothing_fits_names_the_need_and_the_devices(monkeypatch, shapes):
    fake_gpus(monkeypatch, 30, 30, total_gib=40)
    with pytest.raises(ModelLoadError, match=r"does not fit: 136\.\d GiB of weights .*cuda:0 30\.0 GiB, cuda:1 30\.0"):
        plan_placement(Q72, shape=shapes[Q72], world_size=1, batch_size=8)


def test_several_processes_cannot_shard_and_are_told_to_run_one(monkeypatch, shapes):
    fake_gpus(monkeypatch, 39, 39, total_gib=40)
    with pytest.raises(ModelLoadError, match="run CQBench as one process"):
        plan_placement(Q72, shape=shapes[Q72], world_size=2, local_rank=0, batch_size=8)


def test_cqbench_cli_loads_72b_sharded_over_two_gpus(monkeypatch, shapes):
    from mmpc_rl.eval import cqbench

    fake_gpus(monkeypatch, 79, 79)
    monkeypatch.setattr(placement, "model_shape", lambda name, **_: shapes[name])
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    seen = {}

    def fake_load(mc, **kwargs):
        seen.update(kwargs, name=mc.name_or_path, qlora=mc.qlora)
        return "model", "processor"

    monkeypatch.setattr(cqbench, "load_policy", fake_load)  # the name the CLI calls
    cfg = cqbench.parse_config([f"models=[{Q72}]", "batch_size=8"])
    assert cqbench.load_model(cfg, Q72) == ("model", "processor")
    assert (seen["name"], seen["device_map"], seen["qlora"]) == (Q72, "auto", False)
    assert sorted(seen["max_memory"]) == [0, 1]
