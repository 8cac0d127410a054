"""Recipes compose, build their objects, obey override precedence, and reject what does not exist by name."""

from __future__ import annotations

import pytest

from mmpc_rl.config import list_recipes
from mmpc_rl.errors import ConfigError
from mmpc_rl.train.builder import resolve_layout
from mmpc_rl.train.recipe import load_training_recipe as load_recipe
from mmpc_rl.train.run_config import save_config
from mmpc_rl.train.trl_config import build_grpo_config as _build_grpo_config
from mmpc_rl.train.trl_config import build_lora_config


def build_grpo_config(recipe):
    """As a training run builds it: the memory layout resolved first (on this CPU machine: one group per step)."""
    return _build_grpo_config(resolve_layout(recipe))


def test_an_open_layout_is_not_handed_to_trl_unresolved():
    needle = r"memory layout open \(.*\): resolve it first with mmpc_rl.train.builder.resolve_layout"
    with pytest.raises(ConfigError, match=needle):
        _build_grpo_config(load_recipe(["recipe=i2t"]))


@pytest.mark.parametrize("name", list_recipes())
def test_every_recipe_composes_and_builds(name):
    cfg = load_recipe([f"recipe={name}"])
    args = build_grpo_config(cfg)
    assert args.reward_weights == [float(o["weight"]) for o in cfg.rewards.values()]
    assert build_lora_config(cfg).r == 16


def test_i2t_recipe_is_paper_parity():
    cfg = load_recipe(["recipe=i2t"])
    args = build_grpo_config(cfg)
    assert cfg.model.name_or_path == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert (args.loss_type, args.beta, args.epsilon, args.epsilon_high) == ("grpo", 0.04, 0.28, 0.28)
    assert (args.num_generations, args.learning_rate, args.scale_rewards) == (16, 1e-5, "group")
    assert list(cfg.rewards) == ["json_format", "minilm_cosine"] and args.reward_weights == [1.0, 2.0]
    assert args.report_to == ["wandb"]
    lora = build_lora_config(cfg)
    assert (lora.r, lora.lora_alpha) == (16, 32)


def test_override_precedence_cli_over_recipe_over_base():
    base_only = load_recipe(["recipe=i2t"])
    assert base_only.trainer.save_total_limit == 3  # from base.yaml
    assert base_only.trainer.learning_rate == 1e-5  # i2t.yaml over base.yaml
    demo = load_recipe(["recipe=demo-i2t"])
    assert demo.trainer.learning_rate == 3e-3  # demo-i2t.yaml over i2t.yaml (inherit)
    assert demo.trainer.loss_type == "grpo"  # inherited from i2t
    cli = load_recipe(["recipe=demo-i2t", "trainer.learning_rate=0.5", "rewards.minilm_cosine.weight=3"])
    assert cli.trainer.learning_rate == 0.5 and build_grpo_config(cli).reward_weights == [1.0, 3.0]
    dropped = load_recipe(["recipe=demo-i2t", "rewards.minilm_cosine=null"])
    assert build_grpo_config(dropped).reward_weights == [1.0]


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["recipe=nope"], "unknown recipe 'nope'"),
        (["recipe=i2t", "trainer.bogus=1"], "unknown key trainer.bogus"),
        (["recipe=i2t", "model.nam_or_path=x"], "did you mean 'name_or_path'"),
        (["recipe=i2t", "lora.rank=8"], "unknown key lora.rank"),
        (["recipe=i2t", "rewards.nope.weight=1"], "unknown reward 'nope'"),
        (["recipe=i2t", "rewards.minilm_cosine.temperature=1"], "unknown key rewards.minilm_cosine.temperature"),
        (["recipe=i2t", "rewards.json_format.weight=abc"], "must be a number"),
        (["recipe=i2t", "task=x2y"], "unknown task 'x2y'"),
        (["recipe=i2t", "bogus_section.a=1"], "unknown key recipe.bogus_section"),
        (["recipe=i2t", "model.dtype=int3"], "model.dtype='int3'"),
        (["recipe=i2t", "trainer.reward_weights=[1]"], "rewards.<name>.weight"),
        (["recipe=i2t", "notakeyvalue"], "key=value"),
        ([], "no recipe given"),
    ],
)
def test_errors_name_the_culprit_and_the_choices(argv, needle):
    with pytest.raises(ConfigError) as e:
        load_recipe(argv)
    assert needle in str(e.value)
    if "unknown" in needle and "did you mean" not in needle:
        assert "valid choices" in str(e.value)


def test_unknown_recipe_lists_valid_recipes():
    with pytest.raises(ConfigError, match="demo-i2t.*i2t|i2t.*demo-i2t"):
        load_recipe(["recipe=i3t"])


def test_trainer_value_errors_are_config_errors():
    cfg = load_recipe(["recipe=demo-i2t", "trainer.per_device_train_batch_size=6", "trainer.num_generations=4"])
    with pytest.raises(ConfigError, match="trainer:.*divisible"):
        build_grpo_config(cfg)


def test_saved_config_is_resolved_and_scrubbed(tmp_path):
    # a user pasting a token on the command line must not see it written to disk
    cfg = load_recipe(["recipe=demo-i2t", "wandb.name=run1", "trainer.hub_token=sk-secret"])
    text = save_config(cfg, tmp_path).read_text()
    assert "output_dir: outputs/demo-i2t" in text and "recipe: demo-i2t" in text
    assert "sk-secret" not in text and "<redacted>" in text


def test_typed_section_defaults_are_stated_once(tmp_path):
    """base.yaml holds no section that has a dataclass, so a recipe that leaves a field out gets the dataclass's
    default, the same one `mmpc-rl eval cqbench` and the saved config see."""
    from omegaconf import OmegaConf

    from mmpc_rl.config import SECTION_SCHEMAS, DataConfig, ModelConfig, recipe_dir
    from mmpc_rl.config import load_recipe as compose  # the schema alone: this bare recipe names no reward

    base = OmegaConf.to_container(OmegaConf.load(recipe_dir() / "base.yaml"))
    assert set(base) & set(SECTION_SCHEMAS) == set()
    (tmp_path / "bare.yaml").write_text("inherit: base\ntrainer:\n  output_dir: out/bare\n")
    bare = compose([f"recipe={tmp_path / 'bare.yaml'}"])
    assert bare.data == DataConfig() and bare.model == ModelConfig()
    assert (bare.data.path, bare.data.prompt, bare.model.dtype) == ("data/mmpcbench", "paper", "bfloat16")


def test_task_names_come_from_the_task_table():
    from mmpc_rl.tasks import TASKS

    with pytest.raises(ConfigError) as e:
        load_recipe(["recipe=i2t", "task=x2y"])
    assert str(e.value).endswith("valid choices: " + ", ".join(TASKS))


def test_lora_targets_only_the_language_model_of_qwen_and_gemma(tiny_qwen):
    """Both model families of the paper: the 7 linear layers of every language-model block, no vision layer."""
    from peft import get_peft_model
    from transformers import AutoModelForImageTextToText, Gemma3Config, Gemma3ForConditionalGeneration

    gemma = Gemma3ForConditionalGeneration(Gemma3Config(
        text_config=dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=64),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        mm_tokens_per_image=4, image_token_index=299, boi_token_index=297, eoi_token_index=298))
    qwen = AutoModelForImageTextToText.from_pretrained(str(tiny_qwen))
    lora = build_lora_config(load_recipe(["recipe=i2t"]))
    for model in (gemma, qwen):
        wrapped = get_peft_model(model, lora)
        adapted = [n for n, _ in wrapped.named_modules() if n.endswith(".lora_A")]
        assert len(adapted) == 7 * 2, adapted  # 2 blocks x {q,k,v,o,gate,up,down}
        assert all(".language_model." in n for n in adapted)


def test_inherit_paths_resolve_against_the_recipe_folder_and_base_is_a_parent(tmp_path, monkeypatch):
    # run from anywhere; `inherit: ../x.yaml` is the recipe file's neighbour, not the cwd's
    (tmp_path / "shared").mkdir()
    (tmp_path / "mine").mkdir()
    (tmp_path / "shared" / "base-ish.yaml").write_text("inherit: i2t\ntrainer:\n  learning_rate: 0.0007\n")
    (tmp_path / "mine" / "my.yaml").write_text("inherit: ../shared/base-ish.yaml\ntrainer:\n  beta: 0.5\n")
    (tmp_path / "mine" / "plain.yaml").write_text("inherit: base\ntask: i2t\ntrainer:\n  output_dir: out/plain\n"
                                               "rewards:\n  json_format:\n    weight: 1.0\n")
    (tmp_path / "mine" / "loop.yaml").write_text("inherit: ./loop.yaml\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_recipe([f"recipe={tmp_path / 'mine' / 'my.yaml'}"])
    assert (cfg.trainer.learning_rate, cfg.trainer.beta, cfg.trainer.loss_type) == (0.0007, 0.5, "grpo")
    plain = load_recipe([f"recipe={tmp_path / 'mine' / 'plain.yaml'}"])
    assert plain.trainer.output_dir == "out/plain" and plain.task == "i2t"
    monkeypatch.chdir(tmp_path / "mine")  # a relative recipe path is the cwd's, its parents the file's
    assert load_recipe(["recipe=my.yaml"]).trainer.beta == 0.5
    with pytest.raises(ConfigError, match="inheritance loops"):
        load_recipe(["recipe=loop.yaml"])
    (tmp_path / "mine" / "gone.yaml").write_text("inherit: ../nowhere/x.yaml\n")
    with pytest.raises(ConfigError, match=r"recipe file '.*mine/\.\./nowhere/x\.yaml' does not exist"):
        load_recipe(["recipe=gone.yaml"])
    with pytest.raises(ConfigError, match="unknown recipe 'base'"):  # base is a parent, not a run
        load_recipe(["recipe=base"])
