"""No silent CPU training: a recipe whose policy has >= 1 B parameters (counted from its config on the meta device)
refuses to start without a usable CUDA device, in seconds and before writing anything, in one line that says what was
found and how to train on the CPU anyway; a smaller policy, or `model.device=cpu`, trains on the CPU as before."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time

import pytest

from mmpc_rl.errors import ConfigError
from mmpc_rl.train import cuda_check
from mmpc_rl.train.recipe import load_training_recipe


@pytest.fixture(scope="module")
def big_config(tmp_path_factory):
    """A local folder with Qwen2.5-VL-7B's config.json and nothing else: no weights are needed to count it."""
    from mmpc_rl.models.qwen25_vl import qwen25_vl_7b_config

    folder = tmp_path_factory.mktemp("qwen7b-config")
    qwen25_vl_7b_config().save_pretrained(folder)
    assert [p.name for p in folder.iterdir()] == ["config.json"]
    return folder


def test_a_7b_recipe_without_cuda_refuses_in_seconds_and_writes_nothing(tmp_path, big_config):
    out = tmp_path / "run"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    t0, cpu0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", "mmpc_rl.cli", "train", "recipe=i2t",
                           f"model.name_or_path={big_config}", f"trainer.output_dir={out}"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    seconds = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mmpc-rl: error: recipe i2t trains a 8.3 B-parameter policy")
    assert "CUDA" in lines[0] and lines[0].endswith("add model.device=cpu to train there anyway")
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nothing written, not even the run folder
    assert seconds < 120, seconds  # imports + a meta-device count; on this shared 2-core box ~20 s
    print(f"refused in {seconds:.1f} s wall, {cpu:.1f} s CPU (load average {os.getloadavg()[0]:.1f}): {lines[0]}")


def test_cpu_training_is_opt_in_for_big_policies_only(big_config, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr(cuda_check, "cuda_found", lambda: "no CUDA device (stand-in)")
    big = [f"model.name_or_path={big_config}"]
    with pytest.raises(ConfigError, match="8.3 B-parameter"):
        cuda_check.refuse_cpu_training(load_training_recipe(["recipe=i2t", *big]))
    for opt_in in ("model.device=cpu", "trainer.use_cpu=true"):
        cuda_check.refuse_cpu_training(load_training_recipe(["recipe=i2t", *big, opt_in]))
    cuda_check.refuse_cpu_training(load_training_recipe(["recipe=demo-i2t"]))  # a tiny policy trains on CPU as before
    with pytest.raises(ConfigError, match="model.device"):
        load_training_recipe(["recipe=i2t", "model.device=gpu"])


def test_model_device_cpu_trains_in_float32_on_the_cpu():
    from mmpc_rl.train.trl_config import build_grpo_config

    recipe = load_training_recipe(["recipe=demo-i2t", "model.device=cpu", "trainer.use_cpu=false",
                                   "trainer.bf16=true"])
    args = build_grpo_config(recipe)
    assert (args.use_cpu, args.bf16) == (True, False)


def test_what_was_found_quotes_torchs_reason(monkeypatch, tmp_path):
    import torch

    def init():
        raise RuntimeError("The NVIDIA driver on your system is too old (found version 12020). Please update your GPU "
                           "driver by downloading and installing a new version from ...\nAlternatively, go to ...")

    monkeypatch.setattr(torch.cuda, "init", init)
    driver = tmp_path / "version"
    driver.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.54.03\nGCC version: 12\n")
    monkeypatch.setattr(cuda_check, "NVIDIA_DRIVER", driver)
    found = cuda_check.cuda_found()
    assert found.startswith("CUDA present but unusable: The NVIDIA driver on your system is too old (found version "
                            "12020)") and "535.54.03" in found and "\n" not in found
    monkeypatch.setattr(cuda_check, "NVIDIA_DRIVER", tmp_path / "absent")
    assert cuda_check.cuda_found().startswith("no CUDA device (torch ")
    monkeypatch.setattr(torch.version, "cuda", None)
    assert cuda_check.cuda_found().endswith("is a CPU-only build")
