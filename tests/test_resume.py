"""Resume: only complete checkpoints are picked; a run killed with SIGKILL resumes where its checkpoint left it,
with optimizer, scheduler, RNG and sampler restored, compared step by step with an uninterrupted run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mmpc_rl.io import read_jsonl
from mmpc_rl.train.resume import is_complete, last_complete_checkpoint, why_incomplete


def _checkpoint(root: Path, step: int, skip: tuple[str, ...] = (), state: str | None = None) -> Path:
    d = root / f"checkpoint-{step}"
    d.mkdir(parents=True)
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "adapter_model.safetensors"):
        if name not in skip:  # small but real files: the resume check verifies them
            if name.endswith(".safetensors"):
                save_file({"w": torch.ones(4)}, str(d / name))
            else:
                torch.save({"state": torch.ones(4)}, d / name)
    if "trainer_state.json" not in skip:
        (d / "trainer_state.json").write_text(state if state is not None else json.dumps({"global_step": step}))
    return d


def test_half_written_checkpoints_are_never_picked(tmp_path):
    assert last_complete_checkpoint(tmp_path) is None
    good = _checkpoint(tmp_path, 4)
    _checkpoint(tmp_path, 6, skip=("trainer_state.json",))  # killed before the state was written
    _checkpoint(tmp_path, 8, state='{"global_step": 8, "log_hist')  # killed mid-write of the state
    _checkpoint(tmp_path, 10, skip=("rng_state.pth",))
    _checkpoint(tmp_path, 12, skip=("adapter_model.safetensors",))
    _checkpoint(tmp_path, 14, state=json.dumps({"global_step": 2}))  # a folder that is not what its name says
    (tmp_path / "checkpoint-16").write_text("not a folder")
    (tmp_path / "checkpoint-last").mkdir()
    assert [is_complete(tmp_path / f"checkpoint-{s}") for s in (4, 6, 8, 10, 12, 14)] == [True] + [False] * 5
    assert last_complete_checkpoint(tmp_path) == str(good)
    (good / "optimizer.pt").write_bytes(b"")  # empty file: the kill came while it was being written
    assert last_complete_checkpoint(tmp_path) is None


@pytest.mark.parametrize("name", ["adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth"])
@pytest.mark.parametrize("cut", [0.5, 0.99])
def test_a_truncated_newest_checkpoint_falls_back_to_the_previous(tmp_path, capsys, name, cut):
    good = _checkpoint(tmp_path, 2)
    newest = _checkpoint(tmp_path, 4)
    data = (newest / name).read_bytes()
    (newest / name).write_bytes(data[: int(len(data) * cut)])  # a full disk or a copy cut short: non-empty
    assert why_incomplete(good) is None and why_incomplete(newest).startswith(name)
    assert last_complete_checkpoint(tmp_path) == str(good)
    assert f"not resuming from checkpoint-4: {name}" in capsys.readouterr().err


def test_a_sharded_checkpoint_is_verified_shard_by_shard(tmp_path):
    ckpt = _checkpoint(tmp_path, 2, skip=("adapter_model.safetensors",))
    for shard in ("model-1.safetensors", "model-2.safetensors"):
        save_file({"w": torch.ones(8)}, str(ckpt / shard))
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors"}}))
    assert is_complete(ckpt)
    (ckpt / "model-2.safetensors").write_bytes((ckpt / "model-2.safetensors").read_bytes()[:-3])
    assert "model-2.safetensors" in why_incomplete(ckpt)


TRACE_SCRIPT = r'''
import json, os, sys
from mmpc_rl.rewards import register
from mmpc_rl.tasks import completion_text

@register("trace")
def trace(task, context=None):
    """Records what each step trained on; scores completion length so advantages are never all zero."""
    def reward(completions, parent_asin, trainer_state, **_):
        texts = [completion_text(c) for c in completions]
        with open(os.environ["TRACE"], "a") as f:
            f.write(json.dumps({"step": trainer_state.global_step, "asins": parent_asin, "texts": texts}) + "\n")
        return [len(t) / 10 for t in texts]
    return reward

from mmpc_rl.errors import run_cli
from mmpc_rl.train.grpo import main
sys.exit(run_cli(lambda: main(sys.argv[1:])))
'''

ARGS = ["recipe=demo-i2t", "eval.enabled=false", "rewards.minilm_cosine=null", "rewards.trace.weight=1.0",
        "trainer.max_steps=4", "trainer.save_steps=2", "trainer.per_device_train_batch_size=2",
        "trainer.num_generations=2", "trainer.max_completion_length=4", "trainer.logging_steps=1",
        "data.limit_per_category=2", "trainer.report_to=none"]


# One OpenMP thread per training: two trainings side by side on a busy 2-core box spent minutes in OpenMP barrier
# spin-waits (seen with gdb: gomp_barrier_wait_end) and missed the 240 s deadline; both runs use the same setting.
ENV = {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}


def _launch(script: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, **ENV, "TRACE": str(out / "trace.jsonl")}
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, str(script), *ARGS, f"trainer.output_dir={out}", *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _trace(out: Path) -> dict[int, dict]:
    return {r["step"]: r for r in read_jsonl(out / "trace.jsonl")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_qwen, sample_catalog):
    from mmpc_rl.tiny import tiny_path

    # the recipe's policy (an SFT'd tiny model, minutes of CPU to build): built once here, not by both runs at once
    # inside the checkpoint deadline, into one folder
    tiny_path("qwen2.5-vl-sft")
    root = tmp_path_factory.mktemp("resume")
    script = root / "train_traced.py"
    script.write_text(TRACE_SCRIPT)
    ref, killed = root / "ref", root / "killed"
    ref_proc = _launch(script, ref)  # the uninterrupted run, side by side with the one we kill
    proc = _launch(script, killed)
    deadline = time.time() + 240
    try:
        while not is_complete(killed / "checkpoint-2"):
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.time() < deadline, "no checkpoint-2 within 240 s"
            time.sleep(0.1)
    except BaseException:  # a failed fixture must not leave two trainings running for the rest of the session
        for p in (proc, ref_proc):
            p.kill()
            p.wait()
        raise
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_trace = _trace(killed)
    # a checkpoint the kill interrupted, ahead of the good one: must be ignored
    half = killed / "checkpoint-3"
    if not half.exists():
        shutil.copytree(killed / "checkpoint-2", half)
        (half / "trainer_state.json").unlink()
    resumed = subprocess.run([sys.executable, str(script), *ARGS, f"trainer.output_dir={killed}",
                              "trainer.resume_from_checkpoint=auto"],
                             env={**os.environ, **ENV, "TRACE": str(killed / "trace_resumed.jsonl")},
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    ref_out = ref_proc.communicate(timeout=300)[0]
    assert ref_proc.returncode == 0, ref_out[-3000:]
    return {"ref": ref, "killed": killed, "killed_trace": killed_trace,
            "resumed_trace": {r["step"]: r for r in read_jsonl(killed / "trace_resumed.jsonl")}}


def test_resume_continues_the_step_count_and_the_sampler(runs):
    ref_trace = _trace(runs["ref"])
    assert sorted(ref_trace) == [0, 1, 2, 3]  # global_step seen by the reward at steps 1..4
    assert sorted(runs["resumed_trace"]) == [2, 3]  # resumed from checkpoint-2, not from 0 (and not checkpoint-3)
    for step in (0, 1):
        assert runs["killed_trace"][step]["asins"] == ref_trace[step]["asins"]
    for step in (2, 3):  # the same items as the uninterrupted run: nothing replayed, nothing skipped
        assert runs["resumed_trace"][step]["asins"] == ref_trace[step]["asins"]
    seen = [a for s in (0, 1) for a in runs["killed_trace"][s]["asins"][::2]]
    seen += [a for s in (2, 3) for a in runs["resumed_trace"][s]["asins"][::2]]
    assert len(set(seen)) == 4  # four distinct prompts in four steps


def test_resume_restores_rng_optimizer_and_scheduler(runs):
    import torch
    from safetensors.torch import load_file

    ref_trace = _trace(runs["ref"])
    for step in (2, 3):  # sampled completions depend on the RNG state and on the weights
        assert runs["resumed_trace"][step]["texts"] == ref_trace[step]["texts"]
    ref_m = [r for r in read_jsonl(runs["ref"] / "metrics.jsonl") if "loss" in r]
    res_m = [r for r in read_jsonl(runs["killed"] / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in res_m] == [1, 2, 3, 4]  # every step logged exactly once
    assert [r["learning_rate"] for r in res_m] == pytest.approx([r["learning_rate"] for r in ref_m])
    assert [r["reward"] for r in res_m] == pytest.approx([r["reward"] for r in ref_m])
    a = load_file(runs["ref"] / "adapter_model.safetensors")
    b = load_file(runs["killed"] / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    opt = torch.load(runs["killed"] / "checkpoint-4" / "optimizer.pt", weights_only=True)
    assert {int(s["step"]) for s in opt["state"].values()} == {4}  # Adam moments continued, not restarted
    state = json.loads((runs["killed"] / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4


def test_resumed_run_leaves_a_complete_final_adapter_and_no_pickled_args(runs):
    out = runs["killed"]
    assert (out / "adapter_model.safetensors").stat().st_size > 0
    assert (out / "training_args.json").is_file() and not list(out.rglob("training_args.bin"))
    assert (out / "reward_curves.png").is_file()


def test_a_finished_run_resumed_again_is_a_no_op_that_says_so(runs, tmp_path):
    # it trained one more step each time and overwrote the final adapter
    out = runs["killed"]
    state = json.loads((out / "trainer_state.json").read_text())  # RunEnd leaves it beside the final adapter
    assert (state["global_step"], state["max_steps"]) == (4, 4)
    adapter = (out / "adapter_model.safetensors").read_bytes()
    again = subprocess.run([sys.executable, "-m", "mmpc_rl.cli", "train", *ARGS, f"trainer.output_dir={out}",
                            "trainer.resume_from_checkpoint=auto", "rewards.trace=null",
                            "rewards.json_format.weight=1"],
                           env={**os.environ, **ENV},
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"the run in {out} already finished at step 4 (max_steps=4)" in again.stdout
    assert (out / "adapter_model.safetensors").read_bytes() == adapter
    assert not (out / "checkpoint-5").exists()


def test_a_finished_run_whose_final_adapter_broke_is_finished_again_from_its_checkpoint(runs):
    """Killed while saving its result (or a copy cut short): the resume does not call it finished; it loads the last
    checkpoint (at max_steps), trains nothing and saves the final result again."""
    from safetensors.torch import load_file

    out = runs["killed"]
    final = out / "adapter_model.safetensors"
    final.write_bytes(final.read_bytes()[: final.stat().st_size // 2])
    (out / "reward_curves.png").unlink()
    again = subprocess.run([sys.executable, str(out.parent / "train_traced.py"), *ARGS, f"trainer.output_dir={out}",
                            "trainer.resume_from_checkpoint=auto"],
                           env={**os.environ, **ENV, "TRACE": str(out / "trace_again.jsonl")},
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "final result is incomplete (adapter_model.safetensors: " in again.stderr
    assert "finishing it again from checkpoint-4" in again.stderr
    ckpt = load_file(out / "checkpoint-4" / "adapter_model.safetensors")
    assert {k: v.tolist() for k, v in load_file(final).items()} == {k: v.tolist() for k, v in ckpt.items()}
    assert not (out / "trace_again.jsonl").exists() and not (out / "checkpoint-5").exists()  # nothing trained
    assert (out / "reward_curves.png").is_file() and json.loads((out / "trainer_state.json").read_text())[
        "global_step"] == 4
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r] == [1, 2, 3, 4]


def test_a_checkpoint_whose_adapter_does_not_fit_the_policy_is_not_resumed(tmp_path, tiny_qwen):
    """The HF Trainer resumes with PEFT's load_adapter and drops its report: the run would go on with half a fresh
    adapter, silently."""
    from types import SimpleNamespace

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from mmpc_rl.errors import ModelLoadError
    from mmpc_rl.train.builder import check_resumed_adapter

    def policy(targets: str):
        base = AutoModelForImageTextToText.from_pretrained(str(tiny_qwen), dtype=torch.float32)
        return get_peft_model(base, LoraConfig(r=4, target_modules=targets))

    ckpt = tmp_path / "checkpoint-2"
    policy(r".*language_model.*\.(q_proj)").save_pretrained(ckpt)  # a run trained with other target_modules
    model = policy(r".*language_model.*\.(q_proj|v_proj)")
    assert model.load_adapter(str(ckpt), "default", is_trainable=True).missing_keys  # what the Trainer ignores
    with pytest.raises(ModelLoadError, match=r"checkpoint-2 does not fit the model: 4 adapter weights of the model "
                                             r"are not in it \(.*v_proj"):
        check_resumed_adapter(SimpleNamespace(model=model, is_deepspeed_enabled=False), str(ckpt))
    check_resumed_adapter(SimpleNamespace(model=policy(r".*language_model.*\.(q_proj)"), is_deepspeed_enabled=False),
                          str(ckpt))  # the run's own adapter fits


def _finished(root: Path, step: int = 4, final: bool = True, *argv: str) -> Path:
    """A run of the demo recipe (+ argv) that trained `step` steps: its config, its last checkpoint and (`final`) a
    whole final result."""
    from mmpc_rl.config import load_recipe
    from mmpc_rl.train.builder import resolve_layout
    from mmpc_rl.train.run_config import save_config

    state = json.dumps({"global_step": step, "max_steps": step, "num_train_epochs": 1})
    _checkpoint(root, step, state=state)
    save_config(resolve_layout(load_recipe(["recipe=demo-i2t", f"trainer.output_dir={root}", *argv])), root)
    if final:
        save_file({"w": torch.ones(4)}, str(root / "adapter_model.safetensors"))
        for name in ("adapter_config.json", "tokenizer_config.json", "processor_config.json"):
            (root / name).write_text("{}")
        (root / "trainer_state.json").write_text(state)
    return root


# data.path points nowhere: a run that goes on to train stops there (exit 2) instead
NO_DATA = "data.path=/no/such/catalog"


@pytest.mark.parametrize("extra, final, finished", [
    (["trainer.resume_from_checkpoint=auto", "trainer.max_steps=4"], True, True),
    (["trainer.resume_from_checkpoint=auto", "trainer.max_steps=4"], False, False),  # finished again: no result
    (["trainer.resume_from_checkpoint=auto", "trainer.max_steps=-1", "trainer.num_train_epochs=1"], True, True),
    (["trainer.resume_from_checkpoint=auto", "trainer.max_steps=6"], True, False),  # more steps asked: train on
    (["trainer.resume_from_checkpoint=auto", "trainer.max_steps=-1", "trainer.num_train_epochs=2"], True, False),
])
def test_finished_run_check(capsys, tmp_path, extra, final, finished):
    from mmpc_rl.errors import run_cli
    from mmpc_rl.train.grpo import main

    out = _finished(tmp_path / "run", 4, final, NO_DATA)
    adapter = (out / "adapter_model.safetensors").read_bytes() if final else None
    rc = run_cli(lambda: main(["recipe=demo-i2t", f"trainer.output_dir={out}", NO_DATA, *extra]))
    captured = capsys.readouterr()
    if finished:
        assert rc == 0 and "already finished at step 4" in captured.out
        assert (out / "adapter_model.safetensors").read_bytes() == adapter
    else:
        assert rc == 2 and "data path '/no/such/catalog' does not exist" in captured.err


@pytest.mark.parametrize("damage, why", [
    (lambda out: (out / "trainer_state.json").unlink(), "trainer_state.json: missing"),  # killed while saving
    (lambda out: (out / "adapter_model.safetensors").write_bytes(
        (out / "adapter_model.safetensors").read_bytes()[:-5]), "adapter_model.safetensors: "),  # truncated
    (lambda out: (out / "tokenizer_config.json").unlink(), "tokenizer_config.json (the processor): missing"),
    (lambda out: (out / "processor_config.json").write_text('{"image_proc'), "processor_config.json: does not parse"),
])
def test_a_broken_final_result_is_finished_again_from_the_last_checkpoint(capsys, tmp_path, damage, why):
    from mmpc_rl.train.resume import final_problem, finished_run, refinish_point

    out = _finished(tmp_path / "run")
    opts = {"output_dir": str(out), "resume_from_checkpoint": "auto", "max_steps": 4}
    assert final_problem(out) is None and "already finished" in finished_run(opts) and refinish_point(opts) is None
    damage(out)
    assert why in final_problem(out)
    assert finished_run(opts) is None  # not finished: it is ended again from checkpoint-4
    assert refinish_point(opts) == str(out / "checkpoint-4")
    assert f"its final result is incomplete ({why}" in capsys.readouterr().err
    assert refinish_point({**opts, "resume_from_checkpoint": str(out / "checkpoint-4")}) == str(out / "checkpoint-4")
    assert refinish_point({**opts, "max_steps": 6}) is None  # more to train: an ordinary resume


def test_a_fresh_run_over_a_finished_one_is_refused(capsys, tmp_path):
    from mmpc_rl.errors import run_cli
    from mmpc_rl.train.grpo import main

    out = _finished(tmp_path / "run", 4, True, NO_DATA)
    assert run_cli(lambda: main(["recipe=demo-i2t", f"trainer.output_dir={out}", NO_DATA])) == 2
    assert f"trainer.output_dir {out} holds another run" in capsys.readouterr().err


def test_an_explicit_finished_checkpoint_is_a_no_op_too(tmp_path):
    from mmpc_rl.train.resume import finished_run

    out = _finished(tmp_path / "run")
    opts = {"output_dir": str(out), "resume_from_checkpoint": str(out / "checkpoint-4"), "max_steps": 4}
    assert "already finished at step 4 (max_steps=4)" in finished_run(opts)
    assert finished_run({**opts, "max_steps": 5}) is None
    (out / "trainer_state.json").write_text('{"global_step": 4, "max_')  # unreadable: not a finished result
    assert finished_run(opts) is None


def test_the_pickled_args_never_exist_in_a_checkpoint_at_any_instant(tmp_path, monkeypatch):
    # the .bin was replaced in on_save, after the checkpoint was complete on disk; a kill in
    # between left it for good. Here the checkpoint is saved and looked at before any callback runs.
    import torch
    from transformers import Trainer, TrainingArguments

    from mmpc_rl.train.callbacks import no_pickled_args

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", hub_token="hf_NotInAPickle")
    trainer = no_pickled_args(Trainer(model=torch.nn.Linear(2, 2), args=args))
    trainer.create_optimizer_and_scheduler(num_training_steps=2)
    seen = []
    real = torch.save

    def spy(obj, f, *a, **k):  # every torch.save that reaches the disk, and what a kill at that instant leaves
        seen.append((Path(f).name, sorted(p.name for p in Path(f).parent.iterdir())))
        return real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", spy)
    trainer.state.global_step = 1
    trainer._save_checkpoint(trainer.model, trial=None)  # all the HF Trainer writes; on_save has not run
    ckpt = tmp_path / "checkpoint-1"
    assert is_complete(ckpt)
    assert not (ckpt / "training_args.bin").exists()
    assert json.loads((ckpt / "training_args.json").read_text())["hub_token"] == "<HUB_TOKEN>"
    assert seen and all(name != "training_args.bin" and "training_args.bin" not in files for name, files in seen)
    assert torch.save is spy  # the wrapper put the real torch.save back
    trainer.save_model(str(tmp_path / "final"))
    assert sorted(p.name for p in (tmp_path / "final").iterdir()) == ["model.safetensors", "training_args.json"]
