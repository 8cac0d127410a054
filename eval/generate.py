"""Batched generation with any Hugging Face VLM: prompts from `mmpc_rl.tasks`, left padding, batches of similar
prompt length, greedy by default. The model is used as it is in memory (LoRA on or off, 4-bit or not)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from PIL import Image

from mmpc_rl.data.images import open_image as safe_open_image
from mmpc_rl.data.images import usable_image
from mmpc_rl.errors import DataError
from mmpc_rl.tasks import Task


def open_image(path) -> Image.Image:
    try:
        return safe_open_image(path)  # the shared opener: a pixel bomb is refused before it is decoded
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None


def prompt_cost(task: Task, item: dict) -> int:
    """A sort key that tracks the prompt's token count: pixels for image prompts, characters for text ones."""
    if task.uses_image_input:
        try:
            width, height = usable_image(item["image"], fit=False, decode=False)  # the header; never a FIFO
            return width * height
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read image {item['image']} of item {item.get('parent_asin')}: {e}") from None
    return len(item.get("text") or item["title"])


def length_sorted_batches(task: Task, items: list[dict], batch_size: int) -> Iterator[list[dict]]:
    """Batches of items with similar prompt lengths, so left padding wastes little compute."""
    order = sorted(items, key=lambda it: prompt_cost(task, it))
    for start in range(0, len(order), max(1, batch_size)):
        yield order[start:start + batch_size]


@contextlib.contextmanager
def eval_mode(model):
    """Generation in eval mode without gradients; the caller's train/eval state comes back afterwards."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def left_padding(processor):
    tok = getattr(processor, "tokenizer", processor)
    old = tok.padding_side
    tok.padding_side = "left"  # decoder-only generation appends at the right end of every row
    try:
        yield tok
    finally:
        tok.padding_side = old


def model_device(model):
    try:
        return next(p.device for p in model.parameters())
    except StopIteration:
        import torch

        return torch.device("cpu")


def generate_batch(model, processor, task: Task, items: list[dict], *, max_new_tokens: int,
                   do_sample: bool = False) -> list[str]:
    """Completions (decoded new tokens) for a batch of items, in the items' order."""
    texts = [processor.apply_chat_template(task.messages(it), add_generation_prompt=True, tokenize=False)
             for it in items]
    with left_padding(processor) as tok, eval_mode(model):
        kwargs = {"text": texts, "padding": True, "return_tensors": "pt"}
        if task.uses_image_input:
            kwargs["images"] = [open_image(it["image"]) for it in items]
        inputs = processor(**kwargs).to(model_device(model))
        gen_kwargs = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "pad_token_id": tok.pad_token_id,
                      "use_cache": True}  # training may have turned the cache off (gradient checkpointing)
        if not do_sample:  # silence the sampling fields a checkpoint's generation_config may carry
            gen_kwargs.update(temperature=None, top_p=None, top_k=None)
        out = model.generate(**inputs, **gen_kwargs)
    new_tokens = out[:, inputs["input_ids"].shape[1]:]
    return tok.batch_decode(new_tokens, skip_special_tokens=True)
