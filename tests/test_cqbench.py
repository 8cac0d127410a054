"""CQBench end to end on the sample catalog with the tiny Qwen2.5-VL: runs, resume, reports, base vs LoRA, and the
before/after callback inside a tiny GRPO run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmpc_rl.errors import ConfigError
from mmpc_rl.eval import cqbench, runner
from mmpc_rl.eval.report import aggregate, delta_table, markdown_tables, radar_scores
from mmpc_rl.io import read_jsonl

TINY = "tiny://qwen2.5-vl"
ARGS = ["data=sample", "limit=2", "batch_size=4", "max_new_tokens=6", "dtype=float32", "progress=false"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cq")
    calls = []
    real = runner.generate_batch

    def counting(model, processor, task, items, **kw):
        calls.append(len(items))
        return real(model, processor, task, items, **kw)

    runner.generate_batch = counting
    try:
        rc = cqbench.main([f"models=[{TINY}]", f"output_dir={out}", *ARGS])
    finally:
        runner.generate_batch = real
    return out, rc, calls


def test_run_writes_results_tables_and_radar(first_run):
    out, rc, calls = first_run
    assert rc == 0
    assert calls == [4, 2]  # 3 categories x 2 items, batches of 4
    res = json.loads((out / "results.json").read_text())["results"]["tiny-qwen2.5-vl"]["i2t"]
    assert res["n_items"] == 6 and sum(res["status"].values()) == 6
    assert sorted(res["per_category"]) == ["All_Beauty", "Toys_and_Games", "Video_Games"]
    assert all(s["n"] == 2 for pc in res["per_category"].values() for s in pc.values())
    assert len(res["per_item"]) == 6 and {"completion", "answer", "status", "metrics"} <= set(res["per_item"][0])
    # six new tokens never close a JSON object: every item is scored as the literal "error"
    for rec in res["per_item"]:
        if rec["status"] != "ok":
            assert rec["answer"] == "error"
    tables = (out / "tables.md").read_text()
    assert "| tiny-qwen2.5-vl |" in tables and "| Video_Games | tiny-qwen2.5-vl |" in tables
    assert (out / "radar.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_second_run_recomputes_nothing(first_run, monkeypatch):
    out, _, _ = first_run
    monkeypatch.setattr(runner, "generate_batch", lambda *a, **k: pytest.fail("generated again"))
    assert cqbench.main([f"models=[{TINY}]", f"output_dir={out}", *ARGS]) == 0
    assert len(list(read_jsonl(out / "items" / "tiny-qwen2.5-vl" / "i2t.jsonl"))) == 6


def test_interrupted_run_resumes_with_only_the_rest(first_run, tmp_path, monkeypatch):
    out, _, _ = first_run
    lines = (out / "items" / "tiny-qwen2.5-vl" / "i2t.jsonl").read_text().splitlines(keepends=True)
    part = tmp_path / "items" / "tiny-qwen2.5-vl" / "i2t.jsonl"
    part.parent.mkdir(parents=True)
    part.write_text("".join(lines[:3]) + lines[3][:25])  # three items done, the fourth torn by a kill
    settings = out / "items" / "tiny-qwen2.5-vl" / "i2t.settings.json"  # what those items were made with
    (part.parent / settings.name).write_text(settings.read_text())
    seen = []
    real = runner.generate_batch
    monkeypatch.setattr(runner, "generate_batch", lambda m, p, t, items, **k: seen.extend(items) or real(
        m, p, t, items, **k))
    assert cqbench.main([f"models=[{TINY}]", f"output_dir={tmp_path}", *ARGS]) == 0
    done = {json.loads(x)["key"] for x in lines[:3]}
    assert len(seen) == 3 and not done & {runner.item_key(it) for it in seen}
    recs = list(read_jsonl(part))
    assert len(recs) == 6 and len({r["key"] for r in recs}) == 6  # the torn line was cut away, nothing twice


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"unknown key 'modles'.*did you mean 'models'"):
        cqbench.parse_config(["modles=[x]"])
    with pytest.raises(ConfigError, match="unknown task 'i2x'"):
        cqbench.parse_config(["tasks=[i2x]"])
    with pytest.raises(ConfigError, match="resize="):
        cqbench.parse_config(["resize=crop"])


def test_options_are_the_recipe_sections_fields(monkeypatch):
    """The fields CQBench shares with a training recipe keep the sections' defaults, and every loading field reaches
    the model as a recipe's `model` section would give it."""
    import dataclasses

    from mmpc_rl.config import DataConfig, EvalConfig, ItemSelection, ModelConfig, ModelLoading

    cfg = cqbench.parse_config([])
    shared = {f.name for base in (ModelLoading, ItemSelection) for f in dataclasses.fields(base)}
    assert {k: getattr(cfg, k) for k in shared} == {k: getattr(ModelConfig(), k, getattr(DataConfig(), k, None))
                                                    for k in shared}
    assert (cfg.data, cfg.models, cfg.split, cfg.bertscore) == (DataConfig().path, [ModelConfig().name_or_path],
                                                              EvalConfig().split, EvalConfig().bertscore)
    assert cfg.max_new_tokens is None and cfg.limit is None  # a stand-alone run: the task's budget, every item
    seen = {}
    monkeypatch.setattr(cqbench, "load_policy", lambda mc, **kw: seen.setdefault("mc", mc))
    cqbench.load_model(cqbench.parse_config(["dtype=float32", "min_pixels=3136", "attn_implementation=eager"]), TINY)
    assert seen["mc"] == ModelConfig(name_or_path=TINY, dtype="float32", min_pixels=3136, attn_implementation="eager")


def test_cli_dispatch_reaches_cqbench(capsys):
    from mmpc_rl.cli import main

    assert main(["eval", "cqbench", "modles=[x]"]) == 2
    assert "unknown key 'modles'" in capsys.readouterr().err
    assert main(["eval", "cqbnech"]) == 2
    assert "did you mean 'cqbench'" in capsys.readouterr().err


def test_model_keys():
    assert cqbench.model_key("Qwen/Qwen2.5-VL-7B-Instruct") == "Qwen2.5-VL-7B-Instruct"
    assert cqbench.model_key("tiny://qwen2.5-vl") == "tiny-qwen2.5-vl"
    assert cqbench.model_key("/ckpt/run 1/") == "run_1"
    # two sources with one name get a hash of their source each; a name of its own stays readable
    keys = cqbench.model_keys(["/a/model", "/b/model", "org1/x", "org2/x", "tiny://qwen2.5-vl"])
    assert len(set(keys.values())) == 5 and keys["tiny://qwen2.5-vl"] == "tiny-qwen2.5-vl"
    assert all(keys[n].startswith(p) and len(keys[n]) == len(p) + 8 for n, p in
               (("/a/model", "model-"), ("/b/model", "model-"), ("org1/x", "x-"), ("org2/x", "x-")))
    assert cqbench.model_keys(["/a/model", "/a/model/"]) == {"/a/model": "model", "/a/model/": "model"}


# -------------------------------------------------------------------------------------------------- reports
def rec(cat, status, **metrics):
    return {"key": cat, "category": cat, "status": status, "metrics": metrics}


def test_aggregate_is_mean_of_category_means_with_population_std():
    records = [rec("A", "ok", token_overlap=0.2), rec("A", "ok", token_overlap=0.4),
               rec("B", "fail", token_overlap=1.0)]
    agg = aggregate(records, "i2t")
    assert agg["per_category"]["A"]["token_overlap"] == pytest.approx({"mean": 0.3, "std": 0.1, "n": 2})
    assert agg["summary"]["token_overlap"] == pytest.approx({"mean": 0.65, "std": 0.35, "n": 2})
    assert agg["status"] == {"ok": 2, "fail": 1}


def test_lpips_none_values_are_left_out():
    agg = aggregate([rec("A", "ok", lpips=None, mse=0.1), rec("A", "ok", lpips=0.5, mse=0.3)], "t2i")
    assert agg["per_category"]["A"]["lpips"] == {"mean": 0.5, "std": 0.0, "n": 1}


def test_delta_table_and_radar():
    base = aggregate([rec("A", "ok", token_overlap=0.2), rec("B", "ok", token_overlap=0.4)], "i2t")
    lora = aggregate([rec("A", "ok", token_overlap=0.5), rec("B", "ok", token_overlap=0.4)], "i2t")
    table = delta_table(base, lora, "i2t")
    assert "| All (mean over categories) | Δ | +0.1500 |" in table and "| A | Δ | +0.3000 |" in table
    assert "| B | Δ | +0.0000 |" in table
    # min-max over the four cells: 0.2 -> 0, 0.4 -> 2/3, 0.5 -> 1
    scores = radar_scores({"base": {"i2t": base}, "lora": {"i2t": lora}}, "i2t")
    assert scores["base"] == pytest.approx({"A": 0.0, "B": 2 / 3})
    assert scores["lora"] == pytest.approx({"A": 1.0, "B": 2 / 3})
    mse = {"m": {"t2i": aggregate([rec("A", "ok", mse=0.1), rec("B", "ok", mse=0.3)], "t2i")}}
    assert radar_scores(mse, "t2i")["m"] == pytest.approx({"A": 1.0, "B": 0.0})  # lower is better: inverted
    assert "| m | – | 0.2000 ± 0.1000 |" not in markdown_tables(mse)
    assert "| m | 0.2000 ± 0.1000 |" in markdown_tables(mse)


def test_inf_psnr_is_reported_not_crashing():
    agg = aggregate([rec("A", "ok", psnr=math.inf)], "t2i")
    assert "| m | inf |" in markdown_tables({"m": {"t2i": agg}})


# ---------------------------------------------------------------------------------------------- base vs LoRA
@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory, tiny_qwen):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(str(tiny_qwen), dtype=torch.float32)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)")
    peft_model = get_peft_model(model, lora)
    torch.manual_seed(0)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:  # a freshly initialised LoRA is a no-op; make it change the outputs
            p.data.normal_(0, 2.0)
    path = tmp_path_factory.mktemp("adapter") / "demo-lora"
    peft_model.save_pretrained(path)
    return path


def test_adapter_evaluates_base_and_lora_with_deltas(first_run, tiny_adapter, tmp_path, capsys):
    assert cqbench.main([f"models=[{TINY}]", f"output_dir={tmp_path}", f"adapter={tiny_adapter}", *ARGS]) == 0
    printed = capsys.readouterr().out
    assert "| tiny-qwen2.5-vl |" in printed and "| tiny-qwen2.5-vl+demo-lora |" in printed and "| Δ |" in printed
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    assert sorted(results) == ["tiny-qwen2.5-vl", "tiny-qwen2.5-vl+demo-lora"]
    completions = {a: {r["key"]: r["completion"] for r in results[a]["i2t"]["per_item"]} for a in results}
    frozen = {r["key"]: r["completion"] for r in read_jsonl(first_run[0] / "items" / "tiny-qwen2.5-vl" / "i2t.jsonl")}
    assert completions["tiny-qwen2.5-vl"] == frozen  # adapter disabled == the plain base model
    assert completions["tiny-qwen2.5-vl+demo-lora"] != frozen
    assert (tmp_path / "lora_vs_base.md").is_file()


def test_adapter_folder_must_hold_an_adapter(tmp_path):
    from mmpc_rl.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="adapter_config.json"):
        cqbench._attach_adapter(None, str(tmp_path))


def _edited_adapter(src: Path, dest: Path, edit) -> Path:
    """A copy of adapter `src` whose tensors `edit` changed ({name: tensor} -> {name: tensor})."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dest)
    weights = dest / "adapter_model.safetensors"
    save_file(edit(load_file(str(weights))), str(weights))
    return dest


@pytest.mark.parametrize("edit, message", [
    (lambda w: {k.replace("q_proj", "qq_proj"): v for k, v in w.items()}, "have no place in the model"),
    (lambda w: {k: v for k, v in w.items() if "v_proj" not in k}, "adapter weights of the model are not in it"),
    (lambda w: {k: v[:2].clone() if "lora_A" in k else v for k, v in w.items()}, "size mismatch"),
])
def test_an_adapter_that_does_not_fit_the_model_is_an_error(tiny_adapter, tmp_path, edit, message):
    """PEFT only warns (or says nothing): the "LoRA" arm would be the base model, or part of it, with Δ = 0."""
    from mmpc_rl.config import ModelConfig
    from mmpc_rl.errors import ModelLoadError
    from mmpc_rl.models import load_policy

    bad = _edited_adapter(tiny_adapter, tmp_path / "bad", edit)
    model, _ = load_policy(ModelConfig(name_or_path=TINY, dtype="float32"), cpu=True)
    with pytest.raises(ModelLoadError, match=f"adapter {bad} does not fit the model: .*{message}"):
        cqbench._attach_adapter(model, str(bad))


def test_models_and_adapters_with_one_name_never_share_results(tiny_qwen, tiny_adapter, tmp_path, capsys):
    """`/a/model` and `/b/model` are both evaluated (4 item-runs, not 2); a second `checkpoint-2`, another adapter,
    or a model folder whose content changed, does not resume the first one's items."""
    import shutil

    from safetensors.torch import load_file, save_file

    a, b = tmp_path / "a" / "model", tmp_path / "b" / "model"
    shutil.copytree(tiny_qwen, a)
    shutil.copytree(tiny_qwen, b)
    weights = b / "model.safetensors"
    save_file({k: v * 1.5 if v.is_floating_point() else v for k, v in load_file(str(weights)).items()}, str(weights),
              metadata={"format": "pt"})
    out = tmp_path / "cq"
    args = [f"output_dir={out}", "data=sample", "limit=2", "categories=[Video_Games]", "max_new_tokens=4",
            "dtype=float32", "progress=false"]
    assert cqbench.main([f"models=[{a},{b}]", *args]) == 0
    assert "CQBench scored 4 item-runs" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())["results"]
    assert len(results) == 2 and all(k.startswith("model-") for k in results)
    # the model folder a/model retrained in place: same name, other weights
    alone = [f"models=[{a}]", f"output_dir={tmp_path / 'alone'}", *args[1:]]
    assert cqbench.main(alone) == 0
    shutil.copy(weights, a / "model.safetensors")
    with pytest.raises(ConfigError, match=r"model/i2t.jsonl was made with other settings \(model: "):
        cqbench.run(cqbench.parse_config(alone))
    # two adapters called checkpoint-2, one after the other into one output_dir
    first = _edited_adapter(tiny_adapter, tmp_path / "run1" / "checkpoint-2", dict)
    second = _edited_adapter(tiny_adapter, tmp_path / "run2" / "checkpoint-2", lambda w: {k: -v for k, v in w.items()})
    lora_args = [f"models=[{TINY}]", f"output_dir={tmp_path / 'lora'}", *args[1:]]
    assert cqbench.main([*lora_args, f"adapter={first}"]) == 0
    with pytest.raises(ConfigError, match=r"tiny-qwen2.5-vl\+checkpoint-2/i2t.jsonl was made with other settings "
                                          r"\(adapter: "):
        cqbench.run(cqbench.parse_config([*lora_args, f"adapter={second}"]))
    # the same adapter folder, retrained in place
    shutil.copy(second / "adapter_model.safetensors", first / "adapter_model.safetensors")
    with pytest.raises(ConfigError, match=r"\(adapter: .*sha256"):
        cqbench.run(cqbench.parse_config([*lora_args, f"adapter={first}"]))


# ------------------------------------------------------------------------------------------- training callback
def test_callback_logs_before_and_after_inside_a_tiny_grpo_run(tmp_path, minilm):
    from mmpc_rl.config import load_recipe
    from mmpc_rl.train.builder import build_trainer
    from mmpc_rl.train.cqbench import CQBenchCallback

    cfg = load_recipe(["recipe=demo-i2t", f"trainer.output_dir={tmp_path}", "trainer.max_steps=2",
                       "trainer.num_generations=2", "trainer.per_device_train_batch_size=2",
                       "trainer.max_completion_length=4", "data.limit_per_category=1",
                       "eval.items_per_category=1", "eval.max_new_tokens=4", "eval.every_n_steps=1"])
    trainer = build_trainer(cfg, models={"minilm": minilm})
    cb = next(c for c in trainer.callback_handler.callbacks if isinstance(c, CQBenchCallback))
    assert cb.trainer is trainer  # build_trainer binds it, so it logs through this trainer's loggers
    trainer.train()
    assert trainer.model.training  # train mode restored after every evaluation
    logged = [h for h in trainer.state.log_history if any(k.startswith("cqbench/") for k in h)]
    assert [h["step"] for h in logged] == [0, 1, 2]  # one gold curve: before, the pass at step 1, after
    assert all("cqbench/gold/tfidf_euclidean" in h and "cqbench/gold/parse_ok_rate" in h for h in logged)
    assert logged[0]["cqbench/before/tfidf_euclidean"] == logged[0]["cqbench/gold/tfidf_euclidean"] >= 0.0
    assert "cqbench/after/parse_ok_rate" in logged[-1] and not any("cqbench/before/" in k for k in logged[1])
    on_disk = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("cqbench/after/token_overlap" in r for r in on_disk)  # through the trainer's loggers
    for tag in ("before", "step-1", "after"):
        assert len(list(read_jsonl(tmp_path / "cqbench" / tag / "items.jsonl"))) == 3
        assert json.loads((tmp_path / "cqbench" / tag / "summary.json").read_text())["n_items"] == 3
    assert "| All (mean over categories) | Δ |" in (tmp_path / "cqbench" / "before_after.md").read_text()


def test_a_resumed_before_pass_is_the_base_model(tmp_path, minilm):
    """Killed during "before", resumed from a checkpoint with a trained adapter: the items the first pass left are
    generated with the adapter off, so "before" equals a fresh pass of the base model."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from mmpc_rl.config import load_recipe
    from mmpc_rl.eval.runner import evaluate
    from mmpc_rl.models import load_policy
    from mmpc_rl.tasks import get_task
    from mmpc_rl.train.builder import build_trainer
    from mmpc_rl.train.cqbench import CQBenchCallback

    common = [f"trainer.output_dir={tmp_path}", "trainer.num_generations=2", "trainer.per_device_train_batch_size=2",
              "trainer.max_completion_length=4", "data.limit_per_category=1", "eval.items_per_category=1",
              "eval.max_new_tokens=8", "trainer.learning_rate=1e-9", "trainer.save_strategy=steps",
              "trainer.save_steps=2"]
    ckpt = tmp_path / "checkpoint-2"
    build_trainer(load_recipe(["recipe=demo-i2t", "trainer.max_steps=2", *common]), models={"minilm": minilm}).train()
    # the checkpoint's adapter, made far from the base (two tiny GRPO steps may leave greedy outputs as they were)
    weights = tmp_path / "checkpoint-2" / "adapter_model.safetensors"
    state = load_file(str(weights))
    torch.manual_seed(0)
    save_file({k: torch.randn_like(v) if "lora_B" in k else v for k, v in state.items()}, str(weights))
    before = tmp_path / "cqbench" / "before" / "items.jsonl"
    before.write_text(before.read_text().splitlines()[0] + "\n")  # the first "before" pass got one item done
    shutil.rmtree(tmp_path / "cqbench" / "after")  # and nothing after it
    resumed = build_trainer(load_recipe(["recipe=demo-i2t", "trainer.max_steps=3", *common,
                                         f"trainer.resume_from_checkpoint={ckpt}"]), models={"minilm": minilm})
    resumed.train(resume_from_checkpoint=str(ckpt))

    cb = next(c for c in resumed.callback_handler.callbacks if isinstance(c, CQBenchCallback))
    model, processor = load_policy(load_recipe(["recipe=demo-i2t"]).model, cpu=True)
    evaluate(model, processor, get_task("i2t"), cb.items, results_path=tmp_path / "fresh.jsonl", batch_size=8,
             max_new_tokens=8, progress=False)
    fresh = {r["key"]: r["completion"] for r in read_jsonl(tmp_path / "fresh.jsonl")}
    got = {r["key"]: r["completion"] for r in read_jsonl(before)}
    after = {r["key"]: r["completion"] for r in read_jsonl(tmp_path / "cqbench" / "after" / "items.jsonl")}
    assert len(fresh) == 3 and got == fresh
    assert after != fresh  # the adapter did change the model: the comparison above could have failed


def test_the_before_pass_is_reused_only_under_its_fingerprint_and_trained_passes_never(tmp_path, capsys):
    from types import SimpleNamespace

    from mmpc_rl.config import EvalConfig, ModelConfig
    from mmpc_rl.data import load_items
    from mmpc_rl.io import atomic_write_jsonl
    from mmpc_rl.models import load_policy
    from mmpc_rl.tasks import get_task
    from mmpc_rl.train.cqbench import CQBenchCallback

    model, processor = load_policy(ModelConfig(name_or_path=TINY, dtype="float32"), cpu=True)
    items = load_items("sample", split="cqbench", limit_per_category=1, categories=["Video_Games"])
    state = SimpleNamespace(is_world_process_zero=True, global_step=0, log_history=[])

    def begin(settings: dict, step: int = 0) -> list[str]:
        cb = CQBenchCallback(EvalConfig(batch_size=4, max_new_tokens=4), get_task("i2t"), items, tmp_path,
                             progress=False, settings=settings)
        state.global_step = step
        cb.on_train_begin(None, state, None, model=model, processing_class=processor)
        return [r["completion"] for r in read_jsonl(tmp_path / "cqbench" / "before" / "items.jsonl")]

    assert begin({"model": "A"}) and "STALE" not in begin({"model": "A"})
    before = tmp_path / "cqbench" / "before" / "items.jsonl"
    atomic_write_jsonl(before, [{**r, "completion": "STALE"} for r in read_jsonl(before)])
    assert begin({"model": "A"}) == ["STALE"]  # the same fingerprint: reused
    assert begin({"model": "B"}) != ["STALE"]  # another base model (or prompt, budget, scorer...): made anew
    assert "was made with other settings (model: 'A' -> 'B'): generating it anew" in capsys.readouterr().err
    for tag in ("after", "step-2", "step-4"):
        (tmp_path / "cqbench" / tag).mkdir()
    (tmp_path / "cqbench" / "before_after.md").write_text("the previous attempt's table")
    begin({"model": "B"}, step=2)  # a resume from checkpoint-2: its weights after step 2 are trained again
    assert sorted(p.name for p in (tmp_path / "cqbench").iterdir()) == ["before", "step-2"]
    # a resume keeps the first attempt's "before" point: another fingerprint there is another base under the run
    with pytest.raises(ConfigError, match=r"before/items.jsonl was made with other settings \(model: 'B' -> 'C'\)"):
        begin({"model": "C"}, step=2)


# ------------------------------------------------------------------------------------------------ text->image
def test_t2i_run_with_tiny_sd3_and_tiny_clip(tmp_path):
    args = ["tasks=[t2i]", "renderer=tiny://sd3", "clip=tiny://clip", "lpips=random", "render_size=64",
            "render_max_sequence_length=32"]
    assert cqbench.main([f"models=[{TINY}]", f"output_dir={tmp_path}", *ARGS, *args]) == 0
    res = json.loads((tmp_path / "results.json").read_text())["results"]["tiny-qwen2.5-vl"]["t2i"]
    assert set(res["summary"]) == {"psnr", "ssim", "mse", "lpips", "clip"}
    for rec in res["per_item"]:
        jpg = tmp_path / "images" / "tiny-qwen2.5-vl" / rec["category"] / f"{rec['parent_asin']}.jpg"
        assert rec["image"] == str(jpg) and jpg.read_bytes()[:2] == b"\xff\xd8"  # saved as JPEG, as the authors
        m = rec["metrics"]
        assert m["psnr"] == pytest.approx(10 * math.log10(1 / m["mse"]), rel=1e-6)
        assert -1.0 <= m["clip"] <= 1.0 and m["lpips"] >= 0.0
    assert "| tiny-qwen2.5-vl | " in (tmp_path / "tables.md").read_text()


def test_unreadable_image_is_a_one_line_data_error(tmp_path):
    from mmpc_rl.errors import DataError
    from mmpc_rl.eval.generate import length_sorted_batches
    from mmpc_rl.tasks import get_task

    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    items = [{"parent_asin": "B1", "category": "A", "title": "t", "image": str(tmp_path / "bad.jpg")}]
    with pytest.raises(DataError, match="cannot read image .*bad.jpg of item B1"):
        list(length_sorted_batches(get_task("i2t"), items, 4))


def test_sharded_processes_split_items_and_rank0_merges(tmp_path, monkeypatch, first_run):
    from mmpc_rl.config import ModelConfig
    from mmpc_rl.data import load_items
    from mmpc_rl.models import load_policy
    from mmpc_rl.tasks import get_task

    model, processor = load_policy(ModelConfig(name_or_path=TINY, dtype="float32"), cpu=True)
    items = load_items("sample", split="cqbench", limit_per_category=2)
    path = tmp_path / "i2t.jsonl"
    kw = {"results_path": path, "batch_size": 4, "max_new_tokens": 6, "progress": False}
    # the shard arithmetic alone (the process group is covered by the real 2-process test below)
    monkeypatch.setattr(runner, "_dist", lambda: (1, 2))  # rank 1 of 2 finishes first here
    assert runner.evaluate(model, processor, get_task("i2t"), items, **kw) is None
    shard = [r["key"] for r in read_jsonl(tmp_path / "i2t.rank1.jsonl")]
    assert sorted(shard) == sorted(runner.item_key(it) for it in items[1::2])  # every 2nd item, rank 1's share
    monkeypatch.setattr(runner, "_dist", lambda: (0, 2))
    res = runner.evaluate(model, processor, get_task("i2t"), items, **kw)
    assert [r["key"] for r in res["per_item"]] == [runner.item_key(it) for it in items]
    assert sorted(r["key"] for r in read_jsonl(path)) == sorted(runner.item_key(it) for it in items)
    frozen = {r["key"]: r["completion"] for r in read_jsonl(first_run[0] / "items" / "tiny-qwen2.5-vl" / "i2t.jsonl")}
    assert {r["key"]: r["completion"] for r in res["per_item"]} == frozen  # same greedy output, any sharding


def test_two_processes_split_the_items_and_rank0_merges_them_all(tmp_path):
    """A real 2-process launch (gloo): without a process group rank 0 merged before rank 1 had written."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parents[1]
    args = [f"models=[{TINY}]", "data=sample", "limit=2", "batch_size=4", "max_new_tokens=6", "dtype=float32",
            "progress=false"]
    # rank 1 is made slow on purpose: the merge must wait for it, not race it
    script = tmp_path / "slow_rank1.py"
    script.write_text(
        "import os, sys, time\n"
        "from mmpc_rl.eval import cqbench, runner\n"
        "real = runner.generate_batch\n"
        "def slow(*a, **k):\n"
        "    if os.environ.get('RANK') == '1':\n"
        "        time.sleep(3)\n"
        "    return real(*a, **k)\n"
        "runner.generate_batch = slow\n"
        "sys.exit(cqbench.main(sys.argv[1:]))\n")
    accelerate = Path(sys.executable).parent / "accelerate"
    proc = subprocess.run([str(accelerate), "launch", "--config_file", str(root / "launch" / "ddp.yaml"),
                           "--num_processes", "2", str(script), f"output_dir={tmp_path / 'ddp'}", *args],
                          capture_output=True, text=True, timeout=300, cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert cqbench.main([f"output_dir={tmp_path / 'one'}", *args]) == 0

    def answers(out):
        return {r["key"]: r["answer"] for r in read_jsonl(out / "items" / "tiny-qwen2.5-vl" / "i2t.jsonl")}

    ddp, one = answers(tmp_path / "ddp"), answers(tmp_path / "one")
    assert len(one) == 6 and ddp == one  # every item once, greedy answers identical to one process
    shards = sorted(p.name for p in (tmp_path / "ddp" / "items" / "tiny-qwen2.5-vl").glob("i2t.rank*.jsonl"))
    assert shards == ["i2t.rank0.jsonl", "i2t.rank1.jsonl"]


# ------------------------------------------------------------------------------------------- Tables 4 and 5
def _results(per_model: dict[str, dict[str, dict[str, float]]], task: str = "i2t") -> dict:
    """results[model][task] with only the per-category means set (what Tables 4/5 read)."""
    out = {}
    for model, cats in per_model.items():
        per_category = {c: {m: {"mean": v, "std": 0.0, "n": 1} for m, v in ms.items()} for c, ms in cats.items()}
        names = {m for ms in cats.values() for m in ms}
        out[model] = {task: {"per_category": per_category, "summary": {m: {"mean": 0.0} for m in names},
                             "prompt": "paper"}}
    return out


def test_tables_4_5_reproduce_the_papers_table4_rows_from_its_table10():
    """The paper's Table 10 per-model category means give its Table 4 rows only with ddof=1 (0.018 for All Beauty's
    cosine; ddof=0 gives 0.016, 0.0016 away)."""
    from mmpc_rl.eval.report import across_models

    table10 = {  # model: (All Beauty, Video Games) x (cosine, euclidean, overlap, bertscore)
        "Gemma-3-4B": ((0.186, 0.441, 0.224, 0.862), (0.279, 0.460, 0.312, 0.883)),
        "Gemma-3-12B": ((0.208, 0.444, 0.250, 0.867), (0.367, 0.508, 0.425, 0.902)),
        "Gemma-3-27B": ((0.223, 0.447, 0.273, 0.871), (0.394, 0.530, 0.446, 0.906)),
        "Qwen2.5-VL-7B": ((0.198, 0.443, 0.248, 0.866), (0.365, 0.492, 0.420, 0.901)),
        "Qwen2.5-VL-32B": ((0.174, 0.439, 0.223, 0.860), (0.316, 0.471, 0.363, 0.894)),
        "Qwen2.5-VL-72B": ((0.184, 0.441, 0.239, 0.863), (0.325, 0.478, 0.367, 0.895)),
    }
    names = ("tfidf_cosine", "tfidf_euclidean", "token_overlap", "bertscore_f1")
    results = _results({m: {"All_Beauty": dict(zip(names, ab, strict=True)),
                            "Video_Games": dict(zip(names, vg, strict=True))} for m, (ab, vg) in table10.items()})
    table4 = {  # the paper's Table 4
        "All_Beauty": ((0.196, 0.018), (0.443, 0.003), (0.243, 0.019), (0.865, 0.004)),
        "Video_Games": ((0.341, 0.042), (0.490, 0.026), (0.389, 0.050), (0.897, 0.008)),
    }
    got = across_models(results)["i2t"]
    for cat, cells in table4.items():
        for name, (mean, std) in zip(names, cells, strict=True):
            # Table 10 is printed to 3 decimals, so its means are known to within 0.0005
            assert got[cat][name] == pytest.approx({"mean": mean, "std": std, "n": 6}, abs=6e-4)


def test_tables_4_5_need_two_models_and_leave_out_missing_cells():
    from mmpc_rl.eval.report import across_models, across_models_table

    one = _results({"a": {"X": {"psnr": 8.0}}}, "t2i")
    assert across_models(one) == {}
    three = _results({"a": {"X": {"psnr": 8.0, "lpips": 0.7}, "Y": {"psnr": 7.0}},
                      "b": {"X": {"psnr": 9.0, "lpips": 0.6}},
                      "c": {"X": {"psnr": 7.0}, "Y": {"psnr": 6.0}}}, "t2i")
    got = across_models(three)["t2i"]
    assert got["X"]["psnr"] == pytest.approx({"mean": 8.0, "std": 1.0, "n": 3})
    assert got["X"]["lpips"] == pytest.approx({"mean": 0.65, "std": math.sqrt(0.005), "n": 2})
    assert got["Y"]["psnr"] == pytest.approx({"mean": 6.5, "std": math.sqrt(0.5), "n": 2})
    table = across_models_table({"t2i": got}, "t2i", three)
    assert table.startswith("# Table 5: Text→Image by category, mean ± sample std (ddof=1) across 3 models")
    assert "| X | 8.0000 ± 1.0000 | 0.6500 ± 0.0707 |" in table and "Categories some models lack" in table


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    out = tmp_path_factory.mktemp("two")
    # four items a category: with two, the short-SFT model's titles share no word with any reference either
    args = ["data=sample", "limit=4", "batch_size=4", "max_new_tokens=24", "dtype=float32", "progress=false"]
    assert cqbench.main([f"models=[{TINY},tiny://qwen2.5-vl-sft]", f"output_dir={out}", *args]) == 0
    return out


def test_two_models_write_table4_equal_to_a_hand_computation(two_models):
    import statistics

    saved = json.loads((two_models / "results.json").read_text())
    per_model = [saved["results"][m]["i2t"]["per_category"] for m in ("tiny-qwen2.5-vl", "tiny-qwen2.5-vl-sft")]
    table = (two_models / "table4.md").read_text()
    assert not (two_models / "table5.md").exists()
    spread = 0.0
    for cat in ("All_Beauty", "Toys_and_Games", "Video_Games"):
        cells = []
        for name in ("tfidf_cosine", "tfidf_euclidean", "token_overlap"):
            values = [pc[cat][name]["mean"] for pc in per_model]
            mean, std = statistics.fmean(values), statistics.stdev(values)  # sample std, by hand
            assert saved["across_models"]["i2t"][cat][name] == pytest.approx({"mean": mean, "std": std, "n": 2})
            cells.append(f"{mean:.4f} ± {std:.4f}")
            spread += std
        assert f"| {cat} | " + " | ".join(cells) + " |" in table
    assert spread > 0  # the two models differ, so a wrong std could not pass
    assert "Models: tiny-qwen2.5-vl, tiny-qwen2.5-vl-sft." in table


def test_a_later_single_model_run_removes_the_stale_table(two_models, tmp_path):
    import shutil

    out = tmp_path / "again"
    shutil.copytree(two_models, out)
    args = ["data=sample", "limit=2", "batch_size=4", "max_new_tokens=24", "dtype=float32", "progress=false"]
    assert cqbench.main([f"models=[{TINY}]", f"output_dir={out}", *args]) == 0
    assert not (out / "table4.md").exists()
    assert json.loads((out / "results.json").read_text())["across_models"] == {}


# ------------------------------------------------------------------------------------------ RecBench's items
def test_split_recbench_generates_for_every_recbench_item_and_recbench_replaces_them(tmp_path):
    """Every RecBench item of a category gets a scored generation, and `mmpc-rl recbench generated=[output_dir]`
    maps each to its item id: at missing rate 1.0 every missing row gets generated features."""
    from mmpc_rl.data import load_items
    from mmpc_rl.recbench import conditions as C
    from mmpc_rl.recbench.bench import RecBenchConfig, resolve_data_dir
    from mmpc_rl.recbench.data import load_category

    args = ["data=sample", "categories=[Video_Games]", "batch_size=16", "max_new_tokens=4", "dtype=float32",
            "progress=false", "split=recbench"]
    assert cqbench.main([f"models=[{TINY}]", f"output_dir={tmp_path}", *args]) == 0
    rec_items = {it["parent_asin"]: it for it in load_items("sample", split="recbench", categories=["Video_Games"])}
    recs = list(read_jsonl(tmp_path / "items" / "tiny-qwen2.5-vl" / "i2t.jsonl"))
    assert sorted(r["parent_asin"] for r in recs) == sorted(rec_items)
    assert all(r["reference"] == rec_items[r["parent_asin"]]["title"] and r["metrics"] for r in recs)  # scored
    generated, skipped = C.read_generated(tmp_path)
    data = load_category(resolve_data_dir(RecBenchConfig(data_dir="sample")), "Video_Games")
    asin_to_item = {it["parent_asin"]: i for i, it in enumerate(data.items)}
    replacements = C.for_category(generated[("tiny-qwen2.5-vl", "i2t")], "Video_Games", asin_to_item)
    missing = C.missing_ids(data.n_items, 1.0)
    assert len(missing) == data.n_items > 0 and set(missing) <= set(replacements)


def test_split_recbench_limit_takes_the_first_items_by_id(tmp_path):
    from mmpc_rl.data import load_items

    assert cqbench.main([f"models=[{TINY}]", f"output_dir={tmp_path}", "split=recbench", *ARGS]) == 0
    every = load_items("sample", split="recbench")
    first = {}
    for it in sorted(every, key=lambda it: it["parent_asin"]):
        first.setdefault(it["category"], []).append(it["parent_asin"])
    recs = read_jsonl(tmp_path / "items" / "tiny-qwen2.5-vl" / "i2t.jsonl")
    assert sorted(r["key"] for r in recs) == sorted(f"{c}/{a}" for c, asins in first.items() for a in asins[:2])
    with pytest.raises(ConfigError, match="split='rec'; valid choices: train, cqbench, recbench"):
        cqbench.parse_config(["split=rec"])


# --------------------------------------------------------------------------------------------- profile=paper
QWEN, GEMMA = "Qwen/Qwen2.5-VL-7B-Instruct", "google/gemma-3-4b-it"


def test_profile_paper_sets_the_authors_settings_and_explicit_keys_win():
    cfg = cqbench.parse_config(["profile=paper"])
    assert (cfg.qlora, cfg.dtype, cfg.prompt, cfg.render_dtype) == (True, "family", "paper", "float16")
    assert (cfg.clip, cfg.bertscore) == ("ViT-B-32/openai", "roberta-large")
    assert cqbench.parse_config(["profile=paper", "split=recbench"]).prompt == "paper-rec"
    mine = cqbench.parse_config(["profile=paper", "dtype=bfloat16", "clip=null", "split=recbench", "prompt=paper"])
    assert (mine.qlora, mine.dtype, mine.clip, mine.prompt) == (True, "bfloat16", None, "paper")
    assert cqbench.parse_config([]).qlora is False  # no profile: the project's defaults
    with pytest.raises(ConfigError, match=r"unknown profile 'papr' \(did you mean 'paper'\?\)"):
        cqbench.parse_config(["profile=papr"])
    with pytest.raises(ConfigError, match="dtype='half'"):
        cqbench.parse_config(["dtype=half"])


def test_profile_paper_loads_each_family_as_the_authors(monkeypatch):
    """NF4 + double quantisation; float16 weights and compute for Qwen, bfloat16 for Gemma (GAIR-Lab/MMPCBench,
    CQBench/imagine_amazon_data_bench.py `load_model`). The loader is patched: no weights are read."""
    import transformers

    from mmpc_rl.models import policy
    from mmpc_rl.plan.placement import Placement

    planned, loaded = {}, {}
    monkeypatch.setattr(cqbench, "plan_placement", lambda name, **kw: planned.update({name: kw}) or Placement(
        "4bit" if kw["qlora"] else "per_rank", {"": "cuda:0"}, qlora=kw["qlora"], note="fits"))
    monkeypatch.setattr(policy, "resolve_model_path", lambda name, revision=None: name)
    monkeypatch.setattr(policy, "load_processor", lambda mc, path=None: "processor")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on the GPU the plan above pretends
    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained",
                        staticmethod(lambda path, **kw: loaded.update({path: kw}) or "model"))
    cfg = cqbench.parse_config(["profile=paper", f"models=[{QWEN},{GEMMA}]"])
    for name, dtype in ((QWEN, torch.float16), (GEMMA, torch.bfloat16)):
        assert cqbench.load_model(cfg, name) == ("model", "processor")
        q = loaded[name]["quantization_config"]
        assert (q.load_in_4bit, q.bnb_4bit_quant_type, q.bnb_4bit_use_double_quant) == (True, "nf4", True)
        assert loaded[name]["dtype"] == dtype and q.bnb_4bit_compute_dtype == dtype
        assert loaded[name]["device_map"] == {"": "cuda:0"}
        assert planned[name]["qlora"] is True and planned[name]["dtype"] == str(dtype).removeprefix("torch.")
    plain = cqbench.parse_config([f"models=[{QWEN}]"])  # no profile: unquantised bf16, as documented
    cqbench.load_model(plain, QWEN)
    assert "quantization_config" not in loaded[QWEN] and loaded[QWEN]["dtype"] == torch.bfloat16


def test_profile_paper_renders_sd35_in_float16(monkeypatch):
    from mmpc_rl.render import Renderer

    seen = {}
    monkeypatch.setattr(Renderer, "from_pretrained", classmethod(lambda cls, name, **kw: seen.update(kw) or "r"))
    monkeypatch.setattr(cqbench, "build_scorers", lambda tasks, **kw: kw)
    scorers = cqbench.load_scorers(cqbench.parse_config(["profile=paper", "tasks=[t2i]"]))
    assert seen["dtype"] == "float16" and scorers["clip"] == "ViT-B-32/openai"
    cqbench.load_scorers(cqbench.parse_config(["tasks=[t2i]"]))
    assert seen["dtype"] is None  # the project's default: bfloat16 on CUDA


def test_results_record_the_profile_and_what_loaded(tmp_path):
    args = [f"models=[{TINY}]", f"output_dir={tmp_path}", "data=sample", "limit=1", "max_new_tokens=4",
            "progress=false", "profile=paper", "bertscore=null"]
    assert cqbench.main(args) == 0
    saved = json.loads((tmp_path / "results.json").read_text())
    profile = saved["profile"]
    assert profile["name"] == "paper" and profile["recbench"] == {"select_by": "test"}
    assert profile["overridden"] == {"bertscore": None} and profile["defaults"]["qlora"] is True
    settings = saved["results"]["tiny-qwen2.5-vl"]["i2t"]["settings"]
    # no GPU here, so no 4-bit: the record says what was loaded, not what was asked
    assert settings["quantization"] is None and settings["weights_dtype"] == "torch.float32"
    assert settings["prompt"] == "paper" and "must not be empty" in settings["prompt_text"]


# ------------------------------------------------------------------------------------- resuming is per setting
def test_a_rerun_with_other_settings_refuses_to_resume(first_run, tmp_path):
    import shutil

    out = tmp_path / "cq"
    shutil.copytree(first_run[0], out)
    with pytest.raises(ConfigError, match=r"made with other settings \(prompt: 'paper' -> 'detailed'"):
        cqbench.run(cqbench.parse_config([f"models=[{TINY}]", f"output_dir={out}", *ARGS, "prompt=detailed"]))
    with pytest.raises(ConfigError, match=r"other settings \(max_new_tokens: 6 -> 7\)"):
        cqbench.run(cqbench.parse_config([f"models=[{TINY}]", f"output_dir={out}", *ARGS, "max_new_tokens=7"]))
    (out / "items" / "tiny-qwen2.5-vl" / "i2t.settings.json").unlink()
    with pytest.raises(ConfigError, match="has no i2t.settings.json beside it"):
        cqbench.run(cqbench.parse_config([f"models=[{TINY}]", f"output_dir={out}", *ARGS]))


def test_cqbench_t2i_images_stay_in_image_dir(tmp_path):
    from mmpc_rl.eval.runner import Scorers, score_batch
    from mmpc_rl.tasks import get_task

    ref = tmp_path / "ref.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(ref)
    items = [{"parent_asin": a, "category": c, "title": "t", "image": str(ref)}
             for a, c in (("../../escape", "All_Beauty"), ("/abs/path/x", "../../cat"), ("ok", "/etc"))]
    scorers = Scorers(renderer=lambda prompts, seeds: [Image.new("RGB", (32, 32)) for _ in prompts])
    img_dir = tmp_path / "run" / "images"
    _, paths = score_batch(get_task("t2i"), items, ["a", "b", "c"], scorers, image_dir=img_dir, seed=0)
    assert len(set(paths)) == 3
    for p in paths:
        assert Path(p).resolve().is_relative_to(img_dir.resolve()) and Path(p).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.png", "run"]  # nothing created outside


def test_cqbench_model_folder_names_stay_one_component():
    from mmpc_rl.eval.cqbench import model_key

    for name in ("tiny://../../x", "..", "/", "org/..", "tiny:///abs", "Qwen/Qwen2.5-VL-7B-Instruct"):
        key = model_key(name)
        assert key not in ("", ".", "..") and "/" not in key, name
    assert model_key("Qwen/Qwen2.5-VL-7B-Instruct") == "Qwen2.5-VL-7B-Instruct"
    assert model_key("tiny://qwen") == "tiny-qwen"
