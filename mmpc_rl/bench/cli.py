"""GRPO speed harness: N steps of a recipe on a random-weight model in the real shape, project arm vs plain TRL.

    mmpc-rl benchmark recipe=i2t shape=real steps=5 new_tokens=128           # one GPU: Qwen2.5-VL-7B shape, G=16
    mmpc-rl benchmark recipe=i2t shape=tiny steps=3 new_tokens=16 num_generations=4 rewards=stub   # CPU, seconds
    python -m mmpc_rl.bench.cli recipe=i2t arms=[project] model.compiled_decoding=false lora.r=8 out=outputs/bench-r8

Options: recipe, steps, warmup, shape=real|tiny, arms=[project,plain], new_tokens, num_generations, image_size,
rewards=recipe|stub, out, seed; any recipe key as section.key=value (speed settings are recipe keys, e.g.
model.compiled_decoding, trainer.gradient_checkpointing). The project arm is a training run of the recipe
(build_trainer: its keys, and the memory plan's layout where the recipe leaves it open); the plain arm keeps TRL's
defaults except the recipe's algorithm settings. Both get the same model, prompts, group size G and completion
length T (forced with min_new_tokens). Writes
out/benchmark.json (each arm as it finishes; a rerun with the same options skips finished arms) and prints a table.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from mmpc_rl.bench.grpo_options import parse_bench_options, ratios
from mmpc_rl.errors import ConfigError, run_cli
from mmpc_rl.io import atomic_write_json, prepare_output_dir
from mmpc_rl.train.recipe import load_training_recipe


def table(results: dict) -> str:
    env, opts = results["env"], results["options"]
    where = env.get("gpu") or f"CPU ({env['cpu_count']} cores)"
    lines = [f"GRPO benchmark: recipe={opts['recipe']} shape={opts['shape']} G={results['group']} "
             f"T={opts['new_tokens']} steps={opts['steps']} (+{opts['warmup']} warm-up) on {where}",
             f"{'arm':<9}{'s/step':>9}{'gen s/step':>12}{'decode ms/tok':>15}{'peak mem GB':>13}  settings"]
    for arm, r in results["arms"].items():
        s = r["settings"]
        on = {True: "on", False: "off"}
        knobs = (f"ckpt={on[s['gradient_checkpointing']]} cache={s['cache_implementation'] or 'dynamic'} "
                 f"compile={on[s['compiled_generation']]} bf16={on[s['bf16']]}")
        decode = r["decode_ms_per_token"]
        lines.append(f"{arm:<9}{r['s_per_step']:>9.3f}{r['generate_s_per_step']:>12.3f}"
                     f"{decode if decode is None else format(decode, '.2f'):>15}{r['peak_mem_gb']:>13.2f}  {knobs}")
    ratio = results.get("ratio") or {}
    if ratio:
        lines.append(f"plain/project: {ratio['s_per_step']:.2f}x s/step, "
                     f"{ratio.get('decode_ms_per_token', float('nan')):.2f}x decode ms/token; "
                     f"project/plain peak memory: {ratio['peak_mem']:.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(arg.split("=", 1)[0] == "suite" for arg in argv):  # the one-shot GPU check (mmpc_rl/bench/gpu_check.py)
        from mmpc_rl.bench import gpu_check

        return gpu_check.main(argv)
    opts, overrides = parse_bench_options(argv)
    recipe = load_training_recipe([f"recipe={opts.recipe}", *overrides])  # a bad recipe fails before a model loads
    if recipe.task != "i2t":
        raise ConfigError(f"the benchmark runs image->text recipes; recipe {opts.recipe!r} is task {recipe.task!r}")
    prepare_output_dir(opts.out)

    import torch  # after the recipe checks: torch + the model stack cost seconds

    from mmpc_rl.bench import grpo_arms as bench
    from mmpc_rl.models import torch_dtype
    from mmpc_rl.rewards import RewardContext, build_rewards
    from mmpc_rl.tasks import get_task

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if opts.shape == "real" and device == "cpu":
        raise ConfigError("shape=real builds Qwen2.5-VL-7B's 8.3B parameters: run it on a GPU; on CPU use shape=tiny")
    group = int(opts.num_generations or recipe.trainer["num_generations"])
    dtype = torch_dtype(recipe.model.dtype if device == "cuda" and recipe.model.dtype != "auto" else "float32")
    options = {**dataclasses.asdict(opts), "overrides": overrides}
    path = Path(opts.out) / "benchmark.json"
    results = {"options": options, "group": group, "env": bench.environment(device), "arms": {}}
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("options") == options and old.get("env", {}).get("device") == device:
            results["arms"] = {a: r for a, r in old.get("arms", {}).items() if a in opts.arms}
            if results["arms"]:
                print(f"mmpc-rl: resuming {path}: arm(s) {', '.join(results['arms'])} already measured")

    task = get_task(recipe.task, recipe.data.prompt, recipe.model.name_or_path)
    processor = bench.build_processor(opts.shape)
    dataset = bench.synthetic_dataset(task, 2 * (opts.warmup + opts.steps) + 2, opts.image_size, opts.seed)
    rewards = (bench.stub_rewards() if opts.rewards == "stub" else
               build_rewards(recipe.rewards, task, RewardContext(output_dir=opts.out)))
    for arm in opts.arms:
        if arm in results["arms"]:
            continue
        print(f"mmpc-rl: benchmark arm {arm!r}: {opts.warmup} warm-up + {opts.steps} measured steps")
        results["arms"][arm] = bench.run_arm(arm, recipe, opts, processor=processor, dataset=dataset, rewards=rewards,
                                             device=device, dtype=dtype, group=group)
        atomic_write_json(path, results)  # a kill loses at most the arm in progress
    results["ratio"] = ratios(results["arms"])
    atomic_write_json(path, results)
    print(table(results))
    print(f"mmpc-rl: results in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(lambda: main(sys.argv[1:])))
