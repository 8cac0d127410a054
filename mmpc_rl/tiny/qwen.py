"""A tiny random Qwen2.5-VL (≈225k parameters) with a real processor: byte-level BPE trained in-process on product
text, the original Qwen2.5-VL chat template (shipped in TRL), the real image processor with a small pixel budget."""

from __future__ import annotations

import json
from pathlib import Path

from mmpc_rl.data.sample import catalog_words
from mmpc_rl.prompts import all_prompt_texts

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
           "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
           "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
# transformers' Qwen2Tokenizer pre-tokenisation pattern
SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
         r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
CORPUS = [
    '{"title": "HydroFlow 24oz Stainless Steel Insulated Water Bottle with Leak-Proof Design"}',
    '{"prompt": "a red plastic toy car on a white background, studio lighting"}',
    "Wireless Gaming Controller for PC and Console, Black", "Organic Lavender Shampoo for Dry Hair, 16 fl oz",
    "Wooden Building Blocks Set for Toddlers, 100 Pieces", "LED Desk Lamp with USB Charging Port, White",
    "Ceramic Non-Stick Frying Pan, 10 inch, Blue", "Acoustic Guitar Strings, Light Gauge, Bronze",
    "You are an Amazon product title generation assistant. Given only the product image, generate a title as JSON.",
]


VOCAB_SIZE = 1024


def build_processor():
    import trl
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # the sample catalog's words too, as a real tokenizer has common product words: a colour or product noun is a
    # token or two, so a title fits the demo's completion budget and the policy can learn it word by word
    tok.train_from_iterator(CORPUS * 20 + all_prompt_texts() * 5 + catalog_words() * 20, trainer=trainer)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" "))
              for m in json.loads(tok.to_str())["model"]["merges"]]
    template = (Path(trl.__file__).parent / "chat_templates" / "qwen2_5_vl.jinja").read_text()
    tokenizer = Qwen2Tokenizer(
        vocab=tok.get_vocab(), merges=merges, unk_token="<|endoftext|>", eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                              "vision_bos_token": "<|vision_start|>", "vision_eos_token": "<|vision_end|>"})
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL[1:]})
    tokenizer.chat_template = template
    image_processor = Qwen2VLImageProcessor(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)
    return Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               video_processor=Qwen2VLVideoProcessor(), chat_template=template)


VERSION = "3"  # bump when the tiny model changes: cached copies are rebuilt
# Default-scale init (0.02) makes a 64-wide model's next-token distribution uniform (entropy = ln(vocab)) and GRPO
# then has nothing to move; a larger init gives peaked, varied distributions like a real policy's.
INIT_RANGE = 0.2


def build_model(vocab_size: int, seed: int = 0):
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = {t: i for i, t in enumerate(SPECIAL)}
    rope = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e6}  # sums to head_dim/2
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         rope_parameters=rope, bos_token_id=0, eos_token_id=ids["<|im_end|>"], pad_token_id=0,
                         tie_word_embeddings=True, initializer_range=INIT_RANGE),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                           fullatt_block_indexes=[1]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True, initializer_range=INIT_RANGE)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = 0
    return model


def build(out_dir: str | Path, seed: int = 0) -> Path:
    out = Path(out_dir)
    processor = build_processor()
    model = build_model(len(processor.tokenizer), seed=seed)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
