"""Compiled static-cache decoding (mmpc_rl.train.decoding): the static cache decodes the same tokens as TRL's dynamic
one, the recipe switch reaches the trainer's GenerationConfig and a real GRPO step, and where compilation cannot run
generation is left as TRL built it, with the reason logged. On CPU the compile backend is dynamo's "eager" (graph
capture, guards and recompiles are real; no C++ code generation, which would take minutes)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from mmpc_rl.train import decoding

FAST = ["eval.enabled=false", "trainer.max_completion_length=10", "trainer.save_strategy=no",
        "trainer.num_generations=4", "trainer.per_device_train_batch_size=4"]


def eager_everywhere():
    from transformers import CompileConfig

    config = CompileConfig(backend="eager", mode=None)
    config._compile_all_devices = True  # transformers' opt-in for devices other than CUDA/XPU
    return config


def test_static_cache_decodes_the_same_tokens_as_the_dynamic_cache(tiny_qwen, one_thread):
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor, GenerationConfig

    processor = AutoProcessor.from_pretrained(str(tiny_qwen))
    processor.tokenizer.padding_side = "left"
    model = AutoModelForImageTextToText.from_pretrained(str(tiny_qwen)).eval()
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)) for _ in range(3)]
    # different prompt lengths, so left padding and the padded static cache are exercised too
    texts = [processor.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                                                         {"type": "text", "text": "title " * k}]}],
                                           add_generation_prompt=True) for k in (1, 4, 9)]
    inputs = processor(text=texts, images=images, return_tensors="pt", padding=True)

    def generate(**kw):
        config = GenerationConfig(max_new_tokens=16, min_new_tokens=16, do_sample=False, pad_token_id=0, **kw)
        return model.generate(**inputs, generation_config=config)

    dynamic = generate()
    static = generate(cache_implementation="static")
    compiled = generate(cache_implementation="static", disable_compile=False, compile_config=eager_everywhere())
    assert dynamic.shape[1] == inputs["input_ids"].shape[1] + 16
    assert len(set(dynamic[:, -16:].flatten().tolist())) > 3  # the tiny model does not emit one token throughout
    assert torch.equal(dynamic, static)
    assert torch.equal(dynamic, compiled)


def test_switch_reaches_trls_generation_config_in_a_training_run(tmp_path, tiny_qwen, minilm, monkeypatch,
                                                                 one_thread):
    from mmpc_rl.config import load_recipe
    from mmpc_rl.train.builder import build_trainer

    monkeypatch.setattr(decoding, "default_compile_config", eager_everywhere)
    out = tmp_path / "run"
    cfg = load_recipe(["recipe=demo-i2t", "model.compiled_decoding=true", f"trainer.output_dir={out}",
                       "trainer.max_steps=2", *FAST])
    trainer = build_trainer(cfg, models={"minilm": minilm})
    config = trainer.generation_config
    assert (config.cache_implementation, config.disable_compile, config.compile_config.backend) == (
        "static", False, "eager")
    assert trainer.pad_to_multiple_of == decoding.DEFAULT_BUCKET == trainer.args.pad_to_multiple_of
    trainer.train()

    stats = trainer.decoding_stats
    assert stats.enabled and stats.calls == 2  # one generate per step (G=4, one prompt)
    assert stats.compiles >= 1 and stats.graphs >= 1  # transformers really compiled the decode step
    assert all(n % decoding.DEFAULT_BUCKET == 0 for n in stats.prompt_lengths)  # TRL padded to the bucket
    assert stats.compiles <= len(stats.prompt_lengths)  # at most one compile per bucket: nothing recompiles per step
    assert stats.new_tokens > 0 and stats.decode_ms_per_token > 0
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logs if "loss" in r]
    assert [r["decode/compiles"] for r in steps][-1] == stats.compiles
    assert steps[-1]["decode/ms_per_token"] == pytest.approx(stats.decode_ms_per_token, rel=1e-2)


def test_without_a_compiling_device_generation_stays_as_trl_built_it(tmp_path, minilm, caplog):
    from mmpc_rl.config import load_recipe
    from mmpc_rl.train.builder import build_trainer

    cfg = load_recipe(["recipe=demo-i2t", "model.compiled_decoding=true", f"trainer.output_dir={tmp_path}",
                       "trainer.max_steps=1", *FAST])
    with caplog.at_level(logging.WARNING, logger=decoding.__name__):
        trainer = build_trainer(cfg, models={"minilm": minilm})
    stats = trainer.decoding_stats
    assert not stats.enabled and "cuda" in stats.reason and "cpu" in stats.reason
    assert any("compiled decoding off" in r.getMessage() for r in caplog.records)
    config = trainer.generation_config
    assert (config.cache_implementation, config.disable_compile, trainer.pad_to_multiple_of) == (None, True, None)
