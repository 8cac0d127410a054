"""The one `key=value` parser: recipe overrides (mmpc_rl.config.load_recipe) and every subcommand's options go
through it, so every command types values, reports a bad key or value and answers `--help` the same way. Recipe
files are read here too (`read_yaml`): a YAML mistake in a file or in a value is one line naming where it is."""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections import Counter
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mmpc_rl.checks import check_fields, describe_field
from mmpc_rl.errors import ConfigError, ShowHelp, describe_os_error, did_you_mean

HELP_FLAGS = ("-h", "--help")
# A recipe is a few hundred nodes; aliases that expand past this are a "billion laughs", refused before expansion.
MAX_YAML_NODES = 100_000


def wants_help(argv: list[str]) -> bool:
    return any(arg in HELP_FLAGS for arg in argv)


# ------------------------------------------------------------------------------------------------------ YAML
def _yaml_problem(e: yaml.YAMLError) -> str:
    """`bad YAML at line L, column C: what` from a YAML error (its message spans several lines)."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"bad YAML{where}: " + " ".join(str(problem).split())


def check_yaml(text: str, where: str) -> None:
    """Refuse, in one line naming `where`, YAML that does not parse, repeats a key or whose aliases expand past
    MAX_YAML_NODES. Only the node graph is built (no alias is expanded), in bounded time and memory."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)  # the pure-Python composer: deep nesting raises, not crashes
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: {_yaml_problem(e)}") from None
    except RecursionError:
        raise ConfigError(f"{where}: bad YAML: nested too deeply") from None
    sizes: dict[int, int] = {}

    def size(node, depth: int = 0) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if depth > 200:
            raise ConfigError(f"{where}: bad YAML: nested too deeply (or a recursive alias)")
        sizes[id(node)] = MAX_YAML_NODES + 1  # a node met again while being counted is a recursive alias
        total = 1
        if isinstance(node, yaml.MappingNode):
            keys = [k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode) and not k.tag.endswith(":merge")]
            counts = Counter(keys)  # not keys.count per key: quadratic in a mapping's size
            dup = next((k for k in keys if counts[k] > 1), None)
            if dup is not None:
                raise ConfigError(f"{where}: bad YAML at line {node.start_mark.line + 1}: duplicate key {dup!r}")
            children = [n for pair in node.value for n in pair]
        else:
            children = node.value if isinstance(node, yaml.SequenceNode) else []
        for child in children:
            total += size(child, depth + 1)
            if total > MAX_YAML_NODES:
                break
        sizes[id(node)] = total
        return total

    if root is not None and size(root) > MAX_YAML_NODES:
        raise ConfigError(f"{where}: bad YAML: its aliases expand to more than {MAX_YAML_NODES:,} nodes")


def read_yaml(path: str | Path, what: str = "recipe") -> DictConfig:
    """A YAML file that must hold a mapping, checked by `check_yaml` first."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = describe_os_error(e, str(path)) if isinstance(e, OSError) else f"{path}: not UTF-8 text"
        raise ConfigError(f"cannot read {what} {reason}") from None
    check_yaml(text, f"{what} {path}")
    try:
        cfg = OmegaConf.create(text) if text.strip() else OmegaConf.create({})
    except (OmegaConfBaseException, yaml.YAMLError, ValueError) as e:
        raise ConfigError(f"{what} {path}: {' '.join(str(e).split())}") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{what} {path} must be a mapping of sections")
    return cfg


# --------------------------------------------------------------------------------------------------- parsing
def split_pairs(argv: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for arg in argv:
        if "=" not in arg or arg.startswith("="):
            raise ConfigError(f"arguments are key=value pairs, got {arg!r} (e.g. recipe=i2t trainer.max_steps=10; "
                              "--help lists the keys)")
        key, value = arg.split("=", 1)
        pairs.append((key.lstrip("+"), value))
    return pairs


def typed_value(key: str, value: str):
    """A value as YAML types it (`8` int, `8.0` float, `[a,b]` list); a YAML mistake names the key."""
    check_yaml(value, f"{key}={value}")
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist([f"v={value}"]), resolve=False)["v"]
    except (OmegaConfBaseException, yaml.YAMLError) as e:
        raise ConfigError(f"{key}={value}: {' '.join(str(e).split())}") from None


def typed_tree(pairs: list[tuple[str, str]]) -> dict:
    """YAML-typed values for dotted keys. A reward named by dotted path (`rewards.pkg.mod:fn.weight=1`) keeps its
    dots: OmegaConf would split it into nested keys."""
    for key, value in pairs:
        check_yaml(value, f"{key}={value}")
    plain = [f"{k}={v}" for k, v in pairs if not (k.startswith("rewards.") and ":" in k)]
    try:
        tree = OmegaConf.to_container(OmegaConf.from_dotlist(plain), resolve=False)
        for key, value in pairs:
            if key.startswith("rewards.") and ":" in key:
                head, _, tail = key[len("rewards."):].partition(":")
                fn, _, rest = tail.partition(".")
                typed = typed_value(key, value)
                node = tree.setdefault("rewards", {}).setdefault(f"{head}:{fn}", {})
                if rest:
                    node[rest] = typed
                else:
                    tree["rewards"][f"{head}:{fn}"] = typed
    except (OmegaConfBaseException, yaml.YAMLError) as e:
        raise ConfigError(f"bad option: {str(e).splitlines()[0]}") from None
    return tree


def parse_options(schema, argv: list[str], command: str, *, recipe_keys: bool = False, usage: str | None = None):
    """`key=value` arguments as the `schema` dataclass: an unknown key names the valid ones, a value of the wrong
    type or out of range (the field's metadata, mmpc_rl.checks) is one line. Dotted keys (`grid.VBPR.reg_weight=[0.1]`)
    reach mappings. `-h`/`--help` prints `help_text` (usage, then every key with its default) and exits 0.

    With `recipe_keys`, the pairs that are not the schema's own (`section.key=value`, and `recipe=`/`task=` when the
    schema has no field of that name) are returned apart, as overrides for `load_recipe`, which checks them against
    the recipe: `(options, overrides)`."""
    if wants_help(argv):
        extra = ("every other key is a recipe key, section.key=value (`mmpc-rl train --help` lists them)"
                 if recipe_keys else None)
        raise ShowHelp(help_text(schema, usage or f"usage: {command} [key=value ...]", footer=extra))
    fields = {f.name: f for f in dataclasses.fields(schema)}
    valid = list(fields)
    given, overrides = [], []
    for key, value in split_pairs(argv):
        top = key.split(".", 1)[0]
        if top in valid:
            if key == top and "list" in str(fields[key].type) and value and not value.startswith("["):
                value = f"[{value}]"  # generated=file.jsonl, arms=plain: a one-element list
            given.append((key, value))
        elif recipe_keys and ("." in key or top in ("recipe", "task")):
            overrides.append(f"{key}={value}")
        elif top == "recipe":
            raise ConfigError(f"{command} takes no recipe=; pass its options as key=value")
        else:
            hint = "; recipe keys go as section.key=value (e.g. trainer.beta=0.0)" if recipe_keys else ""
            raise ConfigError(f"unknown key {top!r}" + did_you_mean(top, valid) + hint)
    tree = check_fields(None, schema, typed_tree(given))
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), tree)
        opts = schema(**OmegaConf.to_container(merged, resolve=True))
    except (OmegaConfBaseException, TypeError, ValueError) as e:
        raise ConfigError(f"bad option: {str(e).splitlines()[0]}") from None
    return (opts, overrides) if recipe_keys else opts


# ------------------------------------------------------------------------------------------------------ help
_FIELD_LINE = re.compile(r"^\s+(\w+)\s*:[^=#]*(?:=[^#]*)?(?:#\s*(.*))?$")


def field_comments(schema) -> dict[str, str]:
    """The comment on (or above) each field in the class source: the help text next to its key."""
    out: dict[str, str] = {}
    for cls in reversed(schema.__mro__):
        if not dataclasses.is_dataclass(cls):
            continue
        try:
            lines = inspect.getsource(cls).splitlines()
        except (OSError, TypeError):  # a class made at run time has no source
            continue
        above: list[str] = []
        for line in lines:
            stripped = line.strip()
            if stripped.startswith("#"):
                above.append(stripped.lstrip("# "))
                continue
            m = _FIELD_LINE.match(line)
            if m and m.group(1) in {f.name for f in dataclasses.fields(cls)}:
                out[m.group(1)] = " ".join([*above, m.group(2) or ""]).strip()
            above = []
    return out


def _shown(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    if isinstance(value, str) and not value:
        return '""'
    return str(value)


def field_default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def key_lines(schema, prefix: str = "", values: dict | None = None) -> list[str]:
    """One line per key of `schema`: `prefix+key = value   what it accepts; its comment`. `values` (e.g. a recipe's)
    are shown instead of the dataclass defaults where given."""
    comments = field_comments(schema)
    rows = []
    for f in dataclasses.fields(schema):
        value = (values or {}).get(f.name, field_default(f))
        rows.append((f"{prefix}{f.name} = {_shown(value)}", describe_field(schema, f), comments.get(f.name, "")))
    width = min(max((len(r[0]) for r in rows), default=0), 48)
    return [f"  {key:<{width}}  {kind}" + (f"; {note}" if note else "") for key, kind, note in rows]


def help_text(schema, usage: str, about: str | None = None, footer: str | None = None) -> str:
    """`--help` of a command whose options are `schema`: usage, what it does, each key with its default."""
    doc = inspect.getdoc(schema) or ""
    if doc.startswith(f"{schema.__name__}("):  # the signature dataclasses make up for a class without a docstring
        doc = ""
    lines = [usage, ""]
    if about or doc:
        lines += [about or doc, ""]
    lines += ["keys (key=value; shown with their defaults):", *key_lines(schema)]
    if footer:
        lines += ["", footer]
    return "\n".join(lines)
