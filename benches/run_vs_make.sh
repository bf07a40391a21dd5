#!/usr/bin/env bash
# Benchmark: `runbook run` of 5,000 `true` steps with -j 2 (journal on, the
# default) against `make -j2` and `ninja -j2` on the same random DAG
# (../shared/bench/gen_dag.py), side by side in one run, every run starting
# clean, plus peak memory of each.
# Target (DESIGN.md, Performance): runbook within 1.2x of make -j2.
#
#   benches/run_vs_make.sh [STEPS] [RUNS]      (defaults: 5000, 5)
#
# Needs: make, ninja (ninja-build), hyperfine, GNU time (/usr/bin/time), python3.
# RUNBOOK_BIN=path uses that binary instead of building target/release/runbook.
# RUNBOOK_BASE_BIN=path adds that binary (e.g. the previous release) to the
# same hyperfine run, to compare two versions on the same machine state.
# Prints a Markdown section ready for docs/benchmarks.md; progress on stderr.
set -euo pipefail

steps=${1:-5000}
runs=${2:-5}
# shellcheck source=benches/common.sh
. "$(dirname "$0")/common.sh"
bench_setup make ninja hyperfine python3 /usr/bin/time

python3 "$gen" "$steps" "$work/dag" --cmd true >/dev/null
cd "$work/dag"
state=$work/state
printf -v qbin '%q' "$bin"
printf -v qstate '%q' "$state"

# make: every target is .PHONY, so each run executes all steps again.
# ninja: its rule is `true && touch $out`, so outputs and logs are removed first.
base_args=()
if [ -n "${RUNBOOK_BASE_BIN:-}" ]; then
    printf -v qbase '%q' "$RUNBOOK_BASE_BIN"
    base_args=(-n "base run -j 2" --prepare "rm -rf $qstate" "$qbase run dag.yaml -j 2 --state-dir $qstate > /dev/null")
fi
hyperfine --warmup 1 --runs "$runs" --style basic --export-json "$work/h.json" \
    -n "runbook run -j 2" --prepare "rm -rf $qstate" \
    "$qbin run dag.yaml -j 2 --state-dir $qstate > /dev/null" \
    "${base_args[@]}" \
    -n "make -j2" --prepare "true" \
    "make -j2 -f Makefile all > /dev/null" \
    -n "ninja -j2" --prepare "rm -rf o .ninja_log .ninja_deps" \
    "ninja -j2 > /dev/null" >&2

# Peak RSS (KiB) of one clean run each.
rss() { /usr/bin/time -o "$work/rss" -f "%M" "$@" >/dev/null; tail -n 1 "$work/rss"; }
rm -rf "$state"
runbook_rss=$(rss "$bin" run dag.yaml -j 2 --state-dir "$state")
make_rss=$(rss make -j2 -f Makefile all)
rm -rf o .ninja_log .ninja_deps
ninja_rss=$(rss ninja -j2)

python3 - "$work/h.json" "$steps" "$runbook_rss" "$make_rss" "$ninja_rss" <<'PY'
import json, sys
data = json.load(open(sys.argv[1]))["results"]
steps = int(sys.argv[2])
rss = dict(zip(("runbook run -j 2", "make -j2", "ninja -j2"), map(int, sys.argv[3:6])))
by = {r["command"]: r for r in data}
rb, mk, nj = by["runbook run -j 2"], by["make -j2"], by["ninja -j2"]
print(f"### run of {steps:,} `true` steps, -j 2: runbook vs make vs ninja\n")
print("| command | median | mean ± σ | min | µs/step | peak RSS |")
print("|---|---|---|---|---|---|")
for name, r in (("runbook run -j 2", rb), ("make -j2", mk), ("ninja -j2", nj)):
    print(f"| `{name}` | {r['median']*1000:.0f} ms | {r['mean']*1000:.0f} ± {r['stddev']*1000:.0f} ms "
          f"| {r['min']*1000:.0f} ms | {r['median']*1e6/steps:.0f} | {rss[name]/1024:.1f} MiB |")
print(f"\nratio runbook/make (median): **{rb['median']/mk['median']:.2f}x** (target ≤ 1.2x); "
      f"runbook/ninja: **{rb['median']/nj['median']:.2f}x**\n")
if "base run -j 2" in by:
    b = by["base run -j 2"]
    print(f"base binary in the same run: median {b['median']*1000:.0f} ms, {b['median']/mk['median']:.2f}x of make; "
          f"this binary/base: **{rb['median']/b['median']:.3f}x**\n")
PY
