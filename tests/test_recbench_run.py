"""A full `mmpc-rl recbench` run on the sample catalog with the real MiniLM and a tiny timm ViT from a local file:
ground truth, generated titles (i2t), generated images (t2i) and the zeros baseline; then a resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmpc_rl.cli import main as cli_main

TINY_GRID = ["grid.VBPR.reg_weight=[0.1]", "grid.BM3.n_layers=[1]", "grid.BM3.dropout=[0.5]",
             "grid.BM3.reg_weight=[0.1]", "grid.FREEDOM.dropout=[0.8]", "grid.FREEDOM.reg_weight=[0.0,0.001]"]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    import timm
    from PIL import Image
    from safetensors.torch import save_file

    from mmpc_rl.recbench.bench import RecBenchConfig, resolve_data_dir

    root = tmp_path_factory.mktemp("recbench")
    built = resolve_data_dir(RecBenchConfig(data_dir="sample"))  # the sample catalog through the data pipeline
    cq = [json.loads(x) for x in (built / "Video_Games" / "cqbench.jsonl").read_text().splitlines()][:12]
    beauty = [json.loads(x) for x in (built / "All_Beauty" / "cqbench.jsonl").read_text().splitlines()][:5]
    torch.manual_seed(0)
    vit = timm.create_model("test_vit", pretrained=False)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, root / "vit.safetensors")
    (root / "gen").mkdir()
    records = [{"parent_asin": it["parent_asin"], "category": "Video_Games", "task": "i2t", "model": "tiny_vlm",
                "generated": " ".join(it["title"].split()[1:])} for it in cq]
    for i, it in enumerate(beauty):
        Image.new("RGB", (40, 40), (10 * i, 200, 30)).save(root / "gen" / f"{i}.png")
        records.append({"parent_asin": it["parent_asin"], "category": "All_Beauty", "task": "t2i",
                        "model": "tiny_vlm", "image": f"{i}.png"})
    (root / "gen" / "cqbench.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = root / "out"
    argv = ["recbench", "data_dir=sample", "categories=[Video_Games,All_Beauty]", f"out={out}",
            f"generated=[{root / 'gen' / 'cqbench.jsonl'}]", "epochs=3", "baselines=[zeros]",
            "baseline_missing=[text]", f"image_model={root / 'vit.safetensors'}", "image_arch=test_vit",
            "device=cpu", "threads=1", *TINY_GRID]
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
    cats = ("All_Beauty", "Video_Games")
    expected = {(c, cond, m) for c in cats for cond in ("ground_truth", "zeros|text|1.0") for m in models}
    expected |= {("Video_Games", "tiny_vlm|text|1.0", m) for m in models}  # generated titles: Video_Games only
    expected |= {("All_Beauty", "tiny_vlm|image|1.0", m) for m in models}  # generated images: All_Beauty only
    assert got == expected
    n_items = res["data"]["Video_Games"]["items"]
    assert res["conditions"]["Video_Games"]["tiny_vlm|text|1.0"] == {
        "missing": n_items, "replaced": 12, "generations_for_category": 12, "unloadable_generations": 0}
    assert res["conditions"]["All_Beauty"]["tiny_vlm|image|1.0"]["replaced"] == 5
    assert n_items > 12 and res["conditions"]["Video_Games"]["zeros|text|1.0"] == {"missing": n_items,
                                                                                  "replaced": n_items}
    # 12 generated titles for a category of n_items: most rows keep ground truth, and every output says so
    summary = json.loads((out / "summary.json").read_text())
    assert summary["coverage"]["Video_Games"]["tiny_vlm|text|1.0"] == {"missing": n_items, "replaced": 12}
    assert summary["coverage"]["Video_Games"]["tiny_vlm|image|1.0"] == {"missing": n_items, "replaced": 0}
    note = (f"low coverage: Video_Games tiny_vlm|text|1.0 replaced 12 of {n_items} missing text rows "
            f"({12 / n_items:.0%} < 90%); the other {n_items - 12} keep their ground-truth features")
    assert note in summary["low_coverage"] and len(summary["low_coverage"]) == 4  # both tasks, both categories
    assert summary["select_by"] == "valid" and summary["profile"] == "default"
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
    assert "| Video_Games | tiny_vlm |" in vbpr and "| All_Beauty | Ground Truth |" in vbpr
    assert "| Video_Games | zeros |" in vbpr
    assert f"- **{note}**" in vbpr and "tiny_vlm|image" not in vbpr  # the i2t table lists the i2t notes
    assert "tiny_vlm|image|1.0 replaced 5 of" in (out / "tables" / "VBPR_t2i.md").read_text()
    assert note in (out / "tables" / "table6.md").read_text()
    with Image.open(out / "heatmap.png") as im:
        assert im.size[0] > 100 and im.size[1] > 100
    assert len(list((out / "feature_cache").rglob("*.npy"))) >= 2 * n_items + 12 + 5  # gt text, images, generated


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


def test_runs_log_has_every_condition(bench_run):
    rc, out, _ = bench_run
    rows = [json.loads(x) for x in (out / "runs.jsonl").read_text().splitlines()]
    toy_fr = {r["condition"]: r["valid"] for r in rows if r["category"] == "Video_Games" and r["model"] == "FREEDOM"}
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
    assert cli_main(["recbench", "epochs=abc"]) == 2
    assert "epochs must be a whole number, got 'abc'" in capsys.readouterr().err


def test_single_values_for_list_options():
    from mmpc_rl.recbench.cli import parse_config

    cfg = parse_config(["generated=a.jsonl", "categories=Video_Games", "rates=[0.2,1.0]", "select_by=test"])
    assert (cfg.generated, cfg.categories, cfg.rates, cfg.select_by) == (["a.jsonl"], ["Video_Games"], [0.2, 1.0],
                                                                          "test")


def test_other_training_settings_do_not_reuse_runs():
    from mmpc_rl.recbench.bench import RecBenchConfig, _fingerprint

    a, b = RecBenchConfig(), RecBenchConfig(epochs=5)
    assert _fingerprint(a, None, None) != _fingerprint(b, None, None)
    assert _fingerprint(a, None, None) == _fingerprint(RecBenchConfig(), None, None)
