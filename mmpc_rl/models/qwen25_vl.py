"""Qwen2.5-VL-7B-Instruct's published architecture: the one definition the memory planner counts (mmpc_rl.plan.shapes)
and the benchmark and speed harness build random weights from.

With random weights it has the real model's compute and memory (8,292,166,656 parameters on the meta device,
the published checkpoint's count; tests/test_benchmark.py checks it) and needs no download. transformers' Qwen2.5-VL
classes are imported inside the builders, as in policy.py (seconds of imports no other importer needs).
"""

from __future__ import annotations

import torch

# The special-token ids of the published checkpoint (its config.json and tokenizer), for a config built without one.
QWEN_TOKEN_IDS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|vision_start|>": 151652,
                  "<|vision_end|>": 151653, "<|vision_pad|>": 151654, "<|image_pad|>": 151655, "<|video_pad|>": 151656}


def qwen25_vl_7b_config(tokenizer=None):
    """Qwen2.5-VL-7B-Instruct's published architecture, with this tokenizer's special-token ids (None: the
    checkpoint's own)."""
    from transformers import Qwen2_5_VLConfig

    tid = tokenizer.convert_tokens_to_ids if tokenizer is not None else QWEN_TOKEN_IDS.__getitem__
    text = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1e6},
                tie_word_embeddings=False, bos_token_id=tid("<|endoftext|>"), eos_token_id=tid("<|im_end|>"),
                pad_token_id=tid("<|endoftext|>"))
    vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                  fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2)
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=tid("<|image_pad|>"),
                            video_token_id=tid("<|video_pad|>"), vision_start_token_id=tid("<|vision_start|>"),
                            vision_end_token_id=tid("<|vision_end|>"), tie_word_embeddings=False)


def build_qwen25_vl_7b(tokenizer, *, device: str, dtype: torch.dtype, seed: int = 0):
    """Random Qwen2.5-VL-7B weights in `dtype`, SDPA attention, built directly on `device` (no 33 GB float32 copy
    first), with the tokenizer's end-of-turn and padding ids in its generation config."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    config = qwen25_vl_7b_config(tokenizer)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype, attn_implementation="sdpa")
    model.generation_config.eos_token_id = [config.text_config.eos_token_id]
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    return model
