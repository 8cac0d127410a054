"""Uncached builders of the text-side models: a sentence-transformers model and a BERTScore scorer.

sentence_transformers and bert_score are imported inside their builder: each pulls in seconds of imports that a
run without that reward or metric never needs.
"""

from __future__ import annotations

from pathlib import Path

from mmpc_rl.errors import ConfigError, ModelLoadError

# bert_score's own table: roberta-large scores from its 17th layer (the `evaluate` default the authors used)
KNOWN_BERTSCORE_LAYERS = {"roberta-large": 17, "microsoft/deberta-xlarge-mnli": 40, "bert-base-uncased": 9}


def build_sentence_model(path: str, device: str):
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(path, device=device)
    except Exception as e:  # missing folders and bad checkpoints arrive as many types with multi-line messages
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ModelLoadError(f"cannot load sentence model {path!r}: {type(e).__name__}: {first}") from None


def bertscore_layers(name_or_path: str, num_layers: int | None) -> int:
    """The layer BERTScore reads: given, or bert_score's default for a model it knows (by hub id or folder name)."""
    layers = num_layers or KNOWN_BERTSCORE_LAYERS.get(str(name_or_path)) or \
        KNOWN_BERTSCORE_LAYERS.get(Path(str(name_or_path)).name)
    if layers is None:
        raise ConfigError(f"bertscore_layers is required for {name_or_path!r} (roberta-large uses 17)")
    return int(layers)


def build_bertscore(path: str, num_layers: int, batch_size: int, device: str):
    """A `bert_score.BERTScorer`: idf off, no baseline rescaling, as the authors' `evaluate.load("bertscore")`."""
    from bert_score import BERTScorer

    try:
        return BERTScorer(model_type=str(path), num_layers=num_layers, idf=False, batch_size=batch_size,
                          rescale_with_baseline=False, device=device)
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"cannot load the BERTScore encoder {path!r} ({str(e).splitlines()[0][:160]}); there is no "
            "network here: pass bertscore=/path/to/roberta-large (a local copy) or leave bertscore unset"
        ) from None
