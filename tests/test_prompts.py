"""Named prompts: the authors' wording by default, the project's detailed prompt on request, and every CQBench result
saying which prompt produced it."""

from __future__ import annotations

import json

import pytest

from mmpc_rl.errors import ConfigError
from mmpc_rl.prompts import DETAILED_I2T, DETAILED_T2I, PAPER_I2T, PAPER_T2I, caption
from mmpc_rl.tasks import get_task

# phrases of the authors' Qwen2.5-VL prompts (GAIR-Lab/MMPCBench, CQBench/imagine_amazon_data_bench.py)
AUTHORS_I2T = ["Make sure the output is a valid JSON object that can be parsed. ",
               "The output must not be empty, blank, or newline — directly give the answer.The title should be",
               "For example, if the image shows a stainless steel water bottle, you might output:\n{\n  \"title\": "]
AUTHORS_T2I = ["You are a professional product photographer and prompt engineer. ",
               "CRITICAL: The prompt must be within 77 tokens maximum. Keep it concise but descriptive.\n\n"
               "Product description: Acme Red Kettle\n\nExample output format:\n{\n  \"prompt\": "]


def test_the_default_prompt_is_the_authors_and_the_detailed_one_is_named():
    i2t, t2i = get_task("i2t"), get_task("t2i")
    assert (i2t.prompt_name, i2t.prompt, t2i.prompt_name, t2i.prompt) == ("paper", PAPER_I2T, "paper", PAPER_T2I)
    assert all(p in i2t.prompt for p in AUTHORS_I2T) and i2t.prompt.endswith("}\nOutput:")
    t2i_text = t2i.messages({"title": "Acme Red Kettle"})[0]["content"][0]["text"]
    assert all(p in t2i_text for p in AUTHORS_T2I)
    # the project's additions live only in the detailed prompt
    assert "naming the brand" not in i2t.prompt and "naming the brand" in get_task("i2t", "detailed").prompt
    assert "white background" not in t2i_text and "white background" in DETAILED_T2I
    detailed = get_task("i2t", "detailed")
    assert (detailed.prompt_name, detailed.prompt) == ("detailed", DETAILED_I2T)
    assert detailed.messages({"title": "x"})[0]["content"][1]["text"] == DETAILED_I2T


def test_unknown_prompt_fails_at_validation_naming_the_choices():
    from mmpc_rl.config import load_recipe
    from mmpc_rl.eval.cqbench import parse_config

    with pytest.raises(ConfigError, match=r"unknown prompt 'detaild' \(did you mean 'detailed'\?\)"):
        load_recipe(["recipe=demo-i2t", "data.prompt=detaild"])
    with pytest.raises(ConfigError, match="unknown prompt 'papers'"):
        parse_config(["prompt=papers"])
    with pytest.raises(ConfigError, match="unknown prompt"):
        get_task("t2i", "fancy")
    assert parse_config(["prompt=detailed"]).prompt == "detailed"


def test_data_prompt_reaches_the_training_prompts():
    from mmpc_rl.config import load_recipe
    from mmpc_rl.train.builder import build_dataset

    for name, text in (("paper", PAPER_I2T), ("detailed", DETAILED_I2T)):
        cfg = load_recipe(["recipe=demo-i2t", f"data.prompt={name}", "data.limit_per_category=1"])
        ds = build_dataset(cfg, get_task(cfg.task, cfg.data.prompt))
        assert {row[0]["content"][1]["text"] for row in ds["prompt"]} == {text}


def test_tables_caption_the_prompt_and_flag_a_mix():
    from mmpc_rl.eval.report import aggregate, delta_table, markdown_tables

    rec = {"category": "A", "status": "ok", "metrics": {"token_overlap": 0.5}}
    paper = {**aggregate([rec], "i2t"), "prompt": "paper"}
    detailed = {**aggregate([rec], "i2t"), "prompt": "detailed"}
    assert caption("paper") in markdown_tables({"m": {"i2t": paper}})
    assert caption("detailed") in delta_table(detailed, detailed, "i2t")
    mixed = delta_table(paper, detailed, "i2t")
    assert "not comparable" in mixed and caption("paper") in mixed and caption("detailed") in mixed
    assert "not recorded" in markdown_tables({"m": {"i2t": aggregate([rec], "i2t")}})  # an old results.json


def test_cqbench_run_uses_and_records_the_prompt(tmp_path, monkeypatch, one_thread):
    from mmpc_rl.eval import cqbench, runner

    seen = []
    real = runner.generate_batch

    def spy(model, processor, task, items, **kw):
        seen.append(task.prompt)
        return real(model, processor, task, items, **kw)

    monkeypatch.setattr(runner, "generate_batch", spy)
    rc = cqbench.main(["models=[tiny://qwen2.5-vl]", "data=sample", "limit=1", "max_new_tokens=4", "dtype=float32",
                       "progress=false", "prompt=detailed", f"output_dir={tmp_path}"])
    assert rc == 0 and set(seen) == {DETAILED_I2T}
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["config"]["prompt"] == "detailed"
    assert saved["results"]["tiny-qwen2.5-vl"]["i2t"]["prompt"] == "detailed"
    assert caption("detailed") in (tmp_path / "tables.md").read_text()
    from mmpc_rl.data import load_items

    titles = {it["parent_asin"]: it["title"] for it in load_items("sample", split="cqbench")}
    rec = json.loads((tmp_path / "items" / "tiny-qwen2.5-vl" / "i2t.jsonl").read_text().splitlines()[0])
    assert rec["reference"] == titles[rec["parent_asin"]]  # Task.reference: what the answer is scored against


def test_a_task_is_scored_against_the_title_or_the_real_image():
    item = {"parent_asin": "A1", "title": "Red Toy Car", "image": "/data/A1.jpg"}
    assert (get_task("i2t").reference(item), get_task("t2i").reference(item)) == ("Red Toy Car", "/data/A1.jpg")


# The authors' Gemma-3 title prompt, copied from GAIR-Lab/MMPCBench CQBench/imagine_amazon_data_bench.py
# (`infer_product_title`, gemma_vl branch); their Recbench/imagine_amazon_data_rec.py gives this text to Qwen too.
AUTHORS_GEMMA_I2T = (
    "You are an Amazon product title generation assistant. "
    "Given only the product image, generate a suitable Amazon product title. "
    "Generate a JSON object with only the key: 'title'. "
    "Make sure the output is a valid JSON object that can be parsed. "
    "IMPORTANT: Please output in English only. "
    "The title should be descriptive, professional, and suitable for an Amazon listing. "
    "For example, if the image shows a stainless steel water bottle, you might output:\n"
    "{\n"
    "  \"title\": \"HydroFlow 24oz Stainless Steel Insulated Water Bottle with Leak-Proof Design\"\n"
    "}"
)


def test_paper_prompt_is_worded_for_the_model_family(tmp_path):
    from mmpc_rl.prompts import model_family, prompt_text

    for gemma in ("google/gemma-3-4b-it", "google/gemma-3-27b-it", "/models/Gemma-3-12B"):
        assert prompt_text("i2t", "paper", gemma) == AUTHORS_GEMMA_I2T
        assert get_task("i2t", "paper", gemma).prompt == AUTHORS_GEMMA_I2T
    assert "must not be empty" not in AUTHORS_GEMMA_I2T and not AUTHORS_GEMMA_I2T.endswith("Output:")
    for qwen in ("Qwen/Qwen2.5-VL-7B-Instruct", "tiny://qwen2.5-vl", "some/other-vlm", None):
        assert prompt_text("i2t", "paper", qwen) == PAPER_I2T  # the authors' fallback branch is Qwen's
    # a folder named after neither family is told by its config.json
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma3"}))
    assert model_family(str(tmp_path)) == "gemma" and prompt_text("i2t", "paper", str(tmp_path)) == AUTHORS_GEMMA_I2T
    # the image-prompt wording is the same for every family; the detailed prompt has no family wording
    assert prompt_text("t2i", "paper", "google/gemma-3-4b-it") == PAPER_T2I
    assert prompt_text("i2t", "detailed", "google/gemma-3-4b-it") == DETAILED_I2T


def test_paper_rec_is_the_authors_recbench_wording_for_every_family():
    from mmpc_rl.prompts import all_prompt_texts, caption, prompt_text

    for model in ("Qwen/Qwen2.5-VL-7B-Instruct", "google/gemma-3-4b-it", None):
        assert prompt_text("i2t", "paper-rec", model) == AUTHORS_GEMMA_I2T
        assert prompt_text("t2i", "paper-rec", model) == PAPER_T2I
    assert "imagine_amazon_data_rec.py" in caption("paper-rec")
    # the tiny tokenizer's corpus stays what cached tiny models were built from
    assert all_prompt_texts() == [PAPER_I2T, PAPER_T2I, DETAILED_I2T, DETAILED_T2I]


def test_cqbench_gives_a_gemma_model_the_authors_gemma_prompt(tmp_path, monkeypatch, one_thread):
    """The Gemma id reaches the prompt: the tiny Qwen stands in for Gemma's weights, the wording follows the id."""
    from mmpc_rl.config import ModelConfig
    from mmpc_rl.eval import cqbench, runner
    from mmpc_rl.models import load_policy

    monkeypatch.setattr(cqbench, "load_policy", lambda mc, **kw: load_policy(
        ModelConfig(name_or_path="tiny://qwen2.5-vl", dtype="float32"), cpu=True))
    monkeypatch.setattr(cqbench, "resolve_model_path", lambda name, **kw: name)  # the id is not on disk here
    seen = []
    real = runner.generate_batch
    monkeypatch.setattr(runner, "generate_batch", lambda m, p, task, items, **kw: seen.append(task.prompt) or real(
        m, p, task, items, **kw))
    rc = cqbench.main(["models=[google/gemma-3-4b-it]", "data=sample", "limit=1", "max_new_tokens=4",
                       "progress=false", f"output_dir={tmp_path}"])
    assert rc == 0 and set(seen) == {AUTHORS_GEMMA_I2T}
    settings = json.loads((tmp_path / "items" / "gemma-3-4b-it" / "i2t.settings.json").read_text())
    assert settings["prompt_text"] == AUTHORS_GEMMA_I2T


def test_training_words_the_prompt_for_the_policys_family_as_cqbench_does(tmp_path, tiny_qwen, minilm, one_thread):
    """A Gemma policy trains on the authors' Gemma wording, so that the run's own CQBench passes and a later
    `eval cqbench adapter=RUN_DIR` (which words the prompt for the model's family) score the same prompt."""
    import shutil

    from mmpc_rl.train.builder import build_trainer
    from mmpc_rl.train.recipe import load_training_recipe

    texts = {}
    for name in ("qwen2.5-vl-tiny", "gemma-3-tiny"):  # the tiny Qwen weights in folders named for each family
        folder = tmp_path / name
        shutil.copytree(tiny_qwen, folder)
        recipe = load_training_recipe(["recipe=demo-i2t", f"model.name_or_path={folder}", "eval.enabled=false",
                                       f"trainer.output_dir={tmp_path / ('run-' + name)}", "trainer.max_steps=1"])
        trainer = build_trainer(recipe, models={"minilm": minilm})
        texts[name] = json.dumps(trainer.train_dataset[0]["prompt"])
    assert json.dumps(AUTHORS_GEMMA_I2T)[1:-1] in texts["gemma-3-tiny"]
    assert json.dumps(PAPER_I2T)[1:-1] in texts["qwen2.5-vl-tiny"]
