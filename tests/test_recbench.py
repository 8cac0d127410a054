"""RecBench units: metrics on hand-computed rankings, graphs on toy inputs, conditions, features, data errors."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

from mmpc_rl.errors import DataError
from mmpc_rl.recbench import conditions as C
from mmpc_rl.recbench.data import load_category, read_inter
from mmpc_rl.recbench.features import ImageEncoder, TextEncoder
from mmpc_rl.recbench.graph import bipartite_adj, edge_norm, knn_graph, mm_item_graph, prune_edges
from mmpc_rl.recbench.metrics import Evaluator, topk_metrics
from mmpc_rl.recbench.synthetic import chronological_labels, make_category

# ----------------------------------------------------------------------------------------------------- metrics
SCORES = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
                       [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
                       [0.5, 0.5, 0.5, 0.5, 0.5, 0.5]])
MASK = torch.zeros(3, 6, dtype=torch.bool)
MASK[0, 0] = True
TEST = [{2, 5}, {5, 0}, set()]  # user 2 has no test item: not evaluated


def test_topk_metrics_hand_computed():
    # user 0 ranks 1,2,3,4,5,(0 masked last): hits at ranks 2 and 5.  user 1 ranks 5,4,3,2,1,0: hits at 1 and 6.
    # NDCG@2: u0 = (1/log2 3) / (1 + 1/log2 3) = 0.386853, u1 = 1 / (1 + 1/log2 3) = 0.613147 -> mean 0.5
    # NDCG@6: u0 = (1/log2 3 + 1/log2 6) / 1.630930 = 0.624051, u1 = (1 + 1/log2 7) / 1.630930 = 0.831555
    got = topk_metrics(SCORES, MASK, TEST, ks=(1, 2, 6))
    assert got == {"recall@1": 0.25, "recall@2": 0.5, "recall@6": 1.0,
                   "ndcg@1": 0.5, "ndcg@2": 0.5, "ndcg@6": 0.7278}


def test_topk_metrics_default_ks_and_masking_matters():
    scores = torch.tensor([[3.0, 2.0, 1.0] + [0.0] * 60])
    mask = torch.zeros_like(scores, dtype=torch.bool)
    got = topk_metrics(scores, mask, [{0}])
    assert set(got) == {f"{m}@{k}" for m in ("recall", "ndcg") for k in (5, 10, 20, 50)}
    assert got["recall@5"] == 1.0 and got["ndcg@5"] == 1.0
    mask[0, 0] = True  # a training item is never recommended: the test item 0 drops out of the top 50
    assert topk_metrics(scores, mask, [{0}])["recall@50"] == 0.0
    # ideal DCG uses min(|T|, k) positions: 2 test items, one at rank 1 -> NDCG@1 = 1, NDCG@5 = 1/(1+1/log2 3)
    scores[0, 62] = -1.0
    got = topk_metrics(scores, torch.zeros_like(mask), [{0, 62}], ks=(1, 5))
    assert got["ndcg@1"] == 1.0 and got["ndcg@5"] == round(1 / (1 + 1 / math.log2(3)), 4)


def test_evaluator_matches_topk_metrics():
    gen = torch.Generator().manual_seed(0)
    n_users, n_items = 37, 80
    scores = torch.rand(n_users, n_items, generator=gen)
    train = [(u, i) for u in range(n_users) for i in range(n_items) if (u * 7 + i * 3) % 11 == 0]
    test = [(u, (u * 5 + 1) % n_items) for u in range(0, n_users, 2)] + [(u, (u + 40) % n_items) for u in range(5)]
    test = [p for p in test if p not in set(train)]

    def csr(pairs):
        arr = np.array(sorted(pairs))
        ptr = np.zeros(n_users + 1, dtype=np.int64)
        np.add.at(ptr, arr[:, 0] + 1, 1)
        return np.cumsum(ptr), arr[:, 1]

    mask = torch.zeros(n_users, n_items, dtype=torch.bool)
    for u, i in train:
        mask[u, i] = True
    sets = [{i for uu, i in test if uu == u} for u in range(n_users)]
    ev = Evaluator(csr(train), csr(test), n_items, batch_users=8)  # several batches
    assert ev.evaluate(lambda users: scores[users]) == topk_metrics(scores, mask, sets)


# ------------------------------------------------------------------------------------------------------ graphs
def test_normalised_adjacency_toy_graph():
    # edges u0-i0, u0-i1, u1-i1: d(u0)=2, d(u1)=1, d(i0)=1, d(i1)=2
    users, items = torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1])
    dense = bipartite_adj(users, items, 2, 2).to_dense()
    r2 = 1 / math.sqrt(2)
    expected = torch.tensor([[0, 0, r2, 0.5], [0, 0, 0, r2], [r2, 0, 0, 0], [0.5, r2, 0, 0]])
    assert torch.allclose(dense, expected, atol=1e-6)


def test_knn_graph_every_kept_entry_is_one_over_k():
    text = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    dense = knn_graph(text, k=2).to_dense()
    expected = torch.tensor([[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5], [0, 0, 0.5, 0.5]])
    assert torch.allclose(dense, expected)
    big = knn_graph(torch.randn(30, 8, generator=torch.Generator().manual_seed(1)), k=10)
    assert big._nnz() == 300 and torch.allclose(big.values(), torch.full((300,), 0.1))
    assert torch.equal(torch.diagonal(big.to_dense()), torch.full((30,), 0.1))  # self is its own nearest


def test_mm_graph_weights_image_point_one():
    text = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])  # pairs (0,1), (2,3)
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]])  # pairs (0,2), (1,3)
    s = mm_item_graph(text, image, k=2, image_weight=0.1).to_dense()
    assert s[0].tolist() == pytest.approx([0.5, 0.45, 0.05, 0.0])
    assert torch.allclose(mm_item_graph(None, image, 2, 0.1).to_dense(), knn_graph(image, 2).to_dense())


def test_pruned_edge_counts_and_renormalisation():
    users = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 3, 3])
    items = torch.tensor([0, 1, 2, 1, 3, 0, 2, 4, 1, 2, 3, 4])
    w = edge_norm(users, items, 4, 5)
    # MMRec computes int(|E| * (1 - p)): 12*0.2 -> 2, 12*0.1 -> 1
    for drop, kept in ((0.8, 2), (0.9, 1), (0.5, 6), (0.0, 12)):
        adj = prune_edges(users, items, 4, 5, drop, w, torch.Generator().manual_seed(0))
        assert adj._nnz() == 2 * kept
        dense = adj.to_dense()
        assert torch.equal(dense, dense.T)
        ub = dense[:4, 4:] > 0
        d_u, d_i = ub.sum(1).double(), ub.sum(0).double()
        for u, i in ub.nonzero().tolist():  # re-normalised with the kept graph's own degrees
            assert dense[u, 4 + i].item() == pytest.approx(1 / math.sqrt(d_u[u] * d_i[i]), rel=1e-5)
    # sampling favours low-degree edges: weights are 1/sqrt(d_u d_i) on the full graph
    assert w[0].item() == pytest.approx(1 / math.sqrt(3 * 2), rel=1e-6)


# -------------------------------------------------------------------------------------------------- conditions
def test_missing_ids_are_seeded_from_sorted_ids():
    ids = C.missing_ids(10, 0.5)
    assert ids == random.Random(42).sample(list(range(10)), 5)
    assert C.missing_ids(10, 0.5) == ids and len(C.missing_ids(7, 0.2)) == 1 and len(C.missing_ids(7, 1.0)) == 7


def test_baselines_and_generated_replacement():
    feat = np.arange(20, dtype=np.float32).reshape(10, 2) + 1
    miss = C.missing_ids(10, 0.8)
    z, n = C.baseline_features(feat, "zeros", 0.8)
    assert n == 8 and (z[miss] == 0).all() and np.array_equal(np.delete(z, miss, 0), np.delete(feat, miss, 0))
    r, _ = C.baseline_features(feat, "random", 0.8)
    assert np.allclose(r[miss], np.random.default_rng(42 + 80).standard_normal((8, 2)))
    g, n = C.generated_features(feat, {miss[0]: np.array([-1.0, -1.0]), 99: np.zeros(2)}, 0.8)
    assert n == 1 and g[miss[0]].tolist() == [-1.0, -1.0] and np.array_equal(np.delete(g, miss[0], 0),
                                                                              np.delete(feat, miss[0], 0))


def test_read_generated_is_tolerant(tmp_path):
    recs = [{"parent_asin": "A1", "category": "Video Games", "task": "i2t", "model": "qwen_vl_7b", "generated": "x"},
            {"asin": "A2", "task": "t2i", "model": "qwen_vl_7b", "image": "imgs/A2.jpg"},
            {"parent_asin": "A3", "task": "i2t", "model": "m"},  # no content: skipped
            {"generated": "no id"}]
    (tmp_path / "res.json").write_text(json.dumps({"records": recs}))
    got, skipped = C.read_generated(tmp_path / "res.json")
    assert got[("qwen_vl_7b", "i2t")] == {("video_games", "A1"): "x"}
    assert got[("qwen_vl_7b", "t2i")] == {("*", "A2"): str(tmp_path / "imgs/A2.jpg")}
    assert skipped == {"no_id": 1, "no_content": 1, "bad_task": 0}
    assert C.for_category(got[("qwen_vl_7b", "i2t")], "Video_Games", {"A1": 3}) == {3: "x"}
    (tmp_path / "bad.jsonl").write_text('{"parent_asin": "A1", "generated": "t"}\n{"torn')
    assert C.read_generated(tmp_path / "bad.jsonl", method="g")[0] == {("g", "i2t"): {("*", "A1"): "t"}}


# ---------------------------------------------------------------------------------------------------- features
def test_text_features_cached_by_content(tmp_path):
    calls = []

    def encode(texts):
        calls.append(list(texts))
        return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)

    enc = TextEncoder(encode, tmp_path, key="len")
    out = enc.encode(["ab", "abc", "ab"])
    assert out.tolist() == [[2, 1], [3, 1], [2, 1]] and sorted(calls[0]) == ["ab", "abc"]
    again = TextEncoder(encode, tmp_path, key="len").encode(["abc", "abcd"])
    assert again.tolist() == [[3, 1], [4, 1]] and calls[1] == ["abcd"]  # "abc" came from the disk cache


def test_image_features_mean_fill_and_cache(tmp_path):
    from PIL import Image

    for name, colour in (("a.png", (255, 0, 0)), ("b.png", (0, 0, 255))):
        Image.new("RGB", (20, 30), colour).save(tmp_path / name)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    seen = []

    def model(x):  # x: normalised [B, 3, 8, 8]; returns per-channel means
        seen.append(x.shape)
        return x.mean(dim=(2, 3))

    enc = ImageEncoder(model, tmp_path / "cache", key="mean", image_size=8, device="cpu")
    paths = [str(tmp_path / "a.png"), None, str(tmp_path / "bad.png"), str(tmp_path / "b.png")]
    feats, ok = enc.encode(paths)
    red = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0 - 0.406) / 0.225]  # ImageNet mean/std, not timm's 0.5
    blue = [(0 - 0.485) / 0.229, (0 - 0.456) / 0.224, (1 - 0.406) / 0.225]
    assert ok.tolist() == [True, False, False, True] and seen[0] == (2, 3, 8, 8)
    assert np.allclose(feats[0], red, atol=1e-5) and np.allclose(feats[3], blue, atol=1e-5)
    assert np.allclose(feats[1], (np.array(red) + np.array(blue)) / 2, atol=1e-5) and np.allclose(feats[2], feats[1])
    enc.encode([str(tmp_path / "b.png")])
    assert len(seen) == 1  # served from the cache


# -------------------------------------------------------------------------------------------------------- data
def test_load_category_mmrec_rules(tmp_path):
    folder = make_category(tmp_path, "Toy", n_users=12, n_items=9, n_interactions=70)
    inter = folder / "toy.inter"
    inter.write_text(inter.read_text() + "12\t3\t5.0\t1\t2\n")  # a test row of a user with no training row
    umap = folder / "u_id_mapping.csv"
    umap.write_text(umap.read_text() + "U000012,12\n")
    data = load_category(tmp_path, "Toy")
    assert data.n_users == 13 and data.n_items == 9 and data.dropped_cold == 1
    assert len(data.train) + len(data.valid) + len(data.test) == 70
    assert chronological_labels(5) == [0, 0, 0, 1, 2] and chronological_labels(10) == [0] * 8 + [1, 2]
    inter.write_text("userID\titemID\tx_label\n0\tx\t0\n")
    with pytest.raises(DataError, match=r"no usable interactions: 1 malformed line\(s\), e.g. toy.inter:2"):
        read_inter(inter)
    with pytest.raises(DataError, match="no RecBench folder"):
        load_category(tmp_path, "Nope")


def test_read_generated_cqbench_layouts(tmp_path):
    # CQBench writes items/<model>/<task>.jsonl with the parsed title in `answer` and the rendered image in `image`
    i2t = {"key": "Video_Games/A1", "parent_asin": "A1", "category": "Video_Games", "reference": "real",
           "completion": '{"title": "raw"}', "answer": "Parsed Title", "status": "ok", "metrics": {}}
    t2i = {"key": "Video_Games/A2", "parent_asin": "A2", "category": "Video_Games", "reference": "x.jpg",
           "completion": "{}", "answer": "a prompt", "status": "ok", "metrics": {}, "image": "renders/A2.jpg"}
    for task, rec in (("i2t", i2t), ("t2i", t2i)):
        (tmp_path / "cq" / "items" / "qwen7b").mkdir(parents=True, exist_ok=True)
        (tmp_path / "cq" / "items" / "qwen7b" / f"{task}.jsonl").write_text(json.dumps(rec) + "\n")
    got, _ = C.read_generated(tmp_path / "cq")
    assert got == {("qwen7b", "i2t"): {("video_games", "A1"): "Parsed Title"},
                   ("qwen7b", "t2i"): {("video_games", "A2"): str(tmp_path / "cq" / "renders/A2.jpg")}}
    nested = {"config": {}, "results": {"gemma4b": {"i2t": {"task": "i2t", "per_item": [i2t]}}}}
    (tmp_path / "results.json").write_text(json.dumps(nested))
    assert C.read_generated(tmp_path / "results.json")[0] == {("gemma4b", "i2t"): {("video_games", "A1"):
                                                                                    "Parsed Title"}}
    with pytest.raises(DataError, match="does not exist"):
        C.read_generated(tmp_path / "nope.jsonl")
    empty = {**i2t, "parent_asin": "A3", "answer": "", "completion": '{"title": ""}'}  # the model wrote no title
    (tmp_path / "cq" / "items" / "qwen7b" / "i2t.jsonl").write_text(json.dumps(empty) + "\n")
    assert C.read_generated(tmp_path / "cq")[0][("qwen7b", "i2t")] == {("video_games", "A3"): ""}


def test_low_coverage_note():
    gen, base = C.Condition("qwen7b", "text", 1.0), C.Condition("zeros", "text", 1.0)
    assert C.low_coverage_note("Video_Games", gen, {"missing": 100, "replaced": 90}) is None  # 90 % is enough
    assert C.low_coverage_note("Video_Games", base, {"missing": 100, "replaced": 0}) is None
    assert C.low_coverage_note("Video_Games", gen, {"missing": 100, "replaced": 89,
                                                    "generations_for_category": 89}) == (
        "low coverage: Video_Games qwen7b|text|1.0 replaced 89 of 100 missing text rows (89% < 90%); the other 11 "
        "keep their ground-truth features")
    assert C.low_coverage_note("All_Beauty", gen, {"missing": 5, "replaced": 0}).endswith(
        "(not run: no generation for this category)")


def test_table6_never_counts_a_baseline_as_the_best_completion():
    from mmpc_rl.recbench.report import table6, table6_markdown

    def row(task_missing, method, r20):
        test = {f"{m}@{k}": r20 for m in ("recall", "ndcg") for k in (5, 10, 20, 50)}
        return {"category": "C", "model": "VBPR", "method": method, "missing": task_missing, "rate": 1.0,
                "test": test}

    results = [row("none", "ground_truth", 0.5), row("text", "gen_model", 0.4), row("text", "zeros", 0.45),
               row("image", "zeros", 0.6)]  # image side: only a baseline, which beats ground truth
    t6 = table6(results)
    assert t6["i2t"]["rel_diff_best"]["recall@20"] == pytest.approx(-0.2)  # gen_model 0.4, not zeros 0.45
    assert t6["t2i"]["rel_diff_best"] is None and t6["t2i"]["completions"] == []
    md = table6_markdown(t6)
    assert "| t2i | Rel. Diff. best (vs. GT) | n/a (no completion)" in md


def test_ids_beyond_the_mappings_are_counted_before_anything_is_sized_from_them(tmp_path, capsys):
    import tracemalloc

    folder = make_category(tmp_path, "Toy", n_users=12, n_items=9, n_interactions=70)
    inter = folder / "toy.inter"
    inter.write_text(inter.read_text() + "1000000000\t3\t5.0\t1\t0\n"  # one stray user id: 1e9 rows of tables
                     "3\t4000000000\t5.0\t1\t0\nx\ty\t5.0\t1\t0\n3\t-1\t5.0\t1\t0\n2\t2\t5.0\t1\t7\n3\n")
    tracemalloc.start()
    data = load_category(tmp_path, "Toy")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50 * 2**20  # a table sized by the stray id would be gigabytes
    assert (data.n_users, data.n_items) == (12, 9)
    assert data.malformed["reasons"] == {"not_integer_userID_itemID_x_label": 2, "negative_id": 1,
                                         "x_label_not_0_1_2": 1, "user_id_beyond_mapping": 1,
                                         "item_id_beyond_mapping": 1}
    assert data.summary()["malformed_lines"] == 6
    assert "Toy: skipped 6 malformed line(s) of toy.inter" in capsys.readouterr().out
    for name in ("u_id_mapping.csv", "i_id_mapping.csv"):  # without mappings, the row count bounds a dense id
        (folder / name).unlink()
    assert load_category(tmp_path, "Toy").malformed["reasons"]["user_id_beyond_mapping"] == 1


def test_a_category_without_validation_or_test_rows_is_an_error_naming_it(tmp_path):
    folder = make_category(tmp_path, "Toy", n_users=12, n_items=9, n_interactions=70)
    inter = folder / "toy.inter"
    lines = inter.read_text().splitlines()
    inter.write_text("\n".join(line for line in lines if not line.endswith("\t2")) + "\n")
    with pytest.raises(DataError, match=r"^Toy: no test rows \(x_label 2\) in .*toy.inter: every RecBench metric"):
        load_category(tmp_path, "Toy")
    (folder / "items.jsonl").write_text('{"itemID": 0}\n[1, 2]\n')
    inter.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"items.jsonl:2: expected a JSON object"):
        load_category(tmp_path, "Toy")
