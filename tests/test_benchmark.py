"""The measurement harness. `mmpc-rl benchmark` (mmpc_rl/bench/cli.py, grpo_arms.py): both arms end to end on the
tiny shape (CPU), forced completion length, arm settings, the real shape's size, the results file, resume, and option
errors. `mmpc-rl eval speed` (cqbench_speed.py): both batch modes and its routing."""

from __future__ import annotations

import json

import pytest

from mmpc_rl.bench import cli as benchmark
from mmpc_rl.bench import grpo_arms as bench
from mmpc_rl.bench.grpo_options import parse_bench_options
from mmpc_rl.errors import ConfigError

G, T = 2, 4
TINY = ["recipe=i2t", "shape=tiny", "steps=2", "warmup=1", f"new_tokens={T}", f"num_generations={G}",
        "image_size=56", "rewards=stub"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, _session_cache):
    out = tmp_path_factory.mktemp("bench")
    rc = benchmark.main([*TINY, f"out={out}"])
    return rc, out, json.loads((out / "benchmark.json").read_text())


def test_both_arms_run_end_to_end_and_decode_exactly_T_tokens(run):
    rc, _, res = run
    assert rc == 0
    assert list(res["arms"]) == ["project", "plain"] and res["group"] == G
    for arm in res["arms"].values():
        assert len(arm["step_s"]) == 3  # 1 warm-up + 2 measured
        assert arm["new_tokens_per_step"] == T  # min_new_tokens forces the length; one generate call per step
        assert arm["s_per_step"] == pytest.approx(sum(arm["step_s"][1:]) / 2, abs=1e-3)
        assert arm["decode_ms_per_token"] == pytest.approx(1000 * arm["generate_s_per_step"] / T)
        assert 0 < arm["generate_s_per_step"] < arm["s_per_step"]
        assert 0.2 < arm["peak_mem_gb"] < 8 and arm["peak_mem_kind"].startswith("peak RSS")
        # LoRA r=16, r*(in+out) per linear: q 16*(64+64), k and v 16*(64+32), o 2048, gate and up 16*(64+128),
        # down 16*(128+64): 16384 per layer, 2 layers
        assert arm["trainable_params"] == 32768


def test_plain_arm_keeps_trl_defaults_but_the_recipes_algorithm(run):
    _, _, res = run
    project, plain = res["arms"]["project"]["settings"], res["arms"]["plain"]["settings"]
    for s in (project, plain):  # i2t: per-sequence GRPO loss, KL 0.04, symmetric clipping 0.28, lr 1e-5
        assert (s["loss_type"], s["beta"], s["epsilon"], s["epsilon_high"], s["learning_rate"], s["temperature"]) == \
            ("grpo", 0.04, 0.28, 0.28, 1e-5, 1.0)
        assert s["model_dtype"] == "float32" and s["attn_implementation"] == "sdpa"
    assert plain["gradient_checkpointing"] is True and plain["bf16"] is True  # TRL's defaults (bf16 autocast on CPU)
    assert project["gradient_checkpointing"] is False and project["bf16"] is False
    # on CPU, auto means no compilation and so no static cache (it only pays with a compiled graph)
    assert (project["compiled_generation"], project["cache_implementation"]) == (False, None)
    assert plain["cache_implementation"] is None


def test_ratio_and_table(run, capsys):
    _, _, res = run
    p, q = res["arms"]["plain"], res["arms"]["project"]
    assert res["ratio"]["s_per_step"] == pytest.approx(p["s_per_step"] / q["s_per_step"], abs=1e-3)
    assert benchmark.ratios({"plain": {"s_per_step": 3.0, "peak_mem_gb": 20.0, "decode_ms_per_token": 40.0},
                             "project": {"s_per_step": 2.0, "peak_mem_gb": 30.0, "decode_ms_per_token": 16.0}}) \
        == {"s_per_step": 1.5, "peak_mem": 1.5, "decode_ms_per_token": 2.5}
    assert benchmark.ratios({"plain": p}) == {}
    lines = benchmark.table(res).splitlines()
    assert lines[0] == f"GRPO benchmark: recipe=i2t shape=tiny G={G} T={T} steps=2 (+1 warm-up) on CPU " \
                       f"({res['env']['cpu_count']} cores)"
    assert lines[2].startswith("project") and "ckpt=off cache=dynamic compile=off bf16=off" in lines[2]
    assert lines[3].startswith("plain") and "ckpt=on cache=dynamic compile=off bf16=on" in lines[3]
    assert lines[4].startswith("plain/project: ")


def test_rerun_with_the_same_options_resumes_without_training(run, monkeypatch, capsys):
    _, out, res = run

    def no_training(*a, **k):
        raise AssertionError("a finished arm was run again")

    monkeypatch.setattr(bench, "run_arm", no_training)
    assert benchmark.main([*TINY, f"out={out}"]) == 0
    assert "already measured" in capsys.readouterr().out
    assert json.loads((out / "benchmark.json").read_text())["arms"] == res["arms"]


def test_cqbench_speed_reports_both_modes(tmp_path, capsys, one_thread):
    from mmpc_rl.bench import cqbench_speed as speed

    out = tmp_path / "speed.json"
    argv = ["items=4", "batch_sizes=[1,4]", "max_new_tokens=3", "dtype=float32", f"output={out}"]
    assert speed.main(argv) == 0
    rows = json.loads(out.read_text())["results"]
    assert [(r["batch_size"], r["items"]) for r in rows] == [(1, 4), (4, 4)]
    assert all(r["items_per_minute"] == pytest.approx(60 * 4 / r["seconds"], rel=0.01) for r in rows)
    assert capsys.readouterr().out.count("items/min (3 new tokens each)") == 2
    with pytest.raises(ConfigError, match="unknown key 'itmes' \\(did you mean 'items'\\?\\)"):
        speed.main(["itmes=4"])


def test_eval_speed_is_routed_to_the_harness(capsys):
    from mmpc_rl.cli import main

    assert main(["eval", "speed", "itmes=4"]) == 2  # parsed by mmpc_rl.bench.cqbench_speed, nothing loaded
    assert "unknown key 'itmes'" in capsys.readouterr().err
    assert main(["eval", "sped"]) == 2
    assert "did you mean 'speed'" in capsys.readouterr().err


def test_real_shape_is_qwen25_vl_7b():
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from mmpc_rl.models import qwen25_vl_7b_config

    processor = bench.build_processor("real")
    config = qwen25_vl_7b_config(processor.tokenizer)
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    assert sum(p.numel() for p in model.parameters()) == 8_292_166_656  # the published checkpoint's count
    assert (config.image_token_id, config.vision_start_token_id, config.text_config.eos_token_id) == (12, 9, 2)
    from PIL import Image

    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}]
    text = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    enc = processor(text=[text], images=[Image.new("RGB", (448, 448))], return_tensors="pt")
    assert int((enc["input_ids"] == 12).sum()) == 256  # 448 px: 32x32 patches, merged 2x2


@pytest.mark.parametrize("argv, needle", [
    (["stepz=3"], "unknown key 'stepz' (did you mean 'steps'?)"),
    (["shape=huge"], "shape='huge'; valid choices: real, tiny"),
    (["arms=[project,fast]"], "arms='fast'; valid choices: project, plain"),
    (["steps=0"], "steps=0: must be at least 1"),
    (["trainer.bogus=1"], "unknown key trainer.bogus"),
    (["trainr.beta=0"], "unknown key recipe.trainr (did you mean 'trainer'?)"),  # checked by the recipe
    (["recipe=demo-i2t", "shape=real"], "shape=real builds Qwen2.5-VL-7B's 8.3B parameters: run it on a GPU"),
    (["compile=true"], "unknown key 'compile'"),  # speed options are recipe keys (model.compiled_decoding)
])
def test_option_errors_are_one_line_config_errors(argv, needle):
    with pytest.raises(ConfigError) as e:
        benchmark.main(argv)
    assert needle in str(e.value)


def test_recipe_overrides_pass_through():
    opts, overrides = parse_bench_options(["steps=3", "lora.r=8", "trainer.beta=0.0", "arms=plain"])
    assert (opts.steps, opts.arms, overrides) == (3, ["plain"], ["lora.r=8", "trainer.beta=0.0"])


def test_the_project_arm_takes_speed_settings_from_the_recipe():
    from mmpc_rl.train.recipe import load_training_recipe

    opts, overrides = parse_bench_options(["new_tokens=7", "steps=3", "warmup=2",
                                           "trainer.gradient_checkpointing=true", "model.compiled_decoding=true"])
    recipe = load_training_recipe(["recipe=i2t", *overrides])
    arm = bench.project_recipe(recipe, opts, group=4, output_dir="/tmp/x")
    assert (arm.trainer.max_steps, arm.trainer.max_completion_length, arm.trainer.generation_kwargs) == \
        (5, 7, {"min_new_tokens": 7})
    assert arm.model.compiled_decoding is True and arm.eval.enabled is False  # the recipe's switch, no CQBench
    # a G other than the recipe's reopens the micro-batch for the planner; what the user pinned stays as given
    assert arm.trainer.per_device_train_batch_size is None and arm.trainer.gradient_checkpointing is True
    from mmpc_rl.train.decoding import compile_config_for

    cc = compile_config_for("force", None, "cpu")  # what model.compiled_decoding=force compiles with off CUDA
    assert (cc.backend, cc.mode, cc._compile_all_devices) == ("inductor", "default", True)
    cc = compile_config_for(True, None, "cuda")  # transformers' own: inductor with CUDA graphs, CUDA/XPU only
    assert (cc.backend, cc.mode, cc._compile_all_devices) == ("inductor", "reduce-overhead", None)


def test_project_arm_resolves_what_a_training_run_resolves(run):
    """The project arm is built by build_trainer: every setting that decides speed or the objective equals what a
    training run of the same recipe (with the benchmark's G and T) resolves."""
    from mmpc_rl.train.builder import resolve_layout
    from mmpc_rl.train.recipe import load_training_recipe
    from mmpc_rl.train.trl_config import build_grpo_config

    _, _, res = run
    recipe = load_training_recipe(["recipe=i2t", f"trainer.num_generations={G}", f"trainer.max_completion_length={T}"])
    training = bench.resolved_settings(build_grpo_config(resolve_layout(recipe)))
    project = res["arms"]["project"]["settings"]
    assert {k: project[k] for k in training} == training
    assert res["arms"]["plain"]["settings"]["gradient_checkpointing"] != training["gradient_checkpointing"]
