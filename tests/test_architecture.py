"""The import graph of the installed package: no cycle; the core never imports its plug-ins or the trainer; the
measurement harness (mmpc_rl.bench) is the top floor, imported by nothing else; and the model loaders
(mmpc_rl/models/) import nothing above them.

Modules are found as setuptools installs them (pyproject's `package-dir` maps the design card's folders into
`mmpc_rl`), and every import counts, also one inside a function, and one by string (`importlib.import_module("m")`,
a `"m:function"` registry entry): a lazy import is still a dependency."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).parents[1]
PLUGINS = ("mmpc_rl.train", "mmpc_rl.eval", "mmpc_rl.rewards")
BENCH = "mmpc_rl.bench"  # above the plug-ins: it runs training, CQBench and the rewards to measure them
# what the model loaders may import besides each other: modules that import no other project module but these
GROUND = ("mmpc_rl.errors", "mmpc_rl.zero3")
REGISTRY_ENTRY = re.compile(r"(mmpc_rl(?:\.\w+)+):\w+")


def in_package(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def modules() -> dict[str, Path]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping, out = pyproject["package-dir"], {}
    for package in pyproject["packages"]:
        top = max((p for p in mapping if package == p or package.startswith(p + ".")), key=len)
        folder = ROOT / mapping[top] / Path(*package[len(top):].strip(".").split(".") if package != top else ())
        for file in folder.glob("*.py"):
            out[package if file.stem == "__init__" else f"{package}.{file.stem}"] = file
    return out


def string_import(node: ast.AST) -> str | None:
    """The module a string names for a lazy import: the literal argument of `import_module(...)`, or the module part
    of a `"package.module:function"` registry entry."""
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
        func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if func in ("import_module", "__import__") and isinstance(node.args[0].value, str):
            return node.args[0].value
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        entry = REGISTRY_ENTRY.fullmatch(node.value)
        return entry.group(1) if entry else None
    return None


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The project modules `path` imports. `from package import submodule` names the submodule only: a package's
    __init__ runs before any of its submodules, for every importer alike, so it is no edge of its own."""
    found = set()
    package = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if (module := string_import(node)) is not None:
            found.add(module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            subs = {f"{base}.{a.name}" for a in node.names}
            found |= subs
            if not subs <= known:  # a name defined in the module itself
                found.add(base)
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(path, name, set(mods)) for name, path in mods.items()}


def test_the_mapping_finds_every_folder():
    mods = modules()
    assert {"mmpc_rl.config", "mmpc_rl.train.builder", "mmpc_rl.eval.runner", "mmpc_rl.rewards.registry",
            "mmpc_rl.recbench.models", "mmpc_rl.data.build"} <= set(mods)
    assert graph()["mmpc_rl.train.builder"] >= {"mmpc_rl.config", "mmpc_rl.rewards", "mmpc_rl.train.callbacks"}


def test_import_graph_has_no_cycle():
    g, state, cycles = graph(), {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(g[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join([*stack[stack.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_core_never_imports_train_eval_or_rewards():
    offenders = {name: sorted(m for m in deps if in_package(m, *PLUGINS))
                 for name, deps in graph().items() if not in_package(name, *PLUGINS, BENCH)}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_nothing_imports_the_measurement_harness():
    g = graph()
    assert {"mmpc_rl.bench.grpo_arms", "mmpc_rl.bench.gpu_check"} <= set(g)
    assert g["mmpc_rl.bench.grpo_arms"] >= {"mmpc_rl.train.builder"}  # the edge the harness exists for
    offenders = {name: sorted(m for m in deps if in_package(m, BENCH))
                 for name, deps in g.items() if not in_package(name, BENCH)}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_string_imports_are_edges(tmp_path):
    code = 'import importlib\nB = {"x": "mmpc_rl.tiny.qwen:build"}\nimportlib.import_module("mmpc_rl.data")\n'
    (tmp_path / "m.py").write_text(code)
    assert imports(tmp_path / "m.py", "mmpc_rl.m", {"mmpc_rl.tiny.qwen", "mmpc_rl.data"}) == {
        "mmpc_rl.tiny.qwen", "mmpc_rl.data"}


def test_models_import_nothing_above_them():
    """The loaders are the ground floor: `tiny://` and other schemes are registered with them from above
    (mmpc_rl.tiny), never imported by them."""
    g = graph()
    above = {name: sorted(m for m in deps if not m.startswith("mmpc_rl.models") and m not in GROUND)
             for name, deps in g.items() if name.startswith("mmpc_rl.models")}
    assert {k: v for k, v in above.items() if v} == {}
    assert {m: sorted(g[m] - set(GROUND)) for m in GROUND} == {m: [] for m in GROUND}


def test_one_option_parser():
    defs = [f"{p.relative_to(ROOT)}:{n.name}" for p in modules().values()
            for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.FunctionDef)
            and n.name in ("parse_options", "parse_overrides")]
    assert defs == ["mmpc_rl/options.py:parse_options"]


def test_the_recipe_schema_builds_no_trl_or_peft_object():
    """config.py is the schema and its composition; TRL/PEFT objects are built in train/ (trl_config.py)."""
    tree = ast.parse((ROOT / "mmpc_rl" / "config.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported & {"trl", "peft", "torch", "transformers"} == set()


# Internal imports inside functions hide who depends on whom; these are the deliberate ones, each for a stated reason.
DEFERRED = {
    "train/grpo.py": "the recipe is checked before TRL's ~8 s import",
    "mmpc_rl/bench/cli.py": "options and recipe are checked before torch, TRL and the GPU check load",
    "mmpc_rl/plan/shapes.py": "the planner imports without torch; the model shape is built only when asked for",
}


def test_internal_imports_are_at_module_top():
    nested = set()
    for path in modules().values():
        tree = ast.parse(path.read_text())
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and id(node) not in top and (node.module or "").startswith("mmpc_rl"):
                nested.add(str(path.relative_to(ROOT)))
    assert nested <= set(DEFERRED), sorted(nested - set(DEFERRED))
