#!/usr/bin/env bash
# One command per table and figure of the MMPCBench paper (docs/reproduce.md):
#   bench/reproduce_paper.sh                  the list of steps and what each produces
#   bench/reproduce_paper.sh NAME             a step (data, cqbench, recbench, grpo-i2t, grpo-t2i, lr-sweep, all)
#                                             or a table/figure (table1 ... table17, fig3, fig4, fig5)
# Environment: SMOKE=1 (the same commands with tiny models on the sample catalog, CPU, minutes), DRY=1 (print the
# commands only), DATA (the data build; data/mmpcbench), OUT (results; outputs/paper), SOURCE (raw Amazon-2023
# files for `data build`; hub), LPIPS (AlexNet weights; torch's hub cache; none: no LPIPS column), PYTHON.
# Extra key=value arguments pass through (smoke=true, out=DIR, ...).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-}"
if [ -z "$py" ]; then
    if [ -x "$root/.venv/bin/python" ]; then py="$root/.venv/bin/python"; else py=python3; fi
fi
args=()
[ "${SMOKE:-0}" != 0 ] && args+=("smoke=true")
[ "${DRY:-0}" != 0 ] && args+=("dry=true")
for var in DATA OUT SOURCE LPIPS; do
    [ -n "${!var:-}" ] && args+=("$(echo "$var" | tr 'A-Z' 'a-z')=${!var}")
done
name=()
[ $# -gt 0 ] && { name=("$1"); shift; }
exec "$py" -m mmpc_rl.bench.reproduce ${name[@]+"${name[@]}"} ${args[@]+"${args[@]}"} "$@"
