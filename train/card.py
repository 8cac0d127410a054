"""output_dir/README.md: the run's model card in the Hugging Face format (YAML front matter, then markdown).

Written at the end of a run (RunEnd, after the curves) from what the run left on disk: the resolved recipe
(config.yaml, secrets already redacted), CQBench before/after/best, best/best.json, early_stop.json, watch.json and
reward_curves.png. `own_model_card(trainer)` makes it the card TRL and transformers write at every checkpoint and
upload with `trainer.push_to_hub=true` (their `create_model_card` would otherwise replace it with TRL's generic one).
"""

from __future__ import annotations

import re
from pathlib import Path

from huggingface_hub import ModelCardData
from omegaconf import OmegaConf

from mmpc_rl.eval.metrics import METRICS, metrics_for
from mmpc_rl.eval.report import TASK_TITLES
from mmpc_rl.io import atomic_write_text, read_json
from mmpc_rl.train.best import BEST, read_best
from mmpc_rl.train.cqbench import summary_means
from mmpc_rl.train.stopping import RECORD
from mmpc_rl.train.watch import summary_lines

CARD = "README.md"
TASK_WORDS = {"i2t": "writes a product title (JSON `{\"title\": ...}`) from a product image",
              "t2i": "writes a text-to-image prompt (JSON `{\"prompt\": ...}`) from a product description, rendered "
                     "by Stable Diffusion 3.5"}
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def hub_id(name: str) -> str | None:
    """A Hub model id (`org/name`, not a folder here): the card's `base_model` must be one."""
    return name if HUB_ID.fullmatch(name or "") and not Path(name).exists() else None


def _means(summary: dict | None, names: list[str]) -> dict[str, float | None]:
    if not summary:
        return {}
    means = summary_means(summary)
    return {**{m: means.get(m) for m in names}, "parse_ok_rate": means["parse_ok_rate"]}


def cqbench_table(out: Path, task: str) -> list[str]:
    root = out / "cqbench"
    before, after = read_json(root / "before" / "summary.json"), read_json(root / "after" / "summary.json")
    if before is None and after is None:
        return ["CQBench was not run during training (`eval.enabled=false`)."]
    names = [m for m in metrics_for(task) if any(s and m in s["summary"] for s in (before, after))]
    rows = [("before (base model)", 0, before), ("after (this adapter)", (after or {}).get("step"), after)]
    best = read_best(out)
    if best is not None:
        tag = "after" if after and after.get("step") == best["step"] else f"step-{best['step']}"
        rows.append((f"best on {best['metric']} (`best/`)", best["step"], read_json(root / tag / "summary.json")))
    cols = [f"{METRICS[m].label} {'↑' if METRICS[m].higher_is_better else '↓'}" for m in names] + ["Parsed ↑"]
    lines = ["| | step | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for label, step, summary in rows:
        means = _means(summary, names)
        cells = ["–" if means.get(m) is None else f"{means[m]:.4f}" for m in [*names, "parse_ok_rate"]]
        lines.append(f"| {label} | {'–' if step is None else step} | " + " | ".join(cells) + " |")
    n = (after or before)["n_items"]
    lines += ["", f"Mean over categories of {n} held-out CQBench items (`eval.split`), greedy decoding, the training "
              f"prompt (`{(after or before).get('prompt')}`). Per category and Δ: `cqbench/before_after.md`."]
    return lines


def model_card(output_dir: str | Path, state=None, repo: str | None = None) -> str:
    out = Path(output_dir)
    cfg = OmegaConf.to_container(OmegaConf.load(out / "config.yaml")) if (out / "config.yaml").is_file() else {}
    task, model = cfg.get("task", "i2t"), (cfg.get("model") or {}).get("name_or_path", "")
    trainer, rewards = cfg.get("trainer") or {}, cfg.get("rewards") or {}
    where = repo or str(out)
    data = ModelCardData(base_model=hub_id(model), library_name="peft", pipeline_tag="image-text-to-text",
                         tags=["mmpc-rl", "grpo", "trl", "lora", task, *(cfg.get("wandb") or {}).get("tags", [])])
    step = getattr(state, "global_step", None)
    max_steps = getattr(state, "max_steps", None) or trainer.get("max_steps")
    stop = read_json(out / RECORD)
    base_link = f"[{model}](https://huggingface.co/{model})" if hub_id(model) else f"`{model}`"
    lines = [f"# {out.name}: a GRPO LoRA adapter for {TASK_TITLES.get(task, task)}", "",
             f"A LoRA adapter on {base_link} trained "
             f"with mmpc-rl (TRL's GRPOTrainer) after the MMPCBench paper: the policy "
             f"{TASK_WORDS.get(task, task)}.", "",
             "## Training", "",
             f"- steps: {step if step is not None else '?'} of max_steps={max_steps}"
             + (f"; stopped early: {stop['line']}" if stop and stop.get("step") == step else ""),
             f"- recipe: `{cfg.get('recipe')}`, learning rate {trainer.get('learning_rate')}, group size "
             f"{trainer.get('num_generations')}, beta {trainer.get('beta')}, "
             f"LoRA r={(cfg.get('lora') or {}).get('r')}",
             "", "| reward | weight | options |", "|---|---|---|"]
    for name, opts in rewards.items():
        opts = dict(opts or {})
        weight = opts.pop("weight", 1.0)
        lines.append(f"| `{name}` | {weight} | {', '.join(f'{k}={v}' for k, v in opts.items()) or '–'} |")
    lines += ["", "## CQBench (held-out items)", "", *cqbench_table(out, task), ""]
    if (out / "reward_curves.png").is_file():
        lines += ["## Curves", "", "![training reward and CQBench gold curves](reward_curves.png)", ""]
    watch = summary_lines(out)
    if watch:
        lines += ["## Watch", "", "```", *[w.removeprefix("mmpc-rl: ") for w in watch], "```", ""]
    lines += ["## Use", "", "```python", "import torch", "from peft import PeftModel",
              "from transformers import AutoModelForImageTextToText, AutoProcessor", "",
              f"base = AutoModelForImageTextToText.from_pretrained({model!r}, dtype=torch.bfloat16)",
              f"model = PeftModel.from_pretrained(base, {where!r})  # the last step's adapter"]
    if read_best(out) is not None:
        lines.append(f"# the best-scoring step's: PeftModel.from_pretrained(base, {where!r}, subfolder={BEST!r})")
    lines += [f"processor = AutoProcessor.from_pretrained({where!r})", "```", "",
              f"Re-benchmark: `mmpc-rl eval cqbench models=[{model}] adapter={where}`.", "",
              "<details><summary>Resolved recipe (config.yaml)</summary>", "", "```yaml",
              OmegaConf.to_yaml(cfg).rstrip(), "```", "", "</details>", ""]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)


def write_model_card(output_dir: str | Path, state=None, repo: str | None = None) -> Path:
    return atomic_write_text(Path(output_dir) / CARD, model_card(output_dir, state, repo))


def own_model_card(trainer):
    """Our card wherever TRL/transformers write theirs (each checkpoint save, `push_to_hub`)."""
    def create_model_card(*args, **kwargs):
        if trainer.is_world_process_zero():
            repo = getattr(trainer, "hub_model_id", None) or trainer.args.hub_model_id  # set once the repo exists
            write_model_card(trainer.args.output_dir, trainer.state, repo)

    trainer.create_model_card = create_model_card
    return trainer
