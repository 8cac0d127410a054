"""bench/reproduce_paper.sh: every step that produces a table or figure of the paper runs end to end in smoke mode
(the same commands, tiny models, the sample catalog), each table and figure lands in the file docs/reproduce.md names,
and the real commands are the paper's (six models, 1,000 items, the three learning rates)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mmpc_rl.bench.reproduce import (
    ALIASES,
    LEARNING_RATES,
    ORDER,
    PAPER_MODELS,
    Options,
    plan,
    resolve,
    run,
    steps,
)
from mmpc_rl.cli import main as cli_main
from mmpc_rl.errors import ConfigError, DataError

ROOT = Path(__file__).parents[1]
PAPER_ITEMS = [*(f"Table {n}" for n in range(1, 18)), "Figure 3", "Figure 4", "Figure 5a", "Figure 5b"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, one_thread):
    """The data step through the shell script, as a user runs it (its own processes); the other steps in this
    process through the same entry point (mmpc_rl.cli.main), so the suite pays the imports once."""
    out = tmp_path_factory.mktemp("paper")
    env = {**os.environ, "SMOKE": "1", "OUT": str(out), "PYTHON": sys.executable}
    shell = subprocess.run([str(ROOT / "bench" / "reproduce_paper.sh"), "table1"], env=env, capture_output=True,
                           text=True, timeout=600)
    ran: list[list[str]] = []

    def execute(argv: list[str]) -> int:
        ran.append(argv)
        return cli_main(argv)

    sweep_base = out / "grpo-i2t" / "adapter_model.safetensors"
    rcs, mtimes, log = {}, {}, io.StringIO()
    with contextlib.redirect_stdout(log):
        for name in ORDER[1:]:
            if name == "lr-sweep":
                mtimes["before"] = sweep_base.stat().st_mtime_ns
            rcs[name] = run(name, Options(smoke=True, out=str(out)), execute)
    mtimes["after"] = sweep_base.stat().st_mtime_ns
    return out, shell, rcs, ran, mtimes, log.getvalue()


def test_every_table_and_figure_has_a_step_and_a_name():
    paths, _ = resolve(Options())
    made = {item for step in steps(paths).values() for item in step.outputs}
    assert set(PAPER_ITEMS) <= made
    names = {re.sub(r"Table |Figure ", lambda m: "table" if m.group(0).startswith("T") else "fig", i).lower()
             for i in PAPER_ITEMS}
    assert names <= set(ALIASES)
    for name, chosen in ALIASES.items():
        assert set(chosen) <= set(ORDER), name


def test_smoke_runs_every_step(smoke):
    out, shell, rcs, ran, _, _ = smoke
    assert shell.returncode == 0, shell.stderr[-2000:]
    assert "mmpc-rl: reproduce table1: mmpc-rl data build" in shell.stdout
    assert rcs == {name: 0 for name in ORDER[1:]}
    # nothing of the real scale leaked into a smoke command: every model is a tiny one
    assert not [a for argv in ran for a in argv if "Qwen/" in a or "google/" in a or "roberta" in a]
    paths, _ = resolve(Options(smoke=True, out=str(out)))
    for step in steps(paths).values():
        for item, path in step.outputs.items():
            assert Path(path).is_file(), f"{step.name}: {item} missing at {path}"


def test_smoke_outputs_hold_the_tables(smoke):
    out = smoke[0]
    rec = json.loads((out / "data" / "summary.json").read_text())["categories"]["Video_Games"]["recbench"]
    assert rec["users"] > 0 and 0 < rec["train_interactions"] < rec["interactions"]  # Table 1's columns
    results = json.loads((out / "cqbench" / "results.json").read_text())
    assert results["profile"]["name"] == "paper"
    assert set(results["across_models"]) == {"i2t", "t2i"}  # Tables 4/5: two models ran each task
    for number in (4, 5):
        assert "Video_Games" in (out / "cqbench" / f"table{number}.md").read_text()
    coverage = json.loads((out / "recbench" / "summary.json").read_text())["coverage"]["Video_Games"]
    assert {"tiny-qwen2.5-vl", "tiny-qwen2.5-vl-sft"} <= {c.split("|")[0] for c in coverage}  # split=recbench fed it
    for task in ("i2t", "t2i"):
        assert "Δ" in (out / f"cqbench-grpo-{task}" / "lora_vs_base.md").read_text()  # Tables 7-9: base vs LoRA


def test_sweep_shares_its_default_run_with_grpo_i2t(smoke):
    out, _, _, _, mtimes, log = smoke
    assert mtimes["before"] == mtimes["after"]  # the 1e-5 run was grpo-i2t's, finished: not trained again
    assert f"the run in {out / 'grpo-i2t'} already finished" in log
    for lr in ("1.0e-6", "1.0e-4"):
        config = yaml.safe_load((out / "lr-sweep" / f"lr{lr}" / "config.yaml").read_text())
        assert config["trainer"]["learning_rate"] == float(lr)


def test_dry_run_prints_the_papers_commands(capsys):
    assert run("table4", Options(dry=True), execute=lambda argv: pytest.fail(f"ran {argv}")) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("mmpc-rl eval cqbench profile=paper ") and "limit=1000" in line
    assert f"'models=[{','.join(PAPER_MODELS)}]'" in line
    _, _, commands = plan("lr-sweep", Options())
    assert [c[0] for c in commands] == ["train"] * 3
    rates = [next((a.split("=")[1] for a in c if a.startswith("trainer.learning_rate=")), "recipe") for c in commands]
    assert rates == [lr if lr != "1.0e-5" else "recipe" for lr in LEARNING_RATES]
    assert "trainer.output_dir=outputs/paper/grpo-i2t" in commands[1]  # the 1e-5 run is grpo-i2t's


def test_inputs_checked_before_anything_runs(tmp_path):
    never = lambda argv: pytest.fail(f"ran {argv}")  # noqa: E731
    with pytest.raises(ConfigError, match=r"unknown name 'tabel4' \(did you mean 'table4'\?\)"):
        run("tabel4", Options(), execute=never)
    with pytest.raises(DataError, match="run `bench/reproduce_paper.sh data` first"):
        run("cqbench", Options(data=str(tmp_path / "none")), execute=never)
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(ConfigError, match="LPIPS=.*alexnet.pth does not exist"):
        run("table5", Options(data=str(tmp_path), lpips=str(tmp_path / "alexnet.pth")), execute=never)
    _, _, commands = plan("table5", Options(data=str(tmp_path), lpips="none"))
    assert not [a for a in commands[0] if a.startswith("lpips=")]  # LPIPS=none: no column, nothing to check
