"""The bundled CPU demo learns visibly and is the same everywhere: its seeded run through the real GRPO path, with the
real rewards (json_format + all-MiniLM-L6-v2 cosine), raises the reward, beats its own before-training CQBench numbers
on the held-out items, and gives exactly the numbers the README quotes, whether torch runs on one thread or two and
whichever process built the tiny models first. The recipe is demo-i2t exactly as `mmpc-rl demo` runs it; only the
output folder and the checkpoint saving (no effect on training) are overridden."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mmpc_rl.train.curves import quarter_means

# The README's numbers (its Quick start), measured from a fresh clone with an empty cache:
#   HF_HUB_OFFLINE=1 MMPC_RL_CACHE=$(mktemp -d) .venv/bin/accelerate launch train/grpo.py recipe=demo-i2t
README_REWARD = (0.91, 1.05)  # total reward, mean of the first and of the last quarter of the steps
README_PARSED = (5, 12)  # held-out CQBench items whose greedy answer parsed, before and after training
README_METRICS = {"tfidf_cosine": (0.0045, 0.0250), "tfidf_euclidean": (0.4148, 0.4175),
                  "token_overlap": (0.034, 0.053)}
REWARD_RISE_MARGIN = 0.1
TEXT_METRICS = tuple(README_METRICS)


def _demo(out: Path, cache: Path, threads: int) -> Path:
    """The demo into `out`, from the empty tiny-model cache `cache`, with torch at `threads` threads beforehand."""
    import torch

    from mmpc_rl.train.grpo import main

    old_cache, old_threads = os.environ.get("MMPC_RL_CACHE"), torch.get_num_threads()
    os.environ["MMPC_RL_CACHE"] = str(cache)
    torch.set_num_threads(threads)
    try:
        assert main(["recipe=demo-i2t", f"trainer.output_dir={out}", "trainer.save_strategy=no"]) == 0
    finally:
        torch.set_num_threads(old_threads)
        os.environ["MMPC_RL_CACHE"] = old_cache or ""
        if old_cache is None:
            del os.environ["MMPC_RL_CACHE"]
    return out


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo-1-thread")
    return _demo(root / "run", root / "cache", threads=1)


@pytest.fixture(scope="module")
def demo_run_two_threads(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo-2-threads")
    return _demo(root / "run", root / "cache", threads=2)


def _rewards(run: Path) -> list[float]:
    return [r["reward"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_the_demo_reward_rises(demo_run):
    rewards = _rewards(demo_run)
    assert len(rewards) >= 20
    first, last = quarter_means(rewards)
    assert last - first > REWARD_RISE_MARGIN, (first, last, rewards)
    assert (round(first, 2), round(last, 2)) == README_REWARD
    assert (demo_run / "reward_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_the_demo_beats_its_before_training_cqbench_on_held_out_items(demo_run):
    from omegaconf import OmegaConf

    from mmpc_rl.data import load_items

    before, after = (json.loads((demo_run / "cqbench" / t / "summary.json").read_text()) for t in ("before", "after"))
    assert before["n_items"] == after["n_items"] >= 12
    assert before["prompt"] == after["prompt"] == "paper"
    for metric in TEXT_METRICS:
        assert after["summary"][metric]["mean"] > before["summary"][metric]["mean"], metric
    assert after["status"].get("ok", 0) > before["status"].get("ok", 0)
    assert (before["status"].get("ok", 0), after["status"].get("ok", 0)) == README_PARSED
    digits = {"token_overlap": 3}
    for metric, quoted in README_METRICS.items():
        got = tuple(round(s["summary"][metric]["mean"], digits.get(metric, 4)) for s in (before, after))
        assert got == quoted, metric
    # held out: none of the scored items was a training prompt
    limit = OmegaConf.load(demo_run / "config.yaml").data.limit_per_category
    train = {it["parent_asin"] for it in load_items("sample", split="train", limit_per_category=limit)}
    scored = {json.loads(line)["parent_asin"] for line in (demo_run / "cqbench" / "after" / "items.jsonl").open()}
    assert scored and not scored & train
    table = (demo_run / "cqbench" / "before_after.md").read_text()
    assert "| All (mean over categories) | Δ |" in table and "Prompt: `paper`" in table


def test_the_demo_is_the_same_with_one_or_two_threads_from_an_empty_cache(demo_run, demo_run_two_threads):
    """Each run built its own tiny models (an empty cache); with two torch threads the SFT model's weights and every
    number after them came out different before the builds and the recipe pinned one thread."""
    from safetensors.torch import load_file

    assert _rewards(demo_run_two_threads) == _rewards(demo_run)
    table = (demo_run / "cqbench" / "before_after.md").read_text()
    assert (demo_run_two_threads / "cqbench" / "before_after.md").read_text() == table
    sft = [load_file(run.parent / "cache" / "tiny" / "qwen2.5-vl-sft" / "model.safetensors")
           for run in (demo_run, demo_run_two_threads)]
    assert all(sft[0][k].equal(sft[1][k]) for k in sft[0])


def test_eval_cqbench_on_the_run_folder_compares_the_adapter_with_its_base_as_the_run_did(demo_run, tmp_path):
    """`mmpc-rl eval cqbench adapter=RUN_DIR` alone: the base, prompt, dtype and items come from the run, so its base
    arm scores what the run's "before" scored and its adapter arm what "after" scored; the adapter names its base by
    the recipe's id, not by a cache folder of this machine."""
    from mmpc_rl.eval.cqbench import main, model_key

    assert json.loads((demo_run / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        "tiny://qwen2.5-vl-sft"
    out = tmp_path / "cq"
    assert main([f"adapter={demo_run}", f"output_dir={out}", "progress=false"]) == 0
    assert "# CQBench: base vs LoRA" in (out / "lora_vs_base.md").read_text()
    results = json.loads((out / "results.json").read_text())["results"]
    base = results["tiny-qwen2.5-vl-sft"]["i2t"]
    lora = results[f"tiny-qwen2.5-vl-sft+{model_key(str(demo_run))}"]["i2t"]
    for arm, tag in ((base, "before"), (lora, "after")):
        run = json.loads((demo_run / "cqbench" / tag / "summary.json").read_text())
        assert arm["n_items"] == run["n_items"] and arm["prompt"] == run["prompt"]
        for metric in TEXT_METRICS:
            assert arm["summary"][metric]["mean"] == pytest.approx(run["summary"][metric]["mean"], abs=1e-9), metric
