"""Tiny random models with the real architectures, built in-process (no hub anywhere here): the tests and the demo.

Importing this package registers `tiny://` with the model loader (`mmpc_rl.models.hub.register_scheme`); from then
on `tiny://NAME` works wherever a model id or path is accepted. The loader cannot import these builders itself: they
sit above it (the tokenizer is trained on the sample catalog's words, the SFT model on its items). So the layers that
take model names from users import this package: train/, eval/ and rewards/ (which covers the CLI, `train/grpo.py`
under accelerate, library use of those packages) and the tests' conftest. A builder writes a folder that the real
loaders read with `from_pretrained`, cached under `<cache>/tiny/NAME` (mmpc_rl.data.default_cache_dir).

The same name gives the same weights on every machine and in every process: a build runs on one torch thread (with
two, float sums are split differently and the SFT model's weights came out 2e-5 apart, enough to change every number
of the demo), and the cached folder is keyed by what makes its weights (`fingerprint`): a folder built by another
builder, another torch or transformers is rebuilt. A build is written beside the cache and moved into place whole, so
a kill or a second process building at the same time never leaves a mixed folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path

from mmpc_rl.data import default_cache_dir
from mmpc_rl.errors import ConfigError, did_you_mean
from mmpc_rl.models.hub import register_scheme
from mmpc_rl.tiny import clip, qwen, qwen_sft, sd3

# name -> the module whose build(out_dir) writes the model; its VERSION (default "1") rebuilds older cached copies
BUILDERS = {
    "qwen2.5-vl": qwen,
    "qwen2.5-vl-sft": qwen_sft,  # the demo's policy: already answers in JSON
    "sd3": sd3,
    "clip": clip,
}
MARKER = ".complete"
# the code a tiny model's weights come from: the builders, the sample catalog the tokenizer and the SFT read, the
# prompts and the answer format they are trained on
SOURCES = (*Path(__file__).parent.glob("*.py"), Path(__file__).parents[1] / "data" / "sample.py",
           Path(__file__).parents[1] / "prompts.py", Path(__file__).parents[1] / "tasks.py")


def fingerprint(name: str) -> dict:
    """What the weights of tiny model NAME depend on: its builder's VERSION, the builders' source, torch and
    transformers (their initialisers and kernels). A cached folder with another fingerprint is rebuilt."""
    import torch
    import transformers

    source = hashlib.sha256()
    for path in sorted(SOURCES):
        source.update(path.name.encode() + b"\0" + path.read_bytes())
    return {"name": name, "version": str(getattr(BUILDERS[name], "VERSION", "1")),
            "source_sha256": source.hexdigest()[:16], "torch": torch.__version__,
            "transformers": transformers.__version__, "threads": 1}


@contextlib.contextmanager
def one_thread():
    """torch on one intra-op thread inside the block: float sums then run in one order on any machine."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _built(out: Path, want: dict) -> bool:
    try:
        return json.loads((out / MARKER).read_text()) == want
    except (OSError, ValueError):
        return False


def tiny_path(name: str, root: str | os.PathLike | None = None) -> Path:
    """Folder of tiny model NAME, built on first use and whenever its fingerprint changed."""
    if name not in BUILDERS:
        raise ConfigError(f"unknown tiny model tiny://{name}" + did_you_mean(name, BUILDERS))
    out = Path(root) if root else default_cache_dir() / "tiny" / name
    want = fingerprint(name)
    if _built(out, want):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.build-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with one_thread():
            BUILDERS[name].build(tmp)
        (tmp / MARKER).write_text(json.dumps(want) + "\n")
        if _built(out, want):  # another process finished the same build first
            return out
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        tmp.rename(out)
    except OSError:
        if not _built(out, want):  # a concurrent build moved its copy in between: that one is as good
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def resolve(name_or_path: str) -> str:
    """The local folder of a `tiny://NAME` reference (built on first use); any other name or path unchanged."""
    name_or_path = str(name_or_path)
    if name_or_path.startswith("tiny://"):
        return str(tiny_path(name_or_path[len("tiny://"):]))
    return name_or_path


register_scheme("tiny", resolve)
