"""Text->image: tiny SD3 renderer, tiny CLIP embedder, the sd35_clip reward and an in-process demo-t2i GRPO run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmpc_rl.errors import ConfigError, DataError, ModelLoadError
from mmpc_rl.tasks import get_task
from mmpc_rl.tiny.clip import MODEL_CFG as TINY

SIZE = 64
KW = {"height": SIZE, "width": SIZE, "max_sequence_length": 32}


@pytest.fixture(scope="module")
def renderer(_session_cache):
    from mmpc_rl.render import Renderer

    return Renderer.from_pretrained("tiny://sd3", device="cpu", max_batch=16)


@pytest.fixture(scope="module")
def embedder(_session_cache):
    from mmpc_rl.clip import ClipEmbedder

    return ClipEmbedder.from_pretrained("tiny://clip", device="cpu")


@pytest.fixture(scope="module")
def real_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    paths = []
    for i, color in enumerate([(200, 30, 30), (30, 30, 200)]):
        path = root / f"item{i}.jpg"
        Image.new("RGB", (120, 90), color).save(path)
        paths.append(str(path))
    return paths


def _pix(im) -> np.ndarray:
    return np.asarray(im).astype(np.int16)


def _answer(prompt: str) -> list[dict]:
    return [{"role": "assistant", "content": json.dumps({"prompt": prompt})}]


# ---------------------------------------------------------------------------------------------------- renderer
def test_same_prompt_and_seed_render_identically_and_seeds_matter(renderer):
    a = renderer.render(["a red mug", "a red mug", "a red mug"], [7, 7, 8], **KW)
    b = renderer.render(["a red mug"], [7], **KW)
    assert [im.size for im in a] == [(SIZE, SIZE)] * 3
    assert np.array_equal(_pix(a[0]), _pix(a[1]))  # same prompt, same seed, same batch: bit-identical
    assert np.abs(_pix(a[0]) - _pix(b[0])).max() <= 1  # another batch: same noise, float round-off only
    assert np.abs(_pix(a[0]) - _pix(a[2])).mean() > 5  # another seed: another image


def test_text_encodings_are_cached_per_unique_prompt(renderer):
    before = renderer.prompts_encoded
    renderer.render(["cache me", "cache me", "and me"], [1, 2, 3], **KW)
    renderer.render(["cache me"], [4], **KW)
    assert renderer.prompts_encoded - before == 2


def test_batches_are_capped_by_max_batch(renderer):
    calls, renderer.max_batch = renderer.pipeline_calls, 2
    try:
        out = renderer.render(["x"] * 5, list(range(5)), **KW)
    finally:
        renderer.max_batch = 16
    assert len(out) == 5 and renderer.pipeline_calls - calls == 3


def test_tensor_output_matches_pil(renderer):
    pil = renderer.render(["a lamp"], [3], **KW)[0]
    pt = renderer.render(["a lamp"], [3], output_type="pt", **KW)
    assert pt.shape == (1, 3, SIZE, SIZE)
    assert np.abs(pt[0].permute(1, 2, 0).numpy() * 255 - _pix(pil)).max() <= 0.5 + 1e-4


def test_renderer_errors_are_one_line(tmp_path):
    from mmpc_rl.render import Renderer

    with pytest.raises(ModelLoadError, match="does not exist"):
        Renderer.from_pretrained("/no/such/sd35")
    with pytest.raises(ModelLoadError, match="no model_index.json"):
        Renderer.from_pretrained(str(tmp_path))
    with pytest.raises(ModelLoadError, match="no network"):
        Renderer.from_pretrained("stabilityai/stable-diffusion-3.5-large-turbo")


# -------------------------------------------------------------------------------------------------------- CLIP
def test_clip_embeddings_are_unit_float32_and_follow_openai_preprocessing(embedder):
    wide = Image.new("RGB", (448, 224), (0, 0, 0))
    wide.paste(Image.new("RGB", (224, 224), (250, 200, 0)), (112, 0))  # only the centre survives the crop
    centre = Image.new("RGB", (224, 224), (250, 200, 0))
    emb = embedder([wide, centre, Image.new("RGB", (224, 224), (0, 90, 250))])
    assert emb.dtype == torch.float32 and emb.device.type == "cpu" and emb.shape == (3, 32)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert float((emb[0] * emb[1]).sum()) == pytest.approx(1.0, abs=1e-5)
    x = embedder.preprocess(centre)
    expected = (250 / 255 - 0.48145466) / 0.26862954
    assert x.shape == (3, 224, 224) and float(x[0, 100, 100]) == pytest.approx(expected, abs=1e-5)


def test_clip_tensor_path_matches_pil_path(embedder):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (96, 160, 3), dtype=np.uint8)
    pil = embedder([Image.fromarray(arr)])
    pt = embedder.embed_tensors(torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255)
    assert float((pil * pt).sum()) > 0.99


def test_clip_loads_local_files_and_names_what_is_missing(tmp_path, embedder, monkeypatch):
    import open_clip
    from safetensors.torch import save_file

    from mmpc_rl.models import load_open_clip

    with pytest.raises(ModelLoadError, match="does not exist"):
        load_open_clip("/no/such/ViT-B-32.pt")
    with pytest.raises(ModelLoadError, match="open_clip_config.json"):
        load_open_clip(str(tmp_path))
    state = {k: v.contiguous() for k, v in embedder.model.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "w.pt")
    # A file holds weights only; the architecture comes from open_clip (ViT-B-32-quickgelu by default). Build the
    # tiny architecture instead of the 151M-parameter one to keep the test fast.
    monkeypatch.setattr(open_clip, "create_model", lambda arch, pretrained=None, **kw: open_clip.CLIP(
        embed_dim=32, vision_cfg=open_clip.CLIPVisionCfg(**TINY["vision_cfg"]),
        text_cfg=open_clip.CLIPTextCfg(**TINY["text_cfg"])))
    pixels = torch.rand(1, 3, 224, 224)
    expected = embedder.model.encode_image(pixels)
    for name in ("w.safetensors", "w.pt"):
        model = load_open_clip(str(tmp_path / name))
        assert torch.allclose(model.encode_image(pixels), expected, atol=1e-6)


# ------------------------------------------------------------------------------------------------------ reward
@pytest.fixture(scope="module")
def reward(renderer, embedder):
    from mmpc_rl.rewards import RewardContext, build_reward

    ctx = RewardContext(device="cpu", models={"renderer": renderer, "clip": embedder})
    return build_reward("sd35_clip", get_task("t2i"), ctx, size=SIZE, max_sequence_length=32, num_images=4,
                        log_images_every=0)


def test_render_seeds_depend_on_item_and_index_only():
    from mmpc_rl.rewards.sd35_clip import render_seed

    assert render_seed("B001", 0) == render_seed("B001", 0)
    assert len({render_seed("B001", k) for k in range(4)} | {render_seed("B002", k) for k in range(4)}) == 8
    assert render_seed("B001", 0, base=1) != render_seed("B001", 0)


def test_reward_is_mean_of_per_render_clip_scores_with_shared_seeds(reward, renderer, embedder, real_images):
    from mmpc_rl.rewards.sd35_clip import render_seed

    completions = [_answer("a red mug"), _answer("a blue shoe"), [{"role": "assistant", "content": "no json"}]]
    out = reward(prompts=[None] * 3, completions=completions, completion_ids=None,
                 reference_image=[real_images[0]] * 3, parent_asin=["B001"] * 3)
    last = reward.fn.last
    seeds = [render_seed("B001", k) for k in range(4)]
    assert [s for _, s in last["unique"]] == seeds * 2  # both completions of the item on the same four seeds
    assert out[2] == 0.0  # unparsed: 0.0, nothing rendered
    renders = renderer.render(["a red mug"] * 4, seeds, **KW)
    real = embedder([Image.open(real_images[0])])[0]
    expected = float((embedder(renders) @ real).mean())
    assert out[0] == pytest.approx(expected, abs=5e-3)  # tensor preprocessing vs PIL: resampling round-off
    assert out[0] == pytest.approx(sum(last["scores"][:4]) / 4, abs=1e-6)
    assert out[0] != pytest.approx(out[1], abs=1e-4)


def test_duplicate_prompts_render_once(reward, renderer, real_images):
    before = renderer.images_rendered
    calls = renderer.pipeline_calls
    completions = [_answer("same"), _answer("same"), _answer("other"), _answer("same")]
    out = reward(prompts=[None] * 4, completions=completions, completion_ids=None,
                 reference_image=[real_images[0]] * 4, parent_asin=["B001"] * 4)
    assert renderer.images_rendered - before == 8  # 2 unique prompts x 4 seeds, not 4 x 4
    assert renderer.pipeline_calls - calls == 1  # all of them in one batched call
    assert out[0] == out[1] == out[3]


def test_unparsed_rules_and_missing_column(renderer, embedder, real_images):
    from mmpc_rl.rewards import RewardContext, build_reward

    ctx = RewardContext(models={"renderer": renderer, "clip": embedder})
    bad = [[{"role": "assistant", "content": "a red mug"}], [{"role": "assistant", "content": ""}]]
    cols = {"reference_image": [real_images[0]] * 2, "parent_asin": ["B001"] * 2}
    raw = build_reward("sd35_clip", get_task("t2i"), ctx, size=SIZE, max_sequence_length=32, unparsed="raw",
                       log_images_every=0)
    none = build_reward("sd35_clip", get_task("t2i"), ctx, size=SIZE, max_sequence_length=32, unparsed="none",
                        log_images_every=0)
    r = raw(completions=bad, **cols)
    assert r[0] != 0.0 and r[1] == 0.0
    assert none(completions=bad, **cols) == [None, None]
    with pytest.raises(DataError, match="reference_image"):
        none(completions=bad, parent_asin=["B001"] * 2)
    with pytest.raises(ConfigError, match="unparsed"):
        build_reward("sd35_clip", get_task("t2i"), ctx, unparsed="skip")


def test_metrics_and_panel(reward, real_images, tmp_path):
    logged = {}
    completions = [_answer("a red mug"), _answer("a blue shoe")]
    reward(completions=completions, reference_image=[real_images[1]] * 2, parent_asin=["B002"] * 2,
           log_metric=lambda k, v: logged.__setitem__(k, v))
    assert logged["sd35_clip/unique_renders"] == 8.0 and logged["sd35_clip/rendered_frac"] == 1.0
    assert logged["sd35_clip/render_seconds"] > 0 and logged["sd35_clip/over_77_clip_tokens_frac"] == 0.0
    reward.fn.output_dir = str(tmp_path)
    panel = reward.fn.log_panel([real_images[1]] * 2, step=3)
    assert panel.size == (5 * 256, 2 * 256)
    assert (tmp_path / "renders" / "step_000003.jpg").is_file()


# ------------------------------------------------------------------------------------------------- GRPO demo
def test_demo_t2i_grpo_run_logs_both_rewards(renderer, embedder, tmp_path, sample_catalog):
    from mmpc_rl.config import load_recipe
    from mmpc_rl.train.builder import build_trainer

    cfg = load_recipe(["recipe=demo-t2i", f"trainer.output_dir={tmp_path}", "trainer.max_steps=2",
                       "trainer.save_steps=100", "trainer.per_device_train_batch_size=4",
                       "trainer.max_completion_length=12", "rewards.sd35_clip.num_images=2"])
    before = renderer.images_rendered
    trainer = build_trainer(cfg, models={"renderer": renderer, "clip": embedder})
    trainer.train()
    logs = [h for h in trainer.state.log_history if "rewards/sd35_clip/mean" in h]
    assert len(logs) == 2 and all("rewards/json_format/mean" in h for h in logs)
    assert all(h["sd35_clip/render_seconds"] > 0 for h in logs)
    assert 0 < renderer.images_rendered - before <= 2 * 4 * 2  # 2 steps x 4 completions x 2 renders, deduped
    assert (tmp_path / "renders" / "step_000000.jpg").is_file()


def test_cqbench_callback_inside_a_text_to_image_run(tmp_path, monkeypatch):
    """eval.enabled on a t2i recipe: CQBench renders with the reward's SD3 and scores all five image metrics."""
    from mmpc_rl.models import cache
    from mmpc_rl.train.grpo import main

    monkeypatch.setattr(cache, "_CACHE", {})  # this run's pipelines only

    out = tmp_path / "t2i-eval"
    assert main(["recipe=demo-t2i", f"trainer.output_dir={out}", "trainer.max_steps=1", "trainer.save_strategy=no",
                 "eval.enabled=true", "eval.items_per_category=1", "eval.clip=tiny://clip", "eval.lpips=random",
                 "rewards.sd35_clip.device=cpu"]) == 0
    # the callback found the reward's pipeline: one SD3 in the process, not a second copy under another key
    assert [(k[0], k[2], k[3]) for k in cache.cached_keys("sd3")] == [("sd3", "cpu", "torch.float32")]
    table = (out / "cqbench" / "before_after.md").read_text()
    assert "Text→Image" in table and "| CLIP Sim ↑ |" in table and "| LPIPS ↓ |" in table
    summary = json.loads((out / "cqbench" / "after" / "summary.json").read_text())
    assert summary["n_items"] == 3
