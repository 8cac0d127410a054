"""A run folder (`trainer.output_dir`) holds one run.

- It is locked while a run writes there (mmpc_rl.lock): a second process refuses, naming the first one's pid.
- A fresh run (no `trainer.resume_from_checkpoint`) into a folder that holds another run's files refuses in one
  line; `trainer.overwrite_output_dir=true` removes that run's files first (only the files a run writes: anything
  else in the folder stays; W&B's own run folders stay too, but not the id that would continue the old W&B run).
- A resume continues the run recorded in the folder's config.yaml: a change of anything that makes another run
  (model, LoRA, task, rewards, data, prompt, the objective's trainer settings) refuses in one line naming the key;
  what only says how long to train, how often to log, evaluate or save, and where to report (SAFE_ON_RESUME) may
  change. A layout the recipe leaves open (micro-batch, accumulation) is the run's own.

The process that saves decides (rank 0, or each node's first process when every node saves), and every rank gets
its answer, so a refusal stops all of them.
"""

from __future__ import annotations

import fnmatch
import shutil
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from mmpc_rl.config import Recipe
from mmpc_rl.lock import FolderLock, lock_folder, raise_on_any_rank
from mmpc_rl.train.resume import resuming
from mmpc_rl.train.run_config import scrub

# what a run writes into its output_dir (train.callbacks, the HF Trainer, CQBench's callback)
RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json", "skips.json", "reward_curves.png", "wandb_run_id.txt",
             "trainer_state.json", "training_args.json", "training_args.bin", "adapter_model.safetensors",
             "adapter_config.json", "model.safetensors", "model.safetensors.index.json", "model-*.safetensors",
             "watch.json", "early_stop.json", "completions", "cqbench", "checkpoint-*", "best", ".best.tmp",
             ".best.old")
# the model card is a run's too, but a README.md alone does not make a folder another run's: it goes with the others
CLEARED_WITH = ("README.md",)
# keys a resume may change: they say how long to train, how often to log, evaluate and save, and where to report;
# everything else makes another run
SAFE_ON_RESUME = ("recipe", "trainer.max_steps", "trainer.num_train_epochs", "trainer.resume_from_checkpoint",
                  "trainer.overwrite_output_dir", "trainer.output_dir", "trainer.report_to", "trainer.run_name",
                  "trainer.logging_*", "trainer.log_*", "trainer.save_*", "trainer.eval_*",
                  "trainer.per_device_eval_batch_size", "trainer.push_to_hub", "trainer.hub_*", "trainer.disable_tqdm",
                  "trainer.dataloader_*", "trainer.gradient_checkpointing", "trainer.num_completions_to_print",
                  "trainer.wandb_log_unique_prompts", "model.compiled_decoding", "model.cpu_threads",
                  "model.attn_implementation", "data.cache_dir", "eval.every_n_steps", "eval.max_fraction",
                  "eval.batch_size", "eval.divergence_window", "early_stop.*", "wandb.*")
LAYOUT_KEYS = ("per_device_train_batch_size", "gradient_accumulation_steps", "gradient_checkpointing")


def run_files(folder: Path) -> list[Path]:
    """The files and folders of a run in `folder`."""
    if not folder.is_dir():
        return []
    return sorted(p for pattern in RUN_FILES for p in folder.glob(pattern))


def recorded_config(recipe: Recipe) -> tuple[Path, dict | None]:
    """(config.yaml of the run a resume continues, its content or None): the output folder's, or for a checkpoint
    in another folder, that folder's."""
    value = str(recipe.trainer.get("resume_from_checkpoint"))
    out = Path(recipe.trainer["output_dir"])
    folder = out if value.lower() in ("auto", "true") else Path(value).parent
    path = folder / "config.yaml"
    if not path.is_file():
        return path, None
    return path, OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def continue_layout(recipe: Recipe) -> Recipe:
    """On a resume, the layout keys the recipe leaves open are the ones the run was trained with (the memory planner
    could pick others elsewhere, and the batches would change)."""
    if not resuming(recipe.trainer):
        return recipe
    _, old = recorded_config(recipe)
    trainer = (old or {}).get("trainer") or {}
    fill = {k: trainer[k] for k in LAYOUT_KEYS if recipe.trainer.get(k) is None and trainer.get(k) is not None}
    return recipe.replace(trainer=fill) if fill else recipe


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def resume_mismatch(recipe: Recipe, old: dict) -> list[tuple[str, Any, Any]]:
    """(key, recorded value, this recipe's value) for every key that makes another run."""
    new = OmegaConf.to_container(OmegaConf.create(scrub(recipe.to_dict())), resolve=False)  # as config.yaml holds it
    a, b = _flat(old), _flat(new)
    keys = dict.fromkeys([*a, *b])
    return [(k, a.get(k), b.get(k)) for k in keys
            if a.get(k) != b.get(k) and not any(fnmatch.fnmatchcase(k, p) for p in SAFE_ON_RESUME)]


def folder_problem(recipe: Recipe) -> str | None:
    """Why this recipe may not run in its output folder, or None; clears another run's files when the recipe says
    `trainer.overwrite_output_dir=true`. Called on the process that saves, with the folder locked."""
    trainer = recipe.trainer
    out = Path(trainer["output_dir"])
    overwrite = bool(trainer.get("overwrite_output_dir"))
    resume = str(trainer.get("resume_from_checkpoint")) if resuming(trainer) else None
    inside = resume is not None and (resume.lower() in ("auto", "true")
                                     or Path(resume).resolve().parent == out.resolve())
    if overwrite and inside:
        return (f"trainer.overwrite_output_dir=true would clear the run that trainer.resume_from_checkpoint={resume} "
                "continues: give one of them")
    if inside:
        config, old = recorded_config(recipe)
        if old is None:
            if run_files(out):
                return (f"cannot resume the run in {out}: it has no config.yaml to check that this recipe continues "
                        "it; give a new trainer.output_dir")
            return None  # nothing there yet: resume=auto with no checkpoint starts the run
        diff = resume_mismatch(recipe, old)
        if diff:
            shown = "; ".join(f"{k}: {old_v!r} -> {new_v!r}" for k, old_v, new_v in diff[:3])
            more = f" and {len(diff) - 3} more" if len(diff) > 3 else ""
            return (f"trainer.resume_from_checkpoint continues the run in {out}, made with other settings ({shown}"
                    f"{more}, see {config}); a resume may change only how long it trains, how often it logs, "
                    "evaluates and saves, and where it reports: give a new trainer.output_dir for another run")
        return None
    if resume is not None:  # a checkpoint of another folder: check it continues that run, into a fresh folder here
        config, old = recorded_config(recipe)
        if old is not None and (diff := resume_mismatch(recipe, old)):
            k, old_v, new_v = diff[0]
            return (f"trainer.resume_from_checkpoint={resume} continues the run of {config.parent}, made with "
                    f"{k}={old_v!r}, not {new_v!r}: give a new trainer.output_dir for another run")
    found = run_files(out)
    if not found:
        return None
    if overwrite:
        for path in [*found, *(p for n in CLEARED_WITH if (p := out / n).exists())]:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        print(f"mmpc-rl: trainer.overwrite_output_dir=true: removed the previous run's files from {out} "
              f"({', '.join(p.name for p in found[:4])}{', ...' if len(found) > 4 else ''})", file=sys.stderr)
        return None
    names = ", ".join(p.name for p in found[:3]) + (", ..." if len(found) > 3 else "")
    return (f"trainer.output_dir {out} holds another run ({names}): continue it with "
            "trainer.resume_from_checkpoint=auto, replace it with trainer.overwrite_output_dir=true, or give a new "
            "trainer.output_dir")


def claim_run_folder(recipe: Recipe, args) -> FolderLock | None:
    """Lock the output folder and check (or clear) what is in it, on the process that saves; every rank raises the
    same one-line ConfigError when it may not run there. Returns this process's lock (None on the others)."""
    lock = lock_folder(args.output_dir, "trainer.output_dir", take=bool(args.should_save))
    error = None
    if lock is not None:
        try:
            error = folder_problem(recipe)
        except BaseException:
            lock.release()
            raise
    try:
        raise_on_any_rank(error)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return lock
