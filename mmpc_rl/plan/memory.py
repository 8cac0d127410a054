"""Peak GPU memory of one GRPO step (TRL 1.16, PEFT LoRA, one device), as the largest of its phases on top of what
stays resident. All figures are GiB (2**30 bytes), the unit of torch.cuda.max_memory_allocated() that the anchors
were read with. docs/memory.md explains each term and what was measured."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from mmpc_rl.plan import activations as act
from mmpc_rl.plan.shapes import ModelShape, lora_input_dims, lora_params

GIB = 2**30
# bitsandbytes NF4 with double quantisation: 4 bits per weight, an 8-bit absmax per 64 weights, an fp32 constant
# per 256 absmax blocks.
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
# What a card's nominal size loses before PyTorch's allocator sees it (CUDA context, cuBLAS/NCCL workspaces), and a
# margin for the caching allocator's fragmentation, which max_memory_allocated() does not count.
RESERVED_GB = 1.0
FRAGMENTATION = 0.05
# The planner's own bias: every measurement it was compared with came out above the plan, by up to 8.4 % of the
# measured peak (the QLoRA anchor; docs/memory.md "Evidence"). A device that keeps that share free, plus 2 points,
# holds the true peak of any plan that under-predicts no worse: a peak P planned at (1 - u) x true needs u x true
# <= u x device more.
LARGEST_UNDER_PREDICTION = 0.0844  # (11.5 - 10.53) / 11.5
EVIDENCE_MARGIN = LARGEST_UNDER_PREDICTION + 0.02
# TRL's chunked log-prob kernel (trl/kernels/chunked_logprob.py): token chunks of 4096 x vocab chunks of 32768.
LOGPROB_TOKENS, LOGPROB_VOCAB = 4096, 32768


@dataclass(frozen=True)
class ModelMemory:
    """A frozen model beside the policy (a reward's, a CQBench scorer): what the planner adds for it. Rewards declare
    theirs (`memory(options)` on their registry entry, rewards/registry.py) and train/ hands them to the planner, which
    knows no reward."""

    name: str  # its line in the breakdown
    params: int = 0
    bytes_per_param: int = 2  # 2: bf16/fp16 weights, 4: fp32
    resident_bytes: int = 0  # what else stays between calls (caches)
    activation_bytes: int = 0  # the peak of one call, freed after it
    device: str | None = None  # where it runs: None, "auto", "cuda" and "cuda:0" are the policy's GPU
    note: str = ""  # what the figures leave out, printed with the plan

    @property
    def resident_gb(self) -> float:
        return (self.params * self.bytes_per_param + self.resident_bytes) / GIB

    @property
    def transient_gb(self) -> float:
        return self.activation_bytes / GIB

    @property
    def on_policy_gpu(self) -> bool:
        return str(self.device or "cuda") in ("auto", "cuda", "cuda:0")


@dataclass(frozen=True)
class PlanInputs:
    shape: ModelShape
    prompt_text_tokens: int
    image_tokens: int
    completion_tokens: int
    num_generations: int
    # None means "the recipe leaves it open": plan() assumes TRL's default, choose_layout() picks it.
    micro_batch: int | None = None
    grad_accum: int | None = None
    steps_per_generation: int | None = None
    gradient_checkpointing: bool | None = None
    lora_r: int = 16
    lora_dropout: float = 0.05
    lora_targets: object = None
    qlora: bool = False
    kbit_upcast: bool = False  # peft.prepare_model_for_kbit_training: non-NF4 weights (embeddings, lm_head) to fp32
    qlora_fp32_adapters: bool = False  # TRL casts QLoRA adapters to bf16; True when the trainer casts them back
    beta: float = 0.0
    padded: bool = True  # completions of different lengths: a padding mask reaches attention
    device: str = "cuda"
    rewards: tuple[ModelMemory, ...] = ()  # the rewards' models on the policy's GPU
    eval_batch: int = 0  # CQBench's generation batch; 0: no CQBench during training
    eval_new_tokens: int = 0
    eval_models: tuple[ModelMemory, ...] = ()  # CQBench's scorers on the policy's GPU
    notes: tuple[str, ...] = field(default=())

    @property
    def seq_tokens(self) -> int:
        return self.prompt_text_tokens + self.image_tokens + self.completion_tokens


@dataclass
class Plan:
    peak_gb: float
    gpu_gb: float | None
    fits: bool | None
    breakdown: dict[str, float]
    settings: dict
    phase: str
    phases: dict[str, float]
    notes: list[str]

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def layout(inputs: PlanInputs) -> dict:
    """The layout plan() evaluates: open fields take TRL's defaults (per_device 8, accumulation 1, checkpointing
    off, steps_per_generation = accumulation)."""
    micro = inputs.micro_batch or 8
    accum = inputs.grad_accum or 1
    spg = inputs.steps_per_generation or accum
    return {"micro_batch": micro, "grad_accum": accum, "steps_per_generation": spg,
            "gradient_checkpointing": bool(inputs.gradient_checkpointing), "generation_batch": micro * spg}


def _gb(nbytes: float) -> float:
    return nbytes / GIB


def device_gb(device=None) -> float:
    """Total memory of a CUDA device in GiB, as gpu_gb for plan()/choose_layout() (an H100 80GB reports ~79.1)."""
    import torch

    return torch.cuda.get_device_properties(device or torch.cuda.current_device()).total_memory / GIB


def usable_gb(gpu_gb: float) -> float:
    return gpu_gb - RESERVED_GB


def fits_in(peak_gb: float, gpu_gb: float) -> bool:
    """The fit rule: the planned peak, plus fragmentation, within what the allocator gets after the evidence margin."""
    return peak_gb * (1 + FRAGMENTATION) <= usable_gb(gpu_gb) - EVIDENCE_MARGIN * gpu_gb


def required_gb(peak_gb: float) -> float:
    """The smallest device (GiB, as gpu_gb) on which a planned peak passes the fit rule."""
    return (peak_gb * (1 + FRAGMENTATION) + RESERVED_GB) / (1 - EVIDENCE_MARGIN)


def adapter_dtype_bytes(inputs: PlanInputs) -> int:
    return 2 if inputs.qlora and not inputs.qlora_fp32_adapters else 4


def weights_gb(inputs: PlanInputs) -> float:
    s = inputs.shape
    if not inputs.qlora:
        return _gb(s.total_params * act.BF16)
    rest = s.total_params - s.linear_params
    return _gb(s.linear_params * NF4_BYTES + rest * (4 if inputs.kbit_upcast else act.BF16))


def plan(inputs: PlanInputs, gpu_gb: float | None = None) -> Plan:
    s, lay = inputs.shape, layout(inputs)
    micro, ckpt, gen = lay["micro_batch"], lay["gradient_checkpointing"], lay["generation_batch"]
    a = adapter_dtype_bytes(inputs)
    dims = lora_input_dims(s, inputs.lora_targets)
    trainable = lora_params(s, inputs.lora_r, inputs.lora_targets)
    seq = inputs.seq_tokens
    tokens = micro * seq  # TRL runs the loss on the whole micro-batch in one forward/backward
    completion_tokens = micro * inputs.completion_tokens

    resident = {"policy weights": weights_gb(inputs),
                "LoRA params + grads": _gb(trainable * a * 2),
                "Adam state": _gb(trainable * a * 2)}
    patches = inputs.image_tokens * s.merge_size**2
    resident["batch tensors"] = _gb(gen * (patches * 3 * 2 * s.patch_size**2 * 4 + seq * 8 * 3))
    for r in inputs.rewards:
        resident[r.name] = r.resident_gb

    # generation: the KV cache of the whole generation batch, plus one layer's prefill temporaries
    kv = gen * seq * s.layers * 2 * s.kv_dim * act.BF16
    prefill_tokens = gen * (inputs.prompt_text_tokens + inputs.image_tokens)
    prefill = prefill_tokens * (3 * act.BF16 * s.intermediate + 8 * s.hidden)
    vision = gen * patches * (3 * act.BF16 * s.vision_intermediate + 8 * s.vision_hidden)
    logits = gen * s.vocab * 4 * 3  # last-token logits in fp32: raw, processed, probabilities
    phases = {"generate": {"KV cache": _gb(kv), "prefill": _gb(max(prefill, vision)), "sampling logits": _gb(logits)}}

    # reference pass (beta > 0): the adapter-disabled model, no grad, one micro-batch at a time
    if inputs.beta > 0:
        phases["reference logps"] = {"forward temporaries": _gb(tokens * (3 * act.BF16 * s.intermediate
                                                                          + 8 * s.hidden))}

    # training forward/backward
    per_layer = act.layer_bytes_per_token(s, dims, r=inputs.lora_r, dropout=inputs.lora_dropout,
                                          adapter_dtype_bytes=a, device=inputs.device, padded=inputs.padded)
    backward = act.backward_bytes_per_token(s, dropout=inputs.lora_dropout, adapter_dtype_bytes=a)
    head_w = 4 if (inputs.qlora and inputs.kbit_upcast) else act.BF16
    head = (min(completion_tokens, LOGPROB_TOKENS) * LOGPROB_VOCAB * act.BF16 * 2
            + completion_tokens * s.hidden * (act.BF16 + 4)
            + (LOGPROB_VOCAB * s.hidden * act.BF16 if head_w == 4 else 0))
    final_norm = tokens * (4 * s.hidden + 4)
    if ckpt:
        residual = 4 if (inputs.qlora and inputs.kbit_upcast) else act.BF16
        saved = tokens * s.layers * act.checkpoint_bytes_per_token(s, residual)
        train = {"checkpointed layer inputs": _gb(saved), "final norm": _gb(final_norm),
                 "backward (one layer recomputed + grads)": _gb(max(head, tokens * (per_layer + backward)))}
    else:
        train = {"saved activations": _gb(tokens * s.layers * per_layer), "final norm": _gb(final_norm),
                 "backward (grads)": _gb(max(head, tokens * backward))}
    phases["train step"] = train
    if inputs.rewards and any(r.transient_gb for r in inputs.rewards):
        # no reward's per-call peak has been measured: each is what the reward declares from its own arithmetic
        phases["reward"] = {r.name + " (transient, estimate)": r.transient_gb
                            for r in inputs.rewards if r.transient_gb}
    if inputs.eval_batch:
        ekv = inputs.eval_batch * (inputs.prompt_text_tokens + inputs.image_tokens + inputs.eval_new_tokens)
        phases["cqbench"] = {"CQBench KV cache": _gb(ekv * s.layers * 2 * s.kv_dim * act.BF16),
                             **{m.name: m.resident_gb + m.transient_gb for m in inputs.eval_models}}

    totals = {name: sum(parts.values()) for name, parts in phases.items()}
    worst = max(totals, key=totals.get)
    breakdown = {k: round(v, 2) for k, v in {**resident, **phases[worst]}.items()}
    peak = sum(resident.values()) + totals[worst]
    settings = {**lay, "tokens_per_sequence": seq, "prompt_text_tokens": inputs.prompt_text_tokens,
                "image_tokens": inputs.image_tokens, "completion_tokens": inputs.completion_tokens,
                "num_generations": inputs.num_generations, "trainable_params": trainable, "qlora": inputs.qlora,
                "lora_dropout": inputs.lora_dropout,
                "activation_kib_per_token_per_layer": round(per_layer / 1024, 1)}
    return Plan(peak_gb=round(peak, 2), gpu_gb=gpu_gb, fits=None if gpu_gb is None else fits_in(peak, gpu_gb),
                breakdown=breakdown, settings=settings, phase=worst,
                phases={k: round(sum(resident.values()) + v, 2) for k, v in totals.items()},
                notes=list(inputs.notes))


def candidate_layouts(inputs: PlanInputs) -> list[dict]:
    """Layouts that keep the objective, fastest first. An open layout keeps one whole group of G sequences per
    optimizer step (the shipped recipes' 16 x 1), split into micro-batches with accumulation; pinned fields stay."""
    g, micro, accum = inputs.num_generations, inputs.micro_batch, inputs.grad_accum
    if micro is not None and accum is not None:
        pairs = [(micro, accum)]
    elif micro is not None:
        pairs = [(micro, max(1, g // micro))]
    elif accum is not None:
        pairs = [(m, accum) for m in range(g, 0, -1) if (m * accum) % g == 0]
    else:
        pairs = [(m, g // m) for m in range(g, 0, -1) if g % m == 0]
    ckpts = [inputs.gradient_checkpointing] if inputs.gradient_checkpointing is not None else [False, True]
    out = []
    for ckpt in ckpts:
        for m, a in pairs:
            spg = inputs.steps_per_generation or a
            if (m * spg) % g:
                continue  # TRL needs whole groups in every generation batch
            out.append({"micro_batch": m, "grad_accum": a, "steps_per_generation": spg,
                        "gradient_checkpointing": ckpt})
    return out


def choose_layout(inputs: PlanInputs, gpu_gb: float) -> tuple[dict | None, Plan]:
    """The fastest layout that fits `gpu_gb`: checkpointing off with the largest micro-batch, then smaller
    micro-batches with gradient accumulation, then checkpointing on. Returns (settings, plan); settings is None when
    nothing fits, and the plan is then the smallest one tried."""
    best = None
    for cand in candidate_layouts(inputs):
        trial = dataclasses.replace(inputs, micro_batch=cand["micro_batch"], grad_accum=cand["grad_accum"],
                                    steps_per_generation=cand["steps_per_generation"],
                                    gradient_checkpointing=cand["gradient_checkpointing"])
        p = plan(trial, gpu_gb)
        if p.fits:
            return cand, p
        if best is None or p.peak_gb < best.peak_gb:
            best = p
    if best is None:
        best = plan(inputs, gpu_gb)
    return None, best
