"""Each reward on hand-written completions with exact expected values."""

from __future__ import annotations

import pytest

from mmpc_rl.rewards import REGISTRY, RewardContext, build_reward, build_rewards
from mmpc_rl.tasks import get_task

I2T = get_task("i2t")


def conv(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


@pytest.mark.parametrize(
    "completion, expected",
    [
        ('{"title": "Red Toy Car"}', 1.0),
        ('```json\n{"title": "Red Toy Car"}\n```', 1.0),  # code fence
        ('Here it is: {"title": "Red Toy Car"} Enjoy!', 1.0),  # surrounding prose: regex fallback
        ('{"title": "Red Toy Car"', 1.0),  # truncated: the lenient parser closes it
        ('{"name": "Red Toy Car"}', 0.5),  # parseable, wrong key
        ('{"title": ""}', 0.5),  # parseable, empty value
        ('{"title": 42}', 0.5),  # parseable, not a string
        ("[1, 2]", 0.5),  # parseable JSON array, not an object
        ("42", 0.0),  # a bare scalar says nothing about format
        ("Red Toy Car", 0.0),
        ("", 0.0),
    ],
)
def test_json_format(completion, expected):
    reward = build_reward("json_format", I2T)
    assert reward(prompts=[None], completions=[conv(completion)]) == [expected]
    assert reward(prompts=[None], completions=[completion]) == [expected]  # plain (non-conversational) text too


def test_json_format_uses_the_task_key():
    reward = build_reward("json_format", get_task("t2i"))
    assert reward(completions=['{"prompt": "a red car"}', '{"title": "a red car"}']) == [1.0, 0.5]


def test_minilm_cosine_exact_values(minilm):
    reward = build_reward("minilm_cosine", I2T, RewardContext(models={"minilm": minilm}))
    ref = "Red Wooden Toy Car for Toddlers"
    emb = minilm.encode([ref, "Blue Ceramic Coffee Mug", "Here: Red Wooden Toy Car for Toddlers"],
                        convert_to_tensor=True, normalize_embeddings=True)
    expected_other = float(emb[0] @ emb[1])
    expected_raw = float(emb[0] @ emb[2])
    out = reward(
        completions=[conv(f'{{"title": "{ref}"}}'), conv('{"title": "Blue Ceramic Coffee Mug"}'),
                     conv(f"Here: {ref}"), conv("")],
        title=[ref] * 4,
    )
    assert out[0] == pytest.approx(1.0, abs=1e-5)  # parsed title identical to the reference
    assert out[1] == pytest.approx(expected_other, abs=1e-5) and out[1] < 0.5
    assert out[2] == pytest.approx(expected_raw, abs=1e-5)  # unparseable: its raw text is scored
    assert out[3] == 0.0  # empty completion


def test_minilm_cosine_missing_column_is_named(minilm):
    reward = build_reward("minilm_cosine", I2T, RewardContext(models={"minilm": minilm}))
    with pytest.raises(KeyError, match="'title'"):
        reward(completions=["x"])


def test_registry_is_names_to_factories_and_builds_in_recipe_order(minilm):
    assert {"json_format", "minilm_cosine"} <= set(REGISTRY)
    rewards = build_rewards({"minilm_cosine": {"weight": 2.0}, "json_format": {"weight": 1.0}}, I2T,
                            RewardContext(models={"minilm": minilm}))
    assert [r.__name__ for r in rewards] == ["minilm_cosine", "json_format"]


def test_a_reward_not_named_is_never_loaded(monkeypatch):
    """Factories, not instances: building json_format alone must not load MiniLM."""
    from mmpc_rl.models import cache

    monkeypatch.setattr(cache, "_CACHE", {})
    build_rewards({"json_format": {"weight": 1.0}}, I2T)
    assert cache._CACHE == {}


def test_the_readme_example_reward_works_as_written():
    """README's 'adding a reward': its file registers the reward and its recipe line configures it."""
    import re
    from pathlib import Path

    from mmpc_rl.train.builder import resolve_layout
    from mmpc_rl.train.recipe import load_training_recipe as load_recipe
    from mmpc_rl.train.trl_config import build_grpo_config

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = re.search(r"```python\n(# rewards/title_length.py\n.*?)```", readme, re.S).group(1)
    if "title_length" not in REGISTRY:
        exec(compile(code, "rewards/title_length.py", "exec"), {"__name__": "mmpc_rl.rewards.title_length"})
    line = re.search(r"recipe=i2t (rewards\.title_length\.weight=\S+) (rewards\.title_length\.target=\S+)", readme)
    cfg = load_recipe(["recipe=i2t", *line.groups()])
    assert build_grpo_config(resolve_layout(cfg)).reward_weights == [1.0, 2.0, 0.5]
    reward = build_reward("title_length", I2T, target=cfg.rewards["title_length"]["target"])
    assert reward(completions=[conv('{"title": "' + "x" * 60 + '"}'), conv('{"title": "' + "x" * 30 + '"}'),
                               conv("no json")]) == [1.0, 0.5, 0.0]


# ---------------------------------------------------------------------------------------------- declared memory
def test_rewards_declare_their_memory_from_their_own_option_defaults():
    from mmpc_rl.rewards import reward_memory

    (sd,) = reward_memory({"sd35_clip": {"weight": 4.0}})
    assert reward_memory({"sd35_clip": {"size": 1024, "max_batch": 16, "decode_batch": 4}}) == (sd,)
    (small,) = reward_memory({"sd35_clip": {"size": 512}})
    assert small.activation_bytes < sd.activation_bytes and small.params == sd.params
    assert sd.params * sd.bytes_per_param / 2**30 > 25  # SD3.5-large + CLIP in bf16/fp16
    # CLIP on another device is its own entry, so the planner counts only what shares the policy's GPU
    parts = reward_memory({"sd35_clip": {"clip_device": "cuda:1"}})
    assert [(m.device, m.params < sd.params) for m in parts] == [(None, True), ("cuda:1", True)]
    (minilm,) = reward_memory({"minilm_cosine": {}})
    assert (minilm.bytes_per_param, minilm.note) == (4, "")
    assert "planned at all-MiniLM-L6-v2's size" in reward_memory({"minilm_cosine": {"model": "/m/other"}})[0].note
    assert reward_memory({"json_format": {}}) == ()


def test_a_reward_that_declares_no_memory_is_a_note():
    from mmpc_rl.rewards import reward_memory

    (undeclared,) = reward_memory({"mmpc_rl.rewards.json_format:score": {}})
    assert undeclared.params == 0 and "declares no memory" in undeclared.note
