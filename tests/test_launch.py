"""launch/: every accelerate config loads and resolves to the intended launch; the SLURM script hands each node the
right rank and rendezvous; a real 2-process DDP run of train/grpo.py works on CPU (gloo)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mmpc_rl.data import load_items

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
BIN = Path(sys.executable).parent


def resolve_launch(config: str, *extra: str):
    """What `accelerate launch --config_file CONFIG ...` would run, resolved by accelerate's own parser."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(LAUNCH / config), *extra, "train/grpo.py",
                                               "recipe=i2t"])
    args, cluster, _ = _validate_launch_command(args)
    return args, cluster


@pytest.mark.parametrize("config, kind, procs, zero, precision", [
    ("single_gpu.yaml", "NO", 1, None, "no"),
    ("ddp.yaml", "MULTI_GPU", 8, None, "no"),
    ("zero2.yaml", "DEEPSPEED", 8, 2, "bf16"),
    ("zero3.yaml", "DEEPSPEED", 8, 3, "bf16"),
])
def test_accelerate_configs_load_and_resolve(config, kind, procs, zero, precision):
    from accelerate.commands.config.config_args import load_config_from_file

    cluster = load_config_from_file(str(LAUNCH / config))  # raises on any key accelerate does not know
    assert cluster.distributed_type.value == kind
    args, _ = resolve_launch(config)
    assert (args.num_processes, args.mixed_precision, args.zero_stage) == (procs, precision, zero)
    assert args.use_deepspeed == (kind == "DEEPSPEED") and args.multi_gpu == (kind == "MULTI_GPU")
    assert args.training_script_args == ["recipe=i2t"]
    if zero == 3:
        assert (args.zero3_init_flag, args.zero3_save_16bit_model) == (True, True)
    args, _ = resolve_launch(config, "--num_processes", "4")  # the command line beats the file
    assert args.num_processes == 4


def test_every_launch_file_is_covered():
    assert sorted(p.name for p in LAUNCH.iterdir()) == ["ddp.yaml", "single_gpu.yaml", "slurm.sbatch",
                                                       "zero2.yaml", "zero3.yaml"]


def _fake(path: Path, body: str) -> None:
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)


def test_slurm_script_gives_each_node_its_rank_and_the_first_node_as_rendezvous(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    log = tmp_path / "calls.jsonl"
    _fake(fake / "scontrol", 'echo gpu-node-07; echo gpu-node-08\n')
    # srun: run the task once per node, as SLURM would, with that node's SLURM_NODEID
    _fake(fake / "srun", 'shift\nfor i in $(seq 0 $((SLURM_NNODES-1))); do SLURM_NODEID=$i "$@" || exit $?; done\n')
    record = "import json, sys; print(json.dumps(sys.argv[1:]))"
    _fake(fake / "accelerate", f'{sys.executable} -c "{record}" "$@" >> {log}\n')
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "SLURM_NNODES": "2", "SLURM_SUBMIT_DIR": str(ROOT),
           "SLURM_JOB_NODELIST": "gpu-node-[07-08]", "GPUS_PER_NODE": "4", "CONFIG": "launch/zero3.yaml"}
    out = subprocess.run(["bash", str(LAUNCH / "slurm.sbatch"), "recipe=i2t", "trainer.output_dir=/shared/x y"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(calls) == 2
    for rank, argv in enumerate(calls):
        assert argv == ["launch", "--config_file", "launch/zero3.yaml", "--num_machines", "2", "--num_processes", "8",
                        "--machine_rank", str(rank), "--main_process_ip", "gpu-node-07", "--main_process_port",
                        "29500", "--rdzv_backend", "static", "--same_network", "train/grpo.py", "recipe=i2t",
                        "trainer.output_dir=/shared/x y"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_cpu_ddp_run_with_the_shipped_ddp_config(tmp_path, tiny_qwen, sample_catalog):
    """launch/ddp.yaml on a machine without GPUs: torchrun starts 2 processes, accelerate picks gloo (MULTI_CPU)."""
    out = tmp_path / "run"
    cmd = [str(BIN / "accelerate"), "launch", "--config_file", str(LAUNCH / "ddp.yaml"), "--num_processes", "2",
           "--main_process_port", str(_free_port()), str(ROOT / "train" / "grpo.py"), "recipe=demo-i2t",
           f"model.name_or_path={tiny_qwen}", f"data.path={sample_catalog}", "data.limit_per_category=4",
           "eval.enabled=false", "trainer.max_steps=2", "trainer.num_generations=4",
           "trainer.per_device_train_batch_size=4", "trainer.max_completion_length=8", f"trainer.output_dir={out}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "trained 2 steps" in proc.stdout
    assert (out / "adapter_model.safetensors").stat().st_size > 0
    assert (out / "config.yaml").is_file()
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [s for s in steps if "loss" in s]
    assert [s["step"] for s in logged] == [1, 2]  # one line per step: only the main process writes
    assert all(s["completions/max_length"] <= 8 for s in logged)
    # Each process takes its own prompt (4 completions) per step, so an epoch of N prompts lasts N/2 steps, not N.
    n_prompts = len(load_items(sample_catalog, split="train", limit_per_category=4))
    assert [s["epoch"] for s in logged] == pytest.approx([2 / n_prompts, 4 / n_prompts])
