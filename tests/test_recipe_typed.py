"""The typed Recipe: built once, read-only, sections of the right types; and a reward from outside the package,
named by its dotted path, trains in the demo."""

from __future__ import annotations

import dataclasses
import json
import textwrap

import pytest

from mmpc_rl.config import DataConfig, EvalConfig, ModelConfig, Recipe, WandbConfig, load_recipe
from mmpc_rl.errors import ConfigError
from mmpc_rl.train.recipe import load_training_recipe

PLUGIN = textwrap.dedent('''
    from mmpc_rl.tasks import completion_text


    def brevity(task, context=None, max_chars: int = 40):
        def reward(completions, **_):
            return [1.0 - min(len(completion_text(c)) / max_chars, 1.0) for c in completions]
        return reward


    def plain_length(completions, **_):
        return [float(len(completion_text(c))) for c in completions]
''')


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    pkg = tmp_path / "plugins" / "shop_rewards"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "brevity.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    return "shop_rewards.brevity"


def test_recipe_is_typed_and_read_only():
    r = load_recipe(["recipe=demo-i2t", "trainer.learning_rate=0.5", "wandb.tags=[a,b]"])
    assert isinstance(r, Recipe) and r.name == "demo-i2t" and r.task == "i2t"
    assert (type(r.model), type(r.data), type(r.eval), type(r.wandb)) == (ModelConfig, DataConfig, EvalConfig,
                                                                         WandbConfig)
    assert r.trainer["learning_rate"] == r.trainer.learning_rate == 0.5 and r.wandb.tags == ["a", "b"]
    assert r.trainer.output_dir == "outputs/demo-i2t"  # ${recipe} resolved once, at load
    assert list(r.rewards) == ["json_format", "minilm_cosine"] and r.reward_weights == [1.0, 2.0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.model.qlora = True
    with pytest.raises(TypeError):
        r.trainer["learning_rate"] = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.trainer.learning_rate = 1.0
    variant = r.replace(trainer={"max_steps": 3})
    assert variant.trainer.max_steps == 3 and variant.trainer.learning_rate == 0.5 and "max_steps" in variant.trainer
    assert r.trainer.get("max_steps") == load_recipe(["recipe=demo-i2t"]).trainer.max_steps != 3  # untouched
    assert r.to_dict()["trainer"]["learning_rate"] == 0.5 and r.to_dict()["recipe"] == "demo-i2t"


def test_dotted_path_rewards_validate_their_options(plugin):
    r = load_training_recipe(["recipe=demo-i2t", f"rewards.{plugin}:brevity.weight=0.5",
                              f"rewards.{plugin}:brevity.max_chars=30"])
    assert r.rewards[f"{plugin}:brevity"] == {"weight": 0.5, "max_chars": 30} and r.reward_weights == [1.0, 2.0, 0.5]
    with pytest.raises(ConfigError, match=rf"unknown key rewards.{plugin}:brevity.max_char \(did you mean"):
        load_training_recipe(["recipe=demo-i2t", f"rewards.{plugin}:brevity.max_char=30"])
    with pytest.raises(ConfigError, match="has no attribute 'nope'"):
        load_training_recipe(["recipe=demo-i2t", f"rewards.{plugin}:nope.weight=1"])
    with pytest.raises(ConfigError, match="cannot import module 'no_such_pkg.mod'"):
        load_training_recipe(["recipe=demo-i2t", "rewards.no_such_pkg.mod:fn.weight=1"])
    # a plain TRL reward function takes no options but its weight
    load_training_recipe(["recipe=demo-i2t", f"rewards.{plugin}:plain_length.weight=0.1"])


def test_an_outside_reward_by_dotted_path_trains_in_the_demo(plugin, tmp_path, tiny_qwen):
    from mmpc_rl.train.grpo import main

    out = tmp_path / "plugin-run"
    assert main(["recipe=demo-i2t", f"trainer.output_dir={out}", f"rewards.{plugin}:brevity.weight=0.5",
                 f"rewards.{plugin}:brevity.max_chars=30", "trainer.max_steps=2", "eval.enabled=false",
                 "trainer.max_completion_length=8", "trainer.save_strategy=no", "data.limit_per_category=2"]) == 0
    logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    key = f"rewards/{plugin}:brevity/mean"
    assert [r["step"] for r in logged if key in r] == [1, 2]
    assert all(0.0 <= r[key] <= 1.0 for r in logged if key in r)
    assert (out / "adapter_model.safetensors").is_file() and not (out / "training_args.bin").exists()
    assert f"{plugin}:brevity" in (out / "config.yaml").read_text()


@pytest.mark.parametrize("extra, needle", [
    ([], "vLLM is not installed"),
    (["model.qlora=true"], "vLLM is not installed"),
])
def test_use_vllm_fails_at_once_when_vllm_is_missing(extra, needle):
    with pytest.raises(ConfigError, match=needle) as e:
        load_training_recipe(["recipe=i2t", "trainer.use_vllm=true", *extra])
    assert "\n" not in str(e.value) and "docs/launch.md" in str(e.value)


@pytest.mark.parametrize("version, extra, needle", [
    ("0.33.0", [], "vLLM 0.33.0 is installed, TRL 1.16 runs 0.22-0.31"),
    ("0.31.0", ["model.qlora=true"], "cannot take them into 4-bit"),
    ("0.30.0", ["model.max_pixels=401408"], "re-processes images"),
])
def test_use_vllm_checks_version_and_settings_where_vllm_is_installed(monkeypatch, version, extra, needle):
    from importlib import metadata

    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: version if name == "vllm" else real(name))
    with pytest.raises(ConfigError, match=needle):
        load_training_recipe(["recipe=i2t", "trainer.use_vllm=true", *extra])
    if version != "0.33.0":  # a version TRL runs, with settings vLLM keeps, passes
        load_training_recipe(["recipe=i2t", "trainer.use_vllm=true", "model.max_pixels=null"])


def test_use_vllm_fails_in_seconds_from_the_command_line():
    import resource
    import subprocess
    import sys
    from pathlib import Path

    def cpu() -> float:
        use = resource.getrusage(resource.RUSAGE_CHILDREN)
        return use.ru_utime + use.ru_stime

    t0 = cpu()
    proc = subprocess.run([sys.executable, "train/grpo.py", "recipe=i2t", "trainer.use_vllm=true"],
                          capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "trainer.use_vllm=true but vLLM is not installed" in proc.stderr
    assert cpu() - t0 < 30  # the recipe checks, not a model load


def test_run_summary_prints_the_table_and_where_things_are(tmp_path):
    from mmpc_rl.train.grpo import run_summary

    (tmp_path / "cqbench").mkdir()
    (tmp_path / "cqbench" / "before_after.md").write_text("# CQBench before vs after training\n\n| m | Δ |\n")
    (tmp_path / "adapter_model.safetensors").write_bytes(b"x")
    (tmp_path / "reward_curves.png").write_bytes(b"x")
    text = run_summary(str(tmp_path), 12, 31.4)
    assert text.splitlines()[0] == "mmpc-rl: trained 12 steps in 31 s"
    assert "| m | Δ |" in text and f"adapter:       {tmp_path / 'adapter_model.safetensors'}" in text
    assert f"reward curves: {tmp_path / 'reward_curves.png'}" in text and "completions" not in text
