"""The fingerprint of a CQBench per-item file: everything that changes a completion or a score, recorded beside it
as `<task>.settings.json` (`items/<model>/<task>.settings.json` for `mmpc-rl eval cqbench`,
`cqbench/before/items.settings.json` in a training run).

`evaluate()` resumes from the per-item file, so a rerun into the same folder must be the same configuration: the
model and adapter by content (mmpc_rl.fingerprint: a hub id's commit, a folder's or an adapter's SHA-256, so two
folders called `model` or two `checkpoint-2` adapters never pass for each other), the data, the prompt's exact
text, how the weights were loaded (dtype, 4-bit), the image-processor bounds, the generation budget and sampling, the
seed, and the models and settings behind each metric (renderer, BERTScore, LPIPS, CLIP). A rerun whose fingerprint
differs refuses, naming what changed (the CLI), or generates the file anew (a training run's "before" pass); so does a
per-item file with no record beside it: its settings are unknown. Batch size and the number of processes are not
recorded: they change how items are grouped, not what is asked.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mmpc_rl.errors import ConfigError
from mmpc_rl.fingerprint import adapter_digest, source_identity
from mmpc_rl.io import atomic_write_json
from mmpc_rl.models import placement, policy_dtype, torch_dtype


def data_identity(data: str) -> str:
    """The catalog the items come from: `sample`, or the absolute path of a folder."""
    return data if data == "sample" else str(Path(data).expanduser().resolve())


def adapter_identity(adapter: str | None) -> str | None:
    return f"{Path(adapter).resolve()}@sha256:{adapter_digest(adapter)[:16]}" if adapter else None


def settings_record(*, model: str, revision: str | None, adapter: str | None, task, mc, cpu: bool, data: str,
                    max_new_tokens: int | None, do_sample: bool, seed: int, scoring: dict) -> dict:
    """One (model arm, task)'s fingerprint; `mc` is the ModelConfig the model loads with, `scoring` the metric
    settings (scoring_settings)."""
    compute = str(torch_dtype(mc.dtype if mc.dtype != "auto" else "bfloat16"))
    return {
        "model": source_identity(model, revision), "adapter": adapter_identity(adapter), "data": data_identity(data),
        "task": task.name, "prompt": task.prompt_name, "prompt_text": task.prompt,
        "weights_dtype": str(policy_dtype(mc.dtype, cpu=cpu, qlora=bool(mc.qlora))),
        "quantization": f"nf4, double quantisation, compute {compute}" if mc.qlora else None,
        "attn_implementation": mc.attn_implementation, "min_pixels": mc.min_pixels, "max_pixels": mc.max_pixels,
        "max_new_tokens": max_new_tokens or task.max_new_tokens, "do_sample": do_sample, "seed": seed, **scoring,
    }


def scoring_settings(task, *, bertscore=None, bertscore_layers=None, lpips=None, lpips_channel_order="bgr",
                     clip=None, resize="cv2", renderer: dict | None = None) -> dict:
    """The metric settings of a task, each model by content (mmpc_rl.fingerprint.source_identity); `renderer` is the
    text->image renderer's settings (CQBench's options, or the rendering reward's)."""
    if task.uses_image_input:
        return {"bertscore": source_identity(bertscore), "bertscore_layers": bertscore_layers}
    return {"renderer": renderer, "resize": resize, "lpips": source_identity(lpips),
            "lpips_channel_order": lpips_channel_order, "clip": source_identity(clip),
            "clip_dtype": str(placement("clip")[1]) if clip else None}


def run_settings(cfg, name: str, adapter: str | None, task, mc, cpu: bool) -> dict:
    """The fingerprint of one (model arm, task) of `mmpc-rl eval cqbench` (cfg: its CQBenchConfig)."""
    renderer = None
    if not task.uses_image_input:
        renderer = {"model": source_identity(cfg.renderer), "dtype": str(placement("sd3", None, cfg.render_dtype)[1]),
                    "size": cfg.render_size, "steps": cfg.render_steps,
                    "max_sequence_length": cfg.render_max_sequence_length}
    scoring = scoring_settings(task, bertscore=cfg.bertscore, bertscore_layers=cfg.bertscore_layers, lpips=cfg.lpips,
                               lpips_channel_order=cfg.lpips_channel_order, clip=cfg.clip, resize=cfg.resize,
                               renderer=renderer)
    return settings_record(model=name, revision=None, adapter=adapter, task=task, mc=mc, cpu=cpu, data=cfg.data,
                           max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample, seed=cfg.seed, scoring=scoring)


def _short(value) -> str:
    """A value for a one-line message: a long one by its end, where a path's name and a content hash are."""
    text = repr(value)
    return text if len(text) <= 60 else "..." + text[-57:]


def _record_path(results_path: Path) -> Path:
    return results_path.with_name(f"{results_path.stem}.settings.json")


def item_files(results_path: Path) -> list[Path]:
    """A per-item JSONL and its ranks' shards (`<stem>.rank<N>.jsonl`, written under several processes)."""
    return [results_path, *sorted(results_path.parent.glob(f"{results_path.stem}.rank*.jsonl"))]


def _item_files(results_path: Path) -> list[Path]:
    return [p for p in item_files(results_path) if p.exists()]


def settings_problem(results_path: Path, settings: dict) -> str | None:
    """Why `results_path` (a per-item JSONL) may not be resumed under `settings`, or None (also when not started)."""
    record = _record_path(results_path)
    if not _item_files(results_path):
        return None
    if not record.is_file():
        return f"{results_path} has no {record.name} beside it, so its settings are unknown"
    try:
        old = json.loads(record.read_text())
    except (OSError, ValueError):
        return f"{record} does not parse, so the settings of {results_path.name} are unknown"
    diff = [k for k in dict.fromkeys([*old, *settings]) if old.get(k) != settings.get(k)]
    if not diff:
        return None
    changes = "; ".join(f"{k}: {_short(old.get(k))} -> {_short(settings.get(k))}" for k in diff[:3])
    more = f" and {len(diff) - 3} more" if len(diff) > 3 else ""
    return f"{results_path} was made with other settings ({changes}{more})"


def check_settings(results_path: Path, settings: dict, *, regenerate: bool = False) -> None:
    """Refuse to resume `results_path` made under another fingerprint (or, `regenerate`, delete it so that it is
    generated anew); record `settings` beside it."""
    results_path = Path(results_path)
    problem = settings_problem(results_path, settings)
    if problem and not regenerate:
        raise ConfigError(f"{problem}; resuming would mix them: use another output_dir, or delete that file to "
                          "generate anew")
    if problem:
        print(f"mmpc-rl: {problem}: generating it anew", file=sys.stderr)
        for path in _item_files(results_path):  # its images are rendered again under the same names
            path.unlink()
    atomic_write_json(_record_path(results_path), settings)
