#!/usr/bin/env bash
# The GPU check on one H100/H200 with the project installed: random weights at the real shapes, nothing
# downloaded, one JSON + one markdown table in OUT. Extra key=value arguments pass through (e.g. sections=[grpo]).
#   bench/gpu_check.sh [OUT] [key=value ...]        (dry run on CPU: mmpc-rl benchmark suite=gpu dry=true)
set -euo pipefail
out="${1:-outputs/gpu-check}"
shift || true
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec mmpc-rl benchmark suite=gpu out="$out" "$@"
