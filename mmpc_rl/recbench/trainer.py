"""MMRec's training protocol: Adam 1e-3, batches of 2048 shuffled train pairs (1 uniform negative from the training
items, re-drawn while it is in the user's history), valid Recall@20 every epoch, stop after 21 non-improving epochs,
test metrics at the best valid epoch; the grid is searched with the seed reset at every point."""

from __future__ import annotations

import itertools
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from mmpc_rl.checks import at_least, greater_than
from mmpc_rl.errors import ConfigError
from mmpc_rl.recbench.data import RecData
from mmpc_rl.recbench.metrics import KS, Evaluator
from mmpc_rl.recbench.models import GRIDS, MODELS

VALID_METRIC = "recall@20"


@dataclass
class TrainConfig:
    epochs: int = field(default=1000, metadata=at_least(1))
    stopping_step: int = field(default=20, metadata=at_least(1))
    batch_size: int = field(default=2048, metadata=at_least(1))
    learning_rate: float = field(default=0.001, metadata=greater_than(0))
    seed: int = 999
    eval_batch_users: int = field(default=4096, metadata=at_least(1))
    select_by: str = "valid"  # "test" reproduces MMRec's quick_start, which picks the grid point by test Recall@20
    embedding_size: int = field(default=64, metadata=at_least(1))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


class NegativeSampler:
    """One negative per positive, uniform over training items, re-drawn while it is a training item of the user."""

    def __init__(self, data: RecData):
        self.n_items = data.n_items
        self.candidates = data.train_items
        self.known = np.unique(data.train[:, 0] * data.n_items + data.train[:, 1])

    def _seen(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        keys = users * self.n_items + items
        pos = np.minimum(np.searchsorted(self.known, keys), len(self.known) - 1)
        return self.known[pos] == keys

    def sample(self, users: np.ndarray) -> np.ndarray:
        negs = self.candidates[np.random.randint(0, len(self.candidates), size=len(users))]
        todo = np.flatnonzero(self._seen(users, negs))
        for _ in range(1000):  # a user who bought every training item would loop forever in MMRec; give up here
            if len(todo) == 0:
                break
            negs[todo] = self.candidates[np.random.randint(0, len(self.candidates), size=len(todo))]
            todo = todo[self._seen(users[todo], negs[todo])]
        return negs


def grid_points(model: str, grid: dict[str, list] | None = None) -> list[dict]:
    grid = GRIDS[model] if grid is None else grid
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]


def _evaluate(model, evaluator: Evaluator) -> dict[str, float]:
    model.eval()
    user_table, item_table = model.score_tables()
    return evaluator.evaluate(lambda users: user_table[users] @ item_table.T)


def train_epoch(model, data: RecData, sampler: NegativeSampler | None, opt, cfg: TrainConfig, device: torch.device,
                name: str, epoch: int) -> float:
    """One epoch as MMRec trains it: shuffled training pairs (+ a negative each), mini-batches; the mean loss."""
    model.train()
    model.pre_epoch()
    pairs = data.train[np.random.permutation(len(data.train))]
    if sampler is not None:
        pairs = np.column_stack([pairs, sampler.sample(pairs[:, 0])])
    batches = torch.as_tensor(pairs, dtype=torch.long, device=device).split(cfg.batch_size)
    total = 0.0
    for batch in batches:
        loss = model.loss(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{name}: loss became {loss.item()} at epoch {epoch}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.item()
    return total / max(len(batches), 1)


def train_one(model_name: str, data: RecData, text: torch.Tensor | None, image: torch.Tensor | None,
              hyper: dict, cfg: TrainConfig, device: torch.device, evaluators: tuple[Evaluator, Evaluator],
              model_kwargs: dict | None = None, progress=None) -> dict:
    """Train one grid point to early stopping; returns best-valid epoch, its valid and test metrics, timings."""
    if model_name not in MODELS:
        raise ConfigError(f"unknown recommender {model_name!r}; valid choices: {', '.join(MODELS)}")
    seed_everything(cfg.seed)
    model = MODELS[model_name](data.n_users, data.n_items, data.train,
                               None if text is None else text.to(device), None if image is None else image.to(device),
                               embedding_size=cfg.embedding_size, **hyper, **(model_kwargs or {})).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=0.0)
    sampler = NegativeSampler(data) if model.uses_negatives else None
    valid_eval, test_eval = evaluators
    best = {"epoch": -1, "valid": None, "test": None, "valid_score": -1.0}
    cur_step, train_secs, eval_secs, eval_count, epoch, stopped = 0, 0.0, 0.0, 0, -1, None
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        try:
            mean_loss = train_epoch(model, data, sampler, opt, cfg, device, f"{model_name} {hyper}", epoch)
        except FloatingPointError as e:  # as MMRec: a NaN loss ends this grid point, its best epoch so far stands
            stopped = str(e)
            break
        train_secs += time.perf_counter() - t0
        t0 = time.perf_counter()
        valid = _evaluate(model, valid_eval)
        eval_secs += time.perf_counter() - t0
        eval_count += 1
        if valid[VALID_METRIC] > best["valid_score"]:  # strictly greater, as MMRec's early stopping
            test = _evaluate(model, test_eval)
            best = {"epoch": epoch, "valid": valid, "test": test, "valid_score": valid[VALID_METRIC]}
            cur_step = 0
        else:
            cur_step += 1
        if progress is not None:
            progress(epoch, mean_loss, valid[VALID_METRIC], best["valid_score"])
        if cur_step > cfg.stopping_step:
            break
    return {"hyper": hyper, "best_epoch": best["epoch"], "epochs_run": epoch + 1, "valid": best["valid"],
            "test": best["test"], "sec_per_epoch": train_secs / max(epoch + 1, 1),
            "sec_per_eval": eval_secs / max(eval_count, 1), "stopped": stopped}


def select_best(runs: list[dict], select_by: str = "valid") -> dict:
    """The grid point with the highest Recall@20 on `select_by` (first one wins a tie, as a strict > search)."""
    if select_by not in ("valid", "test"):
        raise ConfigError(f"select_by={select_by!r}; valid choices: valid, test")
    best = None
    for run in runs:
        if run[select_by] is None:
            continue
        if best is None or run[select_by][VALID_METRIC] > best[select_by][VALID_METRIC]:
            best = run
    return best or runs[0]


def make_evaluators(data: RecData, cfg: TrainConfig, device: torch.device) -> tuple[Evaluator, Evaluator]:
    train_csr = data.csr(data.train)
    return tuple(Evaluator(train_csr, data.csr(split), data.n_items, KS, cfg.eval_batch_users, device)
                 for split in (data.valid, data.test))
