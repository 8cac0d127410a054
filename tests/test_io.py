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


# ------------------------------------------------------------------------------------------ the output folder
def test_output_folder_os_errors_name_the_folder_and_the_reason(tmp_path, monkeypatch):
    import errno

    import pytest

    from mmpc_rl.errors import DataError
    from mmpc_rl.io import prepare_output_dir

    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match=rf"^output folder {tmp_path / 'file'}: exists and is not a directory$"):
        prepare_output_dir(tmp_path / "file")
    with pytest.raises(DataError, match=r": not a directory$"):
        prepare_output_dir(tmp_path / "file" / "run")
    with pytest.raises(DataError, match=r"^output folder .*\.\.\..*: name too long$"):
        prepare_output_dir(tmp_path / ("x" * 300))

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "ro"))

    monkeypatch.setattr("tempfile.NamedTemporaryFile", read_only)  # root writes through chmod: fake the mount
    with pytest.raises(DataError, match=rf"^output folder {tmp_path / 'ro'}: read-only file system$"):
        prepare_output_dir(tmp_path / "ro")


def test_no_write_follows_a_symlink_out_of_the_output_folder(tmp_path):
    import os

    import pytest

    from mmpc_rl.errors import DataError
    from mmpc_rl.io import atomic_write_text, prepare_output_dir

    out, outside = tmp_path / "run", tmp_path / "precious.txt"
    outside.write_text("keep me\n")
    out.mkdir()
    (out / "inside.txt").write_text("x")
    os.symlink(out / "inside.txt", out / "ok-link")  # inside the folder: allowed
    assert prepare_output_dir(out) == out
    os.symlink(outside, out / "metrics.jsonl")
    with pytest.raises(DataError, match=r"metrics.jsonl is a symbolic link to .*precious.txt, outside the folder"):
        prepare_output_dir(out)
    with pytest.raises(OSError):  # an append never follows it
        append_jsonl(out / "metrics.jsonl", {"step": 1})
    atomic_write_text(out / "metrics.jsonl", "new\n")  # a whole-file write replaces the link
    assert outside.read_text() == "keep me\n" and not (out / "metrics.jsonl").is_symlink()
    os.symlink(tmp_path, out / "checkpoint-2")
    with pytest.raises(DataError, match="checkpoint-2 is a symbolic link"):
        prepare_output_dir(out)


def test_a_full_disk_is_named_even_when_torch_does_not_say_so(tmp_path, monkeypatch):
    import errno
    import shutil
    from collections import namedtuple

    from mmpc_rl.io import write_failure

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(100, 100, 0))
    torch_error = RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0\n"
                               "PytorchStreamWriter failed writing file data/0: file write failed")
    assert str(write_failure(torch_error, tmp_path)).startswith(
        f"cannot write to {tmp_path}: no space left on device (0 MiB free); free some space and resume")
    enospc = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))
    assert str(write_failure(enospc, tmp_path)) == (f"cannot write to {tmp_path}: {tmp_path / 'x'}: "
                                                    "no space left on device")
    assert write_failure(RuntimeError("shape mismatch"), tmp_path) is None
    assert write_failure(OSError(errno.EACCES, "denied", "/elsewhere/x"), tmp_path) is None
