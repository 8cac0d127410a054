"""One import namespace: the design card's folders install as mmpc_rl sub-packages, never as top-level names."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).parents[1]
FOLDERS = {"mmpc_rl.rewards": "rewards", "mmpc_rl.eval": "eval", "mmpc_rl.train": "train",
           "mmpc_rl.recipes": "recipes"}


def test_every_package_folder_is_listed_in_pyproject():
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(tool["packages"])
    mapping = tool["package-dir"]
    assert {k: v for k, v in mapping.items() if k != "mmpc_rl"} == FOLDERS
    on_disk = {"mmpc_rl." + ".".join(p.parent.relative_to(ROOT / "mmpc_rl").parts)
               for p in (ROOT / "mmpc_rl").rglob("__init__.py") if p.parent != ROOT / "mmpc_rl"}
    on_disk |= {"mmpc_rl"} | {pkg for pkg, folder in FOLDERS.items() if (ROOT / folder / "__init__.py").exists()}
    assert on_disk == listed, f"pyproject packages {sorted(listed)} vs folders {sorted(on_disk)}"


def test_wheel_installs_one_namespace(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("mmpc_rl-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"mmpc_rl"}, top
    for must in ("mmpc_rl/rewards/json_format.py", "mmpc_rl/eval/__init__.py", "mmpc_rl/train/grpo.py",
                 "mmpc_rl/recipes/i2t.yaml", "mmpc_rl/recipes/base.yaml"):
        assert must in names, must


def test_editable_install_resolves_the_folders():
    import mmpc_rl.rewards
    import mmpc_rl.train.grpo

    assert Path(mmpc_rl.rewards.__file__).parent == ROOT / "rewards"
    assert Path(mmpc_rl.train.grpo.__file__) == ROOT / "train" / "grpo.py"


def test_console_command_lists_subcommands():
    out = subprocess.run([str(Path(sys.executable).parent / "mmpc-rl"), "--help"], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    for cmd in ("train", "eval", "data", "recbench", "demo", "benchmark", "curves"):
        assert f"  {cmd}" in out
