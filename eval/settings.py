"""What a CQBench per-item file depends on, recorded beside it as `items/<model>/<task>.settings.json`.

`evaluate()` resumes from the per-item file, so a rerun into the same output_dir must be the same configuration:
the model and adapter, the prompt's exact text, how the weights were loaded (dtype, 4-bit), the generation budget,
the seed, and the models and settings behind each metric. A rerun whose settings differ refuses, naming what
changed, and so does a per-item file with no record beside it: its settings are unknown. Batch size and the number
of processes are not recorded: they change how items are grouped, not what is asked.
"""

from __future__ import annotations

import json
from pathlib import Path

from mmpc_rl.errors import ConfigError
from mmpc_rl.io import atomic_write_json
from mmpc_rl.models import placement, policy_dtype, torch_dtype


def run_settings(cfg, name: str, adapter: str | None, task, mc, cpu: bool) -> dict:
    """The settings of one (model arm, task) of a CQBench run; `mc` is the ModelConfig the model loads with."""
    compute = str(torch_dtype(mc.dtype if mc.dtype != "auto" else "bfloat16"))
    settings = {
        "model": name, "adapter": str(Path(adapter).resolve()) if adapter else None, "task": task.name,
        "prompt": task.prompt_name, "prompt_text": task.prompt,
        "weights_dtype": str(policy_dtype(mc.dtype, cpu=cpu, qlora=bool(mc.qlora))),
        "quantization": f"nf4, double quantisation, compute {compute}" if mc.qlora else None,
        "attn_implementation": mc.attn_implementation, "min_pixels": mc.min_pixels, "max_pixels": mc.max_pixels,
        "max_new_tokens": cfg.max_new_tokens or task.max_new_tokens, "do_sample": cfg.do_sample, "seed": cfg.seed,
    }
    if task.uses_image_input:
        settings |= {"bertscore": cfg.bertscore, "bertscore_layers": cfg.bertscore_layers}
    else:
        settings |= {"renderer": cfg.renderer, "render_dtype": str(placement("sd3", None, cfg.render_dtype)[1]),
                     "render_size": cfg.render_size, "render_steps": cfg.render_steps,
                     "render_max_sequence_length": cfg.render_max_sequence_length, "resize": cfg.resize,
                     "lpips": cfg.lpips, "lpips_channel_order": cfg.lpips_channel_order, "clip": cfg.clip,
                     "clip_dtype": str(placement("clip")[1]) if cfg.clip else None}
    return settings


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_settings(results_path: Path, settings: dict) -> None:
    """Refuse to resume `results_path` (a per-item JSONL) made with other settings; record `settings` beside it."""
    record = results_path.with_name(f"{results_path.stem}.settings.json")
    started = results_path.exists() or any(results_path.parent.glob(f"{results_path.stem}.rank*.jsonl"))
    if started:
        if not record.is_file():
            raise ConfigError(f"{results_path} has no {record.name} beside it, so its settings are unknown and it "
                              "is not resumed: use another output_dir, or delete it to generate anew")
        old = json.loads(record.read_text())
        diff = [k for k in dict.fromkeys([*old, *settings]) if old.get(k) != settings.get(k)]
        if diff:
            changes = "; ".join(f"{k}: {_short(old.get(k))} -> {_short(settings.get(k))}" for k in diff[:4])
            raise ConfigError(f"{results_path} was made with other settings ({changes}); resuming would mix them: "
                              "use another output_dir, or delete that file to generate anew")
    atomic_write_json(record, settings)
