"""Compiled static-cache decoding (mmpc_rl.train.decoding): the static cache decodes the same tokens as TRL's dynamic
one, the recipe switch reaches the trainer's GenerationConfig and a real GRPO step, a failing compile falls back to
eager decoding and the run finishes, gradient checkpointing does not recompile every step, evaluation generates are
not counted, and where compilation cannot run generation is left as TRL built it, with the reason logged. On CPU the
run forces compilation (`model.compiled_decoding=force`) with dynamo's "eager" backend (graph capture, guards and
recompiles are real; no C++ code generation, which would take minutes)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from mmpc_rl.train import decoding

FAST = ["eval.enabled=false", "trainer.max_completion_length=10", "trainer.save_strategy=no",
        "trainer.num_generations=4", "trainer.per_device_train_batch_size=4"]
FORCED = ["model.compiled_decoding=force", "model.compile_backend=eager"]


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


def train_demo(tmp_path, minilm, *overrides):
    from mmpc_rl.train.builder import build_trainer
    from mmpc_rl.train.recipe import load_training_recipe

    cfg = load_training_recipe(["recipe=demo-i2t", f"trainer.output_dir={tmp_path / 'run'}", *FAST, *overrides])
    trainer = build_trainer(cfg, models={"minilm": minilm})
    return trainer


def test_switch_reaches_trls_generation_config_in_a_training_run(tmp_path, minilm, one_thread):
    trainer = train_demo(tmp_path, minilm, *FORCED, "trainer.max_steps=2")
    config = trainer.generation_config
    assert (config.cache_implementation, config.disable_compile, config.compile_config.backend) == (
        "static", False, "eager")
    assert trainer.pad_to_multiple_of == decoding.DEFAULT_BUCKET == trainer.args.pad_to_multiple_of
    trainer.train()

    stats = trainer.decoding_stats
    assert stats.enabled and stats.compiled and stats.calls == 2  # one generate per step (G=4, one prompt)
    assert stats.compiles >= 1 and stats.graphs >= 1  # transformers really compiled the decode step
    assert all(n % decoding.DEFAULT_BUCKET == 0 for n in stats.prompt_lengths)  # TRL padded to the bucket
    assert stats.compiles <= len(stats.prompt_lengths)  # at most one compile per bucket: nothing recompiles per step
    assert stats.new_tokens > 0 and stats.decode_ms_per_token > 0
    logs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logs if "loss" in r]
    assert [r["decode/compiles"] for r in steps][-1] == stats.compiles and steps[-1]["decode/compiled"] == 1
    assert steps[-1]["decode/ms_per_token"] == pytest.approx(stats.decode_ms_per_token, rel=1e-2)

    # CQBench's generates (eval mode, inference_mode) are not training generates: not counted, not timed
    from mmpc_rl.data import load_items
    from mmpc_rl.eval.generate import generate_batch
    from mmpc_rl.tasks import get_task

    before = (stats.calls, stats.generate_s, stats.new_tokens, list(stats.prompt_lengths))
    items = load_items("sample", split="cqbench")[:2]
    generate_batch(trainer.model, trainer.processing_class, get_task("i2t"), items, max_new_tokens=4)
    assert (stats.calls, stats.generate_s, stats.new_tokens, stats.prompt_lengths) == before


def test_a_failing_compile_backend_falls_back_to_eager_and_the_run_finishes(tmp_path, minilm, monkeypatch, caplog,
                                                                           one_thread):
    (tmp_path / "broken_backend.py").write_text(
        "def backend(graph_module, example_inputs):\n    raise RuntimeError('ptxas fatal: stand-in for a GPU "
        "toolchain failure')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with caplog.at_level(logging.WARNING, logger=decoding.__name__):
        trainer = train_demo(tmp_path, minilm, "model.compiled_decoding=force",
                             "model.compile_backend=broken_backend:backend", "trainer.max_steps=2")
        assert trainer.decoding_stats.backend == "backend"
        trainer.train()
    assert trainer.state.global_step == 2
    stats = trainer.decoding_stats
    assert stats.enabled and not stats.compiled and "ptxas fatal" in stats.fallback
    assert stats.calls == 2 and stats.compiles == 0  # both steps generated, eagerly
    failed = [r.getMessage() for r in caplog.records if "compiled decoding failed" in r.getMessage()]
    assert len(failed) == 1 and "\n" not in failed[0] and "ptxas fatal" in failed[0]
    config = trainer.generation_config  # TRL's own settings again
    assert (config.cache_implementation, config.disable_compile, trainer.pad_to_multiple_of) == (None, True, None)
    logs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["decode/compiled"] for r in logs if "loss" in r][-1] == 0


def _embed_hooks(trainer) -> int:
    return len(trainer.model.get_base_model().get_input_embeddings()._forward_hooks)


def test_checkpointing_with_compiled_decoding_compiles_at_most_twice_in_ten_steps(tmp_path, minilm, one_thread):
    trainer = train_demo(tmp_path, minilm, *FORCED, "trainer.gradient_checkpointing=true", "trainer.max_steps=10")
    trainer.train()
    stats = trainer.decoding_stats
    assert trainer.state.global_step == 10 and stats.calls == 10 and stats.compiled
    assert 1 <= stats.compiles <= 2, stats.recompile_reasons
    assert _embed_hooks(trainer) == 1  # TRL re-enabled checkpointing 20 times; one require-grads hook remains


def test_without_the_hook_fix_every_step_recompiles_and_the_warning_names_dynamos_cause(tmp_path, minilm, caplog,
                                                                                         monkeypatch, one_thread):
    """What the fix above prevents, reproduced: the warning quotes dynamo's guard on the hooks, not a padding hint."""
    from mmpc_rl.train import builder

    monkeypatch.setattr(builder, "one_input_grads_hook", lambda model: None)
    monkeypatch.setattr(decoding, "one_input_grads_hook", lambda model: None)
    with caplog.at_level(logging.WARNING, logger=decoding.__name__):
        trainer = train_demo(tmp_path, minilm, *FORCED, "trainer.gradient_checkpointing=true", "trainer.max_steps=3")
        trainer.train()
    stats = trainer.decoding_stats
    assert stats.compiles == 3 and _embed_hooks(trainer) > 3
    assert all("_forward_hooks" in r for r in stats.recompile_reasons), stats.recompile_reasons
    warned = [r.getMessage() for r in caplog.records if "recompiled" in r.getMessage()]
    assert len(warned) == 2 and all("dynamo's reason" in w and "_forward_hooks" in w for w in warned)


@pytest.mark.parametrize("override, needle", [
    ("model.compile_backend=no_such_backend", "not a torch.compile backend"),
    ("model.compile_backend=no_such_module:fn", "cannot import it"),
    ("model.compiled_decoding=sometimes", "valid choices: false, true, force"),
])
def test_bad_compile_switches_fail_at_load(override, needle):
    from mmpc_rl.errors import ConfigError
    from mmpc_rl.train.recipe import load_training_recipe

    with pytest.raises(ConfigError, match=needle):
        load_training_recipe(["recipe=demo-i2t", override])


def test_without_a_compiling_device_generation_stays_as_trl_built_it(tmp_path, minilm, caplog):
    with caplog.at_level(logging.WARNING, logger=decoding.__name__):
        trainer = train_demo(tmp_path, minilm, "model.compiled_decoding=true", "trainer.max_steps=1")
    stats = trainer.decoding_stats
    assert not stats.enabled and "cuda" in stats.reason and "cpu" in stats.reason and "force" in stats.reason
    assert any("compiled decoding off" in r.getMessage() for r in caplog.records)
    config = trainer.generation_config
    assert (config.cache_implementation, config.disable_compile, trainer.pad_to_multiple_of) == (None, True, None)
