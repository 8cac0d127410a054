#!/usr/bin/env bash
# The GPU check on one H100/H200 from a checkout: random weights at the real shapes, nothing downloaded, one JSON +
# one markdown table in OUT. Needs no install and no `mmpc-rl` on PATH: the checkout's folders are linked into a
# temporary `mmpc_rl` package laid out as pyproject.toml's package-dir maps them. Extra key=value arguments pass
# through (e.g. sections=[project,plain]); PYTHON picks the interpreter (default python3).
#   bench/gpu_check.sh [OUT] [key=value ...]        (dry run on CPU: add dry=true)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-outputs/gpu-check}"
shift || true
mkdir -p "$out"
out="$(cd "$out" && pwd)"
site="$(mktemp -d)"
trap 'rm -rf "$site"' EXIT
mkdir "$site/mmpc_rl"
ln -s "$root"/mmpc_rl/* "$site/mmpc_rl/"
for sub in rewards eval train recipes; do  # pyproject.toml [tool.setuptools] package-dir
  ln -s "$root/$sub" "$site/mmpc_rl/$sub"
done
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cd "$site"  # not the checkout: its own mmpc_rl/ folder would shadow the linked package
# what the check imports beyond the standard library, checked before any device time is spent
"${PYTHON:-python3}" - <<'PY'
import importlib.util, sys
need = ["torch", "transformers", "peft", "accelerate", "trl", "datasets", "diffusers", "open_clip", "omegaconf",
        "orjson", "PIL", "yaml"]
missing = [m for m in need if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu_check: not importable: {', '.join(missing)}; carry their wheels (docs/benchmark.md, GPU check)")
PY
"${PYTHON:-python3}" -m mmpc_rl.cli benchmark suite=gpu out="$out" "$@"
