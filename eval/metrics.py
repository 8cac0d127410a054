"""CQBench metrics, defined as the authors' code computed them (see docs/cqbench.md, "Parity").

Text (`CQBench/text_benchmark_all_models_bench.py`): both texts are cleaned (lowercase, non-alphanumerics to spaces,
whitespace collapsed); if either is empty after cleaning, every metric is 0.0. TF-IDF is fitted on the pair alone
(English stop words, 1-2-grams, 1000 features); Euclidean similarity is 1/(1+L2) of the L2-normalised rows; when
TF-IDF fails (empty vocabulary) both are 0.0. Token overlap is Jaccard on cleaned whitespace tokens. BERTScore F1
(roberta-large, layer 17, no idf, no rescaling) is on the raw texts.

Image (`CQBench/benchmark_all_models_bench.py`): the generated image is resized to the reference's size with
OpenCV's bilinear rule, both are scaled to [0, 1]; PSNR, SSIM (7x7 uniform window) and MSE over all pixels and
channels; LPIPS (AlexNet, input in [-1, 1], BGR by default as the authors fed it) only when both sides are >= 64 px;
CLIP image-image cosine in [-1, 1].

Heavy models are injected: `bertscore` is a `bert_score.BERTScorer` (or anything with its `score(cands, refs)`),
`lpips` an `LpipsMetric` (or any callable on two [0,1] RGB float arrays), `clip` a callable on a list of PIL images
returning L2-normalised embeddings. `eval/scorers.py` loads the real ones from local paths.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class MetricSpec:
    name: str
    task: str  # "i2t" (text metrics) or "t2i" (image metrics)
    higher_is_better: bool
    label: str  # column header as in the paper's tables
    radar_range: tuple[float, float]  # fixed [lo, hi] used to normalise to [0, 1] for the radar chart


METRICS: dict[str, MetricSpec] = {
    m.name: m
    for m in (
        MetricSpec("tfidf_cosine", "i2t", True, "Cosine Sim", (0.0, 1.0)),
        MetricSpec("tfidf_euclidean", "i2t", True, "Euclidean Sim", (0.0, 1.0)),
        MetricSpec("token_overlap", "i2t", True, "Token Overlap", (0.0, 1.0)),
        MetricSpec("bertscore_f1", "i2t", True, "BERTScore", (0.0, 1.0)),
        MetricSpec("psnr", "t2i", True, "PSNR", (0.0, 0.0)),  # min-max over the compared rows
        MetricSpec("ssim", "t2i", True, "SSIM", (0.0, 1.0)),
        MetricSpec("mse", "t2i", False, "MSE", (0.0, 0.0)),
        MetricSpec("lpips", "t2i", False, "LPIPS", (0.0, 0.0)),
        MetricSpec("clip", "t2i", True, "CLIP Sim", (0.0, 1.0)),
    )
}


def metrics_for(task: str) -> list[str]:
    return [name for name, spec in METRICS.items() if spec.task == task]


# ------------------------------------------------------------------------------------------------------- text
_NON_ALNUM = re.compile(r"[^a-zA-Z0-9\s]")
_SPACES = re.compile(r"\s+")


def clean_text(text: str) -> str:
    text = _NON_ALNUM.sub(" ", str(text).lower())
    return _SPACES.sub(" ", text).strip()


def tfidf_similarities(real_clean: str, gen_clean: str) -> tuple[float, float]:
    """(cosine, 1/(1+L2)) of the pair's TF-IDF rows, the vectorizer fitted on just these two texts."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    try:
        x = TfidfVectorizer(stop_words="english", ngram_range=(1, 2), max_features=1000).fit_transform(
            [real_clean, gen_clean]
        )
    except ValueError:  # empty vocabulary: the authors' code then fails the Euclidean step too and scores 0.0
        return 0.0, 0.0
    rows = x.toarray().astype(np.float64)
    a, b = rows[0], rows[1]
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    # sklearn's cosine_similarity treats a zero row as zero similarity (it normalises with a zero-safe divide)
    cosine = float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0
    euclid = 1.0 / (1.0 + float(np.linalg.norm(a - b)))
    return cosine, euclid


def jaccard(real_clean: str, gen_clean: str) -> float:
    a, b = set(real_clean.split()), set(gen_clean.split())
    union = a | b
    return len(a & b) / len(union) if union else 0.0


def text_metrics(reference: str, generated: str, bertscore=None) -> dict[str, float]:
    """`tfidf_cosine, tfidf_euclidean, token_overlap` (+ `bertscore_f1` with a scorer) for one title pair."""
    return text_metrics_batch([reference], [generated], bertscore=bertscore)[0]


def text_metrics_batch(references: Sequence[str], generated: Sequence[str], bertscore=None) -> list[dict]:
    """Per-pair text metrics; BERTScore runs once over all pairs that are not empty after cleaning."""
    if len(references) != len(generated):
        raise ValueError(f"{len(references)} references but {len(generated)} generated texts")
    out, need_bert = [], []
    for i, (ref, gen) in enumerate(zip(references, generated, strict=True)):
        ref_c, gen_c = clean_text(ref or ""), clean_text(gen or "")
        if not ref_c or not gen_c:
            row = {"tfidf_cosine": 0.0, "tfidf_euclidean": 0.0, "token_overlap": 0.0}
            if bertscore is not None:
                row["bertscore_f1"] = 0.0
        else:
            cos, euc = tfidf_similarities(ref_c, gen_c)
            row = {"tfidf_cosine": cos, "tfidf_euclidean": euc, "token_overlap": jaccard(ref_c, gen_c)}
            need_bert.append(i)
        out.append(row)
    if bertscore is not None and need_bert:
        # F1 is symmetric; the authors passed the real title as the "prediction", kept here for exactness
        _, _, f1 = bertscore.score([str(references[i]) for i in need_bert], [str(generated[i]) for i in need_bert])
        for i, value in zip(need_bert, f1.tolist() if hasattr(f1, "tolist") else f1, strict=True):
            out[i]["bertscore_f1"] = float(value)
    return out


# ------------------------------------------------------------------------------------------------------ image
_COEF_BITS = 11  # OpenCV's INTER_RESIZE_COEF_BITS


def _linear_coeffs(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    f = ((np.arange(dst) + 0.5) * (src / dst) - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    f = f - s
    edge = (s < 0) | (s >= src - 1)
    s = np.clip(s, 0, src - 1)
    f[edge] = 0.0
    one = 1 << _COEF_BITS
    return s, np.minimum(s + 1, src - 1), np.round((1 - f) * one).astype(np.int64), np.round(f * one).astype(np.int64)


def resize_bilinear_cv2(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """`cv2.resize(img, (width, height))` (INTER_LINEAR) on uint8 HxWxC, in OpenCV's fixed-point arithmetic.

    Bit-exact with OpenCV 5 for downscaling (the CQBench case: 1024^2 renders to smaller Amazon photos); elsewhere
    at most 1/255 off on a few pixels, where OpenCV's scalar tail rounds differently from its SIMD body."""
    if img.shape[0] == height and img.shape[1] == width:
        return img
    y0, y1, b0, b1 = _linear_coeffs(img.shape[0], height)
    x0, x1, a0, a1 = _linear_coeffs(img.shape[1], width)
    im = img.astype(np.int64)
    if im.ndim == 2:
        im = im[:, :, None]
    rows = im[:, x0] * a0[None, :, None] + im[:, x1] * a1[None, :, None]
    s0, s1 = rows[y0], rows[y1]
    v = (((s0 >> 4) * b0[:, None, None]) >> 16) + (((s1 >> 4) * b1[:, None, None]) >> 16)
    out = np.clip((v + 2) >> 2, 0, 255).astype(np.uint8)
    return out if img.ndim == 3 else out[:, :, 0]


def to_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, np.ndarray):
        return image
    return np.asarray(image.convert("RGB"))


def align_pair(reference, generated, resize: str = "cv2") -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB arrays of equal size: the generated image resized to the reference's size (authors' rule) or, with
    `resize="square512"`, both resized to 512x512 (a common alternative, not comparable with the paper)."""
    ref, gen = to_rgb_array(reference), to_rgb_array(generated)
    if resize == "cv2":
        return ref, resize_bilinear_cv2(gen, ref.shape[1], ref.shape[0])
    if resize == "square512":
        return resize_bilinear_cv2(ref, 512, 512), resize_bilinear_cv2(gen, 512, 512)
    raise ValueError(f"unknown resize rule {resize!r}; valid choices: cv2, square512")


def ssim_window(height: int, width: int) -> int:
    w = min(7, height, width)
    return w if w % 2 == 1 else w - 1


def pixel_metrics(ref01: np.ndarray, gen01: np.ndarray) -> dict[str, float]:
    from skimage.metrics import structural_similarity

    mse = float(np.mean((gen01 - ref01) ** 2))
    psnr = 10.0 * math.log10(1.0 / mse) if mse > 0 else math.inf  # skimage's value, without its divide warning
    ssim = float(
        structural_similarity(
            gen01, ref01, data_range=1.0, channel_axis=-1, win_size=ssim_window(*ref01.shape[:2])
        )
    )
    return {"psnr": psnr, "ssim": ssim, "mse": mse}


LPIPS_MIN_SIDE = 64  # the authors skip LPIPS below this size


def image_metrics(reference: Image.Image, generated: Image.Image, lpips=None, clip=None,
                  resize: str = "cv2") -> dict[str, float | None]:
    """`psnr, ssim, mse` (+ `lpips` with an LPIPS callable, None when the image is under 64 px; + `clip` with an
    embedder) for one reference/generated image pair."""
    return image_metrics_batch([reference], [generated], lpips=lpips, clip=clip, resize=resize)[0]


def image_metrics_batch(references: Sequence, generated: Sequence, lpips=None,
                        clip: Callable | None = None, resize: str = "cv2") -> list[dict]:
    if len(references) != len(generated):
        raise ValueError(f"{len(references)} references but {len(generated)} generated images")
    out, pairs = [], []
    for ref, gen in zip(references, generated, strict=True):
        ref_u8, gen_u8 = align_pair(ref, gen, resize)
        pairs.append((ref_u8, gen_u8))
        ref01, gen01 = ref_u8.astype(np.float32) / 255.0, gen_u8.astype(np.float32) / 255.0
        row = pixel_metrics(ref01, gen01)
        if lpips is not None:
            h, w = ref01.shape[:2]
            row["lpips"] = float(lpips(ref01, gen01)) if h >= LPIPS_MIN_SIDE and w >= LPIPS_MIN_SIDE else None
        out.append(row)
    if clip is not None and pairs:
        refs = clip([Image.fromarray(r) for r, _ in pairs])
        gens = clip([Image.fromarray(g) for _, g in pairs])
        sims = (_as_numpy(refs) * _as_numpy(gens)).sum(axis=1)
        for row, sim in zip(out, sims, strict=True):
            row["clip"] = float(sim)
    return out


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    # renormalise: the authors L2-normalised the embeddings themselves, so an unnormalised embedder still matches
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
