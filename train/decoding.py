"""Compiled static-cache decoding inside TRL's GRPOTrainer (recipe switch `model.compiled_decoding`).

TRL 1.16 builds its GenerationConfig with `disable_compile=True`, so a GRPO run decodes with the dynamic KV cache one
eager forward per token: 35-58 ms per decode step at the Qwen2.5-VL-7B shape on an H100 against 16 ms for a static
cache + `torch.compile` (plain-TRL anchor, docs/benchmark.md). `enable_compiled_decoding(trainer)` turns the compiled
path on in a built trainer:

- the trainer's GenerationConfig gets `cache_implementation="static"`, `disable_compile=False` and a CompileConfig,
  so transformers compiles the *decode* step (prefill stays eager) on the first generate and reuses the graph after;
- prompts are left-padded to a multiple of `bucket` tokens (TRL's `pad_to_multiple_of`), because the static cache is
  sized prompt + max_new_tokens and every distinct size is one more compiled graph: bucketing bounds them;
- generate is wrapped to count the calls that compiled new graphs (the first is the once-per-run compile, later ones
  are recompiles, logged with the prompt length that caused them) and to time decoding (`DecodingStats`);
- where compilation cannot run (no CUDA/XPU device, a quantization that transformers will not compile, vLLM or paged
  generation, FSDP/ZeRO-3, CPU/disk offload) nothing changes: generation keeps TRL's settings and the reason is
  logged once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

log = logging.getLogger(__name__)

DEFAULT_BUCKET = 64  # tokens; a 448 px image is 256 image tokens + ~40 text tokens: one bucket per image size
COMPILE_DEVICES = ("cuda", "xpu")  # where transformers auto-compiles generation (CPU only when told to)


@dataclass
class DecodingStats:
    """What compiled decoding did in this run; `trainer.decoding_stats`."""

    enabled: bool
    reason: str | None = None  # why it is off
    bucket: int | None = None
    backend: str | None = None
    calls: int = 0  # generate calls
    compiles: int = 0  # generate calls that compiled new graphs (the first one is the expected compile)
    graphs: int = 0  # dynamo graphs compiled during generate
    first_call_s: float | None = None  # wall time of the first generate (includes the compile)
    generate_s: float = 0.0  # wall time of every later generate
    new_tokens: int = 0  # new tokens per sequence over every later generate
    prompt_lengths: list[int] = field(default_factory=list)  # distinct padded prompt lengths seen

    @property
    def recompiles(self) -> int:
        return max(self.compiles - 1, 0)

    @property
    def decode_ms_per_token(self) -> float | None:
        """Per step of the whole group (one forward for every sequence), prefill included, first call excluded."""
        return 1000 * self.generate_s / self.new_tokens if self.new_tokens else None


def _generation_model(trainer):
    """The transformers model whose `generate` decides on compilation: under PEFT, the base model."""
    model = trainer.accelerator.unwrap_model(trainer.model) if hasattr(trainer, "accelerator") else trainer.model
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def unavailable_reason(trainer, model, compile_config) -> str | None:
    """Why transformers would not compile this trainer's decoding (None: it will). Mirrors
    `GenerationMixin._valid_auto_compile_criteria` for the cases known before the first generate."""
    args = trainer.args
    if getattr(args, "use_vllm", False):
        return "generation runs in vLLM"
    if getattr(args, "use_transformers_paged", False) or getattr(trainer, "continuous_batching_config", None):
        return "paged (continuous batching) generation has its own cache"
    if getattr(trainer, "is_fsdp_enabled", False) or _zero3(trainer):
        return "FSDP / DeepSpeed ZeRO-3 gather the weights afresh for every generate (no stable graph inputs)"
    if not torch._dynamo.is_dynamo_supported():
        return f"torch.compile is unsupported here (torch {torch.__version__})"
    device = model.device.type
    if device not in COMPILE_DEVICES and not getattr(compile_config, "_compile_all_devices", False):
        return f"transformers compiles generation on {'/'.join(COMPILE_DEVICES)} only, the policy is on {device}"
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and not quantizer.is_compileable:
        return f"{type(quantizer).__name__} quantization does not support torch.compile"
    placed = set(getattr(model, "hf_device_map", {}).values())
    if "disk" in placed or ("cpu" in placed and len(placed) > 1):
        return "the policy is offloaded to CPU/disk"
    if device == "cuda" and getattr(compile_config, "backend", "inductor") == "inductor":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "the inductor backend needs Triton, which is not installed"
    return None


def default_compile_config():
    """transformers' own choice (inductor, "reduce-overhead": CUDA graphs), what its generate would use."""
    from transformers import CompileConfig

    return CompileConfig()


def compile_on_any_device(backend: str = "inductor"):
    """A CompileConfig that transformers honours off CUDA too (CPU: inductor's C++ codegen costs minutes on a tiny
    model; "eager" captures graphs and guards only). No CUDA graphs ("reduce-overhead" is CUDA's)."""
    from transformers import CompileConfig

    config = CompileConfig(backend=backend, mode="default" if backend == "inductor" else None)
    config._compile_all_devices = True
    return config


def _zero3(trainer) -> bool:
    plugin = getattr(getattr(getattr(trainer, "accelerator", None), "state", None), "deepspeed_plugin", None)
    return bool(plugin is not None and getattr(plugin, "zero_stage", 0) == 3)


def enable_compiled_decoding(trainer, *, bucket: int | None = None, compile_config=None) -> DecodingStats:
    """Make a built GRPOTrainer decode with a static KV cache compiled by torch.compile; see the module docstring.
    `bucket`: prompt padding multiple (default: the trainer's `pad_to_multiple_of`, else 64). `compile_config`: a
    transformers CompileConfig (default: transformers' own, inductor with CUDA graphs). Returns the stats object,
    also set as `trainer.decoding_stats`."""
    model = _generation_model(trainer)
    compile_config = compile_config or default_compile_config()
    reason = unavailable_reason(trainer, model, compile_config)
    if reason is not None:
        log.warning("mmpc-rl: compiled decoding off: %s; generation keeps TRL's settings", reason)
        trainer.decoding_stats = DecodingStats(enabled=False, reason=reason)
        return trainer.decoding_stats

    bucket = int(bucket or trainer.pad_to_multiple_of or DEFAULT_BUCKET)
    config = trainer.generation_config
    config.cache_implementation = "static"
    config.disable_compile = False
    config.compile_config = compile_config
    if isinstance(getattr(trainer, "generation_kwargs", None), dict):  # TRL's copy, used to override model defaults
        trainer.generation_kwargs["cache_implementation"] = "static"
    # TRL reads pad_to_multiple_of into the trainer at init; the args copy keeps the saved/resolved settings honest
    trainer.pad_to_multiple_of = trainer.args.pad_to_multiple_of = bucket
    trainer.args.cache_implementation = "static"
    stats = DecodingStats(enabled=True, bucket=bucket, backend=str(compile_config.backend))
    _wrap_generate(model, stats)
    # first in line, so the figures are in `logs` before the loggers (MetricsLogger, W&B) write them
    trainer.callback_handler.callbacks.insert(0, decoding_callback(stats))
    trainer.decoding_stats = stats
    log.info("mmpc-rl: compiled decoding on (static cache, %s backend, prompts padded to a multiple of %d)",
             stats.backend, bucket)
    return stats


def _wrap_generate(model, stats: DecodingStats) -> None:
    """Count compiles and time decoding around the model's own `generate` (PEFT's generate calls it)."""
    from torch._dynamo.utils import counters

    inner = model.generate

    def generate(*args, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        prompt_len = int(ids.shape[1]) if ids is not None else 0
        graphs_before = counters["stats"]["unique_graphs"]
        t0 = time.perf_counter()
        out = inner(*args, **kwargs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        new_graphs = counters["stats"]["unique_graphs"] - graphs_before
        stats.calls += 1
        if prompt_len not in stats.prompt_lengths:
            stats.prompt_lengths.append(prompt_len)
        if new_graphs:
            stats.compiles += 1
            stats.graphs += new_graphs
            if stats.compiles > 1:
                log.warning("mmpc-rl: compiled decoding recompiled (%d so far; prompt length %d, %d distinct): "
                            "a larger trainer.pad_to_multiple_of bounds this", stats.recompiles, prompt_len,
                            len(stats.prompt_lengths))
        if stats.first_call_s is None:
            stats.first_call_s = seconds
            log.info("mmpc-rl: first compiled generate took %.1f s (compilation, paid once per run)", seconds)
        else:
            stats.generate_s += seconds
            stats.new_tokens += int(out.shape[1]) - prompt_len if hasattr(out, "shape") else 0
        return out

    model.generate = generate


def decoding_callback(stats: DecodingStats):
    """A TrainerCallback that puts the decoding figures into each log line (W&B, metrics.jsonl)."""
    from transformers import TrainerCallback

    class DecodingMetrics(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs is None or not stats.enabled:
                return
            logs["decode/compiles"] = stats.compiles
            logs["decode/recompiles"] = stats.recompiles
            if stats.decode_ms_per_token is not None:
                logs["decode/ms_per_token"] = round(stats.decode_ms_per_token, 3)

    return DecodingMetrics()
