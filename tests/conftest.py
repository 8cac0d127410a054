"""Shared fixtures. Offline everywhere (no hub retries), W&B off unless a test turns it on, one cache per session."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """Tiny models and the sample catalog are built once per session into a private cache; `tiny://` names resolve in
    every test (importing mmpc_rl.tiny registers them with the loader)."""
    import mmpc_rl.tiny  # noqa: F401

    root = tmp_path_factory.mktemp("mmpc-cache")
    old = os.environ.get("MMPC_RL_CACHE")
    os.environ["MMPC_RL_CACHE"] = str(root)
    yield root
    if old is None:
        os.environ.pop("MMPC_RL_CACHE", None)
    else:
        os.environ["MMPC_RL_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_qwen(_session_cache):
    """Folder of the tiny random Qwen2.5-VL (model + processor)."""
    from mmpc_rl.tiny import tiny_path

    return tiny_path("qwen2.5-vl")


@pytest.fixture(scope="session")
def minilm():
    """The real all-MiniLM-L6-v2, loaded once."""
    from mmpc_rl.models import load_sentence_model

    return load_sentence_model("sentence-transformers/all-MiniLM-L6-v2", None)


@pytest.fixture(scope="session")
def sample_catalog(_session_cache):
    from mmpc_rl.data.sample import build_sample_catalog

    return build_sample_catalog(_session_cache / "sample-catalog")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models are dominated by thread hand-off: when the 2-core box is busy, OpenMP spin-waits made them up to
    ~100x slower with two torch threads than with one."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A 24-user, 20-item RecBench category with random 12-d text and 16-d image features."""
    import torch

    from mmpc_rl.recbench.data import load_category
    from mmpc_rl.recbench.synthetic import make_category, random_features

    root = tmp_path_factory.mktemp("toy")
    make_category(root, "Toy", n_users=24, n_items=20, n_interactions=150, n_clusters=4, seed=3)
    data = load_category(root, "Toy")
    return data, torch.from_numpy(random_features(data.n_items, 12, 1)), torch.from_numpy(
        random_features(data.n_items, 16, 2))
