#!/usr/bin/env bash
# Benchmark: `runbook plan -o json` against `ninja -n` on the same random DAG
# (../shared/bench/gen_dag.py), side by side in one run, plus peak memory
# and a scaling series to show planning stays near-linear in steps.
#
#   benches/plan_vs_ninja.sh [STEPS] [RUNS]      (defaults: 50000, 10)
#
# Needs: ninja (ninja-build), hyperfine, GNU time (/usr/bin/time), python3.
# Prints a Markdown section ready for docs/benchmarks.md.
set -euo pipefail

steps=${1:-50000}
runs=${2:-10}
# shellcheck source=benches/common.sh
. "$(dirname "$0")/common.sh"
bench_setup ninja hyperfine python3 /usr/bin/time

python3 "$gen" "$steps" "$work/dag" >/dev/null
cd "$work/dag"

hyperfine --warmup 2 --runs "$runs" --style basic --export-json "$work/h.json" \
    -n "runbook plan -o json" "$bin plan dag.yaml -o json > /dev/null" \
    -n "ninja -n" "ninja -n > /dev/null" >&2

rss() { /usr/bin/time -f "%M" "$@" 2>&1 >/dev/null | tail -n 1; }
runbook_rss=$(rss "$bin" plan dag.yaml -o json)
ninja_rss=$(rss ninja -n)

python3 - "$work/h.json" "$steps" "$runbook_rss" "$ninja_rss" <<'PY'
import json, sys
data = json.load(open(sys.argv[1]))["results"]
steps, rb_rss, nj_rss = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
by = {r["command"]: r for r in data}
rb, nj = by["runbook plan -o json"], by["ninja -n"]
ratio = rb["median"] / nj["median"]
print(f"### plan of {steps:,} steps vs `ninja -n`\n")
print("| command | median | mean ± σ | min | peak RSS |")
print("|---|---|---|---|---|")
for name, r, kb in (("runbook plan -o json", rb, rb_rss), ("ninja -n", nj, nj_rss)):
    print(f"| `{name}` | {r['median']*1000:.0f} ms | {r['mean']*1000:.0f} ± {r['stddev']*1000:.0f} ms | {r['min']*1000:.0f} ms | {kb/1024:.1f} MiB |")
print(f"\nratio runbook/ninja (median): **{ratio:.2f}x** (target ≤ 2x); runbook peak RSS **{rb_rss/1024:.1f} MiB** (target < 150 MiB)\n")
PY

echo "### scaling (runbook plan -o json, one run each)"
echo
echo "| steps | wall | peak RSS | µs/step |"
echo "|---|---|---|---|"
for n in 12500 25000 50000 100000; do
    python3 "$gen" "$n" "$work/s$n" >/dev/null
    out=$(/usr/bin/time -f "%e %M" "$bin" plan "$work/s$n/dag.yaml" -o json 2>&1 >/dev/null | tail -n 1)
    read -r secs kb <<<"$out"
    python3 -c "n=$n; s=$secs; kb=$kb; print(f'| {n:,} | {s*1000:.0f} ms | {kb/1024:.1f} MiB | {s*1e6/n:.1f} |')"
done
