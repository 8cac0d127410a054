"""A tiny random open_clip CLIP, written as the folder layout open_clip publishes on the hub
(`open_clip_config.json` + `open_clip_model.safetensors`), so `mmpc_rl.clip` loads it through the same code path as a
real local checkpoint. Images stay 224 px so the preprocessing under test is the real ViT-B/32 one."""

from __future__ import annotations

import json
from pathlib import Path

from mmpc_rl.clip import OPENAI_MEAN, OPENAI_STD

MODEL_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
    # The text tower is never used for image-image similarity; a small vocabulary keeps the folder small.
    "text_cfg": {"context_length": 77, "vocab_size": 1000, "width": 64, "heads": 2, "layers": 1},
}


def build(out_dir: str | Path, seed: int = 0) -> Path:
    import open_clip
    import torch
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.CLIP(
        embed_dim=MODEL_CFG["embed_dim"],
        vision_cfg=open_clip.CLIPVisionCfg(**MODEL_CFG["vision_cfg"]),
        text_cfg=open_clip.CLIPTextCfg(**MODEL_CFG["text_cfg"]),
    )
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "open_clip_model.safetensors"))
    config = {
        "model_cfg": MODEL_CFG,
        "preprocess_cfg": {"mean": list(OPENAI_MEAN), "std": list(OPENAI_STD), "interpolation": "bicubic",
                           "resize_mode": "shortest"},
    }
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out
