"""minilm_cosine: cosine similarity between the generated title and the reference title, all-MiniLM-L6-v2.

The rule for a completion that does not parse: its raw text is scored. Early in training (and with any model
that wraps its answer in prose) most completions fail the strict format; scoring the raw text keeps a dense semantic
signal while `json_format` supplies the format pressure, and a JSON wrapper around a wrong title cannot score
higher than the right words without it. An empty completion scores 0.0.
"""

from __future__ import annotations

from mmpc_rl.models import DEFAULT_SENTENCE_MODEL as DEFAULT_MODEL
from mmpc_rl.models import MINILM_IDS, load_sentence_model
from mmpc_rl.plan import ModelMemory
from mmpc_rl.rewards.registry import register
from mmpc_rl.tasks import completion_text

# all-MiniLM-L6-v2's parameters on the meta device (sentence-transformers 5.x)
MINILM_PARAMS = 22_713_216


def cosine(model, texts: list[str], references: list[str], batch_size: int = 64) -> list[float]:
    """Row-wise cosine of texts[i] and references[i]; unique strings are encoded once in one batch."""
    unique = list(dict.fromkeys([*texts, *references]))
    emb = model.encode(unique, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True,
                       show_progress_bar=False)
    index = {t: i for i, t in enumerate(unique)}
    a = emb[[index[t] for t in texts]]
    b = emb[[index[t] for t in references]]
    return (a * b).sum(-1).float().cpu().tolist()


def memory(options: dict) -> tuple[ModelMemory, ...]:
    """For the memory planner: the sentence model in fp32 (mmpc_rl.models places sentence models so); activations
    of a title batch are negligible. Another model than all-MiniLM-L6-v2 is planned at its size, with a note."""
    other = options["model"] not in MINILM_IDS
    note = f"minilm_cosine: {options['model']} planned at all-MiniLM-L6-v2's size" if other else ""
    return (ModelMemory("MiniLM (reward)", params=MINILM_PARAMS, bytes_per_param=4, device=options["device"],
                        note=note),)


@register("minilm_cosine", tasks=("i2t",), memory=memory)
def minilm_cosine(task, context=None, model: str = DEFAULT_MODEL, batch_size: int = 64, device: str | None = None,
                  reference_column: str = "title"):
    injected = (context.models.get("minilm") if context else None)
    device = device or (context.device if context else None)

    def reward(completions, **columns) -> list[float]:
        if reference_column not in columns:
            raise KeyError(f"minilm_cosine needs the dataset column {reference_column!r}; got {sorted(columns)}")
        st = injected or load_sentence_model(model, device)  # loaded once per process: a step calls this often
        texts, keep = [], []
        for c in completions:
            raw = completion_text(c).strip()
            parsed = task.parse(raw)
            texts.append(parsed.value if parsed.status == "ok" else raw)
            keep.append(bool(texts[-1]))
        refs = [str(r or "") for r in columns[reference_column]]
        sims = cosine(st, [t or " " for t in texts], [r or " " for r in refs], batch_size)
        return [s if k else 0.0 for s, k in zip(sims, keep, strict=True)]

    return reward
