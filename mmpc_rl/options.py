"""The one `key=value` parser: recipe overrides (mmpc_rl.config.load_recipe) and every subcommand's options go
through it, so every command types values and reports a bad key the same way."""

from __future__ import annotations

import dataclasses

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mmpc_rl.errors import ConfigError, did_you_mean


def split_pairs(argv: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for arg in argv:
        if "=" not in arg or arg.startswith("="):
            raise ConfigError(f"arguments are key=value pairs, got {arg!r} (e.g. recipe=i2t trainer.max_steps=10)")
        key, value = arg.split("=", 1)
        pairs.append((key.lstrip("+"), value))
    return pairs


def typed_tree(pairs: list[tuple[str, str]]) -> dict:
    """YAML-typed values for dotted keys. A reward named by dotted path (`rewards.pkg.mod:fn.weight=1`) keeps its
    dots: OmegaConf would split it into nested keys."""
    plain = [f"{k}={v}" for k, v in pairs if not (k.startswith("rewards.") and ":" in k)]
    try:
        tree = OmegaConf.to_container(OmegaConf.from_dotlist(plain), resolve=False)
        for key, value in pairs:
            if key.startswith("rewards.") and ":" in key:
                head, _, tail = key[len("rewards."):].partition(":")
                fn, _, rest = tail.partition(".")
                typed = OmegaConf.to_container(OmegaConf.from_dotlist([f"v={value}"]), resolve=False)["v"]
                node = tree.setdefault("rewards", {}).setdefault(f"{head}:{fn}", {})
                if rest:
                    node[rest] = typed
                else:
                    tree["rewards"][f"{head}:{fn}"] = typed
    except OmegaConfBaseException as e:
        raise ConfigError(f"bad option: {str(e).splitlines()[0]}") from None
    return tree


def parse_options(schema, argv: list[str], command: str, *, recipe_keys: bool = False):
    """`key=value` arguments as the `schema` dataclass, typed by OmegaConf: an unknown key names the valid ones, a
    value of the wrong type is one line. Dotted keys (`grid.VBPR.reg_weight=[0.1]`) reach mappings.

    With `recipe_keys`, the pairs that are not the schema's own (`section.key=value`, and `recipe=`/`task=` when the
    schema has no field of that name) are returned apart, as overrides for `load_recipe`, which checks them against
    the recipe: `(options, overrides)`."""
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
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), typed_tree(given))
        opts = schema(**OmegaConf.to_container(merged, resolve=True))
    except OmegaConfBaseException as e:
        raise ConfigError(f"bad option: {str(e).splitlines()[0]}") from None
    return (opts, overrides) if recipe_keys else opts
