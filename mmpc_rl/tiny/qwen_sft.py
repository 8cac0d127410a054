"""The tiny Qwen2.5-VL after a few seconds of supervised fine-tuning on the sample catalog's training items, so
that it has seen `{"title": "..."}` answers for product images. The demo starts from it: a random policy never
writes valid JSON, so its format reward is flat at 0 and CQBench scores only the literal "error", and a user
would see a pipeline that cannot move. The SFT is deliberately short (STEPS): the policy writes valid JSON about
half the time and its greedy answer often is not JSON, so the demo's GRPO has the format and the title to learn,
and the before/after CQBench shows it. Tests use the random `tiny://qwen2.5-vl`.
"""

from __future__ import annotations

import json
from pathlib import Path

from mmpc_rl.data import load_items
from mmpc_rl.tasks import get_task
from mmpc_rl.tiny import qwen

VERSION = "4"
# measured with the demo (recipes/demo-i2t.yaml) after 15, 20 and 25 steps: after 15 or 20 every greedy held-out answer
# already parses (one collapsed title for every image), so GRPO has no format left to show; after 25, 5 of 12 parse
STEPS = 25
BATCH = 8
LR = 3e-3


def _examples(processor, items: list[dict]):
    from PIL import Image

    task = get_task("i2t")
    out = []
    for it in items:
        image = Image.open(it["image"]).convert("RGB")
        prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": task.prompt}]}]
        answer = json.dumps({"title": it["title"]})
        full = prompt + [{"role": "assistant", "content": [{"type": "text", "text": answer}]}]
        head = processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        text = processor.apply_chat_template(full, tokenize=False)
        enc = processor(text=[text], images=[image], return_tensors="pt")
        n_head = processor(text=[head], images=[image], return_tensors="pt")["input_ids"].shape[1]
        labels = enc["input_ids"].clone()
        labels[:, :n_head] = -100  # learn the answer, not the prompt
        out.append({**enc, "labels": labels})
    return out


def build(out_dir: str | Path, seed: int = 0) -> Path:
    import torch

    torch.manual_seed(seed)
    processor = qwen.build_processor()
    model = qwen.build_model(len(processor.tokenizer), seed=seed)
    # only the training split: CQBench's held-out items stay unseen, so before/after numbers mean something
    examples = _examples(processor, load_items("sample", split="train"))
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(STEPS):
        idx = torch.randint(len(examples), (BATCH,), generator=gen).tolist()
        loss = sum(model(**examples[i]).loss for i in idx) / BATCH
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    out = Path(out_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
