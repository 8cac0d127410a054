"""A run folder holds one run: a fresh run into another run's folder refuses (or clears it when asked), a resume
continues only the run recorded there, and one process at a time writes a run folder or a CQBench folder (a lock
naming its holder; a dead holder's lock is taken over)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from mmpc_rl.config import load_recipe
from mmpc_rl.errors import ConfigError, run_cli
from mmpc_rl.lock import LOCK_NAME, FolderLock
from mmpc_rl.train.builder import resolve_layout
from mmpc_rl.train.run_config import save_config
from mmpc_rl.train.run_folder import claim_run_folder, continue_layout, folder_problem

# a run that would stop at its data: whatever passes the folder checks ends there, in seconds
BASE = ["recipe=demo-i2t", "data.path=/no/such/catalog", "trainer.max_steps=4", "trainer.save_steps=2"]
NO_DATA = "data path '/no/such/catalog' does not exist"


def _recipe(out: Path, *extra: str):
    """The recipe as a run sees it: its layout resolved (as config.yaml records it)."""
    return resolve_layout(load_recipe([*BASE, f"trainer.output_dir={out}", *extra]))


def _old_run(out: Path, *extra: str) -> Path:
    """The files a run of BASE (+ extra) leaves: its config, metrics, a checkpoint, CQBench passes."""
    out.mkdir(parents=True, exist_ok=True)
    save_config(_recipe(out, *extra), out)
    (out / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward": 0.5}) + "\n")
    (out / "checkpoint-2").mkdir()
    (out / "cqbench" / "after").mkdir(parents=True)
    (out / "cqbench" / "after" / "items.jsonl").write_text("{}\n")
    (out / "wandb_run_id.txt").write_text("old-run\n")
    (out / "notes.txt").write_text("the user's own file")
    return out


def _main(capsys, *argv: str) -> tuple[int, str]:
    from mmpc_rl.train.grpo import main

    rc = run_cli(lambda: main(list(argv)))
    return rc, capsys.readouterr().err


# --------------------------------------------------------------------------------------------- a fresh run
def test_a_fresh_run_into_another_runs_folder_refuses_in_one_line(tmp_path, capsys):
    out = _old_run(tmp_path / "run")
    rc, err = _main(capsys, *BASE, f"trainer.output_dir={out}", "trainer.learning_rate=1e-3")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert f"trainer.output_dir {out} holds another run" in err and "trainer.overwrite_output_dir=true" in err
    assert (out / "metrics.jsonl").is_file() and (out / "cqbench" / "after" / "items.jsonl").is_file()


def test_overwrite_output_dir_clears_the_previous_runs_files_only(tmp_path, capsys):
    out = _old_run(tmp_path / "run")
    (out / "wandb" / "offline-run-1").mkdir(parents=True)  # W&B's own record of the old run stays
    rc, err = _main(capsys, *BASE, f"trainer.output_dir={out}", "trainer.overwrite_output_dir=true")
    assert rc == 2 and NO_DATA in err  # past the folder check: the run went on, to its data
    assert "removed the previous run's files" in err
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "notes.txt", "wandb"]
    assert "/no/such/catalog" in (out / "config.yaml").read_text()  # this run's config, written after the clearing


def test_an_empty_or_unrelated_folder_is_a_fresh_start(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    assert folder_problem(_recipe(tmp_path)) is None
    assert folder_problem(_recipe(tmp_path / "new")) is None


# ------------------------------------------------------------------------------------------------- resume
@pytest.mark.parametrize("change, key", [
    ("model.name_or_path=tiny://qwen2.5-vl", "model.name_or_path"),
    ("lora.r=8", "lora.r"),
    ("task=t2i", "task"),
    ("rewards.json_format=null", "rewards.json_format.weight"),
    ("rewards.minilm_cosine.weight=3", "rewards.minilm_cosine.weight"),
    ("data.prompt=detailed", "data.prompt"),
    ("trainer.learning_rate=1e-4", "trainer.learning_rate"),
    ("eval.max_new_tokens=8", "eval.max_new_tokens"),  # the gold curve would join two evaluations
])
def test_a_resume_that_changes_the_run_refuses_naming_the_key(tmp_path, change, key):
    out = _old_run(tmp_path / "run")
    problem = folder_problem(_recipe(out, "trainer.resume_from_checkpoint=auto", change))
    assert problem is not None and f"({key}: " in problem and "give a new trainer.output_dir" in problem


@pytest.mark.parametrize("change", ["trainer.max_steps=8", "trainer.logging_steps=2", "trainer.save_steps=1",
                                    "trainer.report_to=[wandb]", "eval.every_n_steps=5", "wandb.name=x",
                                    "trainer.save_total_limit=1", "early_stop.metric=reward"])
def test_a_resume_may_change_how_long_and_how_often_and_where_it_reports(tmp_path, change):
    out = _old_run(tmp_path / "run")
    assert folder_problem(_recipe(out, "trainer.resume_from_checkpoint=auto", change)) is None


def test_a_resume_of_a_changed_base_model_stops_before_anything_loads(tmp_path, capsys):
    out = _old_run(tmp_path / "run")
    rc, err = _main(capsys, *BASE, f"trainer.output_dir={out}", "trainer.resume_from_checkpoint=auto",
                    "model.name_or_path=tiny://qwen2.5-vl")
    assert rc == 2 and "(model.name_or_path: 'tiny://qwen2.5-vl-sft' -> 'tiny://qwen2.5-vl'" in err
    assert "tiny://qwen2.5-vl-sft" in (out / "config.yaml").read_text()  # the run's record is left as it was


def test_a_resume_without_a_record_of_the_run_refuses(tmp_path):
    out = _old_run(tmp_path / "run")
    (out / "config.yaml").unlink()
    assert "has no config.yaml" in folder_problem(_recipe(out, "trainer.resume_from_checkpoint=auto"))
    assert "would clear the run" in folder_problem(_recipe(out, "trainer.resume_from_checkpoint=auto",
                                                           "trainer.overwrite_output_dir=true"))


def test_a_resume_keeps_the_runs_own_layout(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    save_config(_recipe(out, "trainer.per_device_train_batch_size=4", "trainer.gradient_accumulation_steps=2"), out)
    open_layout = load_recipe([*BASE, f"trainer.output_dir={out}", "trainer.resume_from_checkpoint=auto",
                               "trainer.per_device_train_batch_size=null", "trainer.gradient_accumulation_steps=null"])
    got = continue_layout(open_layout).trainer
    assert (got["per_device_train_batch_size"], got["gradient_accumulation_steps"]) == (4, 2)


# --------------------------------------------------------------------------------------------------- locks
HOLD = ("import sys, time; from mmpc_rl.lock import FolderLock; FolderLock.acquire(sys.argv[1]); "
        "print('held', flush=True); time.sleep(120)")


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock on tmp_path/run."""
    folder = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield folder, proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_a_second_training_process_refuses_naming_the_holder(holder, capsys):
    folder, pid = holder
    rc, err = _main(capsys, *BASE, f"trainer.output_dir={folder}")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert f"trainer.output_dir {folder} is in use by process {pid}" in err


def test_a_second_cqbench_process_refuses_naming_the_holder(holder):
    from mmpc_rl.eval import cqbench

    folder, pid = holder
    with pytest.raises(ConfigError, match=f"CQBench output_dir {folder} is in use by process {pid}"):
        cqbench.run(cqbench.parse_config(["models=[tiny://qwen2.5-vl]", f"output_dir={folder}", "data=sample"]))


def test_a_dead_holders_lock_is_taken_over(tmp_path, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": os.uname().nodename, "since": "then"}))
    lock = FolderLock.acquire(folder, "trainer.output_dir")
    try:
        assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()
        assert f"took over the lock of process {pid} (no longer running)" in capsys.readouterr().err
    finally:
        lock.release()
    assert not (folder / LOCK_NAME).exists()
    again = subprocess.run([sys.executable, "-c", HOLD.replace("time.sleep(120)", "pass"), str(folder)],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0  # released: the next process takes it


def test_only_the_saving_process_locks_and_every_rank_gets_its_answer(tmp_path, holder):
    folder, pid = holder
    recipe = _recipe(folder)
    assert claim_run_folder(recipe, SimpleNamespace(output_dir=str(folder), should_save=False)) is None
    with pytest.raises(ConfigError, match=f"in use by process {pid}"):
        claim_run_folder(recipe, SimpleNamespace(output_dir=str(folder), should_save=True))


def test_the_lock_is_released_when_the_holder_dies(tmp_path):
    folder = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    proc.kill()
    proc.wait()
    deadline = time.time() + 10
    while True:
        try:
            FolderLock.acquire(folder).release()
            break
        except ConfigError:
            assert time.time() < deadline
            time.sleep(0.1)
