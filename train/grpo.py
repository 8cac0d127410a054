"""GRPO fine-tuning of a vision-language model that completes a missing product modality.

    accelerate launch train/grpo.py recipe=i2t                              # Qwen2.5-VL-7B, bf16 LoRA, one GPU
    accelerate launch train/grpo.py recipe=i2t model.qlora=true             # 4-bit NF4 QLoRA (the paper's setup)
    accelerate launch --config_file launch/ddp.yaml train/grpo.py recipe=i2t  # several GPUs, one node
    accelerate launch train/grpo.py recipe=demo-i2t                  # CPU: tiny policy, real MiniLM, sample data
    python train/grpo.py recipe=i2t model.name_or_path=/models/tiny data.path=/data/mmpcbench trainer.max_steps=20

Options are recipe keys (`recipes/*.yaml`): model.*, lora.*, trainer.* (any trl.GRPOConfig field), rewards.<name>.*,
data.*, eval.*, wandb.*. The run leaves in trainer.output_dir: config.yaml (resolved recipe), metrics.jsonl,
checkpoints, and the final adapter + processor.
"""

from __future__ import annotations

import sys
import time

DEMO_RECIPE = "demo-i2t"


def main(argv: list[str] | None = None) -> int:
    from mmpc_rl.config import load_recipe

    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = load_recipe(argv)  # fails in seconds on a bad recipe, key or reward, before the heavy imports

    from mmpc_rl.training import build_trainer

    trainer = build_trainer(cfg)
    t0 = time.time()
    trainer.train(resume_from_checkpoint=resume_point(trainer.args))
    trainer.save_model(trainer.args.output_dir)  # adapter (safetensors) + processor
    from mmpc_rl.monitoring import finish

    finish(trainer)  # reward_curves.png, no pickled training_args.bin, W&B run closed
    if trainer.is_world_process_zero():
        print(f"mmpc-rl: trained {trainer.state.global_step} steps in {time.time() - t0:.0f} s; "
              f"adapter, config.yaml and metrics.jsonl in {trainer.args.output_dir}")
    return 0


def resume_point(args) -> str | bool | None:
    """trainer.resume_from_checkpoint: a checkpoint folder, or `auto` for the last complete one in output_dir."""
    value = args.resume_from_checkpoint
    if value in (None, "", False):
        return None
    if str(value).lower() == "auto":
        from mmpc_rl.resume import last_complete_checkpoint

        return last_complete_checkpoint(args.output_dir)
    return value


def demo(argv: list[str] | None = None) -> int:
    """`mmpc-rl demo [key=value ...]`: the bundled CPU demo."""
    return main([f"recipe={DEMO_RECIPE}", *(argv or [])])


if __name__ == "__main__":
    from mmpc_rl.errors import run_cli

    sys.exit(run_cli(lambda: main(sys.argv[1:])))
