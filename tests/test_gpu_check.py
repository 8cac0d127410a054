"""The GPU check: its section plan fits 8 minutes of device time, and its CPU dry mode (tiny shapes) runs every
default section end to end through bench/gpu_check.sh, the way a GPU machine runs it: from the checkout, without
`mmpc-rl` on PATH and without bitsandbytes or wandb importable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmpc_rl.errors import ConfigError

ROOT = Path(__file__).parents[1]
HIDE = "import sys\nfor name in ('bitsandbytes', 'wandb'):\n    sys.modules[name] = None  # import fails: absent\n"


def test_the_default_sections_plan_at_most_eight_minutes(capsys):
    from mmpc_rl.bench.gpu_check import DEFAULT_SECTIONS, ESTIMATE_S, parse, print_plan, section_plan

    opts = parse([])
    assert tuple(opts.sections) == DEFAULT_SECTIONS and DEFAULT_SECTIONS[:2] == ("project", "plain")
    assert "qlora" not in opts.sections and (opts.warmup, opts.steps, opts.sizes) == (1, 2, [1024])
    rows, total = section_plan(opts)
    assert [name for name, _ in rows] == ["setup", *DEFAULT_SECTIONS]
    assert total == sum(ESTIMATE_S[n] for n, _ in rows) <= opts.budget_s == 480
    assert print_plan(opts) == total and f"total {total} of budget 480" in capsys.readouterr().out
    assert section_plan(parse(["sections=[project,plain,t2i,cqbench,qlora]"]))[1] > total  # QLoRA is extra


def test_dry_run_from_the_checkout_without_mmpc_rl_on_path_or_optional_wheels(tmp_path, one_thread):
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(HIDE)
    out = tmp_path / "out"
    env = {**os.environ, "PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "PYTHONPATH": str(hide),
           "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    hidden = subprocess.run([sys.executable, "-c", "import wandb"], env=env, capture_output=True, text=True)
    assert hidden.returncode == 1 and "ModuleNotFoundError" in hidden.stderr  # the stand-in for not installed
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), str(out), "dry=true"], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    plan = next(line for line in proc.stdout.splitlines() if "gpu check plan" in line)
    assert int(plan.split("total ")[1].split()[0]) <= 480

    results = json.loads((out / "gpu_check.json").read_text())
    assert (results["env"]["bitsandbytes"], results["env"]["wandb"]) == (None, None)
    sections = results["sections"]
    assert list(sections) == ["project", "plain", "t2i", "cqbench"]  # project first
    assert results["env"]["device"] == "cpu"
    for name in ("project", "plain"):
        r = sections[name]
        assert r["new_tokens_per_step"] == 4 and len(r["step_s"]) == 2  # 1 warm-up + 1 measured (dry)
        assert r["s_per_step"] > 0 and r["decode_ms_per_token"] > 0
        assert r["planned_peak_gb"] is not None and r["planned_phase"]  # the planner beside the measured peak
    assert (sections["project"]["settings"]["gradient_checkpointing"],
            sections["plain"]["settings"]["gradient_checkpointing"]) == (False, True)
    decoding = sections["project"]["decoding"]  # compiled decoding exercised (forced, dynamo's eager backend)
    assert decoding["enabled"] and decoding["compiles"] >= 1 and decoding["fallback"] is None
    group = sections["t2i"]["64px"]
    assert (group["completions"], group["renders"], group["scored"]) == (4, 16, 4)  # 4 distinct x 4 images
    assert group["planned_transient_gb"] > 0
    assert sections["cqbench"]["items"] == 4 and sections["cqbench"]["items_per_minute"] > 0
    assert set(results["ratio"]) >= {"s_per_step", "peak_mem"}
    assert (out / "torch_recompiles.log").is_file()

    table = (out / "gpu_check.md").read_text()
    assert "| project | peak memory GiB, measured / planned" in table and "| t2i | 64px: group of 16 renders" in table
    assert "| project | compiled decoding | on=True" in table and table in proc.stdout


def test_a_missing_wheel_is_named_before_any_section_runs(tmp_path):
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['diffusers'] = None\n")
    env = {**os.environ, "PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "PYTHONPATH": str(hide)}
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), str(tmp_path / "out"), "dry=true"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 1 and "not importable: diffusers; carry their wheels" in proc.stderr
    assert "gpu check section" not in proc.stdout


@pytest.mark.parametrize("argv, needle", [
    (["suite=cpu"], "valid choices: gpu"),
    (["suite=gpu", "sections=[project,render]"], "unknown section 'render'"),
    (["suite=gpu", "dry=maybe"], "dry must be true or false, got 'maybe'"),
])
def test_option_errors_are_one_line(argv, needle):
    from mmpc_rl.bench.gpu_check import parse

    with pytest.raises(ConfigError, match=needle):
        parse(argv)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_real_shapes_refuse_a_cpu_machine(tmp_path):
    from mmpc_rl.bench.gpu_check import main

    with pytest.raises(ConfigError, match="dry=true"):
        main(["suite=gpu", f"out={tmp_path}"])
