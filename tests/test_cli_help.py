"""`--help` (and `-h`) on every command prints its usage and its keys with their defaults, from the schema its parser
reads, and exits 0; `eval --help` lists both benchmarks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mmpc_rl.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("argv, expected", [
    (["train", "--help"], ["usage: mmpc-rl train recipe=NAME", "recipes: demo-i2t, demo-t2i, i2t, t2i",
                           "model.name_or_path = Qwen/Qwen2.5-VL-7B-Instruct", "eval.batch_size = 16",
                           "a whole number >= 1", "trainer.*  any trl.GRPOConfig field", "minilm_cosine (i2t)"]),
    (["train", "recipe=i2t", "-h"], ["values shown: recipe i2t", "model.max_pixels = 401408",
                                     "  trainer.learning_rate = 1e-05"]),
    (["demo", "--help"], ["mmpc-rl demo", "values shown: recipe demo-i2t", "model.name_or_path = tiny://qwen2.5-vl-sft"]),
    (["plan", "--help"], ["usage: mmpc-rl plan recipe=NAME", "gpu_gb = 80.0", "a number > 0", "format = text",
                          "`mmpc-rl train --help` lists them"]),
    (["eval", "--help"], ["mmpc-rl eval cqbench", "mmpc-rl eval speed"]),
    (["eval", "cqbench", "--help"], ["adapter=RUN_DIR", "batch_size = 16", "models = [Qwen/Qwen2.5-VL-7B-Instruct]",
                                     "limit = null"]),
    (["eval", "speed", "-h"], ["usage: mmpc-rl eval speed", "batch_sizes = [1, 8]"]),
    (["curves", "--help"], ["usage: mmpc-rl curves out=OUTPUT_DIR", "out = null"]),
    (["data", "build", "--help"], ["usage: mmpc-rl data build", "cqbench_per_category = 1000", "workers = 16"]),
    (["data", "sample", "--help"], ["usage: mmpc-rl data sample", "seed = 0"]),
    (["recbench", "--help"], ["usage: mmpc-rl recbench", "models = [VBPR, BM3, FREEDOM]", "epochs = 1000"]),
    (["benchmark", "--help"], ["usage: mmpc-rl benchmark", "shape = real", "real | tiny"]),
])
def test_every_command_has_help(capsys, argv, expected):
    assert main(argv) == 0
    out = capsys.readouterr().out
    for text in expected:
        assert text in out, (text, out)


def test_file_entry_points_have_help():
    """The scripts users run directly (and `accelerate launch` runs) answer --help through the same path."""
    for script, needle in (("train/grpo.py", "usage: mmpc-rl train"), ("eval/cqbench.py", "adapter=RUN_DIR")):
        proc = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True,
                              timeout=300, cwd=ROOT)
        assert proc.returncode == 0 and needle in proc.stdout and "Traceback" not in proc.stderr, proc.stderr[-2000:]
