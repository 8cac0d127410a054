"""Monitoring: reward timing + the completions recorder, the table with images (disk and W&B), curves, summary, and a
real offline W&B run of the demo recipe whose history and files are read back."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from mmpc_rl.io import read_jsonl
from mmpc_rl.train import callbacks as monitoring_cb
from mmpc_rl.train import curves, instrument
from mmpc_rl.train.callbacks import CompletionsTable, MetricsLogger

PROMPT = [{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (4, 4))},
                                       {"type": "text", "text": "Name it"}]}]


def _batch(n=2):
    images = [Image.new("RGB", (6, 4), c) for c in ("red", "blue")][:n]
    return dict(prompts=[PROMPT] * n, completions=[[{"role": "assistant", "content": f"c{i}"}] for i in range(n)],
                completion_ids=[[1]] * n, image=images, title=["t0", "t1"][:n], parent_asin=["A", "B"][:n])


def test_instrumented_reward_keeps_name_times_itself_and_records_the_batch():
    metrics = {}

    def lengthy(completions, **_):
        return [float(len(c[0]["content"])) for c in completions]

    lengthy.__name__ = "lengthy"

    class Render:  # a reward that renders offers its last call's images through media()
        __name__ = "render_sim"

        def __call__(self, completions, **_):
            self.last = [[Image.new("RGB", (2, 2))] * 2 for _ in completions]
            return [0.5, None]

        def media(self):
            return {"render": self.last}

    render = Render()
    rec = instrument.CompletionRecorder()
    wrapped = instrument.instrument_rewards([lengthy, render], rec)
    assert [w.__name__ for w in wrapped] == ["lengthy", "render_sim"]
    batch = _batch()
    kw = dict(batch, trainer_state=SimpleNamespace(global_step=3), log_metric=metrics.__setitem__, log_extra=None)
    assert wrapped[0](**kw) == [2.0, 2.0]
    assert wrapped[1](**kw) == [0.5, None]
    assert sorted(metrics) == ["timing/reward/lengthy", "timing/reward/render_sim"]
    assert all(0 <= v < 1 for v in metrics.values())
    b = rec.batch
    assert b["step"] == 3
    assert b["prompt"] == ["<image> Name it"] * 2 and b["completion"] == ["c0", "c1"]
    assert b["rewards"] == {"lengthy": [2.0, 2.0], "render_sim": [0.5, None]}
    assert b["columns"] == {"title": ["t0", "t1"], "parent_asin": ["A", "B"]}
    assert sorted(b["images"]) == ["image", "render"]


def test_trl_table_crashes_on_image_prompts_and_ours_does_not(tmp_path):
    """The TRL 1.16 W&B crash (gotcha 5), reproduced with TRL's own row building, then our table for the same batch."""
    import pandas as pd
    import wandb
    from trl.trainer.utils import strip_images_from_messages

    batch = _batch()
    trl_rows = pd.DataFrame({"step": [1, 1], "prompt": [strip_images_from_messages(p) for p in batch["prompts"]],
                             "completion": [strip_images_from_messages(c) for c in batch["completions"]],
                             "r": [0.1, 0.2]})
    with pytest.raises(TypeError, match="incompatible types"):
        wandb.Table(dataframe=trl_rows)

    rec = instrument.CompletionRecorder()
    (reward,) = instrument.instrument_rewards([lambda completions, **_: [0.25, 0.75]], rec)
    reward(**batch)
    table = CompletionsTable(tmp_path, rec, every=1)
    columns, rows = table.rows(step=1)
    assert columns == ["step", "prompt", "completion", "<lambda>", "parent_asin", "title", "image"]
    wt = wandb.Table(columns=columns, data=[[*r[:-1], wandb.Image(r[-1][0])] for r in rows])
    assert len(wt.data) == 2
    table.write(1, columns, rows)
    lines = list(read_jsonl(tmp_path / "completions" / "step_00001.jsonl"))
    assert [ln["<lambda>"] for ln in lines] == [0.25, 0.75]
    assert lines[1]["image"] == ["images/step_00001_r01_image_0.png"]
    assert Image.open(tmp_path / "completions" / lines[1]["image"][0]).getpixel((0, 0)) == (0, 0, 255)


def test_prepare_args_turns_off_trls_table_only_where_it_crashes():
    from mmpc_rl.tasks import get_task

    args = SimpleNamespace(log_completions=True, report_to=["wandb"])
    monitoring_cb.prepare_args(args, get_task("t2i"))
    assert args.log_completions is True  # text prompts: TRL's table works
    monitoring_cb.prepare_args(args, get_task("i2t"))
    assert args.log_completions is False
    args = SimpleNamespace(log_completions=True, report_to="none")
    monitoring_cb.prepare_args(args, get_task("i2t"))
    assert args.log_completions is True


def _state(step, max_steps=4):
    return SimpleNamespace(global_step=step, epoch=step / 4, is_world_process_zero=True, max_steps=max_steps)


def test_metrics_logger_drops_replayed_steps_on_resume_and_plots(tmp_path):
    log = tmp_path / "metrics.jsonl"
    ml = MetricsLogger(tmp_path)
    ml.on_train_begin(None, _state(0), None)
    for s in (1, 2, 3):
        ml.on_log(None, _state(s), None, logs={"reward": s / 10, "rewards/a/mean": s, "rewards/a/std": 0.0,
                                                 "kl": 0.01 * s, "step_time": 1.5, "timing/reward/a": 0.2})
    with open(log, "a") as f:
        f.write('{"step": 4, "rew')  # torn by the kill
    ml.on_train_begin(None, _state(2), None)  # resumed from checkpoint-2: step 3 will be logged again
    ml.on_log(None, _state(3), None, logs={"reward": 0.9, "cqbench/after/bertscore": 0.5})
    recs = list(read_jsonl(log))
    assert [(r["step"], r["reward"]) for r in recs] == [(1, 0.1), (2, 0.2), (3, 0.9)]
    assert json.loads((tmp_path / "summary.json").read_text()) == {"cqbench/after/bertscore": 0.5}
    png = curves.plot_curves(tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert curves.plot_curves(tmp_path / "nothing") is None


def test_metrics_jsonl_keeps_non_finite_values_as_strict_json(tmp_path):
    # NaN was dropped and Infinity written (not JSON); now null plus a `nonfinite` note
    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c} in metrics.jsonl"))

    ml = MetricsLogger(tmp_path)
    ml.on_train_begin(None, _state(0), None)
    ml.on_log(None, _state(1), None, logs={"loss": float("nan"), "grad_norm": float("inf"), "kl": float("-inf"),
                                           "reward": 0.25, "mode": "train"})
    ml.on_log(None, _state(2), None, logs={"loss": 0.5, "rewards/sometimes/mean": None})  # TRL: applied to none
    lines = [strict(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert "rewards/sometimes/mean" in lines[1] and lines[1]["rewards/sometimes/mean"] is None
    first = {k: v for k, v in lines[0].items() if k not in ("epoch", "time")}
    assert first == {"step": 1, "loss": None, "grad_norm": None, "kl": None, "reward": 0.25, "mode": "train",
                     "nonfinite": {"loss": "nan", "grad_norm": "inf", "kl": "-inf"}}
    assert "nonfinite" not in lines[1] and lines[1]["loss"] == 0.5
    assert curves.plot_curves(tmp_path).is_file()  # nulls are gaps in a curve, not a crash


def test_reward_curves_show_a_running_mean_over_faint_points_quarter_means_labels_and_a_legend_off_the_data(
        tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rewards = [0.2, 1.0, 0.0, 0.9, 0.3, 1.1, 0.4, 1.2, 0.5, 1.3, 0.6, 1.4]
    recs = [{"step": i + 1, "reward": r, "rewards/json_format/mean": r / 2, "loss": 0.0}
            for i, r in enumerate(rewards)]
    assert curves.quarter_means(rewards) == pytest.approx((0.4, 1.1))
    assert curves.running_mean([0, 3, 6, 9], 3) == [1.5, 3, 6, 7.5]
    fig, ax = plt.subplots()
    curves.reward_panel(ax, recs)
    curves._finish(ax, "reward", "reward")
    raw = [ln for ln in ax.get_lines() if ln.get_alpha() == 0.25]
    smooth = [ln for ln in ax.get_lines() if ln.get_label().startswith("total reward (running mean of 3)")]
    assert len(raw) == 2 and list(raw[0].get_ydata()) == rewards  # every logged point, faint
    assert list(smooth[0].get_ydata()) == pytest.approx(curves.running_mean(rewards, 3))
    assert {t.get_text() for t in ax.texts} == {"0.40", "1.10"}  # the first- and last-quarter means
    assert any("0.40 → 1.10" in t.get_text() for t in ax.get_legend().get_texts())
    assert ax.get_ylabel() == "reward"
    fig.canvas.draw()
    legend, axes = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend.x0 >= axes.x1  # beside the panel, never over the first steps
    plt.close(fig)
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (tmp_path / "config.yaml").write_text("recipe: demo-i2t\ntrainer:\n  seed: 42\n")
    assert curves.main([f"out={tmp_path}", "reward_only=true", f"png={tmp_path / 'r.png'}"]) == 0
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_curves_cli_one_line_errors(tmp_path):
    from mmpc_rl.errors import ConfigError

    with pytest.raises(ConfigError, match="valid keys: out"):
        curves.main([f"dir={tmp_path}"])
    with pytest.raises(ConfigError, match="no training records"):
        curves.main([f"out={tmp_path}"])
    # a record without a step (hand-made, another tool's) is left off the axis, not a KeyError
    (tmp_path / "metrics.jsonl").write_text('{"reward": 0.5}\n{"step": "x", "loss": 1}\n{"step": 1, "reward": 0.7}\n'
                                            '{"step": 2, "reward": 0.9, "cqbench/gold/token_overlap": 0.1}\n')
    assert curves.main([f"out={tmp_path}"]) == 0 and (tmp_path / "reward_curves.png").is_file()


# ------------------------------------------------------------------------------ a real offline W&B run of demo-i2t
def read_wandb_records(path: Path):
    """Records of an offline run's .wandb file (LevelDB-log framing of wandb_internal_pb2.Record protobufs)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos, buf, out = path.read_bytes(), 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf + chunk)
            out.append(rec)
            buf = b""
        elif kind in (2, 3):
            buf += chunk
    return out


CMDLINE_TOKEN = "hf_GivenOnTheCommandLine0042"  # W&B kept it verbatim (the run's argv)
SECRETS = {"WANDB_API_KEY": "wb-secret-7f3a9c1e5d2b8f4a6c0e9d7b3a1f5c8e2d4b6a9c", "HF_TOKEN": "hf_TopSecretToken4242"}


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory, tiny_qwen, minilm, monkeypatch_module):
    from mmpc_rl.train.grpo import main

    for k, v in {"WANDB_MODE": "offline", **SECRETS}.items():
        monkeypatch_module.setenv(k, v)
    monkeypatch_module.delenv("WANDB_DIR", raising=False)
    out = tmp_path_factory.mktemp("wandb-run")
    argv = ["recipe=demo-i2t", f"trainer.output_dir={out}", "trainer.report_to=[wandb]", "eval.enabled=false",
            "trainer.max_steps=2", "trainer.per_device_train_batch_size=2", "trainer.num_generations=2",
            "trainer.max_completion_length=6", "trainer.save_steps=1", "trainer.log_completions=true",
            "data.limit_per_category=2", "wandb.project=mmpc-test", "wandb.name=offline-demo",
            "wandb.log_completions_every=1", f"trainer.hub_token={CMDLINE_TOKEN}"]
    monkeypatch_module.setattr("sys.argv", ["train/grpo.py", *argv])  # as `python train/grpo.py ...` has it
    rc = main(argv)
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_offline_wandb_run_holds_curves_config_and_table_with_images(offline_run):
    (run_dir,) = (offline_run / "wandb").glob("offline-run-*")
    recs = read_wandb_records(next(run_dir.glob("run-*.wandb")))
    run = next(r.run for r in recs if r.WhichOneof("record_type") == "run")
    assert (run.project, run.display_name, sorted(run.tags)) == ("mmpc-test", "offline-demo", ["demo", "i2t"])
    config = {u.key: u.value_json for u in run.config.update}  # wandb.init(config=...) travels with the run record
    assert json.loads(config["recipe"])["trainer"]["max_steps"] == 2
    history = [{i.key or "/".join(i.nested_key): i.value_json for i in r.history.item}
               for r in recs if r.WhichOneof("record_type") == "history"]
    keys = set().union(*history)
    for k in ("reward", "reward_std", "rewards/json_format/mean", "rewards/json_format/std",
              "rewards/minilm_cosine/mean", "rewards/minilm_cosine/std", "kl", "completions/mean_length",
              "frac_reward_zero_std", "step_time", "timing/reward/json_format", "timing/reward/minilm_cosine"):
        assert f"train/{k}" in keys, k
    steps = sorted({int(h["train/global_step"]) for h in history if "train/rewards/json_format/mean" in h})
    assert steps == [1, 2]
    assert sum("completions_table/_type" in h for h in history) == 2
    files = run_dir / "files"
    table = list(read_jsonl(files / "completions" / "step_00002.jsonl"))
    assert len(table) == 2  # one prompt x 2 generations per step
    assert {"prompt", "completion", "json_format", "minilm_cosine", "title", "image"} <= set(table[0])
    for row in table:
        assert Image.open(files / "completions" / row["image"][0]).size[0] > 0
    assert len(list((files / "media" / "table").glob("completions_table_*.table.json"))) == 2


def test_offline_run_leaves_curves_logs_and_no_secrets_or_pickles(offline_run):
    recs = list(read_jsonl(offline_run / "metrics.jsonl"))
    assert [r["step"] for r in recs if "reward" in r] == [1, 2]
    assert (offline_run / "reward_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(offline_run.rglob("*.bin")) and not list(offline_run.rglob("pytorch_model*"))
    assert (offline_run / "adapter_model.safetensors").is_file()
    leaked = []
    for f in offline_run.rglob("*"):
        if f.is_file():
            blob = f.read_bytes()
            leaked += [f"{f.name}:{k}" for k, v in {**SECRETS, "cmdline": CMDLINE_TOKEN}.items() if v.encode() in blob]
    assert leaked == []
    (record,) = (offline_run / "wandb").glob("offline-run-*/run-*.wandb")  # offline, the run's argv is in here
    assert b"trainer.hub_token=<redacted>" in record.read_bytes()


def test_text_to_image_renders_become_an_image_column(tmp_path):
    """A reward that offers its last renders (sd35_clip: `Reward.media()`) fills a `render` column."""
    import torch

    class Renderer:
        __name__ = "sd35_clip"

        def __call__(self, completions, **_):
            red = torch.zeros(3, 2, 2)
            red[0] = 1.0
            self.renders = [[red, torch.ones(3, 2, 2)], []]
            return [0.3, None]

        def media(self):
            return {"render": self.renders}

    rec = instrument.CompletionRecorder()
    (reward,) = instrument.instrument_rewards([Renderer()], rec)
    reward(prompts=[[{"role": "user", "content": "p"}]] * 2, completions=["a", "b"], text=["d0", "d1"])
    table = CompletionsTable(tmp_path, rec, every=1)
    columns, rows = table.rows(step=5)
    assert columns == ["step", "prompt", "completion", "sd35_clip", "text", "render"]
    assert [len(r[-1]) for r in rows] == [2, 0]
    table.write(5, columns, rows)
    first = next(read_jsonl(tmp_path / "completions" / "step_00005.jsonl"))
    assert first["render"] == ["images/step_00005_r00_render_0.png", "images/step_00005_r00_render_1.png"]
    assert Image.open(tmp_path / "completions" / first["render"][0]).getpixel((0, 0)) == (255, 0, 0)


def test_wandb_dir_from_the_environment_is_honoured(tmp_path, monkeypatch):
    # wandb.init(dir=output_dir) overrode the user's WANDB_DIR
    import wandb

    from mmpc_rl.config import load_recipe
    from mmpc_rl.train.callbacks import init_wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-home"))
    (tmp_path / "wandb-home").mkdir()
    out = tmp_path / "run"
    recipe = load_recipe(["recipe=demo-i2t", f"trainer.output_dir={out}"])
    args = SimpleNamespace(report_to=["wandb"], process_index=0, output_dir=str(out), run_name=None)
    try:
        run = init_wandb(recipe, args)
        assert Path(run.dir).is_relative_to(tmp_path / "wandb-home")
    finally:
        wandb.finish()
    assert list((tmp_path / "wandb-home" / "wandb").glob("offline-run-*"))
    assert not (out / "wandb").exists() and (out / "wandb_run_id.txt").is_file()


# --------------------------------------------------------------------------------------------------- console
def test_only_credentials_are_redacted():
    from mmpc_rl.train.run_config import scrub, scrub_argv

    tree = {"trainer": {"hub_token": "hf_x", "max_completion_length": 24, "push_to_hub_token": None},
            "eval": {"max_new_tokens": 128}, "wandb": {"api_key": "k", "tags": ["token"]},
            "model": {"pad_token": "<pad>"}, "rewards": {"r": {"max_tokens": 8, "secret": "s"}}}
    assert scrub(tree) == {"trainer": {"hub_token": "<redacted>", "max_completion_length": 24,
                                       "push_to_hub_token": None},
                           "eval": {"max_new_tokens": 128}, "wandb": {"api_key": "<redacted>", "tags": ["token"]},
                           "model": {"pad_token": "<pad>"},
                           "rewards": {"r": {"max_tokens": 8, "secret": "<redacted>"}}}
    assert scrub_argv(["eval.max_new_tokens=64", "trainer.hub_token=hf_x", "wandb.api_key=k"]) == [
        "eval.max_new_tokens=64", "trainer.hub_token=<redacted>", "wandb.api_key=<redacted>"]


def test_each_step_is_one_compact_console_line(capsys):
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from mmpc_rl.train.progress import CompactPrinter, CompactProgress, compact_console, progress_line

    state = SimpleNamespace(global_step=3, max_steps=30, is_world_process_zero=True)
    logs = {"loss": 0.0005, "grad_norm": 1.5234, "learning_rate": 0.005, "num_tokens": 5120.0,
            "completions/mean_length": 17.04, "completions/max_length": 24.0, "rewards/json_format/mean": 0.5,
            "rewards/json_format/std": 0.5, "rewards/minilm_cosine/mean": 0.107, "reward": 0.714,
            "reward_std": 0.42, "frac_reward_zero_std": 0.0, "kl": 0.0155, "entropy": 5.1, "step_time": 15.63,
            "epoch": 0.1}
    line = progress_line(state, logs)
    assert line == ("step 3/30  reward 0.714 (json_format 0.500, minilm_cosine 0.107)  kl 0.0155  loss 0.0005  "
                    "grad 1.52  len 17.0  s/step 15.6")
    assert progress_line(state, {"cqbench/after/token_overlap": 0.1}) is None
    assert progress_line(state, {"train_runtime": 64.0, "train_loss": 0.1}) is None

    class Trainer:  # the two methods compact_console uses (transformers.Trainer's)
        def __init__(self, *callbacks):
            self.callbacks = list(callbacks)

        def pop_callback(self, cls):
            found = next((c for c in self.callbacks if isinstance(c, cls) and type(c) is cls), None)
            if found is not None:
                self.callbacks.remove(found)
            return found

        def add_callback(self, cls):
            self.callbacks.append(cls())

    for default, compact in ((ProgressCallback, CompactProgress), (PrinterCallback, CompactPrinter)):
        trainer = Trainer(default())
        compact_console(trainer)
        assert [type(c) for c in trainer.callbacks] == [compact]
    CompactPrinter().on_log(None, state, None, logs=logs)
    assert capsys.readouterr().out == line + "\n"


def test_a_warning_repeated_every_batch_is_shown_once_and_short():
    import logging

    from mmpc_rl.console import OnceFilter

    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Keep()
    handler.addFilter(OnceFilter())
    log = logging.getLogger("diffusers.test_once")
    log.addHandler(handler)
    try:
        for i in range(24):
            log.warning("The following part of your input was truncated because CLIP can only handle sequences up "
                        f"to 77 tokens: ['title {i} " + "<|endoftext|>" * 60 + "']")
        log.warning("another warning: shown too")
        ours = logging.getLogger("mmpc_rl.test_once")  # a handler may be shared (the root's): our warnings all pass
        ours.addHandler(handler)
        for i in range(3):
            ours.warning(f"mmpc-rl: warning {i}")
        ours.removeHandler(handler)
    finally:
        log.removeHandler(handler)
    assert records[2:] == ["mmpc-rl: warning 0", "mmpc-rl: warning 1", "mmpc-rl: warning 2"]
    records = records[:2]
    assert len(records) == 2
    assert records[0].startswith("The following part of your input was truncated") and len(records[0]) < 320
    assert "<|endoftext|> x60" in records[0] and records[0].endswith("(shown once)")


def test_the_trainer_arguments_raise_no_deprecation_warning():
    import warnings

    from mmpc_rl.config import load_recipe
    from mmpc_rl.train.trl_config import build_grpo_config

    for extra, on in (([], True), (["trainer.gradient_checkpointing=false"], False),
                      (["trainer.activation_checkpointing=false"], False)):
        recipe = load_recipe(["recipe=demo-i2t", *extra])
        assert recipe.trainer.get("gradient_checkpointing", True) is on  # one name for the planner and the layout
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            args = build_grpo_config(recipe)
        assert args.gradient_checkpointing is args.activation_checkpointing is on


def test_a_deprecation_notice_is_shown_once_even_when_other_code_changes_the_filters(monkeypatch):
    """Python's "once" filter forgets what it showed whenever any code changes the filters (libraries do, mid-run):
    TRL's generate then printed transformers' is_gradient_checkpointing notice again at later steps."""
    import warnings

    from mmpc_rl.console import show_deprecations_once

    shown = []
    monkeypatch.setattr(warnings, "showwarning", lambda message, *args, **kwargs: shown.append(str(message)))
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        show_deprecations_once()
        for step in range(3):
            warnings.warn("`old_name` is deprecated", FutureWarning, stacklevel=1)
            warnings.filterwarnings("ignore", message=f"unrelated {step}")  # a library changes the filters
        warnings.warn("`other_name` is deprecated", FutureWarning, stacklevel=1)
        warnings.warn("a user warning is not a deprecation", UserWarning, stacklevel=1)
        warnings.warn("a user warning is not a deprecation", UserWarning, stacklevel=1)
    assert shown.count("`old_name` is deprecated") == 1 and "`other_name` is deprecated" in shown
    assert shown.count("a user warning is not a deprecation") == 2  # other warnings keep their filters
