"""`mmpc-rl eval cqbench adapter=RUN_DIR` without models=: the base and the run's own CQBench setup come from the
run folder (its config.yaml and adapter_config.json); keys given on the command line win."""

from __future__ import annotations

import json

import pytest

from mmpc_rl.config import load_recipe
from mmpc_rl.errors import ModelLoadError
from mmpc_rl.eval.cqbench import parse_config
from mmpc_rl.train.run_config import save_config


@pytest.fixture
def run_dir(tmp_path):
    """A demo run's folder as training leaves it, its adapter naming the base by a cache folder of another machine."""
    run = tmp_path / "demo-i2t"
    save_config(load_recipe(["recipe=demo-i2t", f"trainer.output_dir={run}", "data.categories=[Video_Games]"]), run)
    adapter = {"base_model_name_or_path": "/home/someone/.cache/mmpc_rl/tiny/qwen2.5-vl-sft", "peft_type": "LORA"}
    for folder in (run, run / "checkpoint-15"):
        folder.mkdir(exist_ok=True)
        (folder / "adapter_config.json").write_text(json.dumps(adapter))
    return run


def test_the_run_sets_the_base_and_how_it_is_loaded_asked_and_scored(run_dir):
    for adapter in (run_dir, run_dir / "checkpoint-15"):
        cfg = parse_config([f"adapter={adapter}"])
        assert cfg.models == ["tiny://qwen2.5-vl-sft"]  # the recipe's id, not the adapter's cache folder
        assert (cfg.tasks, cfg.dtype, cfg.max_pixels, cfg.prompt, cfg.data) == (["i2t"], "float32", None, "paper",
                                                                                "sample")
        assert (cfg.categories, cfg.limit, cfg.batch_size, cfg.max_new_tokens, cfg.bertscore) == (
            ["Video_Games"], 4, 8, 24, None)
    cfg = parse_config([f"adapter={run_dir}", "limit=2", "dtype=bfloat16", "categories=All_Beauty"])
    assert (cfg.limit, cfg.dtype, cfg.categories, cfg.max_new_tokens) == (2, "bfloat16", ["All_Beauty"], 24)
    cfg = parse_config([f"adapter={run_dir}", "models=[tiny://qwen2.5-vl]"])  # models= given: nothing is read
    assert (cfg.models, cfg.dtype, cfg.data) == (["tiny://qwen2.5-vl"], "bfloat16", "data/mmpcbench")


def test_an_adapter_without_its_run_or_its_base_is_one_line(run_dir, tmp_path):
    (run_dir / "config.yaml").unlink()
    with pytest.raises(ModelLoadError, match=r"was trained on /home/someone/.*, which is not on this machine: add "
                                             r"models=\[ID or folder of that base\]"):
        parse_config([f"adapter={run_dir}"])
    with pytest.raises(ModelLoadError, match="is not a LoRA folder"):
        parse_config([f"adapter={tmp_path / 'nothing'}"])
