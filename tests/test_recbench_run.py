"""A full `mmpc-rl recbench` run on a generated catalog with the real MiniLM and a tiny timm ViT from a local file:
ground truth, generated titles (i2t), generated images (t2i) and the zeros baseline; then a resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmpc_rl.cli import main as cli_main
from mmpc_rl.recbench.synthetic import make_category

TINY_GRID = ["grid.VBPR.reg_weight=[0.1]", "grid.BM3.n_layers=[1]", "grid.BM3.dropout=[0.5]",
             "grid.BM3.reg_weight=[0.1]", "grid.FREEDOM.dropout=[0.8]", "grid.FREEDOM.reg_weight=[0.0,0.001]"]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    import timm
    from PIL import Image
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("recbench")
    make_category(root / "data", "Toy", n_users=40, n_items=24, n_interactions=300, images=True, seed=1)
    make_category(root / "data", "Game", n_users=40, n_items=24, n_interactions=300, images=True, seed=2)
    torch.manual_seed(0)
    vit = timm.create_model("test_vit", pretrained=False)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, root / "vit.safetensors")
    (root / "gen").mkdir()
    records = [{"parent_asin": f"B{i:09d}", "category": "Toy", "task": "i2t", "model": "tiny_vlm",
                "generated": f"plush toy number {i}"} for i in range(0, 24, 2)]
    for i in range(5):
        Image.new("RGB", (40, 40), (10 * i, 200, 30)).save(root / "gen" / f"{i}.png")
        records.append({"parent_asin": f"B{i:09d}", "category": "Game", "task": "t2i", "model": "tiny_vlm",
                        "image": f"{i}.png"})
    (root / "gen" / "cqbench.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = root / "out"
    argv = ["recbench", f"data_dir={root / 'data'}", f"out={out}", f"generated=[{root / 'gen' / 'cqbench.jsonl'}]",
            "epochs=3", "baselines=[zeros]", "baseline_missing=[text]", f"image_model={root / 'vit.safetensors'}",
            "image_arch=test_vit", "device=cpu", "threads=1", *TINY_GRID]
    old = torch.get_num_threads()
    rc = cli_main(argv)
    torch.set_num_threads(old)
    return rc, out, argv


def test_run_writes_results_tables_heatmap(bench_run):
    from PIL import Image

    rc, out, _ = bench_run
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    got = {(r["category"], r["condition"], r["model"]) for r in res["results"]}
    models = ("VBPR", "BM3", "FREEDOM")
    expected = {(c, cond, m) for c in ("Game", "Toy") for cond in ("ground_truth", "zeros|text|1.0") for m in models}
    expected |= {("Toy", "tiny_vlm|text|1.0", m) for m in models}  # generated titles exist for Toy only
    expected |= {("Game", "tiny_vlm|image|1.0", m) for m in models}  # generated images for Game only
    assert got == expected
    assert res["conditions"]["Toy"]["tiny_vlm|text|1.0"] == {"replaced": 12, "generations_for_category": 12,
                                                             "unloadable_generations": 0}
    assert res["conditions"]["Game"]["tiny_vlm|image|1.0"]["replaced"] == 5
    assert res["conditions"]["Toy"]["zeros|text|1.0"] == {"replaced": 24}
    for r in res["results"]:
        assert set(r["test"]) == {f"{m}@{k}" for m in ("recall", "ndcg") for k in (5, 10, 20, 50)}
        assert all(0.0 <= v <= 1.0 and v == round(v, 4) for v in r["test"].values())
        assert len(r["grid"]) == (2 if r["model"] == "FREEDOM" else 1)
    fr = [r for r in res["results"] if r["model"] == "FREEDOM"][0]
    best = max(fr["grid"], key=lambda g: g["valid"]["recall@20"])  # picked by valid, first of ties
    assert fr["hyper"] == best["hyper"]
    assert set(res["table6"]) == {"i2t", "t2i"}
    gt = res["table6"]["i2t"]["ground_truth"]["recall@20"]
    best_i2t = max(v["recall@20"] for k, v in res["table6"]["i2t"]["methods"].items() if k == "tiny_vlm")
    assert res["table6"]["i2t"]["rel_diff_best"]["recall@20"] == pytest.approx((best_i2t - gt) / gt)
    for name in ("VBPR_i2t.md", "VBPR_t2i.csv", "FREEDOM_t2i.md", "table6.md"):
        assert (out / "tables" / name).is_file()
    vbpr = (out / "tables" / "VBPR_i2t.md").read_text()
    assert "| Toy | tiny_vlm |" in vbpr and "| Game | Ground Truth |" in vbpr and "| Toy | zeros |" in vbpr
    with Image.open(out / "heatmap.png") as im:
        assert im.size[0] > 100 and im.size[1] > 100
    assert len(list((out / "feature_cache").rglob("*.npy"))) >= 48 + 12 + 5  # gt text + images, generations


def test_rerun_resumes_without_training(bench_run, capsys):
    rc, out, argv = bench_run
    before = (out / "runs.jsonl").read_text()
    first = json.loads((out / "results.json").read_text())["results"]
    old = torch.get_num_threads()
    assert cli_main(argv) == 0
    torch.set_num_threads(old)
    assert (out / "runs.jsonl").read_text() == before  # every grid point was found, none retrained
    assert json.loads((out / "results.json").read_text())["results"] == first
    assert "results:" in capsys.readouterr().out


def test_generated_features_change_freedom_graph_input(bench_run):
    rc, out, _ = bench_run
    rows = [json.loads(x) for x in (out / "runs.jsonl").read_text().splitlines()]
    toy_fr = {r["condition"]: r["valid"] for r in rows if r["category"] == "Toy" and r["model"] == "FREEDOM"}
    assert set(toy_fr) == {"ground_truth", "tiny_vlm|text|1.0", "zeros|text|1.0"}
    assert np.isfinite([v["recall@20"] for v in toy_fr.values()]).all()


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert cli_main(["recbench", "modles=[VBPR]"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'modles'" in err and "did you mean 'models'" in err and "Traceback" not in err
    assert cli_main(["recbench", f"data_dir={tmp_path}", "models=[LightGCN]"]) == 2
    assert "unknown model 'LightGCN'" in capsys.readouterr().err
    assert cli_main(["recbench", f"data_dir={tmp_path / 'none'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli_main(["recbench", f"data_dir={tmp_path}", "grid.VBPR.lr=[1]"]) == 2
    assert "grid.VBPR.lr is not a grid key" in capsys.readouterr().err
