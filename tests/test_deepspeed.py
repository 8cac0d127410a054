"""DeepSpeed for real on CPU: the shipped launch/zero2.yaml and launch/zero3.yaml start 2 processes (torchrun, gloo,
DeepSpeed's CPU accelerator), train the demo recipe for 2 steps and save an adapter that PEFT loads onto the tiny
base. Under ZeRO-3 the CQBench callback generates from the gathered weights, with shards of unequal size (3 items on
2 ranks), and its completions are the ones the saved adapter gives in a plain single process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(config: str, out: Path, tiny_qwen, sample_catalog, *extra: str) -> subprocess.CompletedProcess:
    # --mixed_precision no: the files say bf16 for GPUs; DeepSpeed rejects a bf16 engine under the fp32 demo recipe
    cmd = [str(BIN / "accelerate"), "launch", "--config_file", str(ROOT / "launch" / config), "--num_processes", "2",
           "--mixed_precision", "no", "--main_process_port", str(_free_port()), str(ROOT / "train" / "grpo.py"),
           "recipe=demo-i2t", f"model.name_or_path={tiny_qwen}", f"data.path={sample_catalog}",
           "data.limit_per_category=4", "trainer.max_steps=2", "trainer.num_generations=4",
           "trainer.per_device_train_batch_size=4", "trainer.max_completion_length=8", "trainer.save_strategy=no",
           f"trainer.output_dir={out}", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "DS_ACCELERATOR": "cpu"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "trained 2 steps" in proc.stdout
    return proc


def _load_adapter(tiny_qwen, out: Path):
    """The saved adapter on a fresh tiny base: every LoRA weight full-sized (ZeRO-3 saves gathered tensors, not
    empty shards) and the B matrices moved away from their zero init by training."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(tiny_qwen, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(out), is_trainable=False)
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert lora and all(p.numel() > 0 and p.dim() == 2 for p in lora.values())
    assert any(p.abs().sum() > 0 for n, p in lora.items() if "lora_B" in n)
    return model


@pytest.mark.slow
def test_zero2_two_process_cpu_run_saves_a_loadable_adapter(tmp_path, tiny_qwen, sample_catalog, one_thread):
    out = tmp_path / "z2"
    _launch("zero2.yaml", out, tiny_qwen, sample_catalog, "eval.enabled=false")
    logged = [s for s in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in s]
    assert [s["step"] for s in logged] == [1, 2]
    _load_adapter(tiny_qwen, out)


@pytest.mark.slow
def test_zero3_two_process_cpu_run_with_cqbench_on_gathered_weights(tmp_path, tiny_qwen, sample_catalog, one_thread):
    from mmpc_rl.data import load_items
    from mmpc_rl.eval.generate import generate_batch
    from mmpc_rl.tasks import get_task

    out = tmp_path / "z3"
    _launch("zero3.yaml", out, tiny_qwen, sample_catalog, "eval.enabled=true", "eval.items_per_category=1",
            "eval.batch_size=1", "eval.max_new_tokens=6")
    items = load_items(sample_catalog, split="cqbench", limit_per_category=1, seed=42)
    assert len(items) % 2 == 1  # unequal shards: one rank pads a generate call or the gathers would hang
    shards = sorted((out / "cqbench" / "after").glob("items.rank*.jsonl"))
    assert [len(p.read_text().splitlines()) for p in shards] == [(len(items) + 1) // 2, len(items) // 2]
    lines = (out / "cqbench" / "after" / "items.jsonl").read_text().splitlines()
    after = {r["key"]: r for r in map(json.loads, lines)}
    assert sorted(after) == sorted(f"{it['category']}/{it['parent_asin']}" for it in items)
    summary = json.loads((out / "cqbench" / "after" / "summary.json").read_text())
    assert summary["n_items"] == len(items)
    # the sharded run generated what the trained weights say: the same greedy completions in one plain process
    model = _load_adapter(tiny_qwen, out)
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_qwen)
    task = get_task("i2t")
    for it in items:
        [completion] = generate_batch(model, processor, task, [it], max_new_tokens=6)
        assert completion == after[f"{it['category']}/{it['parent_asin']}"]["completion"]


def _lockstep_worker(rank: int, port: int, n_batches: list[int], out: str) -> None:
    import torch.distributed as dist

    from mmpc_rl.zero3 import lockstep_batches

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=len(n_batches))
    try:
        batches = [[{"i": rank * 10 + b}] for b in range(n_batches[rank])]
        got = lockstep_batches(batches, {"i": -1})
        Path(out, f"{rank}.json").write_text(json.dumps([[b, real] for b, real in got]))
    finally:
        dist.destroy_process_group()


def test_lockstep_pads_every_rank_to_the_largest_batch_count(tmp_path):
    import torch.multiprocessing as mp

    from mmpc_rl.zero3 import lockstep_batches

    assert lockstep_batches([[{"i": 1}]], None) == [([{"i": 1}], True)]  # one process: nothing to pad
    # rank 1 has nothing of its own (fewer items than ranks); the e2e ZeRO-3 run above covers 2 batches vs 1
    mp.spawn(_lockstep_worker, args=(_free_port(), [2, 0], str(tmp_path)), nprocs=2, join=True)
    got = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    assert got[0] == [[[{"i": b}], True] for b in range(2)]
    assert got[1] == [[[{"i": -1}], False]] * 2


def test_scorers_load_whole_inside_whole_weights():
    """transformers' zero.Init switch is off inside the block and back on after it."""
    from transformers.integrations import is_deepspeed_zero3_enabled
    from transformers.integrations.deepspeed import HfDeepSpeedConfig

    from mmpc_rl.zero3 import whole_weights, zero3_enabled

    keep = HfDeepSpeedConfig({"zero_optimization": {"stage": 3}, "train_batch_size": 1})  # registers itself
    assert is_deepspeed_zero3_enabled() and zero3_enabled()
    with whole_weights():
        assert not is_deepspeed_zero3_enabled()
    assert is_deepspeed_zero3_enabled()
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    del keep


def test_generation_under_zero3_uses_trls_gathering_context_on_the_engine(monkeypatch):
    """With a ZeRO-3 trainer, generation goes through TRL's unwrap_model_for_generation on the DeepSpeed engine
    (model_wrapped) with the trainer's ds3_gather_for_generation; without ZeRO-3 the model is used as given."""
    import contextlib
    from types import SimpleNamespace

    import trl.models.utils

    from mmpc_rl import zero3

    calls = []

    @contextlib.contextmanager
    def fake_unwrap(engine, accelerator, gather_deepspeed3_params=True):
        calls.append((engine, accelerator, gather_deepspeed3_params))
        yield "gathered"

    monkeypatch.setattr(trl.models.utils, "unwrap_model_for_generation", fake_unwrap)
    plugin = SimpleNamespace(zero_stage=3)
    accelerator = SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin))
    trainer = SimpleNamespace(accelerator=accelerator, model_wrapped="engine")
    with zero3.generation_model("peft-model", trainer, gather=False) as m:
        assert m == "gathered"
    assert calls == [("engine", accelerator, False)]
    plugin.zero_stage = 2
    with zero3.generation_model("peft-model", trainer) as m:
        assert m == "peft-model"
    with zero3.generation_model("peft-model", None) as m:
        assert m == "peft-model"
    assert len(calls) == 1
