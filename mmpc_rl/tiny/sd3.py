"""A tiny random Stable Diffusion 3 pipeline (the SD3.5 architecture: MMDiT, two CLIP text encoders, T5, flow-match
scheduler, VAE; tiny widths), built without the hub and saved with `save_pretrained`, so the renderer loads
it exactly as it loads `stabilityai/stable-diffusion-3.5-large-turbo`.

Shapes follow diffusers' own SD3 pipeline test, with the hub tokenizers replaced by byte-level ones built here. The VAE
has 4 blocks so that, as in the real model, latents are 8x smaller than the image (64 px renders in a few ms).
"""

from __future__ import annotations

import string
from pathlib import Path


def _clip_tokenizer():
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in alphabet:
        vocab.setdefault(ch, len(vocab))
    for ch in alphabet:
        vocab.setdefault(ch + "</w>", len(vocab))
    tok = CLIPTokenizer(vocab=vocab, merges=[])
    tok.model_max_length = 77  # the pipeline truncates the CLIP prompts to this, as with the real tokenizers
    return tok


def _t5_tokenizer():
    from transformers import T5Tokenizer

    chars = [c for c in string.printable if not c.isspace()]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)] + [(c, -3.0) for c in chars]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def build(out_dir: str | Path, seed: int = 0) -> Path:
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    out = Path(out_dir)
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=32, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64, out_channels=4)
    clip_cfg = CLIPTextConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=5,
                              vocab_size=1000, projection_dim=32, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    text_encoder = CLIPTextModelWithProjection(clip_cfg)
    text_encoder_2 = CLIPTextModelWithProjection(clip_cfg)
    text_encoder_3 = T5EncoderModel(T5Config(vocab_size=128, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                             relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1,
        norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
    # SD3.5-large-turbo ships a FlowMatchEuler scheduler with shift 3.0; keep that so the 4-step schedule matches.
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    pipe = StableDiffusion3Pipeline(
        scheduler=scheduler, text_encoder=text_encoder, text_encoder_2=text_encoder_2, text_encoder_3=text_encoder_3,
        tokenizer=_clip_tokenizer(), tokenizer_2=_clip_tokenizer(), tokenizer_3=_t5_tokenizer(),
        transformer=transformer, vae=vae)
    pipe.save_pretrained(str(out), safe_serialization=True)
    return out
