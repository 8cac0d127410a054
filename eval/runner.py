"""`evaluate()`: generate, (render,) score and record one model on a list of CQBench items, resumably.

Every finished item is appended to a JSONL file (completion, parsed answer, parse status, metrics), so a killed run
loses at most the batch in flight and a rerun generates only the items missing from the file. Under `accelerate
launch` / torchrun each process takes every world_size-th item into its own shard file and rank 0 merges them.
"""

from __future__ import annotations

import contextlib
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from mmpc_rl.eval.generate import generate_batch, length_sorted_batches, open_image
from mmpc_rl.eval.metrics import image_metrics_batch, text_metrics_batch
from mmpc_rl.eval.report import aggregate
from mmpc_rl.eval.settings import item_files
from mmpc_rl.io import append_jsonl, read_jsonl, safe_name
from mmpc_rl.tasks import Task
from mmpc_rl.zero3 import generation_model, lockstep_batches, zero3_enabled


@dataclass
class Scorers:
    """The heavy models behind the metrics, loaded once per process and shared by every model evaluated."""

    bertscore: object | None = None  # bert_score.BERTScorer
    lpips: Callable | None = None  # scorers.LpipsMetric
    clip: Callable | None = None  # PIL list -> n x d embeddings
    renderer: Callable | None = None  # (prompts, seeds) -> PIL images, for t2i
    resize: str = "cv2"


def item_key(item: dict) -> str:
    return f"{item['category']}/{item['parent_asin']}"


def item_seed(item: dict, seed: int) -> int:
    """A render seed that depends on the item only, so a resumed or re-sharded run renders the same picture."""
    return (zlib.crc32(item_key(item).encode()) + seed) % (2**31)


def _dist() -> tuple[int, int]:
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not dist.is_initialized():
        # launched by accelerate/torchrun outside a Trainer: without a process group the barrier below is a no-op
        # and rank 0 would merge before the other ranks finish writing
        from accelerate import PartialState

        PartialState()  # gloo on CPU, nccl on GPU; also selects cuda:<local_rank> as this process's device
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process; under accelerate/torchrun this starts the process group."""
    return _dist()


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def score_batch(task: Task, batch: list[dict], answers: list[str], scorers: Scorers, *, image_dir: Path | None,
                seed: int) -> tuple[list[dict], list[str | None]]:
    """(metrics per item, saved image path per item: t2i only)."""
    if task.uses_image_input:  # i2t: the answer is a title
        return text_metrics_batch([it["title"] for it in batch], answers, bertscore=scorers.bertscore), [None] * len(
            batch)
    if scorers.renderer is None:
        raise ValueError("text-to-image evaluation needs a renderer")
    images = scorers.renderer(answers, [item_seed(it, seed) for it in batch])
    paths = []
    for it, img in zip(batch, images, strict=True):
        # ids come from data: encoded so `../x` or `/abs` cannot leave image_dir
        path = Path(image_dir) / safe_name(it["category"]) / f"{safe_name(it['parent_asin'])}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        img.convert("RGB").save(tmp, format="JPEG")  # PIL's default quality, as the authors saved them
        os.replace(tmp, path)
        paths.append(str(path))
    # score what was saved: the authors compared the JPEG files, compression included
    refs = [open_image(it["image"]) for it in batch]
    gens = [open_image(p) for p in paths]
    rows = image_metrics_batch(refs, gens, lpips=scorers.lpips, clip=scorers.clip, resize=scorers.resize)
    return rows, paths


def evaluate(model, processor, task: Task, items: list[dict], *, results_path: str | os.PathLike,
             scorers: Scorers | None = None, batch_size: int = 16, max_new_tokens: int | None = None,
             do_sample: bool = False, seed: int = 42, image_dir: str | os.PathLike | None = None,
             progress: bool = True, desc: str = "cqbench", trainer=None, gather: bool = True) -> dict | None:
    """Run CQBench for one model and return {"per_item", "per_category", "summary", "status"} (None on ranks > 0).

    `results_path` is the per-item JSONL; items already in it are not generated again. `trainer`: the Trainer that
    owns `model` (CQBench inside training); under ZeRO-3 its sharded weights are gathered for generation
    (`gather`, TRL's ds3_gather_for_generation) and every rank makes the same number of generate calls."""
    scorers = scorers or Scorers()
    results_path = Path(results_path)
    rank, world = _dist()
    shard = results_path if world == 1 else results_path.with_name(f"{results_path.stem}.rank{rank}.jsonl")
    done = {rec["key"] for path in item_files(results_path) for rec in read_jsonl(path, repair=(path == shard))
            if well_formed(rec)}  # a record of another shape (hand-edited) is generated again, not a KeyError
    todo = [it for i, it in enumerate(items) if i % world == rank and item_key(it) not in done]
    max_new = max_new_tokens or task.max_new_tokens
    image_dir = Path(image_dir) if image_dir else results_path.parent / "images"
    bar = tqdm(total=len(todo), desc=desc, disable=not progress or rank != 0, unit="item")
    batches = [(b, True) for b in length_sorted_batches(task, todo, batch_size)]
    if world > 1 and zero3_enabled():
        batches = lockstep_batches([b for b, _ in batches], items[0] if items else None)
    with generation_model(model, trainer, gather) as gen_model:
        _generate_all(gen_model, processor, task, batches, shard, scorers, max_new=max_new, do_sample=do_sample,
                      image_dir=image_dir, seed=seed, bar=bar)
    bar.close()
    _barrier()
    if rank != 0:
        return None
    wanted = {item_key(it) for it in items}
    records = {}
    for path in item_files(results_path):
        for rec in read_jsonl(path):
            if well_formed(rec) and rec["key"] in wanted:
                records.setdefault(rec["key"], rec)
    if world > 1:  # fold the shards into the one file a later single-process run resumes from
        merged = [r for r in read_jsonl(results_path)]
        have = {r.get("key") for r in merged}
        for rec in records.values():
            if rec["key"] not in have:
                append_jsonl(results_path, rec)
    ordered = [records[item_key(it)] for it in items if item_key(it) in records]
    # the prompt changes every number: the result says which one produced it (tables print it as a caption)
    return {**aggregate(ordered, task.name), "prompt": task.prompt_name}


def _generate_all(model, processor, task: Task, batches, shard: Path, scorers: Scorers, *, max_new: int,
                  do_sample: bool, image_dir: Path, seed: int, bar) -> None:
    """Generate, score and append each real batch to this rank's shard file."""
    for batch, real in batches:
        completions = generate_batch(model, processor, task, batch, max_new_tokens=max_new, do_sample=do_sample)
        if not real:  # padding: only there so this rank joins the other ranks' collectives
            continue
        parsed = [task.answer_for_eval(c) for c in completions]
        rows, paths = score_batch(task, batch, [a for a, _ in parsed], scorers, image_dir=image_dir, seed=seed)
        for it, completion, (answer, status), row, path in zip(batch, completions, parsed, rows, paths, strict=True):
            rec = {"key": item_key(it), "parent_asin": it["parent_asin"], "category": it["category"],
                   "reference": str(task.reference(it)),
                   "completion": completion, "answer": answer, "status": status, "metrics": row}
            if path:
                rec["image"] = path
            append_jsonl(shard, rec)
        bar.update(len(batch))


def well_formed(rec: dict) -> bool:
    """A per-item record as `_generate_all` writes it (what `aggregate` reads)."""
    return (isinstance(rec.get("key"), str) and isinstance(rec.get("metrics"), dict)
            and isinstance(rec.get("category"), str) and isinstance(rec.get("status"), str))


def adapter_off(model):
    """The adapter switched off (a PEFT model), else nothing to switch: LoRA's B starts at zero, so with the
    adapter off the model is exactly the base it started from."""
    disable = getattr(model, "disable_adapter", None)
    return disable() if callable(disable) else contextlib.nullcontext()
