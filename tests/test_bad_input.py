"""Bad input, end to end: each row of the table in docs/monitoring.md gets a one-line error (exit code 2, no
traceback) or a counted skip, never a crash from inside a library."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from mmpc_rl.errors import run_cli


def _cli(capsys, *argv: str) -> str:
    from mmpc_rl.train.grpo import main

    rc = run_cli(lambda: main(list(argv)))
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert "Traceback" not in err
    ours = [ln for ln in err.splitlines() if ln.startswith("mmpc-rl: ")]  # libraries may warn on import
    assert len(ours) == 1 and ours[0] == err.splitlines()[-1] and ours[0].startswith("mmpc-rl: error: ")
    return ours[0]


@pytest.mark.parametrize("argv, message", [
    (["recipe=demo-i2"], "unknown recipe 'demo-i2' (did you mean 'demo-i2t'?)"),
    (["recipe=demo-i2t", "trainer.max_step=3"], "unknown key trainer.max_step (did you mean 'max_steps'?)"),
    (["recipe=demo-i2t", "rewards.minilm.weight=1"], "unknown reward 'minilm'"),
    (["recipe=demo-i2t", "trainer.output_dir"], "arguments are key=value pairs, got 'trainer.output_dir'"),
])
def test_recipe_mistakes_are_one_line_errors(capsys, argv, message):
    assert message in _cli(capsys, *argv)


def test_missing_data_path(capsys, tmp_path):
    err = _cli(capsys, "recipe=demo-i2t", f"trainer.output_dir={tmp_path}", "data.path=/no/such/catalog")
    assert "data path '/no/such/catalog' does not exist" in err


def test_hub_id_without_network(capsys, tmp_path, sample_catalog):
    err = _cli(capsys, "recipe=demo-i2t", f"trainer.output_dir={tmp_path}", "eval.enabled=false",
               "model.name_or_path=Qwen/Qwen2.5-VL-7B-Instruct", "data.limit_per_category=1")
    assert err.startswith("mmpc-rl: error: no network: model 'Qwen/Qwen2.5-VL-7B-Instruct' is not in the local")


def test_row_without_image_or_reference(monkeypatch):
    from mmpc_rl.config import load_recipe
    from mmpc_rl.errors import DataError
    from mmpc_rl.tasks import get_task
    from mmpc_rl.train import builder
    from mmpc_rl.train.builder import build_dataset

    items = [{"parent_asin": "A1", "title": "Red kite", "image": "/x.png", "category": "Toys_and_Games"},
             {"parent_asin": "A2", "title": "", "image": "/y.png", "category": "Toys_and_Games"},
             {"parent_asin": "A3", "title": "Blue kite", "image": None, "category": "Toys_and_Games"}]
    monkeypatch.setattr(builder, "load_items", lambda *a, **k: items)
    with pytest.raises(DataError, match=r"2 items lack an image or a title \(e.g. \['A2', 'A3'\]\)"):
        build_dataset(load_recipe(["recipe=demo-i2t"]), get_task("i2t"))


def test_image_that_does_not_decode_is_a_counted_skip(tmp_path, capsys):
    from datasets import Dataset, Image
    from PIL import Image as PILImage

    from mmpc_rl.data.skips import drop_unusable_images
    from mmpc_rl.errors import DataError

    good = tmp_path / "good.png"
    PILImage.new("RGB", (32, 32), "red").save(good)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    ds = Dataset.from_dict({"image": [str(good), str(tmp_path / "bad.jpg"), str(good)], "title": ["a", "b", "c"]})
    ds = ds.cast_column("image", Image())
    kept = drop_unusable_images(ds, tmp_path)
    assert kept["title"] == ["a", "c"]
    assert kept[0]["image"].size == (32, 32)
    assert "skipped 1 of 3 rows whose image cannot be used (truncated: 1;" in capsys.readouterr().out
    skips = json.loads((tmp_path / "skips.json").read_text())["unusable_image"]
    assert skips["count"] == 1 and skips["reasons"] == {"truncated": 1}
    with pytest.raises(DataError, match="none of the 1 rows has an image that can be used"):
        drop_unusable_images(ds.select([1]))


@pytest.fixture(scope="module")
def rewards(minilm):
    from mmpc_rl.rewards import RewardContext, build_rewards
    from mmpc_rl.tasks import get_task

    return build_rewards({"json_format": {}, "minilm_cosine": {}}, get_task("i2t"),
                         RewardContext(models={"minilm": minilm}))


def test_model_output_that_is_not_json_scores_zero_format_and_its_raw_text(rewards):
    json_format, minilm_cosine = rewards
    completions = [[{"role": "assistant", "content": "Red kite for kids"}],
                   [{"role": "assistant", "content": '{"title": "Red kite for kids"}'}]]
    assert json_format(completions=completions) == [0.0, 1.0]
    sims = minilm_cosine(completions=completions, title=["Red kite for kids"] * 2)
    assert sims == pytest.approx([1.0, 1.0], abs=1e-5)  # the raw text is scored when the JSON does not parse


def test_empty_completion_scores_zero_without_error(rewards):
    json_format, minilm_cosine = rewards
    completions = [[{"role": "assistant", "content": ""}], [{"role": "assistant", "content": "   "}]]
    assert json_format(completions=completions) == [0.0, 0.0]
    assert minilm_cosine(completions=completions, title=["Red kite", "Blue kite"]) == [0.0, 0.0]


def test_wandb_without_credentials_is_one_line(monkeypatch, tmp_path):
    import wandb

    from mmpc_rl.config import load_recipe
    from mmpc_rl.errors import ConfigError
    from mmpc_rl.train.callbacks import init_wandb

    def no_key(**_):
        raise wandb.errors.UsageError("No API key configured. Use `wandb login` to log in.")

    monkeypatch.setattr(wandb, "init", no_key)
    args = SimpleNamespace(report_to=["wandb"], process_index=0, output_dir=str(tmp_path), run_name=None)
    with pytest.raises(ConfigError, match=r"^W&B: No API key configured\..*WANDB_MODE=offline"):
        init_wandb(load_recipe(["recipe=demo-i2t"]), args)


# values are checked while the recipe is built, before any data or model loads. data.path points
# nowhere, so an argument that got past the recipe would end on "data path ... does not exist" instead.
@pytest.mark.parametrize("arg, message", [
    ("trainer.learning_rate=1e400", "trainer.learning_rate=inf is not a finite number"),
    ("trainer.learning_rate=abc", "trainer.learning_rate must be a number (float), got 'abc'"),
    ("trainer.learning_rate=0", "trainer.learning_rate=0: must be greater than 0"),
    ("trainer.beta=nan", "trainer.beta must be a number (float), got 'nan'"),
    ("trainer.beta=.nan", "trainer.beta=nan is not a finite number"),
    ("trainer.beta=-0.1", "trainer.beta=-0.1: must not be negative"),
    ("trainer.per_device_train_batch_size=0", "trainer.per_device_train_batch_size=0: must be at least 1"),
    ("trainer.per_device_train_batch_size=2.5", "trainer.per_device_train_batch_size must be a whole number"),
    ("trainer.num_generations=0", "trainer.num_generations=0: must be at least 1"),
    ("trainer.max_steps=0", "trainer.max_steps=0 trains nothing"),
    ("trainer.max_steps=-3", "trainer.max_steps=-3 trains nothing"),
    ("trainer.save_steps=true", "trainer.save_steps must be a number (float), got True"),
    ("lora.r=0", "lora.r=0: the adapter rank must be at least 1"),
    ("lora.lora_dropout=1.5", "lora.lora_dropout=1.5: must be in [0, 1)"),
    ("trainer.resume_from_checkpoint=/no/such/checkpoint-4", "trainer.resume_from_checkpoint='/no/such/checkpoint-4' "
                                                             "is not a folder"),
    ("trainer.output_dir=${oc.env:MMPC_SURELY_UNSET_VAR}", "Environment variable 'MMPC_SURELY_UNSET_VAR' not found"),
    ("rewards.minilm_cosine.weight=.inf", "rewards.minilm_cosine.weight=inf: must be a finite number within ±1e+06"),
    ("rewards.json_format.weight=.nan", "rewards.json_format.weight=nan: must be a finite number within ±1e+06"),
    ("rewards.minilm_cosine.weight=1e308", "rewards.minilm_cosine.weight=1e+308: must be a finite number within"),
    ("rewards.minilm_cosine.weight=-2e6", "rewards.minilm_cosine.weight=-2000000.0: must be a finite number within"),
    ("trainer.overwrite_output_dir=yes_please", "trainer.overwrite_output_dir must be true or false"),
])
def test_bad_values_are_one_line_before_anything_loads(capsys, tmp_path, monkeypatch, arg, message):
    monkeypatch.delenv("MMPC_SURELY_UNSET_VAR", raising=False)
    err = _cli(capsys, "recipe=demo-i2t", f"trainer.output_dir={tmp_path}", "data.path=/no/such/catalog", arg)
    assert message in err


def test_reward_weights_that_are_all_zero_are_one_line(capsys, tmp_path):
    err = _cli(capsys, "recipe=demo-i2t", f"trainer.output_dir={tmp_path}", "data.path=/no/such/catalog",
               "rewards.minilm_cosine.weight=0", "rewards.json_format.weight=0.0")
    assert "every reward weight is 0 (rewards.json_format.weight, rewards.minilm_cosine.weight)" in err


def test_recipe_file_with_an_unset_env_var_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("MMPC_SURELY_UNSET_VAR", raising=False)
    (tmp_path / "a.yaml").write_text("inherit: ${oc.env:MMPC_SURELY_UNSET_VAR}\n")
    assert "'MMPC_SURELY_UNSET_VAR' not found" in _cli(capsys, f"recipe={tmp_path / 'a.yaml'}")
    (tmp_path / "b.yaml").write_text("inherit: demo-i2t\ntrainer:\n  learning_rate: ${oc.env:MMPC_SURELY_UNSET_VAR}\n")
    assert "'MMPC_SURELY_UNSET_VAR' not found" in _cli(capsys, f"recipe={tmp_path / 'b.yaml'}")


@pytest.mark.parametrize("arg, message", [
    ("workers=0", "workers=0: must be at least 1"),
    ("timeout=abc", "timeout must be a number, got 'abc'"),
    ("timeout=0", "timeout=0.0: must be more than 0 seconds"),
    ("timeout=.inf", "timeout=inf is not a finite number"),
    ("cqbench_per_category=-1", "cqbench_per_category=-1: must be at least 0"),
    ("train_per_category=-5", "train_per_category=-5: must be at least 0"),
    ("retries=-1", "retries=-1: must be at least 0"),
    ("k=0", "k=0: must be at least 1"),
])
def test_data_build_values_are_one_line(capsys, tmp_path, arg, message):
    from mmpc_rl.data.cli import main

    rc = run_cli(lambda: main(["build", f"source={tmp_path}", f"out={tmp_path / 'out'}", arg]))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "Traceback" not in err and err.splitlines()[-1] == f"mmpc-rl: error: {message}"
    assert not (tmp_path / "out").exists()


def test_data_build_python_api_checks_values_too(tmp_path):
    from mmpc_rl.data.build import build
    from mmpc_rl.errors import ConfigError

    with pytest.raises(ConfigError, match=r"workers='4': must be a finite number"):
        build(source=str(tmp_path), out=str(tmp_path / "o"), workers="4")
    with pytest.raises(ConfigError, match=r"train_per_category=-2: must be at least 0"):
        build(source=str(tmp_path), out=str(tmp_path / "o"), train_per_category=-2)


def test_a_loss_or_grad_norm_that_turns_non_finite_stops_the_run_naming_the_step():
    from mmpc_rl.errors import ConfigError
    from mmpc_rl.train.callbacks import StopOnNonFinite

    guard, state = StopOnNonFinite(), SimpleNamespace(global_step=7)
    guard.on_log(None, state, None, logs={"loss": 0.3, "grad_norm": 1.2, "reward": float("nan")})  # fine
    guard.on_log(None, state, None, logs=None)
    with pytest.raises(ConfigError, match=r"training diverged at step 7: loss=nan; "):
        guard.on_log(None, state, None, logs={"loss": float("nan"), "grad_norm": 1.0})
    with pytest.raises(ConfigError, match=r"at step 7: loss=inf, grad_norm=-inf;.*trainer.learning_rate"):
        guard.on_log(None, state, None, logs={"loss": float("inf"), "grad_norm": float("-inf")})


def test_a_reward_check_names_the_reward_and_the_step():
    from mmpc_rl.train.instrument import RewardCheck

    check = RewardCheck()
    check.see("fine", [0.5, None, 1.0])  # None for some completions: "does not apply" (TRL), kept
    check.see("fine", [0.0])
    assert check.problem(3, check.counts) is None
    check.see("broken", [0.1, float("nan"), float("nan"), 0.2])
    assert check.problem(3, check.counts).startswith("reward 'broken' returned nan for 2 of 4 completions at step 3")
    check = RewardCheck()
    check.see("silent", [None, None])
    assert "reward 'silent' returned None for all 2 completions at step 9" in check.problem(9, check.counts)
    check = RewardCheck()
    check.see("overflow", [float("inf"), "text"])
    assert "returned inf for 2 of 2 completions" in check.problem(1, check.counts)


@pytest.fixture(scope="module")
def turns_bad():
    """A reward that scores 0.5 at step 1 and then its `value` (nan, inf or none) for every completion."""
    import math

    from mmpc_rl.rewards import REGISTRY, register

    @register("turns_bad")
    def factory(task, context=None, value: str = "nan"):
        bad = {"nan": math.nan, "inf": math.inf, "none": None}[value]

        def reward(completions, trainer_state, **_):
            return [0.5 if trainer_state.global_step == 0 else bad for _ in completions]
        return reward

    yield
    REGISTRY.pop("turns_bad")


@pytest.mark.parametrize("kind, message", [
    ("nan", "reward 'turns_bad' returned nan for 2 of 2 completions at step 2"),
    ("inf", "reward 'turns_bad' returned inf for 2 of 2 completions at step 2"),
    ("none", "reward 'turns_bad' returned None for all 2 completions at step 2"),
])
def test_a_reward_that_returns_nan_inf_or_none_stops_the_run_naming_it_and_the_step(capsys, tmp_path, turns_bad,
                                                                                      one_thread, kind, message):
    """Beside json_format: TRL would drop the NaN as "does not apply" (nansum), train on, and exit 0."""
    from mmpc_rl.train.grpo import main

    out = tmp_path / "run"
    rc = run_cli(lambda: main(["recipe=demo-i2t", "model.name_or_path=tiny://qwen2.5-vl", "eval.enabled=false",
                               "rewards.minilm_cosine=null", "rewards.turns_bad.weight=1",
                               f"rewards.turns_bad.value={kind}", "trainer.max_steps=3", "trainer.num_generations=2",
                               "trainer.per_device_train_batch_size=2", "trainer.max_completion_length=4",
                               "trainer.save_strategy=no", "data.limit_per_category=1", f"trainer.output_dir={out}"]))
    last = capsys.readouterr().err.strip().splitlines()[-1]  # the progress bar may share its line
    assert rc == 2 and f"mmpc-rl: error: {message}" in last and "Traceback" not in last
    logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == [1]  # step 1 trained, step 2 never did
    assert not (out / "adapter_model.safetensors").exists()


# ----------------------------------------------------------------------------------------------- YAML mistakes
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(  # 9 levels of 9 aliases: 9^9 nodes once expanded
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True))
BOMB += "inherit: demo-i2t\n"


@pytest.mark.parametrize("text, message", [
    ("inherit: demo-i2t\ntrainer:\n  max_steps: [2\n", "bad YAML at line 4, column 1: expected ',' or ']'"),
    ("inherit: demo-i2t\ntrainer:\n  max_steps: 2\n   beta: 0\n", "bad YAML at line 4, column 8: mapping values"),
    ("inherit: demo-i2t\ntrainer:\n  max_steps: 2\n  max_steps: 3\n", "duplicate key 'max_steps'"),
    (BOMB, "bad YAML: its aliases expand to more than 100,000 nodes"),  # 9^9 nodes: refused, never expanded
    ("inherit: demo-i2t\nx: " + "[" * 3000 + "]" * 3000 + "\n", "bad YAML: nested too deeply"),
    ("inherit: demo-i2t\n\x00", "bad YAML: unacceptable character #x0000"),
])
def test_yaml_mistakes_in_a_recipe_file_are_one_line_naming_the_file(capsys, tmp_path, text, message):
    import time

    (tmp_path / "r.yaml").write_text(text)
    t0 = time.monotonic()
    err = _cli(capsys, f"recipe={tmp_path / 'r.yaml'}")
    assert f"recipe {tmp_path / 'r.yaml'}: " in err and message in err
    assert time.monotonic() - t0 < 20


def test_yaml_mistakes_in_list_arguments_are_one_line_in_every_command(capsys, tmp_path):
    from mmpc_rl.data.cli import main as data_main
    from mmpc_rl.errors import ConfigError
    from mmpc_rl.eval.cqbench import parse_config
    from mmpc_rl.recbench.cli import parse_config as recbench_config

    assert "trainer.max_steps=[2: bad YAML at line 1, column 3: expected ',' or ']'" in _cli(
        capsys, "recipe=demo-i2t", "trainer.max_steps=[2")
    for call in (lambda: parse_config(["models=[x"]), lambda: recbench_config(["models=[x"]),
                 lambda: data_main(["build", f"source={tmp_path}", "categories=[x", f"out={tmp_path / 'o'}"])):
        with pytest.raises(ConfigError, match=r"^(models|categories)=\[x: bad YAML at line 1, column 3"):
            call()


def test_a_deep_inherit_chain_is_one_line(capsys, tmp_path):
    for i in range(40):
        (tmp_path / f"r{i}.yaml").write_text(f"inherit: r{i + 1}.yaml\n" if i < 39 else "inherit: demo-i2t\n")
    assert "inherits more than 32 recipes deep" in _cli(capsys, f"recipe={tmp_path / 'r0.yaml'}",
                                                        f"trainer.output_dir={tmp_path}", "data.path=/no/such/catalog")


def test_run_cli_turns_yaml_and_os_errors_into_one_line_and_debug_shows_the_traceback(capsys, monkeypatch):
    import errno

    import yaml

    def fails(e):
        def fn():
            raise e
        return fn

    assert run_cli(fails(OSError(errno.EROFS, "Read-only file system", "/out/x"))) == 2
    assert capsys.readouterr().err == "mmpc-rl: error: /out/x: read-only file system\n"
    assert run_cli(fails(yaml.YAMLError("mapping values are not allowed\n  here"))) == 2
    assert capsys.readouterr().err == "mmpc-rl: error: bad YAML: mapping values are not allowed here\n"
    monkeypatch.setenv("MMPC_RL_DEBUG", "1")
    with pytest.raises(OSError):
        run_cli(fails(OSError(errno.ENOSPC, "No space left on device", "/out/x")))


# ------------------------------------------------------------------------------------ values, before any load
@pytest.mark.parametrize("arg, message", [
    ("trainer.num_generations=8.0", "trainer.num_generations must be a whole number, got 8.0"),
    ("trainer.max_steps=2.0", "trainer.max_steps must be a whole number, got 2.0"),
    ("trainer.temperature=0", "trainer.temperature=0: must be greater than 0"),
    ("eval.batch_size=0", "eval.batch_size=0: must be at least 1"),
    ("eval.batch_size=8.0", "eval.batch_size must be a whole number, got 8.0"),
    ("eval.split=test", "eval.split='test'; valid choices: train, cqbench, recbench"),
    ("eval.items_per_category=abc", "eval.items_per_category must be a whole number, got 'abc'"),
    ("model.max_pixels=-1", "model.max_pixels=-1: must be at least 1"),
    ("model.qlora=yes_please", "model.qlora must be true or false, got 'yes_please'"),
    ("data.limit_per_category=0", "data.limit_per_category=0: must be at least 1"),
    ("data.categories=Beauty", "data.categories='Beauty' (did you mean 'All_Beauty'?)"),
    ("data.text_field=body", "data.text_field='body'"),
    ("wandb.log_completions_every=0", "wandb.log_completions_every=0: must be at least 1"),
    ("wandb.tags={a: 1}", "bad override: wandb.tags={a: 1}: Cannot merge incompatible container types"),
    ("wandb.tags=[{a: 1}]", "wandb.tags must be text, got {'a': 1}"),
])
def test_every_section_value_is_checked_before_anything_loads(capsys, tmp_path, arg, message):
    err = _cli(capsys, "recipe=demo-i2t", f"trainer.output_dir={tmp_path}", "data.path=/no/such/catalog", arg)
    assert message in err


def test_pixel_bounds_are_ordered_and_a_bare_value_is_a_one_element_list():
    from mmpc_rl.config import load_recipe
    from mmpc_rl.errors import ConfigError

    with pytest.raises(ConfigError, match=r"model.max_pixels=4000 is below model.min_pixels=5000"):
        load_recipe(["recipe=demo-i2t", "model.min_pixels=5000", "model.max_pixels=4000"])
    recipe = load_recipe(["recipe=demo-i2t", "data.categories=All_Beauty", "wandb.tags=mine",
                          "eval.categories=Video_Games"])
    assert recipe.data.categories == ["All_Beauty"] and recipe.wandb.tags == ["mine"]
    assert recipe.eval.categories == ["Video_Games"]


@pytest.mark.parametrize("arg, message", [
    ("gpu_gb=nan", "gpu_gb must be a number, got 'nan'"),
    ("gpu_gb=.nan", "gpu_gb=nan is not a finite number"),
    ("gpu_gb=0", "gpu_gb=0: must be greater than 0"),
    ("image_px=0", "image_px=0: must be at least 1"),
    ("image_px=-5", "image_px=-5: must be at least 1"),
    ("prompt_tokens=-500", "prompt_tokens=-500: must be at least 1"),
    ("format=xml", "format='xml'; valid choices: text, json"),
])
def test_planner_inputs_are_finite_and_positive(capsys, arg, message):
    from mmpc_rl.train.plan_cli import main

    rc = run_cli(lambda: main(["recipe=demo-i2t", arg]))
    assert rc == 2 and capsys.readouterr().err == f"mmpc-rl: error: {message}\n"


@pytest.fixture(scope="module")
def wrong_typed_model(tmp_path_factory, tiny_qwen):
    import shutil

    folder = tmp_path_factory.mktemp("bad") / "model"
    shutil.copytree(tiny_qwen, folder)
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["hidden_size"] = "abc"
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_a_config_json_with_wrong_typed_fields_is_one_line_in_plan_and_train(wrong_typed_model):
    from mmpc_rl.config import ModelConfig
    from mmpc_rl.errors import ModelLoadError
    from mmpc_rl.models import load_policy
    from mmpc_rl.train.plan_cli import main

    expected = rf"cannot load the model in {wrong_typed_model} \(check its config.json\):.*'hidden_size'"
    with pytest.raises(ModelLoadError, match=expected):
        main(["recipe=demo-i2t", f"model.name_or_path={wrong_typed_model}"])
    with pytest.raises(ModelLoadError, match=expected):
        load_policy(ModelConfig(name_or_path=str(wrong_typed_model), dtype="float32"), cpu=True)


# ---------------------------------------------------------------------------------------------- output folders
def test_an_output_folder_that_cannot_be_written_is_one_line_before_anything_loads(capsys, tmp_path):
    (tmp_path / "a_file").write_text("x")
    err = _cli(capsys, "recipe=demo-i2t", f"trainer.output_dir={tmp_path / 'a_file'}")
    assert err == f"mmpc-rl: error: output folder {tmp_path / 'a_file'}: exists and is not a directory"
    err = _cli(capsys, "recipe=demo-i2t", f"trainer.output_dir={tmp_path / ('x' * 300)}")
    assert err.startswith("mmpc-rl: error: output folder ") and err.endswith(": name too long")


# ------------------------------------------------------------------------------------------ rewards at the edges
@pytest.mark.parametrize("name, message", [
    ("rewards.:fn.weight=1", "name a reward from outside the package as package.module:function"),
    ("rewards.math:.weight=1", "name a reward from outside the package as package.module:function"),
    ("rewards..x:fn.weight=1", "cannot import module '.x'"),
    ("rewards.math:pi.weight=1", "reward 'math:pi' is not callable"),
    ("rewards.minilm_cosine.batch_size=8.0", "rewards.minilm_cosine.batch_size must be a whole number, got 8.0"),
    ("rewards.minilm_cosine.model=[a]", "rewards.minilm_cosine.model must be text, got ['a']"),
])
def test_reward_names_at_the_edges_are_one_line(capsys, tmp_path, name, message):
    assert message in _cli(capsys, "recipe=demo-i2t", f"trainer.output_dir={tmp_path}", name)


@pytest.mark.parametrize("scores, message", [
    (None, r"returned None for 2 completions: a reward returns a list"),
    ([1.0], r"returned list of 1 for 2 completions"),
    ([1.0, "0.5"], r"returned '0.5' \(str\) among its scores"),
    ([True, 1.0], r"returned True \(bool\) among its scores"),
])
def test_a_reward_that_returns_the_wrong_thing_stops_the_run_in_one_line(scores, message):
    from mmpc_rl.errors import ConfigError
    from mmpc_rl.train.instrument import instrument_rewards

    def odd(prompts=None, completions=None, completion_ids=None, **kwargs):
        return scores

    (wrapped,) = instrument_rewards([odd])
    with pytest.raises(ConfigError, match=r"^reward 'odd' " + message):
        wrapped(prompts=["p", "q"], completions=["a", "b"])
    (fine,) = instrument_rewards([lambda prompts=None, completions=None, completion_ids=None, **kw: [0.5, None]])
    assert fine(prompts=["p", "q"], completions=["a", "b"]) == [0.5, None]


def test_cqbench_records_of_the_wrong_shape_are_generated_again(tmp_path, one_thread):
    from mmpc_rl.eval.cqbench import main
    from mmpc_rl.io import read_jsonl

    argv = ["models=[tiny://qwen2.5-vl]", "data=sample", "categories=Video_Games", "limit=2", "max_new_tokens=2",
            "dtype=float32", "progress=false", f"output_dir={tmp_path}"]
    assert main(argv) == 0
    items = tmp_path / "items" / "tiny-qwen2.5-vl" / "i2t.jsonl"
    good = list(read_jsonl(items))
    items.write_text(json.dumps({**good[0], "metrics": "lost"}) + "\n" + json.dumps({"key": 5}) + "\n"
                     + json.dumps(good[1]) + "\n")  # hand-edited: a record of another shape, a stray line
    assert main(argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())["results"]["tiny-qwen2.5-vl"]["i2t"]
    assert results["n_items"] == 2
