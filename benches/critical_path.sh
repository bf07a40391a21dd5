#!/usr/bin/env bash
# Benchmark: scheduling overhead on a DAG of `sleep` steps. A random DAG of
# ~60 steps (each needs up to 3 earlier steps, sleeps 0.1-0.6 s) is run with
# -j 64, so nothing waits for a slot and the ideal wall time is the critical
# path (longest path by duration). Reports each run's wall time, the median,
# and the overhead over the critical path; `make -j64` on the same DAG runs
# side by side as a peer.
# Target: runbook wall time within 5% of the critical path.
#
#   benches/critical_path.sh [STEPS] [RUNS] [SEED]      (defaults: 60, 3, 7)
#
# Needs: make, hyperfine, python3.
# RUNBOOK_BIN=path uses that binary instead of building target/release/runbook.
# Prints a Markdown section ready for docs/benchmarks.md; progress on stderr.
set -euo pipefail

steps=${1:-60}
runs=${2:-3}
seed=${3:-7}
# shellcheck source=benches/common.sh
. "$(dirname "$0")/common.sh"
bench_setup make hyperfine python3
mkdir "$work/dag"

# Generator: dag.yaml + Makefile of `sleep D` steps, and cp.json with the
# critical path (longest path by duration), its steps and the total work.
python3 - "$steps" "$seed" "$work/dag" <<'PY'
import json, os, random, sys
n, seed, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rnd = random.Random(seed)
dur = [round(rnd.uniform(0.1, 0.6), 2) for _ in range(n)]
deps = [sorted(set(rnd.randrange(i) for _ in range(rnd.randint(0, min(3, i))))) if i else [] for i in range(n)]
finish, prev = [0.0] * n, [None] * n
for i in range(n):
    best = max(deps[i], key=lambda j: finish[j], default=None)
    prev[i] = best
    finish[i] = dur[i] + (finish[best] if best is not None else 0.0)
end = max(range(n), key=lambda i: finish[i])
path = []
while end is not None:
    path.append(f"s{end}")
    end = prev[end]
with open(os.path.join(out, "dag.yaml"), "w") as f:
    f.write("apiVersion: runbook/v1\nkind: Runbook\nmetadata:\n  name: bench-critical-path\n  version: 1.0.0\nsteps:\n")
    for i in range(n):
        f.write(f"  - id: s{i}\n    run: sleep {dur[i]}\n")
        if deps[i]:
            f.write("    needs: [" + ", ".join(f"s{j}" for j in deps[i]) + "]\n")
with open(os.path.join(out, "Makefile"), "w") as f:
    names = " ".join(f"s{i}" for i in range(n))
    f.write(f"all: {names}\n.PHONY: all {names}\n")
    for i in range(n):
        f.write(f"s{i}: " + " ".join(f"s{j}" for j in deps[i]) + f"\n\t@sleep {dur[i]}\n")
json.dump({"critical": max(finish), "path": path[::-1], "work": sum(dur),
           "edges": sum(map(len, deps))}, open(os.path.join(out, "cp.json"), "w"))
PY
cd "$work/dag"
state=$work/state
printf -v qbin '%q' "$bin"
printf -v qstate '%q' "$state"

hyperfine --runs "$runs" --style basic --export-json "$work/h.json" \
    -n "runbook run -j 64" --prepare "rm -rf $qstate" \
    "$qbin run dag.yaml -j 64 --state-dir $qstate > /dev/null" \
    -n "make -j64" --prepare "true" \
    "make -j64 -f Makefile all > /dev/null" >&2

python3 - "$work/h.json" cp.json "$steps" <<'PY'
import json, statistics, sys
res = {r["command"]: r for r in json.load(open(sys.argv[1]))["results"]}
cp = json.load(open(sys.argv[2]))
steps, crit = int(sys.argv[3]), cp["critical"]
rb, mk = res["runbook run -j 64"]["times"], res["make -j64"]["times"]
pct = lambda t: f"{(t / crit - 1) * 100:+.1f}%"
print(f"### critical path: {steps} `sleep` steps, -j 64\n")
print(f"{steps} steps, {cp['edges']} edges, total work {cp['work']:.2f} s; critical path "
      f"**{crit:.2f} s** over {len(cp['path'])} steps ({' → '.join(cp['path'])}).\n")
print("| run | runbook wall | overhead | make -j64 wall | overhead |")
print("|---|---|---|---|---|")
for i, (a, b) in enumerate(zip(rb, mk), 1):
    print(f"| {i} | {a:.3f} s | {pct(a)} | {b:.3f} s | {pct(b)} |")
ra, ma = statistics.median(rb), statistics.median(mk)
print(f"| median | {ra:.3f} s | {pct(ra)} | {ma:.3f} s | {pct(ma)} |")
print(f"\nrunbook overhead over the critical path (median): **{pct(ra)}** (target within 5%); "
      f"make: {pct(ma)}\n")
PY
