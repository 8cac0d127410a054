"""The GPU check's record of where it ran and its markdown table (mmpc_rl.bench.gpu_check)."""

from __future__ import annotations

import importlib.util
from importlib import metadata

from mmpc_rl.bench import grpo_arms as bench

# module -> distribution, for what is carried as wheels to a GPU image that lacks it (docs/benchmark.md); the last
# two are optional
CARRIED = {"trl": "trl", "datasets": "datasets", "diffusers": "diffusers", "open_clip": "open_clip_torch",
           "omegaconf": "omegaconf", "bitsandbytes": "bitsandbytes", "wandb": "wandb"}


def environment(device: str) -> dict:
    """bench.environment plus the version of each carried package that is importable here (None: it is not)."""
    env = bench.environment(device)
    for module, dist in CARRIED.items():
        try:
            env[dist] = metadata.version(dist) if importlib.util.find_spec(module) is not None else None
        except (metadata.PackageNotFoundError, ValueError):
            env[dist] = None
    return env


def _gb(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def table(results: dict) -> str:
    """The markdown table of the figures, one row each: every measured peak beside the planner's prediction."""
    env = results["env"]
    capped = f", usable memory capped to {results['options']['gpu_gb']} GiB" if env.get("capped_from_gib") else ""
    lines = [f"# GPU check ({'dry run, tiny shapes' if results['options']['dry'] else 'real shapes'}) on "
             f"{env.get('gpu') or 'CPU'}{capped}; torch {env['torch']}, transformers {env['transformers']}, "
             f"trl {env['trl']}",
             "", f"Planned {results['planned_s']} device seconds; the sections took {results.get('wall_s', 0):.0f} s "
             "after setup.", "", "| section | figure | value |", "|---|---|---|"]

    def row(section, figure, value):
        lines.append(f"| {section} | {figure} | {value} |")

    for name, r in results["sections"].items():
        if "error" in r or "skipped" in r:
            row(name, "error" if "error" in r else "skipped", r.get("error") or r["skipped"])
            row(name, "section wall s", f"{r['wall_s']:.1f}")
            continue
        if "s_per_step" in r:
            s, decode = r["settings"], r.get("decode_ms_per_token")
            row(name, "layout", f"{s['per_device_train_batch_size']} x {s['gradient_accumulation_steps']}, "
                f"checkpointing {'on' if s['gradient_checkpointing'] else 'off'}")
            row(name, "s/step (median)", f"{r['s_per_step']:.3f} ({r['median_s_per_step']:.3f})")
            row(name, "decode ms/step of the group", "n/a" if decode is None else f"{decode:.2f}")
            error = ""
            if r.get("planned_peak_gb") and r["peak_mem_gb"] and r["peak_mem_kind"].startswith("torch.cuda"):
                error = f" ({(r['planned_peak_gb'] - r['peak_mem_gb']) / r['peak_mem_gb']:+.1%})"
            row(name, f"peak memory GiB, measured / planned ({r['peak_mem_kind']})",
                f"{_gb(r['peak_mem_gb'])} / {_gb(r.get('planned_peak_gb'))}{error}")
            d = r.get("decoding") or {}
            if d:
                row(name, "compiled decoding", f"on={d['enabled']} compiles={d['compiles']} recompiles="
                    f"{d['recompiles']} first generate {d['first_call_s'] or 0:.1f} s"
                    + (f"; fell back: {d['fallback']}" if d.get("fallback") else "")
                    + (f" ({d['reason']})" if d.get("reason") else ""))
        for size, g in ((k, v) for k, v in r.items() if k.endswith("px")):
            row(name, f"{size}: group of {g['renders']} renders, s", f"{g['group_s']:.2f} ({g['s_per_image']} s/img)")
            row(name, f"{size}: render transient GiB, measured / planned (estimate)",
                f"{_gb(g['transient_gb'])} / {_gb(g['planned_transient_gb'])}")
        if "items_per_minute" in r:
            row(name, f"items/min (batch {r['batch_size']}, {r['max_new_tokens']} new tokens)",
                f"{r['items_per_minute']:.1f}")
        row(name, "section wall s", f"{r['wall_s']:.1f}")
    for key, value in (results.get("ratio") or {}).items():
        row("project vs plain", f"plain/project {key}" if key != "peak_mem" else "project/plain peak memory",
            f"{value:.2f}x")
    return "\n".join(lines) + "\n"
