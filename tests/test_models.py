"""mmpc_rl.models, the one loading face: one per-process cache keyed on (kind, source, device, dtype, options), one
placement table, and one-line errors from every loader."""

from __future__ import annotations

import pytest
import torch

from mmpc_rl import models
from mmpc_rl.config import ModelConfig
from mmpc_rl.errors import ConfigError, ModelLoadError
from mmpc_rl.models import cache


@pytest.fixture
def empty_cache(monkeypatch):
    """This test's loads only; the session's cached models come back afterwards."""
    monkeypatch.setattr(cache, "_CACHE", {})
    return cache


def test_same_kind_source_device_dtype_is_one_object_and_another_dtype_loads_anew(_session_cache, empty_cache):
    a = models.load_clip_model("tiny://clip", device="cpu", dtype="float32")
    b = models.load_clip_model("tiny://clip", device=torch.device("cpu"), dtype=torch.float32)
    assert a is b
    half = models.load_clip_model("tiny://clip", device="cpu", dtype="bfloat16")
    assert half is not a
    assert next(half.parameters()).dtype == torch.bfloat16 and next(a.parameters()).dtype == torch.float32
    keys = empty_cache.cached_keys("clip")
    assert [(k[2], k[3]) for k in keys] == [("cpu", "torch.float32"), ("cpu", "torch.bfloat16")]
    # the key holds the resolved source: tiny://clip and the folder it builds are one model
    assert models.load_clip_model(keys[0][1], device="cpu", dtype="float32") is a


def test_wrappers_share_the_cached_weights(_session_cache, empty_cache):
    from mmpc_rl.clip import ClipEmbedder

    first = ClipEmbedder.from_pretrained("tiny://clip", device="cpu")
    second = ClipEmbedder.from_pretrained("tiny://clip", device="cpu", batch_size=8)
    assert first is not second and first.model is second.model
    assert len(empty_cache.cached_keys("clip")) == 1


def test_a_local_folder_is_one_key_however_it_is_spelled(tmp_path, monkeypatch):
    (tmp_path / "m").mkdir()
    monkeypatch.chdir(tmp_path)
    assert models.source_key("./m") == models.source_key(str(tmp_path / "m")) == str((tmp_path / "m").resolve())
    assert models.source_key("org/hub-id") == "org/hub-id"


def test_sentence_model_aliases_share_one_copy(minilm):
    assert models.load_sentence_model("all-MiniLM-L6-v2", "cpu") is models.load_sentence_model(
        "sentence-transformers/all-MiniLM-L6-v2", "cpu")


def test_lpips_net_is_cached_and_the_builder_is_not(empty_cache):
    assert models.load_lpips_net(None) is models.load_lpips_net("random")
    assert models.build_lpips_net(None) is not models.build_lpips_net(None)
    assert [k[2] for k in empty_cache.cached_keys("lpips")] == ["cpu"]


def test_placement_rules():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert models.resolve_dtype(None, cuda, "sd3") == torch.bfloat16
    assert models.resolve_dtype("auto", cuda, "clip") == torch.float16
    assert models.resolve_dtype(None, cuda, "sentence") == torch.float32
    assert {models.resolve_dtype(None, cpu, k) for k in ("sd3", "clip", "timm")} == {torch.float32}
    assert models.resolve_dtype("bfloat16", cpu, "sd3") == torch.bfloat16
    assert models.resolve_device(None, "lpips") == models.resolve_device(None, "bertscore") == cpu
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert models.resolve_device(None, "sd3").type == models.resolve_device("auto", "clip").type == expected
    assert models.policy_dtype("bfloat16", cpu=True) == torch.float32
    assert models.policy_dtype("float32", cpu=False, qlora=True) == torch.bfloat16
    assert models.policy_dtype("auto", cpu=False) == "auto"


def _calls(tmp_path):
    missing = "/no/such/model"
    return {
        "sentence": (lambda: models.load_sentence_model(missing), ModelLoadError, "does not exist"),
        "sd3": (lambda: models.load_sd3_pipeline(missing, device="cpu"), ModelLoadError, "does not exist"),
        "sd3 not a pipeline": (lambda: models.load_sd3_pipeline(str(tmp_path), device="cpu"), ModelLoadError,
                               "no model_index.json"),
        "clip": (lambda: models.load_clip_model(missing + ".pt", device="cpu"), ModelLoadError, "does not exist"),
        "bertscore": (lambda: models.load_bertscore(missing + "/roberta-large"), ModelLoadError, "does not exist"),
        "bertscore layers": (lambda: models.load_bertscore(str(tmp_path)), ConfigError, "bertscore_layers"),
        "lpips": (lambda: models.load_lpips_net(missing + ".pth"), ModelLoadError, "not a file"),
        "timm": (lambda: models.load_image_encoder(missing + ".safetensors", device="cpu"), ModelLoadError,
                 "cannot load image encoder"),
        "policy": (lambda: models.load_policy(ModelConfig(name_or_path=missing), cpu=True), ModelLoadError,
                   "does not exist"),
        "dtype": (lambda: models.load_clip_model("tiny://clip", device="cpu", dtype="float8"), ConfigError,
                  "unknown dtype"),
        "device": (lambda: models.load_sd3_pipeline("tiny://sd3", device="gpu0"), ConfigError, "unknown device"),
        "sd3 offline": (lambda: models.load_sd3_pipeline("stabilityai/stable-diffusion-3.5-large-turbo",
                                                         device="cpu"), ModelLoadError, "no network"),
    }


@pytest.mark.parametrize("case", list(_calls(None)))
def test_every_loader_fails_in_one_line_and_caches_nothing(case, tmp_path, empty_cache):
    call, error, message = _calls(tmp_path)[case]
    with pytest.raises(error, match=message) as info:
        call()
    assert "\n" not in str(info.value) and len(str(info.value)) < 400
    assert empty_cache.cached_keys() == []


# ------------------------------------------------------------------------------------------------ CLIP QuickGELU
# open_clip 3.x builds `ViT-B-32` with nn.GELU even for OpenAI's weights (trained with QuickGELU). Each route of
# load_open_clip is run for real with the architecture shrunk to the tiny test shape and nothing downloaded.
def _activations(model) -> set[str]:
    from open_clip.transformer import QuickGELU

    return {type(m).__name__ for m in model.modules() if isinstance(m, (QuickGELU, torch.nn.GELU))}


@pytest.fixture
def tiny_arch(monkeypatch):
    """Any built-in architecture name builds the tiny shape, keeping that name's own `quick_gelu`."""
    import copy

    import open_clip.factory as factory

    from mmpc_rl.tiny.clip import MODEL_CFG

    real = factory.get_model_config

    def tiny(name):
        cfg = copy.deepcopy(MODEL_CFG)
        if (real(name) or {}).get("quick_gelu"):
            cfg["quick_gelu"] = True
        return cfg

    monkeypatch.setattr(factory, "get_model_config", tiny)
    monkeypatch.setattr(factory, "download_pretrained", lambda *a, **k: "")  # a tag's weights: none, no network
    monkeypatch.setattr(factory, "_get_hf_config", lambda *a, **k: {"model_cfg": copy.deepcopy(MODEL_CFG)})

    def no_hub_weights(*a, **k):
        raise OSError("offline")

    monkeypatch.setattr(factory, "download_pretrained_from_hf", no_hub_weights)
    return MODEL_CFG


def test_openai_hub_tags_build_quickgelu_and_gelu_tags_stay_gelu(tiny_arch):
    from open_clip import create_model

    assert _activations(create_model("ViT-B-32", pretrained="openai")) == {"GELU"}  # open_clip's own trap
    assert _activations(models.load_open_clip(models.DEFAULT_CLIP)) == {"QuickGELU"}  # ViT-B-32/openai
    assert _activations(models.load_open_clip("ViT-B-32/laion2b_s34b_b79k")) == {"GELU"}


def test_openai_hub_repos_build_quickgelu(tiny_arch):
    assert _activations(models.load_open_clip("timm/vit_base_patch32_clip_224.openai")) == {"QuickGELU"}
    assert _activations(models.load_open_clip("hf-hub:timm/vit_base_patch32_clip_224.openai")) == {"QuickGELU"}
    assert _activations(models.load_open_clip("laion/CLIP-ViT-B-32-laion2B-s34B-b79K")) == {"GELU"}


def test_openai_folders_build_quickgelu(tmp_path):
    import json

    from mmpc_rl.tiny import clip as tiny_clip

    # the hub repo's name, or the HF cache folder of that repo, says whose weights these are
    for folder in (tmp_path / "vit_base_patch32_clip_224.openai",
                   tmp_path / "models--timm--vit_base_patch32_clip_224.openai" / "snapshots" / "0123abcd"):
        tiny_clip.build(folder)
        assert _activations(models.load_open_clip(str(folder))) == {"QuickGELU"}
    # a folder under any name whose config says quick_gelu
    tiny_clip.build(tmp_path / "mine")
    cfg = json.loads((tmp_path / "mine" / "open_clip_config.json").read_text())
    cfg["model_cfg"]["quick_gelu"] = True
    (tmp_path / "mine" / "open_clip_config.json").write_text(json.dumps(cfg))
    assert _activations(models.load_open_clip(str(tmp_path / "mine"))) == {"QuickGELU"}
    assert _activations(models.load_open_clip("tiny://clip")) == {"GELU"}  # not OpenAI's: as its config says


def test_openai_weight_files_build_quickgelu(tmp_path, tiny_arch):
    from safetensors.torch import save_file

    from mmpc_rl.models.vision import load_open_clip

    state = {k: v.contiguous() for k, v in load_open_clip("tiny://clip").state_dict().items()}
    neutral = tmp_path / "w.safetensors"
    save_file(state, str(neutral))
    assert _activations(load_open_clip(str(neutral))) == {"QuickGELU"}  # default arch: OpenAI's ViT-B-32-quickgelu
    assert _activations(load_open_clip(str(neutral), arch="ViT-B-32")) == {"GELU"}  # an explicit non-OpenAI arch
    named = tmp_path / "vit_base_patch32_clip_224.openai" / "open_clip_pytorch_model.bin"
    named.parent.mkdir()
    torch.save(state, named)
    assert _activations(load_open_clip(str(named), arch="ViT-B-32")) == {"QuickGELU"}  # the weights are OpenAI's


def test_openai_torchscript_archives_build_quickgelu(tmp_path, tiny_arch):
    """`clip.load`'s checkpoints are TorchScript archives: OpenAI's format, so QuickGELU whatever arch= says."""
    from mmpc_rl.models.vision import load_open_clip

    model = load_open_clip("tiny://clip")

    class Holder(torch.nn.Module):  # a scripted module carrying CLIP's parameters under CLIP's names
        def __init__(self):
            super().__init__()
            for name, child in model.named_children():
                self.add_module(name, child)
            for name, param in model.named_parameters(recurse=False):
                self.register_parameter(name, param)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    archive = tmp_path / "ViT-B-32.pt"
    torch.jit.save(torch.jit.trace(Holder(), torch.zeros(1)), str(archive))
    built = load_open_clip(str(archive), arch="ViT-B-32")
    assert _activations(built) == {"QuickGELU"}
    pixels = torch.rand(1, 3, 224, 224)
    assert built.encode_image(pixels).shape == model.encode_image(pixels).shape


def test_the_t2i_reward_default_clip_builds_quickgelu(tiny_arch, empty_cache):
    from types import SimpleNamespace

    from mmpc_rl.rewards import RewardContext, build_reward
    from mmpc_rl.tasks import get_task

    renderer = SimpleNamespace(device=torch.device("cpu"))  # SD3.5 is not what this test is about
    reward = build_reward("sd35_clip", get_task("t2i"), RewardContext(device="cpu", models={"renderer": renderer}))
    assert _activations(reward.fn.embedder.model) == {"QuickGELU"}  # rewards.sd35_clip.clip: ViT-B-32/openai


# --------------------------------------------------------------------------------------------- tiny:// names
def test_schemes_are_registered_from_above_and_unregistered_ones_fail_in_one_line(monkeypatch, tiny_qwen):
    from mmpc_rl.models import hub

    assert hub.resolve_model_path("tiny://qwen2.5-vl") == str(tiny_qwen)  # mmpc_rl.tiny registered tiny://
    monkeypatch.delitem(hub.SCHEMES, "tiny")
    with pytest.raises(ModelLoadError, match=r"tiny:// is not registered .*importing mmpc_rl.tiny registers"):
        models.load_clip_model("tiny://clip", device="cpu")


def test_tiny_names_resolve_in_a_fresh_cli_process(tiny_qwen):
    """No test fixture has imported anything in that process: the `plan` command's package registers tiny://."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "mmpc_rl.cli", "plan", "recipe=demo-t2i", "format=json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])["settings"]["trainable_params"] > 0


def test_pixel_bounds_bind_the_image_processor_without_a_deprecation_warning_per_call(tiny_qwen):
    """Given to from_pretrained, max_pixels rides along as an argument of every processor call: a FutureWarning each
    time, and bounds that transformers means to drop. Set on the image processor, they bind with no warning."""
    import warnings

    from PIL import Image

    from mmpc_rl.models.policy import load_processor

    image = Image.new("RGB", (640, 480))
    text = ["<|vision_start|><|image_pad|><|vision_end|>a product"]
    grids = {}
    for bound in (None, 28 * 28 * 8):
        proc = load_processor(ModelConfig(name_or_path=str(tiny_qwen), max_pixels=bound))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            grids[bound] = proc(text=text, images=[image], return_tensors="pt")["image_grid_thw"][0].tolist()
        assert not [w for w in caught if issubclass(w.category, FutureWarning)], bound
    pixels = {bound: grid[1] * grid[2] * 14 * 14 for bound, grid in grids.items()}  # 14-px patches
    assert pixels[28 * 28 * 8] <= 28 * 28 * 8 < pixels[None]
