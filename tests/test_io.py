"""mmpc_rl.io: file names made from data stay one path component; a JSONL file with a bad middle line or a torn
last line reads every good record."""

from __future__ import annotations

import logging
from pathlib import Path

from mmpc_rl.io import append_jsonl, read_jsonl, safe_name

HOSTILE = ["../../x", "/abs/path", "..", ".", "", "a/b", "a\\b", "~", "%2F", "x" * 400, "é/..", "B07ABC-12_x"]


def test_safe_name_is_one_component_and_unique(tmp_path):
    names = [safe_name(s) for s in HOSTILE]
    assert len(set(names)) == len(HOSTILE)
    for n in names:
        assert n and "/" not in n and "\\" not in n and ".." not in n and n not in (".", "..")
        assert not Path(n).is_absolute() and len(n) <= 150
        assert (tmp_path / n).resolve().parent == tmp_path.resolve()
    assert safe_name("B07ABC-12_x") == "B07ABC-12_x" and safe_name("All_Beauty") == "All_Beauty"  # names unchanged


def test_bad_middle_line_is_skipped_not_truncated(tmp_path, caplog):
    path = tmp_path / "r.jsonl"
    for i in range(5):
        append_jsonl(path, {"i": i})
    lines = path.read_text().splitlines(keepends=True)
    lines.insert(2, '{"i": broken\n')
    lines.insert(4, "[1, 2]\n")
    path.write_text("".join(lines) + '{"i": 99, "torn')
    skipped: list[int] = []
    with caplog.at_level(logging.WARNING, logger="mmpc_rl"):
        got = [r["i"] for r in read_jsonl(path, repair=True, skipped=skipped)]
    assert got == [0, 1, 2, 3, 4] and skipped == [3, 5]
    assert "skipped 2 malformed line(s)" in caplog.text
    assert path.read_text() == "".join(lines)  # only the torn tail went
    append_jsonl(path, {"i": 5})
    assert [r["i"] for r in read_jsonl(path)] == [0, 1, 2, 3, 4, 5]
