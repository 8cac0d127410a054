"""Compiled static-cache decoding inside TRL's GRPOTrainer (recipe switches `model.compiled_decoding`,
`model.compile_backend`).

TRL 1.16 builds its GenerationConfig with `disable_compile=True`, so a GRPO run decodes with the dynamic KV cache one
eager forward per token: 35-58 ms per decode step at the Qwen2.5-VL-7B shape on an H100 against 16 ms for a static
cache + `torch.compile` in plain HF generate (plain-TRL anchor, docs/benchmark.md; not measured inside GRPO).
`enable_compiled_decoding(trainer)` turns the compiled path on in a built trainer:

- the trainer's GenerationConfig gets `cache_implementation="static"`, `disable_compile=False` and a CompileConfig,
  so transformers compiles the *decode* step (prefill stays eager) on the first generate and reuses the graph after;
- prompts are left-padded to a multiple of `bucket` tokens (TRL's `pad_to_multiple_of`), because the static cache is
  sized prompt + max_new_tokens and every distinct size is one more compiled graph: bucketing bounds them;
- a compile or runtime error inside a compiled generate does not end the run: one warning, dynamo is reset, TRL's
  own settings come back and that generate (and every later one) runs eagerly;
- each re-enable of gradient checkpointing (TRL switches it off around every generate) would add one more forward
  hook on the input embeddings, a guard dynamo recompiles on every step: the model keeps one hook
  (`one_input_grads_hook`);
- training generates are counted and timed (`DecodingStats`; CQBench's eval-mode generates are left out), and a
  recompile is logged with the cause dynamo reports;
- where compilation cannot run (no CUDA/XPU device unless forced, a quantization that transformers will not compile,
  vLLM or paged generation, FSDP/ZeRO-3, CPU/disk offload) nothing changes: generation keeps TRL's settings and the
  reason is logged once.
"""

from __future__ import annotations

import importlib
import logging
import time
from dataclasses import dataclass, field

import torch

from mmpc_rl.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_BUCKET = 64  # tokens; a 448 px image is 256 image tokens + ~40 text tokens: one bucket per image size
COMPILE_DEVICES = ("cuda", "xpu")  # where transformers auto-compiles generation (elsewhere only when forced)


@dataclass
class DecodingStats:
    """What compiled decoding did in this run; `trainer.decoding_stats`. Training generates only."""

    enabled: bool
    reason: str | None = None  # why it is off
    bucket: int | None = None
    backend: str | None = None
    calls: int = 0  # training generate calls
    compiles: int = 0  # generate calls that compiled new graphs (the first one is the expected compile)
    graphs: int = 0  # dynamo graphs compiled during generate
    first_call_s: float | None = None  # wall time of the first generate (includes the compile)
    generate_s: float = 0.0  # wall time of every later generate
    new_tokens: int = 0  # new tokens per sequence over every later generate
    prompt_lengths: list[int] = field(default_factory=list)  # distinct padded prompt lengths seen
    recompile_reasons: list[str] = field(default_factory=list)  # dynamo's reason for each recompile
    fallback: str | None = None  # the error that switched a compiled generate to eager decoding (None: never)

    @property
    def recompiles(self) -> int:
        return max(self.compiles - 1, 0)

    @property
    def compiled(self) -> bool:
        """Whether generates are compiled now (enabled, and no fallback yet)."""
        return self.enabled and self.fallback is None

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
        return (f"transformers compiles generation on {'/'.join(COMPILE_DEVICES)} only, the policy is on {device} "
                "(model.compiled_decoding=force compiles anyway)")
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


def resolve_backend(name: str):
    """`model.compile_backend`: a torch.compile backend name (`torch._dynamo.list_backends()`, e.g. inductor, eager,
    aot_eager) or a `module:function` path to a backend callable. A bad one is a ConfigError."""
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"model.compile_backend={name!r}: cannot import it ({type(e).__name__}: {e})") from None
        if not callable(fn):
            raise ConfigError(f"model.compile_backend={name!r} is not callable")
        return fn
    valid = torch._dynamo.list_backends(exclude_tags=())
    if name not in valid:
        raise ConfigError(f"model.compile_backend={name!r}: not a torch.compile backend; valid choices: "
                          f"{', '.join(valid)}, or module:function")
    return name


def compile_config_for(mode, backend: str | None, device: str):
    """The CompileConfig for the recipe's switches: transformers' own (inductor with CUDA graphs) unless a backend is
    named or compilation is forced off CUDA/XPU (inductor without CUDA graphs there)."""
    from transformers import CompileConfig

    if backend is None and mode != "force":
        return CompileConfig()
    fn = resolve_backend(backend or "inductor")
    mode_ = ("reduce-overhead" if device == "cuda" else "default") if fn == "inductor" else None
    config = CompileConfig(backend=fn, mode=mode_)
    config._compile_all_devices = mode == "force"
    return config


def _zero3(trainer) -> bool:
    plugin = getattr(getattr(getattr(trainer, "accelerator", None), "state", None), "deepspeed_plugin", None)
    return bool(plugin is not None and getattr(plugin, "zero_stage", 0) == 3)


def one_input_grads_hook(model) -> None:
    """transformers' `enable_input_require_grads` adds a forward hook on the input embeddings each time gradient
    checkpointing is switched on and forgets the previous one (its removal on disable runs only for adapters loaded
    through transformers' own PEFT integration). TRL switches checkpointing off and on around every generate and
    log-prob pass: +2 hooks per step, each a guard dynamo recompiles on. Here each call drops the earlier ones."""
    from transformers import PreTrainedModel

    for module in model.modules():
        if not isinstance(module, PreTrainedModel) or getattr(module, "_mmpc_one_hook", False):
            continue

        def enable(module=module, inner=module.enable_input_require_grads):
            module.disable_input_require_grads()
            inner()

        module.enable_input_require_grads = enable
        module._mmpc_one_hook = True


def enable_compiled_decoding(trainer, *, mode=True, backend: str | None = None, bucket: int | None = None,
                             compile_config=None) -> DecodingStats:
    """Make a built GRPOTrainer decode with a static KV cache compiled by torch.compile; see the module docstring.
    `mode`/`backend`: the recipe's model.compiled_decoding/compile_backend; `bucket`: prompt padding multiple (default:
    the trainer's `pad_to_multiple_of`, else 64); `compile_config`: a transformers CompileConfig that overrides both.
    Returns the stats object, also set as `trainer.decoding_stats`."""
    model = _generation_model(trainer)
    compile_config = compile_config or compile_config_for(mode, backend, model.device.type)
    reason = unavailable_reason(trainer, model, compile_config)
    if reason is not None:
        log.warning("mmpc-rl: compiled decoding off: %s; generation keeps TRL's settings", reason)
        trainer.decoding_stats = DecodingStats(enabled=False, reason=reason)
        return trainer.decoding_stats

    one_input_grads_hook(trainer.model)
    config = trainer.generation_config
    trl_kwargs = trainer.generation_kwargs if isinstance(getattr(trainer, "generation_kwargs", None), dict) else {}
    trls = {"cache_implementation": config.cache_implementation, "compile_config": config.compile_config,
            "pad_to_multiple_of": trainer.pad_to_multiple_of, "kwargs_cache": trl_kwargs.get("cache_implementation")}
    bucket = int(bucket or trainer.pad_to_multiple_of or DEFAULT_BUCKET)
    config.cache_implementation = "static"
    config.disable_compile = False
    config.compile_config = compile_config
    if trl_kwargs:  # TRL's copy, used to override the model's defaults around each generate
        trl_kwargs["cache_implementation"] = "static"
    # TRL reads pad_to_multiple_of into the trainer at init; the args copy keeps the saved/resolved settings honest
    trainer.pad_to_multiple_of = trainer.args.pad_to_multiple_of = bucket
    trainer.args.cache_implementation = "static"
    backend_name = getattr(compile_config.backend, "__name__", None) or str(compile_config.backend)
    stats = DecodingStats(enabled=True, bucket=bucket, backend=backend_name)

    def back_to_eager(error: Exception) -> None:
        """TRL's own generation settings again, for this generate and every later one."""
        stats.fallback = describe(error)
        log.warning("mmpc-rl: compiled decoding failed in generate call %d (%s); decoding eagerly with TRL's settings "
                    "for the rest of the run", stats.calls + 1, stats.fallback[:300])
        torch._dynamo.reset()
        for attr in ("_compiled_call", "_last_compile_config"):  # the compiled callable holds its CUDA graphs
            model.__dict__.pop(attr, None)
        config.cache_implementation = trls["cache_implementation"]
        config.compile_config = trls["compile_config"]
        config.disable_compile = True
        if trl_kwargs:
            trl_kwargs["cache_implementation"] = trls["kwargs_cache"]
        trainer.pad_to_multiple_of = trainer.args.pad_to_multiple_of = trls["pad_to_multiple_of"]
        trainer.args.cache_implementation = trls["cache_implementation"]

    _wrap_generate(model, stats, back_to_eager)
    # first in line, so the figures are in `logs` before the loggers (MetricsLogger, W&B) write them
    trainer.callback_handler.callbacks.insert(0, decoding_callback(stats))
    trainer.decoding_stats = stats
    log.warning("mmpc-rl: compiled decoding on (static cache, %s backend, prompts padded to a multiple of %d)",
                stats.backend, bucket)
    return stats


def describe(error: BaseException) -> str:
    """One line for an error and its causes (dynamo wraps a backend's own error: `BackendCompilerFailed` from `X`)."""
    parts = []
    while error is not None and len(parts) < 4:
        first = (str(error).strip().splitlines() or [""])[0]
        parts.append(f"{type(error).__name__}: {first}" if first else type(error).__name__)
        error = error.__cause__ or getattr(error, "inner_exception", None)
    return " <- ".join(parts)


def _new_compilations(before) -> list:
    """Dynamo's compilation records after `before` (the last record seen before a generate)."""
    from torch._dynamo.utils import get_compilation_metrics

    records = get_compilation_metrics()
    if before is None:
        return records
    for i in range(len(records) - 1, -1, -1):
        if records[i] is before:
            return records[i + 1:]
    return records


def _wrap_generate(model, stats: DecodingStats, back_to_eager) -> None:
    """Count compiles, time decoding and fall back to eager around the model's own `generate` (PEFT's generate calls
    it). Only training generates are counted: CQBench's run in eval mode under inference_mode."""
    from torch._dynamo.utils import counters, get_compilation_metrics

    inner = model.generate

    def generate(*args, **kwargs):
        if torch.is_inference_mode_enabled() or not model.training:
            return inner(*args, **kwargs)
        ids = kwargs.get("input_ids", args[0] if args else None)
        prompt_len = int(ids.shape[1]) if ids is not None else 0
        graphs_before = counters["stats"]["unique_graphs"]
        records = get_compilation_metrics()
        last = records[-1] if records else None
        t0 = time.perf_counter()
        try:
            out = inner(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - any compile/runtime failure of the compiled path: decode eagerly
            if not stats.compiled:
                raise
            back_to_eager(e)
            out = inner(*args, **kwargs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        new_graphs = counters["stats"]["unique_graphs"] - graphs_before
        stats.calls += 1
        if prompt_len not in stats.prompt_lengths:
            stats.prompt_lengths.append(prompt_len)
        if new_graphs and stats.compiled:
            stats.compiles += 1
            stats.graphs += new_graphs
            if stats.compiles > 1:
                reasons = [r.recompile_reason for r in _new_compilations(last) if r.recompile_reason]
                reason = reasons[0] if reasons else "dynamo reported no reason"
                stats.recompile_reasons.append(reason)
                log.warning("mmpc-rl: compiled decoding recompiled (%d so far; prompt length %d, %d distinct); "
                            "dynamo's reason: %s", stats.recompiles, prompt_len, len(stats.prompt_lengths),
                            reason.strip().splitlines()[0][:300])
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
            logs["decode/compiled"] = int(stats.compiled)
            logs["decode/compiles"] = stats.compiles
            logs["decode/recompiles"] = stats.recompiles
            if stats.decode_ms_per_token is not None:
                logs["decode/ms_per_token"] = round(stats.decode_ms_per_token, 3)

    return DecodingMetrics()
