"""GRPO fine-tuning of a vision-language model that completes a missing product modality.

    accelerate launch train/grpo.py recipe=i2t                              # Qwen2.5-VL-7B, bf16 LoRA, one GPU
    accelerate launch train/grpo.py recipe=i2t model.qlora=true             # 4-bit NF4 QLoRA, bf16 compute
    accelerate launch --config_file launch/ddp.yaml train/grpo.py recipe=i2t  # several GPUs, one node
    accelerate launch train/grpo.py recipe=demo-i2t                  # CPU: tiny policy, real MiniLM, sample data
    python train/grpo.py recipe=i2t model.name_or_path=/models/tiny data.path=/data/mmpcbench trainer.max_steps=20

Options are recipe keys (`recipes/*.yaml`): model.*, lora.*, trainer.* (any trl.GRPOConfig field), rewards.<name>.*,
data.*, eval.*, wandb.*. The run leaves in trainer.output_dir: config.yaml (resolved recipe), metrics.jsonl,
checkpoints, and the final adapter + processor.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from mmpc_rl.errors import run_cli
from mmpc_rl.io import prepare_output_dir, write_failure
from mmpc_rl.lock import release_folder
from mmpc_rl.train.cuda_check import refuse_cpu_training
from mmpc_rl.train.recipe import load_training_recipe
from mmpc_rl.train.resume import finished_run, refinish_point, resume_point
from mmpc_rl.train.stopping import RECORD, stopped_early

DEMO_RECIPE = "demo-i2t"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    recipe = load_training_recipe(argv)  # fails in seconds on a bad recipe, key or reward
    refuse_cpu_training(recipe)  # a >= 1 B policy without usable CUDA: one line now, nothing written
    done = finished_run(recipe.trainer) or stopped_early(recipe)
    if done:
        print(f"mmpc-rl: {done}")
        return 0
    prepare_output_dir(recipe.trainer["output_dir"])  # writable, no link out of it: before seconds of imports

    # TRL and the model stack: ~8 s of imports, after the checks
    from mmpc_rl.train.builder import build_trainer, check_resumed_adapter, finish_again

    checkpoint = resume_point(recipe.trainer)  # the checkpoint a resume loads (its files checked once, here)
    refinish = refinish_point(recipe.trainer, checkpoint)  # trained out, but the final result is broken: end it again
    try:
        trainer = build_trainer(recipe)  # locks the output folder (train.run_folder)
        t0 = time.time()
        if refinish:
            finish_again(trainer, refinish)
        else:
            check_resumed_adapter(trainer, checkpoint)
            # the final adapter, curves and W&B close are the RunEnd callback's (train.callbacks)
            trainer.train(resume_from_checkpoint=checkpoint)
    except Exception as e:  # a full disk mid-checkpoint is one line that says so (torch's C++ writer does not)
        failure = write_failure(e, recipe.trainer["output_dir"])
        if failure is None:
            raise
        raise failure from None
    finally:
        release_folder(recipe.trainer["output_dir"])
    if trainer.is_world_process_zero():
        print(run_summary(trainer.args.output_dir, trainer.state.global_step, time.time() - t0))
    return 0


def run_summary(output_dir: str, steps: int, seconds: float) -> str:
    """The last lines of a run: CQBench before/after (when eval ran), last and best, the watch summary, why it
    stopped early (if it did) and where the results are."""
    from mmpc_rl.train.best import best_lines
    from mmpc_rl.train.watch import summary_lines

    out = Path(output_dir)
    lines = [f"mmpc-rl: trained {steps} steps in {seconds:.0f} s"]
    early = json.loads((out / RECORD).read_text()) if (out / RECORD).is_file() else {}
    if early.get("step") == steps:  # this run's stop, not an earlier one that was trained on from
        lines.append(f"mmpc-rl: {early['line']}")
    table = out / "cqbench" / "before_after.md"
    if table.is_file():
        lines += ["", table.read_text().strip(), ""]
    lines += [*best_lines(out), *summary_lines(out)]
    for label, name in (("adapter", "adapter_model.safetensors"), ("best adapter", "best"),
                        ("reward curves", "reward_curves.png"), ("model card", "README.md"),
                        ("completions", "completions"), ("metrics", "metrics.jsonl"), ("recipe", "config.yaml"),
                        ("CQBench", "cqbench/before_after.md")):
        if (out / name).exists():
            lines.append(f"  {label + ':':<15}{out / name}")
    return "\n".join(lines)


def demo(argv: list[str] | None = None) -> int:
    """`mmpc-rl demo [key=value ...]`: the bundled CPU demo."""
    return main([f"recipe={DEMO_RECIPE}", *(argv or [])])


if __name__ == "__main__":
    sys.exit(run_cli(lambda: main(sys.argv[1:])))
