"""The GPU check script's CPU dry mode (tiny shapes): every section runs end to end through the same code the GPU
run uses and lands in one JSON and one markdown table."""

from __future__ import annotations

import json

import pytest
import torch

from mmpc_rl.errors import ConfigError


def test_dry_run_writes_every_section(tmp_path, one_thread, capsys):
    from mmpc_rl.bench.cli import main

    assert main(["suite=gpu", "dry=true", f"out={tmp_path}"]) == 0  # `mmpc-rl benchmark suite=gpu` routes here
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    sections = results["sections"]
    assert list(sections) == ["grpo", "qlora", "t2i", "cqbench"]

    arms = sections["grpo"]["arms"]
    for arm in ("plain", "project"):
        assert arms[arm]["new_tokens_per_step"] == 4  # the forced completion length: decode figures compare
        assert arms[arm]["s_per_step"] > 0 and arms[arm]["decode_ms_per_token"] > 0
    assert (arms["plain"]["settings"]["gradient_checkpointing"], arms["project"]["settings"]["gradient_checkpointing"]
            ) == (True, False)
    assert set(sections["grpo"]["ratio"]) >= {"s_per_step", "peak_mem"}

    if not torch.cuda.is_available():
        assert "CUDA" in sections["qlora"]["skipped"]
    group = sections["t2i"]["64px"]
    assert (group["completions"], group["renders"], group["scored"]) == (4, 16, 4)  # 4 distinct x 4 images
    assert sections["cqbench"]["items"] == 4 and sections["cqbench"]["items_per_minute"] > 0

    table = (tmp_path / "gpu_check.md").read_text()
    assert "| grpo | plain/project s_per_step |" in table and "| t2i | 64px: group of 16 renders, s |" in table
    assert "items/min (batch 2, 4 new tokens)" in table and table in capsys.readouterr().out


@pytest.mark.parametrize("argv, needle", [
    (["suite=cpu"], "valid choices: gpu"),
    (["suite=gpu", "sections=[grpo,render]"], "unknown section 'render'"),
    (["suite=gpu", "dry=maybe"], "bad option"),
])
def test_option_errors_are_one_line(argv, needle):
    from mmpc_rl.bench.gpu_check import parse

    with pytest.raises(ConfigError, match=needle):
        parse(argv)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_real_shapes_refuse_a_cpu_machine(tmp_path):
    from mmpc_rl.bench.gpu_check import main

    with pytest.raises(ConfigError, match="dry=true"):
        main(["suite=gpu", f"out={tmp_path}"])
