"""Training that watches itself: the CQBench gold curve, the alarms, early stopping, the best adapter and the model
card. Unit tests feed the callbacks logs directly; two real runs of the demo recipe (one with the gold curve and
best/, one that stops early and pushes to a fake Hub) are each read by several tests."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from mmpc_rl.errors import ConfigError
from mmpc_rl.io import read_jsonl


def _state(step, max_steps=30, main=True):
    return SimpleNamespace(global_step=step, max_steps=max_steps, is_world_process_zero=main, log_history=[])


def _control():
    return SimpleNamespace(should_training_stop=False, should_save=False, should_log=False)


# ------------------------------------------------------------------------------------------- divergence alarm
def _feed(watch, gold: dict[int, float], metric="tfidf_cosine", reward=lambda s: 0.5 + 0.02 * s, last=30):
    for step in range(0, last + 1):
        if step in gold:  # the gold pass logs before the step's training log, as in training
            watch.on_log(None, _state(step), None, logs={f"cqbench/gold/{metric}": gold[step]})
        if step:
            watch.on_log(None, _state(step), None, logs={"reward": reward(step), "loss": 0.1})


def test_rising_reward_and_falling_gold_metric_raise_one_alarm_line(tmp_path):
    from mmpc_rl.train.watch import Watch

    lines = []
    watch = Watch(tmp_path, window=3, out=lines.append)
    _feed(watch, {0: 0.30, 10: 0.25, 20: 0.20, 30: 0.15})
    assert len(lines) == 1, lines  # reported once, though the evaluation at step 30 diverges too
    line = lines[0]
    assert line.startswith("mmpc-rl: alarm: proxy-gold divergence over steps 0-20")
    assert "reward trends +0.4000" in line and "tfidf_cosine -0.1000" in line  # both changes over the 3 evaluations
    watch.on_train_end(None, _state(30), None)
    summary = json.loads((tmp_path / "watch.json").read_text())
    assert summary["divergence"]["steps"] == [0, 20] and summary["notes"] == [line.removeprefix("mmpc-rl: alarm: ")]


@pytest.mark.parametrize("metric, gold, reward", [
    ("tfidf_cosine", {0: 0.1, 10: 0.2, 20: 0.3}, lambda s: 0.5 + 0.02 * s),  # both up: learning
    ("tfidf_cosine", {0: 0.3, 10: 0.2, 20: 0.1}, lambda s: 1.0 - 0.02 * s),  # both down: not reward hacking
    ("lpips", {0: 0.5, 10: 0.4, 20: 0.3}, lambda s: 0.5 + 0.02 * s),  # LPIPS falling is better
    ("tfidf_cosine", {0: 0.3, 10: 0.2}, lambda s: 0.5 + 0.02 * s),  # fewer evaluations than the window
])
def test_no_alarm_without_divergence(tmp_path, metric, gold, reward):
    from mmpc_rl.train.watch import Watch

    lines = []
    _feed(Watch(tmp_path, window=3, out=lines.append), gold, metric, reward, last=20)
    assert lines == []


def test_lower_is_better_metric_rising_is_divergence(tmp_path):
    from mmpc_rl.train.watch import Watch

    lines = []
    _feed(Watch(tmp_path, window=2, out=lines.append), {0: 0.3, 10: 0.4}, "lpips", last=10)
    assert len(lines) == 1 and "lpips +0.1000" in lines[0] and "steps 0-10" in lines[0]


def test_watch_summary_notes_zero_spread_length_drift_and_format_failures(tmp_path):
    from mmpc_rl.train.watch import Watch, summary_lines

    watch = Watch(tmp_path, out=lambda _: None)
    for s in range(1, 9):
        late = s > 4
        watch.on_log(None, _state(s), None, logs={"reward": 1.0, "frac_reward_zero_std": 0.75 if late else 0.0,
                                                  "completions/mean_length": 40.0 if late else 20.0,
                                                  "completions/format_fail_rate": 0.5 if late else 0.1})
    watch.on_train_end(None, _state(8), None)
    text = "\n".join(summary_lines(tmp_path))
    assert "groups with zero reward spread:         0.00 -> 0.75" in text
    assert "(drift +100%)" in text and "completion length drifted +100%" in text
    assert "10% -> 50%" in text and "format failures rose from 10% to 50%" in text
    assert "75% of the groups" in text


def test_length_drift_is_added_to_the_logs_the_loggers_read(tmp_path):
    from mmpc_rl.train.watch import LengthDrift

    drift = LengthDrift(tmp_path)
    handler = SimpleNamespace(callbacks=["wandb", "metrics", drift])
    drift.bind(SimpleNamespace(callback_handler=handler))
    assert handler.callbacks[0] is drift  # before the loggers
    logged = []
    for step, length in enumerate([10, 12, 8, 10, 10, 15, 5], 1):
        logs = {"completions/mean_length": float(length)}
        drift.on_log(None, _state(step), None, logs=logs)
        logged.append(logs.get("completions/length_drift"))
    assert logged == [None] * 5 + [0.5, -0.5]  # against the mean of the first 5 steps (10)


def test_format_check_uses_the_task_parser():
    from mmpc_rl.tasks import get_task
    from mmpc_rl.train.watch import format_check

    check = format_check(get_task("i2t"))
    completions = [[{"role": "assistant", "content": '{"title": "Red Mug"}'}], '{"name": "x"}', "no json", "{"]
    assert check(completions) == {"completions/format_fail_rate": 0.75}


# ----------------------------------------------------------------------------------------------- early stop
def test_early_stop_on_the_smoothed_reward_names_metric_and_patience(tmp_path):
    from mmpc_rl.config import EarlyStopConfig
    from mmpc_rl.train.watch import EarlyStop

    lines = []
    stop = EarlyStop(EarlyStopConfig(metric="reward", patience=3, min_delta=0.01, window=2), tmp_path,
                     out=lines.append)
    rewards = [0.1, 0.3, 0.5, 0.7, 0.705, 0.70, 0.71, 0.70, 0.9]  # smoothed: -, .2, .4, .6, .7025, .7025, .705, .705
    args = SimpleNamespace(save_strategy="steps")
    stopped_at = None
    for step, r in enumerate(rewards, 1):
        control = _control()
        stop.on_log(args, _state(step), control, logs={"reward": r})
        if control.should_training_stop:
            assert control.should_save and stopped_at is None
            stopped_at = step
            break
    # best smoothed 0.7025 at step 5 (gain 0.1025 > 0.01); steps 6, 7, 8 gain <= 0.01 over it: stop at 8
    assert stopped_at == 8
    assert len(lines) == 1 and "early stop at step 8: early_stop.metric=reward" in lines[0]
    assert "early_stop.patience=3 logged steps" in lines[0] and "mean of the last 2 logged steps" in lines[0]
    record = json.loads((tmp_path / "early_stop.json").read_text())
    assert record["step"] == 8 and record["best_step"] == 5 and record["settings"]["patience"] == 3


def test_early_stop_on_a_gold_metric_counts_evaluations_and_ignores_training_logs(tmp_path):
    from mmpc_rl.config import EarlyStopConfig
    from mmpc_rl.train.watch import EarlyStop

    stop = EarlyStop(EarlyStopConfig(metric="lpips", patience=2), tmp_path, out=lambda _: None)
    args = SimpleNamespace(save_strategy="no")
    decisions = []
    for step, lpips in ((0, 0.5), (10, 0.4), (20, 0.45), (30, 0.41), (40, 0.42)):
        control = _control()
        stop.on_log(args, _state(step), control, logs={"reward": 9.0})  # a training log: not the metric
        stop.on_log(args, _state(step), control, logs={"cqbench/gold/lpips": lpips})
        decisions.append(control.should_training_stop)
        assert not control.should_save  # the run saves no checkpoints: the final adapter is the save
    # lower is better: best 0.4 at 10, no gain at 20 and 30; it stops once
    assert decisions == [False, False, False, True, False] and stop.stopped["best_step"] == 10


def test_a_stopped_run_resumed_with_the_same_settings_is_a_no_op(tmp_path):
    import torch
    from safetensors.torch import save_file

    from mmpc_rl.config import load_recipe
    from mmpc_rl.train.stopping import stopped_early

    argv = ["recipe=demo-i2t", f"trainer.output_dir={tmp_path}", "early_stop.metric=reward"]
    (tmp_path / "trainer_state.json").write_text(json.dumps({"global_step": 12}))
    save_file({"w": torch.ones(2)}, str(tmp_path / "adapter_model.safetensors"))  # a whole final result
    for name in ("adapter_config.json", "tokenizer_config.json"):
        (tmp_path / name).write_text("{}")
    settings = {"metric": "reward", "patience": 10, "min_delta": 0.0, "window": 10}
    (tmp_path / "early_stop.json").write_text(json.dumps({"step": 12, "line": "why", "settings": settings}))
    resume = [*argv, "trainer.resume_from_checkpoint=auto"]
    assert stopped_early(load_recipe(argv)) is None  # not a resume
    assert "stopped early at step 12 (why)" in stopped_early(load_recipe(resume))
    assert stopped_early(load_recipe([*resume, "early_stop.patience=20"])) is None  # other settings: train on
    (tmp_path / "tokenizer_config.json").unlink()  # the final save was cut short: not a finished run
    assert stopped_early(load_recipe(resume)) is None


# ------------------------------------------------------------------------------------------------ best adapter
class FakeTrainer:
    """save_model writes an adapter file naming the step it was saved at."""

    def __init__(self):
        self.step = 0

    def save_model(self, folder, _internal_call=False):
        assert _internal_call  # never a hub push
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "adapter_model.safetensors").write_text(str(self.step))


def test_keep_best_keeps_the_best_trained_step_and_ignores_before(tmp_path):
    from mmpc_rl.train.best import KeepBest, best_lines, read_best

    trainer = FakeTrainer()
    keep = KeepBest("tfidf_cosine", tmp_path, trainer=trainer)
    keep.on_train_begin(None, _state(0), None)
    for step, score in ((0, 0.9), (10, 0.2), (20, 0.4), (30, 0.3)):  # step 0 is the base model: never "best"
        trainer.step = step
        keep.on_log(None, _state(step), None, logs={"cqbench/gold/tfidf_cosine": score, "reward": 5.0})
    assert read_best(tmp_path) == {"step": 20, "metric": "tfidf_cosine", "score": 0.4, "higher_is_better": True}
    assert (tmp_path / "best" / "adapter_model.safetensors").read_text() == "20"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # no temporary folder left
    (tmp_path / "cqbench" / "after").mkdir(parents=True)
    (tmp_path / "cqbench" / "after" / "summary.json").write_text(json.dumps(
        {"step": 30, "n_items": 4, "status": {"ok": 4}, "summary": {"tfidf_cosine": {"mean": 0.3}}}))
    assert best_lines(tmp_path) == [f"mmpc-rl: CQBench tfidf_cosine: last 0.3000 (step 30), best 0.4000 (step 20) "
                                    f"kept in {tmp_path / 'best'}"]
    # resumed from checkpoint-15: a best from step 20 belongs to steps that will be trained again
    lines = []
    KeepBest("tfidf_cosine", tmp_path, trainer=trainer, out=lines.append).on_train_begin(None, _state(15), None)
    assert not (tmp_path / "best").exists() and "past the checkpoint" in lines[0]


def _best(folder: Path, step: int, info: bool = True):
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_text(str(step))
    if info:
        (folder / "best.json").write_text(json.dumps({"step": step, "metric": "m", "score": 1.0}))


@pytest.mark.parametrize("layout, expect", [
    ({"best": 10, ".best.tmp": None}, 10),  # killed while saving the new adapter: the old best stands
    ({"best": 10, ".best.tmp": 20}, 10),  # killed before the swap began
    ({".best.old": 10, ".best.tmp": 20}, 20),  # killed between the two renames: the whole new one wins
    ({".best.old": 10, ".best.tmp": None}, 10),  # ... or the old one when the new one is not whole
    ({"best": None}, None),  # a best/ without best.json is never taken as complete
])
def test_a_kill_never_leaves_a_half_written_best(tmp_path, layout, expect):
    from mmpc_rl.train.best import read_best, recover

    for name, step in layout.items():
        _best(tmp_path / name, step or 0, info=step is not None)
    recover(tmp_path)
    best = read_best(tmp_path)
    assert (best["step"] if best else None) == expect
    assert sorted(p.name for p in tmp_path.iterdir()) == (["best"] if expect else [])


# -------------------------------------------------------------------------------------------- CQBench budget
def test_a_pass_that_would_exceed_max_fraction_is_skipped_with_a_note(capsys):
    from mmpc_rl.config import EvalConfig
    from mmpc_rl.tasks import get_task
    from mmpc_rl.train.cqbench import CQBenchCallback

    now = [0.0]
    cb = CQBenchCallback(EvalConfig(every_n_steps=10, max_fraction=0.25), get_task("i2t"), [], "/unused",
                         clock=lambda: now[0])
    cb._t0 = 0.0
    cb.seconds, cb._last, cb._eval_s = {"before": 30.0}, (0, "before"), 30.0
    now[0] = 40.0  # 10 s of training after a 30 s "before" pass (start-up included): the first pass still runs
    assert cb._affordable(10, _state(10))
    cb.seconds["step-10"], cb._last, cb._eval_s, cb._during_s = 4.0, (10, "step-10"), 34.0, 4.0
    now[0] = 58.0  # 24 s of training, 4 s spent on passes during it: another 4 s would make it 33 % > 25 %
    assert not cb._affordable(20, _state(20)) and cb.skipped == [20]
    note = capsys.readouterr().out
    assert "CQBench at step 20 skipped: one pass takes ~4 s" in note and "eval.max_fraction=0.25" in note
    now[0] = 100.0  # 66 s of training: 8 s is 12 %
    assert cb._affordable(30, _state(30))
    cb.cfg = EvalConfig(every_n_steps=10, max_fraction=None)
    now[0] = 34.5
    assert cb._affordable(40, _state(40))  # null: never skipped


# ---------------------------------------------------------------------------------------------- recipe checks
@pytest.mark.parametrize("extra, needle", [
    (["early_stop.metric=tfidf_cosin"], "early_stop.metric='tfidf_cosin' is not logged by this i2t run (did you "
                                        "mean 'tfidf_cosine'?); valid choices: parse_ok_rate, reward, tfidf_cosine"),
    (["early_stop.metric=bertscore_f1", "eval.every_n_steps=5"], "'bertscore_f1' is not logged"),  # no BERTScore
    (["early_stop.metric=token_overlap"], "set eval.every_n_steps too"),
    (["eval.select_best=token_overlap", "eval.enabled=false"], "needs CQBench during training: set eval.enabled"),
    (["eval.every_n_steps=10", "eval.enabled=false"], "runs CQBench during training: set eval.enabled=true"),
    (["eval.select_best=lpips"], "eval.select_best='lpips' is not logged by this i2t run"),
    (["early_stop.patience=0", "early_stop.metric=reward"], "early_stop.patience=0: must be at least 1"),
    (["early_stop.min_delta=-1"], "early_stop.min_delta=-1: must not be negative"),
    (["early_stop.window=2.5"], "early_stop.window must be a whole number"),
    (["eval.max_fraction=0"], "eval.max_fraction=0: must be greater than 0"),
    (["eval.divergence_window=1"], "a trend needs at least 2 evaluations"),
    (["early_stop.metrc=reward"], "unknown key early_stop.metrc (did you mean 'metric'?)"),
])
def test_watch_settings_fail_before_anything_loads(extra, needle):
    from mmpc_rl.train.recipe import load_training_recipe

    with pytest.raises(ConfigError) as e:
        load_training_recipe(["recipe=demo-i2t", *extra])
    assert needle in str(e.value)


def test_early_stop_is_off_by_default_and_reward_needs_no_eval():
    from mmpc_rl.config import EarlyStopConfig
    from mmpc_rl.train.recipe import load_training_recipe

    assert load_training_recipe(["recipe=i2t"]).early_stop == EarlyStopConfig() and EarlyStopConfig().metric is None
    recipe = load_training_recipe(["recipe=demo-i2t", "eval.enabled=false", "early_stop.metric=reward"])
    assert recipe.early_stop.metric == "reward"


# ------------------------------------------------------------------------- the demo with the gold curve and best/
@pytest.fixture(scope="module")
def gold_run(tmp_path_factory, one_thread):
    """The seeded demo, as `mmpc-rl demo eval.every_n_steps=10 trainer.max_steps=30 eval.select_best=tfidf_cosine`
    runs it (checkpoints off: they do not change training)."""
    from mmpc_rl.train.grpo import main

    out = tmp_path_factory.mktemp("gold")
    assert main(["recipe=demo-i2t", f"trainer.output_dir={out}", "trainer.save_strategy=no", "eval.every_n_steps=10",
                 "trainer.max_steps=30", "eval.select_best=tfidf_cosine"]) == 0
    return out


def test_the_gold_curve_is_one_key_per_metric_from_before_to_after(gold_run):
    records = list(read_jsonl(gold_run / "metrics.jsonl"))
    gold = [r for r in records if "cqbench/gold/tfidf_cosine" in r]
    steps = [r["step"] for r in gold]
    assert steps[0] == 0 and steps[-1] == 30 and len(steps) >= 3 and 10 in steps  # the first pass always runs
    assert not any(k.startswith("cqbench/step-") for r in records for k in r)  # no per-pass keys
    for metric in ("tfidf_cosine", "tfidf_euclidean", "token_overlap", "parse_ok_rate"):
        assert all(f"cqbench/gold/{metric}" in r for r in gold), metric
        assert gold[0][f"cqbench/gold/{metric}"] == gold[0][f"cqbench/before/{metric}"]
        assert gold[-1][f"cqbench/gold/{metric}"] == gold[-1][f"cqbench/after/{metric}"]
    # a pass inside a step no longer swallows that step's training log
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 31))
    assert all("completions/format_fail_rate" in r for r in records if "loss" in r)
    assert [r["step"] for r in records if "completions/length_drift" in r] == list(range(6, 31))
    step10 = json.loads((gold_run / "cqbench" / "step-10" / "summary.json").read_text())
    assert step10["step"] == 10 and step10["seconds"] > 0


def test_best_holds_the_best_scoring_step_and_the_summary_says_so(gold_run, capsys):
    from peft import PeftConfig

    from mmpc_rl.train.grpo import run_summary

    records = list(read_jsonl(gold_run / "metrics.jsonl"))
    scored = {r["step"]: r["cqbench/gold/tfidf_cosine"] for r in records if "cqbench/gold/tfidf_cosine" in r}
    best_step = max((s for s in scored if s > 0), key=lambda s: (scored[s], -s))  # the first to reach the top
    info = json.loads((gold_run / "best" / "best.json").read_text())
    assert (info["step"], info["score"], info["metric"]) == (best_step, scored[best_step], "tfidf_cosine")
    assert PeftConfig.from_pretrained(str(gold_run / "best")).r == 16  # a loadable adapter
    assert (gold_run / "best" / "adapter_model.safetensors").stat().st_size > 0
    text = run_summary(str(gold_run), 30, 1.0)
    assert f"last {scored[30]:.4f} (step 30), best {info['score']:.4f} (step {best_step})" in text
    assert "mmpc-rl: watch (first -> last quarter of the run):" in text and "completion length (tokens):" in text


def test_the_model_card_has_front_matter_the_before_after_table_and_the_curves(gold_run):
    from huggingface_hub import ModelCard

    card = ModelCard.load(gold_run / "README.md")
    assert card.data.library_name == "peft" and {"mmpc-rl", "grpo", "i2t", "lora"} <= set(card.data.tags)
    assert card.data.base_model is None  # tiny:// is not a Hub id; the body names it
    text = card.text
    assert "`tiny://qwen2.5-vl-sft`" in text and "30 of max_steps=30" in text
    assert "| `minilm_cosine` | 2.0 |" in text and "| `json_format` | 1.0 |" in text
    before = json.loads((gold_run / "cqbench" / "before" / "summary.json").read_text())
    after = json.loads((gold_run / "cqbench" / "after" / "summary.json").read_text())
    row = lambda s: " | ".join(f"{s['summary'][m]['mean']:.4f}" for m in ("tfidf_cosine", "tfidf_euclidean",  # noqa: E731
                                                                           "token_overlap"))
    assert f"| before (base model) | 0 | {row(before)} |" in text
    assert f"| after (this adapter) | 30 | {row(after)} |" in text
    assert "| best on tfidf_cosine (`best/`) |" in text
    assert "![training reward and CQBench gold curves](reward_curves.png)" in text
    assert (gold_run / "reward_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "PeftModel.from_pretrained(base, " in text and "subfolder='best'" in text
    assert "select_best: tfidf_cosine" in text  # the resolved recipe


def test_the_card_names_a_hub_base_model_in_its_front_matter(tmp_path):
    from huggingface_hub import ModelCard

    from mmpc_rl.train.card import write_model_card

    (tmp_path / "config.yaml").write_text("recipe: i2t\ntask: i2t\nmodel:\n  name_or_path: "
                                          "Qwen/Qwen2.5-VL-7B-Instruct\nrewards:\n  json_format:\n    weight: 1.0\n")
    card = ModelCard.load(write_model_card(tmp_path, SimpleNamespace(global_step=7, max_steps=100)))
    assert card.data.base_model == "Qwen/Qwen2.5-VL-7B-Instruct" and card.data.library_name == "peft"
    assert "7 of max_steps=100" in card.text and "CQBench was not run during training" in card.text
    assert "[Qwen/Qwen2.5-VL-7B-Instruct](https://huggingface.co/Qwen/Qwen2.5-VL-7B-Instruct)" in card.text


# -------------------------------------------------------------- a run that stops early and pushes to a (fake) Hub
@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, one_thread):
    """A setting that cannot be met (a gain of 100 in a reward that tops at 3) with the hub push on; the Hub is a
    fake that records what transformers' push_to_hub uploads."""
    import transformers.trainer

    from mmpc_rl.train.grpo import main

    uploads = []

    class Hub:
        def create_repo(self, repo_id, **kwargs):
            return SimpleNamespace(repo_id=repo_id)

        def upload_folder(self, folder_path, **kwargs):
            folder = Path(folder_path)
            uploads.append({"files": sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()),
                            "card": (folder / "README.md").read_text(), **kwargs})

    mp = pytest.MonkeyPatch()
    mp.setattr(transformers.trainer, "hf_api", lambda *a, **k: Hub())
    out = tmp_path_factory.mktemp("stopped")
    argv = ["recipe=demo-i2t", f"trainer.output_dir={out}", "eval.enabled=false", "trainer.max_steps=30",
            "trainer.num_generations=2", "trainer.per_device_train_batch_size=2", "trainer.max_completion_length=6",
            "data.limit_per_category=2", "trainer.save_strategy=no", "early_stop.metric=reward",
            "early_stop.window=2", "early_stop.patience=2", "early_stop.min_delta=100", "trainer.push_to_hub=true",
            "trainer.hub_model_id=someone/demo-i2t-grpo"]
    try:
        assert main(argv) == 0
    finally:
        mp.undo()
    return out, argv, uploads


def test_an_early_stop_that_cannot_be_met_stops_before_max_steps_in_one_line(stopped_run, capsys):
    from mmpc_rl.train.grpo import main

    out, argv, _ = stopped_run
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4  # smoothed from step 2 (window 2), then 2 steps without the gain
    record = json.loads((out / "early_stop.json").read_text())
    assert record["line"].startswith("early stop at step 4: early_stop.metric=reward")
    assert "early_stop.patience=2" in record["line"] and "early_stop.min_delta=100" in record["line"]
    assert (out / "adapter_model.safetensors").is_file()
    # resumed with the same settings: nothing to train
    assert main([*argv, "trainer.resume_from_checkpoint=auto"]) == 0
    assert "stopped early at step 4" in capsys.readouterr().out


def test_push_to_hub_uploads_our_card_with_the_adapter(stopped_run):
    out, _, uploads = stopped_run
    (push,) = uploads  # once, at the end, after the card was written
    assert push["repo_id"] == "someone/demo-i2t-grpo" and push["commit_message"] == "End of training"
    assert {"README.md", "adapter_model.safetensors", "adapter_config.json", "reward_curves.png"} <= set(push["files"])
    card = push["card"]
    assert card.startswith("---\n") and "library_name: peft" in card and "- mmpc-rl" in card
    assert "stopped early: early stop at step 4" in card and "4 of max_steps=30" in card
    assert "PeftModel.from_pretrained(base, 'someone/demo-i2t-grpo')" in card
    assert "CQBench was not run during training" in card
    assert card == (out / "README.md").read_text()
