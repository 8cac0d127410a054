"""DeepSpeed ZeRO-3 helpers shared by training, rewards and CQBench.

Under `launch/zero3.yaml` (zero3_init_flag=true) transformers wraps *every* `from_pretrained` in `deepspeed.zero.Init`,
so a frozen scorer (MiniLM, BERTScore, CLIP) loaded during training would come back with empty, partitioned
weights that no DeepSpeed engine ever gathers ("'weight' must be 2-D"). Scorers are loaded whole, one copy per
process, inside `whole_weights()`.

Generation from the policy gathers the sharded weights once per CQBench pass, as TRL does for its rollouts
(`trl.models.utils.unwrap_model_for_generation`), and every rank makes the same number of `generate` calls
(`lockstep_batches`), because each ZeRO-3 forward and each gather is a collective: a rank with one batch fewer
leaves the others waiting forever.
"""

from __future__ import annotations

import contextlib


def zero3_enabled() -> bool:
    try:
        from transformers.integrations import is_deepspeed_zero3_enabled
    except ImportError:  # pragma: no cover - transformers always ships it
        return False
    return bool(is_deepspeed_zero3_enabled())


@contextlib.contextmanager
def whole_weights():
    """Models loaded in this block are not partitioned by ZeRO-3 (transformers skips `zero.Init`)."""
    from transformers.integrations import deepspeed as hf_ds

    saved = hf_ds._hf_deepspeed_config_weak_ref
    hf_ds._hf_deepspeed_config_weak_ref = None  # what is_deepspeed_zero3_enabled() reads; set again below
    try:
        yield
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = saved


@contextlib.contextmanager
def generation_model(model, trainer=None, gather: bool = True):
    """The model to call `.generate` on. With a bound trainer under ZeRO-3 this is TRL's own context: the engine's
    partitioned weights gathered on every rank (and the fetch hooks removed) for the whole block; without ZeRO-3
    (or without a trainer) the model as given."""
    if trainer is None or not _trainer_zero3(trainer):
        yield model
        return
    from trl.models.utils import unwrap_model_for_generation

    engine = getattr(trainer, "model_wrapped", None) or model
    with unwrap_model_for_generation(engine, trainer.accelerator, gather_deepspeed3_params=gather) as unwrapped:
        yield unwrapped


def _trainer_zero3(trainer) -> bool:
    accelerator = getattr(trainer, "accelerator", None)
    plugin = getattr(getattr(accelerator, "state", None), "deepspeed_plugin", None)
    return plugin is not None and int(getattr(plugin, "zero_stage", 0) or 0) == 3


def lockstep_batches(batches: list[list[dict]], filler: dict | None) -> list[tuple[list[dict], bool]]:
    """(batch, real) pairs padded to the largest batch count over all ranks. Padding batches repeat `filler` and
    their output is dropped; a rank with no work at all borrows the first item it was given."""
    import torch
    import torch.distributed as dist

    out = [(b, True) for b in batches]
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return out
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    n = torch.tensor([len(batches)], device=device)
    dist.all_reduce(n, op=dist.ReduceOp.MAX)
    missing = int(n.item()) - len(batches)
    if missing and filler is None:
        raise RuntimeError("a rank must pad its generate calls but has no item to pad with")
    return out + [([filler], False)] * missing
