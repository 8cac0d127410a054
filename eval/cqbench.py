"""CQBench runs: frozen MLLMs, or a LoRA adapter against its base, on the content-quality item set.

    mmpc-rl eval cqbench models=[Qwen/Qwen2.5-VL-7B-Instruct,google/gemma-3-4b-it] tasks=[i2t] limit=100
    mmpc-rl eval cqbench models=[tiny://qwen2.5-vl] data=sample output_dir=outputs/cq
    mmpc-rl eval cqbench models=[Qwen/Qwen2.5-VL-7B-Instruct] adapter=outputs/i2t   # base vs LoRA, one copy
    mmpc-rl eval cqbench profile=paper models=[...] split=recbench   # the authors' inference, RecBench's items
    python eval/cqbench.py key=value ...

Writes to output_dir: items/<model>/<task>.jsonl (per item, appended as generated: a rerun under the same
fingerprint resumes, another one refuses; eval/settings.py), results.json, tables.md (and lora_vs_base.md with
adapter=; table4.md / table5.md when two or more models ran a task), radar.png. One process at a time per output_dir
(mmpc_rl.lock). Options: see CQBenchConfig and docs/cqbench.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mmpc_rl.checks import at_least
from mmpc_rl.config import DTYPES, CQBenchScoring, DataConfig, ItemSelection, ModelConfig, ModelLoading
from mmpc_rl.console import quiet_repeated_warnings
from mmpc_rl.data import SPLITS, load_items
from mmpc_rl.data.skips import usable_items
from mmpc_rl.errors import ConfigError, ModelLoadError, did_you_mean, run_cli
from mmpc_rl.eval.profiles import apply_profile, model_dtype, profile_record
from mmpc_rl.eval.report import (
    TABLE_NUMBERS,
    across_models,
    across_models_table,
    delta_table,
    markdown_tables,
    radar_png,
)
from mmpc_rl.eval.run_dir import from_run
from mmpc_rl.eval.runner import adapter_off, evaluate, rank_and_world
from mmpc_rl.eval.scorers import build_scorers
from mmpc_rl.eval.settings import check_settings, run_settings
from mmpc_rl.io import atomic_write_json, atomic_write_text, prepare_output_dir
from mmpc_rl.lock import lock_folder
from mmpc_rl.models import attach_adapter, load_policy, resolve_model_path, source_key
from mmpc_rl.options import parse_options
from mmpc_rl.plan.placement import plan_placement
from mmpc_rl.prompts import prompt_text
from mmpc_rl.render import DEFAULT_SD, Renderer
from mmpc_rl.tasks import TASKS, get_task


@dataclass(frozen=True)
class CQBenchConfig(ModelLoading, ItemSelection, CQBenchScoring):
    """`mmpc-rl eval cqbench`'s options: how each model is loaded (ModelLoading: dtype, qlora, attn_implementation,
    min/max_pixels), which items it is asked about (ItemSelection: categories, seed, prompt, cache_dir) and how it is
    scored (CQBenchScoring: split, batch_size, max_new_tokens, bertscore, bertscore_layers, lpips, clip) are the
    fields a training recipe's model, data and eval sections share, with their defaults (mmpc_rl.config); below are
    the options of a stand-alone run. Here `dtype` also takes "family" (float16 for Qwen, bfloat16 for Gemma, as the
    authors' load_model), and `split=recbench` generates for every RecBench item (`mmpc-rl recbench
    generated=[output_dir]`)."""

    models: list[str] = field(default_factory=lambda: [ModelConfig.name_or_path])
    tasks: list[str] = field(default_factory=lambda: ["i2t"])
    data: str = DataConfig.path  # "sample", a raw Amazon-2023 folder or a `mmpc-rl data build` output
    limit: int | None = field(default=None, metadata=at_least(1))  # items per category (the paper: 1000)
    profile: str | None = None  # eval/profiles.py: "paper" = the authors' inference; keys given here win
    max_new_tokens: int | None = None  # None: the task's budget (titles 128, prompts 256)
    output_dir: str = "outputs/cqbench"
    adapter: str | None = None  # a LoRA folder: evaluate base (adapter off) and adapter with one copy of the weights
    do_sample: bool = False
    lpips_channel_order: str = "bgr"  # the authors fed BGR; "rgb" is what LPIPS expects
    renderer: str = DEFAULT_SD
    render_dtype: str | None = None  # None: bfloat16 on CUDA (mmpc_rl.models.placement); float16: the authors'
    render_size: int = 1024  # SD3.5's default resolution, which the authors' generate_images_from_prompts.py keeps
    render_steps: int = 4
    render_max_sequence_length: int = 512  # T5 tokens, as the authors passed
    resize: str = "cv2"  # generated -> reference size, bilinear (the authors' cv2.resize); "square512": both to 512^2
    progress: bool = True


USAGE = ("usage: mmpc-rl eval cqbench models=[ID,...] [tasks=[i2t,t2i]] [data=DIR|sample] [key=value ...]\n"
         "       mmpc-rl eval cqbench adapter=RUN_DIR   (a training run's adapter vs its base, as the run evaluated)")


def parse_config(argv: list[str]) -> CQBenchConfig:
    cfg = parse_options(CQBenchConfig, argv, "mmpc-rl eval cqbench", usage=USAGE)
    cfg = apply_profile(from_run(cfg, argv), argv)  # adapter=RUN_DIR: the run's base and setup
    if cfg.split not in SPLITS:
        raise ConfigError(f"split={cfg.split!r}; valid choices: {', '.join(SPLITS)}")
    if cfg.dtype not in ("family", *DTYPES):
        raise ConfigError(f"dtype={cfg.dtype!r}; valid choices: family, {', '.join(DTYPES)}")
    if cfg.render_dtype not in (None, "bfloat16", "float16", "float32"):
        raise ConfigError(f"render_dtype={cfg.render_dtype!r}; valid choices: bfloat16, float16, float32")
    for task in cfg.tasks:
        if task not in TASKS:
            raise ConfigError(f"unknown task {task!r}" + did_you_mean(task, TASKS))
        prompt_text(task, cfg.prompt)  # an unknown prompt name fails before any model loads
    if cfg.resize not in ("cv2", "square512"):
        raise ConfigError(f"resize={cfg.resize!r}; valid choices: cv2, square512")
    if not cfg.models:
        raise ConfigError("models=[...] names no model")
    return cfg


def model_key(name: str) -> str:
    """A folder-safe, readable name: the hub id's last part, or tiny-NAME."""
    name = name.rstrip("/")
    if name.startswith("tiny://"):  # the rest is text too: `tiny://../x` must not become a path
        return "tiny-" + re.sub(r"[^A-Za-z0-9._+-]", "_", name[len("tiny://"):])
    key = re.sub(r"[^A-Za-z0-9._+-]", "_", Path(name).name)
    return key if key.strip(".") else "model"  # "", "." and ".." are not folder names


def model_keys(models: list[str]) -> dict[str, str]:
    """Each model's folder and table name: its `model_key`, and where two sources of one run share it (`/a/model`,
    `/b/model`; `org1/x`, `org2/x`) a hash of the source after it, so that neither takes the other's results."""
    keys = {name: model_key(name) for name in models}
    sources = {name: name if "://" in name else str(Path(source_key(name)).expanduser().resolve())
               if name.startswith(("/", ".", "~")) or Path(name).exists() else name.rstrip("/") for name in models}
    shared = {k for k in keys.values() if len({sources[n] for n in models if keys[n] == k}) > 1}
    return {name: f"{k}-{hashlib.sha256(sources[name].encode()).hexdigest()[:8]}" if k in shared else k
            for name, k in keys.items()}


def load_scorers(cfg: CQBenchConfig):
    renderer = None
    if "t2i" in cfg.tasks:
        renderer = load_renderer(cfg.renderer, size=cfg.render_size, steps=cfg.render_steps,
                                 max_sequence_length=cfg.render_max_sequence_length, dtype=cfg.render_dtype)
    return build_scorers(cfg.tasks, bertscore=cfg.bertscore, bertscore_layers=cfg.bertscore_layers, lpips=cfg.lpips,
                         lpips_channel_order=cfg.lpips_channel_order, clip=cfg.clip, renderer=renderer,
                         resize=cfg.resize)


def load_renderer(name_or_path: str, size: int = 1024, steps: int = 4, max_sequence_length: int = 512,
                  device: str | None = None, dtype: str | None = None):
    """(prompts, seeds) -> PIL images through the project's SD3.5 renderer (shared with the T->I reward); guidance
    0 as the authors used SD3.5-large-turbo."""
    renderer = Renderer.from_pretrained(name_or_path, device=device, dtype=dtype)
    quiet_repeated_warnings()  # SD3.5's CLIP truncation warning, once per prompt otherwise

    def render(prompts: list[str], seeds: list[int]):
        return renderer.render(prompts, seeds, height=size, width=size, num_inference_steps=steps,
                               guidance_scale=0.0, max_sequence_length=max_sequence_length)

    return render


def load_model(cfg: CQBenchConfig, name: str, plan=None):
    """The model where `mmpc_rl.plan.placement` puts it: whole on this process's GPU, sharded over the node's GPUs (one
    process), or 4-bit; else on the CPU."""
    plan = plan or eval_placement(cfg, name)
    return load_policy(policy_config(cfg, name, plan), device_map=plan.device_map, max_memory=plan.max_memory)


def policy_config(cfg: CQBenchConfig, name: str, plan) -> ModelConfig:
    """How `name` loads: `dtype=family` resolved for it, 4-bit where the plan says so (never on the CPU)."""
    if cfg.qlora and not plan.qlora:
        print(f"mmpc-rl: {name}: qlora=true but {plan.note}, so not 4-bit (results.json records what loaded)",
              file=sys.stderr)
    loading = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(ModelLoading)}
    return ModelConfig(**{**loading, "dtype": model_dtype(cfg.dtype, name), "qlora": plan.qlora}, name_or_path=name)


def eval_placement(cfg: CQBenchConfig, name: str):
    max_new = cfg.max_new_tokens or max(get_task(t).max_new_tokens for t in cfg.tasks)
    plan = plan_placement(name, dtype=model_dtype(cfg.dtype, name), qlora=cfg.qlora, batch_size=cfg.batch_size,
                          max_new_tokens=max_new, max_pixels=cfg.max_pixels)
    if plan.mode != "cpu":
        print(f"mmpc-rl: {name}: {plan.mode} ({plan.note})", file=sys.stderr)
    return plan


def run(cfg: CQBenchConfig) -> dict:
    """Evaluate every model on every task; returns results[model][task] = aggregate and writes the report files.
    The output folder is locked while it runs (the process that writes the reports holds the lock)."""
    out = prepare_output_dir(cfg.output_dir)
    # a model that cannot be found fails before the items, renderer and scorers load; a hub id is fetched now, so
    # that its fingerprint names the commit it runs
    for name in cfg.models:
        resolve_model_path(name, option="models")
    lock = lock_folder(out, "CQBench output_dir", take=rank_and_world()[0] == 0)
    try:
        return _run(cfg, out)
    finally:
        if lock is not None:
            lock.release()


def _run(cfg: CQBenchConfig, out: Path) -> dict:
    items = load_items(cfg.data, split=cfg.split, categories=cfg.categories, limit_per_category=cfg.limit,
                       seed=cfg.seed, cache_dir=cfg.cache_dir)
    if no_image := [it for it in items if not it.get("image")]:  # nothing to show (i2t) or to compare with (t2i)
        print(f"mmpc-rl: {len(no_image)} of {len(items)} items have no image and are skipped", file=sys.stderr)
        items = [it for it in items if it.get("image")]
    items = usable_items(items, policy="i2t" in cfg.tasks)  # the training run's test (data/skips.py)
    if not items:
        raise ConfigError(f"no items in {cfg.data} (split={cfg.split}, categories={cfg.categories})")
    scorers = load_scorers(cfg)
    results: dict[str, dict] = {}
    deltas = []
    models = list(dict.fromkeys(cfg.models))
    keys = model_keys(models)
    for name in models:
        plan = eval_placement(cfg, name)
        mc = policy_config(cfg, name, plan)
        key = keys[name]
        arms = [(key, None)]
        if cfg.adapter:
            arms = [(key, "base"), (f"{key}+{model_key(cfg.adapter)}", "lora")]
        tasks = {t: get_task(t, cfg.prompt, name) for t in cfg.tasks}  # the family's wording of the prompt
        settings = {(arm_key, t): run_settings(cfg, name, cfg.adapter if arm == "lora" else None, task, mc,
                                               cpu=plan.mode == "cpu")
                    for arm_key, arm in arms for t, task in tasks.items()}
        for (arm_key, t), fingerprint in settings.items():  # before loading: a run that cannot resume stops now
            check_settings(out / "items" / arm_key / f"{t}.jsonl", fingerprint)
        model, processor = load_model(cfg, name, plan)
        if cfg.adapter:
            model = _attach_adapter(model, cfg.adapter)
        for task_name, task in tasks.items():
            for arm_key, arm in arms:
                ctx = adapter_off(model) if arm == "base" else contextlib.nullcontext()
                with ctx:
                    res = evaluate(model, processor, task, items, results_path=out / "items" / arm_key /
                                   f"{task_name}.jsonl", scorers=scorers, batch_size=cfg.batch_size,
                                   max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample, seed=cfg.seed,
                                   image_dir=out / "images" / arm_key, progress=cfg.progress,
                                   desc=f"{arm_key} {task_name}")
                if res is not None:
                    results.setdefault(arm_key, {})[task_name] = {**res, "settings": settings[(arm_key, task_name)]}
            if cfg.adapter and all(a in results and task_name in results[a] for a, _ in arms):
                deltas.append(delta_table(results[arms[0][0]][task_name], results[arms[1][0]][task_name], task_name,
                                          base_name=arms[0][0], lora_name=arms[1][0]))
        del model
    if not results and cfg.models:  # a rank > 0 of a multi-process run: rank 0 merged its items and writes
        return results
    # Tables 4/5 are across the models asked for (an adapter's arm is a comparison, not another model)
    models = {keys[n]: results[keys[n]] for n in models if keys[n] in results}
    across = across_models(models)
    atomic_write_json(out / "results.json", {"config": dataclasses.asdict(cfg), "profile": profile_record(cfg),
                                             "across_models": across, "results": results})
    atomic_write_text(out / "tables.md", "# CQBench\n\n" + markdown_tables(results))
    for task_name, number in TABLE_NUMBERS.items():
        table = out / f"table{number}.md"
        if task_name in across:
            atomic_write_text(table, across_models_table(across, task_name, models))
        elif table.exists():  # an earlier run's table is not of these results
            table.unlink()
    if deltas:
        atomic_write_text(out / "lora_vs_base.md", "# CQBench: base vs LoRA\n\n" + "\n".join(deltas))
    radar_png(results, out / "radar.png")
    return results


def _attach_adapter(model, adapter: str):
    """The adapter on the model, every tensor of it in place (PEFT only warns about a misfit, and the "LoRA" arm
    would then be the base model)."""
    if not (Path(adapter) / "adapter_config.json").is_file():
        raise ModelLoadError(f"adapter={adapter!r} is not a LoRA folder (no adapter_config.json there)")
    return attach_adapter(model, adapter)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(list(sys.argv[1:] if argv is None else argv))
    results = run(cfg)
    if not results:  # a rank > 0: rank 0 reports
        return 0
    out = Path(cfg.output_dir)
    text = (out / "lora_vs_base.md") if cfg.adapter else (out / "tables.md")
    print(text.read_text())
    n = sum(r["n_items"] for per_task in results.values() for r in per_task.values())
    extra = "".join(f", {p.name}" for p in sorted(out.glob("table[45].md")))
    print(f"mmpc-rl: CQBench scored {n} item-runs; results.json, tables.md{extra} and radar.png in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(lambda: main(sys.argv[1:])))
