#!/usr/bin/env bash
# Benchmark: how fast `runbook resume` of a big run gets back to work.
# A 50,000-step runbook from ../shared/bench/gen_dag.py where every step is
# `true` except the last one in file order, `test -f MARKER` (deps kept), so the
# first `runbook run` fails on it (exit 1) after all the others succeeded. Then
# MARKER is created and the run is resumed several times, each time from a fresh
# copy of the failed run's state directory (same path, so nothing in it moves),
# measuring (a) total wall time of the resume and (b) time from launching the
# process until the `--log-format json` reporter prints `step_started` for the
# designated step (lines are timestamped by a reader as they arrive; the event's
# own `at` field is shown too, but not relied upon).
# Target (DESIGN.md, Performance): the first pending step starts in under 0.5 s.
#
#   benches/resume_50k.sh [STEPS] [RESUMES]      (defaults: 50000, 5)
#
# Env: JOBS (-j of run and resume, default 4), START_EVENT (default step_started),
# RUNBOOK_BIN=path uses that binary instead of building target/release/runbook.
# Needs: python3. Prints a Markdown section ready for docs/benchmarks.md.
set -euo pipefail

steps=${1:-50000}
resumes=${2:-5}
jobs=${JOBS:-4}
start_event=${START_EVENT:-step_started}
# shellcheck source=benches/common.sh
. "$(dirname "$0")/common.sh"
bench_setup python3 date cp mkfifo

python3 "$gen" "$steps" "$work/dag" --cmd true >/dev/null
target=s$((steps - 1))
marker=$work/marker
# The designated step: the last one in file order; its run line follows its id line.
python3 - "$work/dag/dag.yaml" "$target" "$marker" <<'PY'
import sys
path, target, marker = sys.argv[1:4]
lines = open(path).read().split("\n")
i = lines.index(f"  - id: {target}")
assert lines[i + 1].startswith("    run: "), lines[i + 1]
lines[i + 1] = f"    run: {('test -f ' + marker)!r}"
open(path, "w").write("\n".join(lines))
PY
cd "$work/dag"
state=$work/state

# Reader of the JSON event stream: timestamps chunks as they arrive. It touches
# READY before opening the FIFO, so it is running before runbook starts.
cat >"$work/filter.py" <<'PY'
import json, os, sys, time
fifo, target, ready, start_event = sys.argv[1:5]
open(ready, "w").close()
fd = os.open(fifo, os.O_RDONLY)
first = started = at = None
n, events, buf = 0, set(), b""
while True:
    chunk = os.read(fd, 65536)
    if not chunk:
        break
    t = time.time()
    buf += chunk
    *lines, buf = buf.split(b"\n")
    for line in lines:
        if not line.strip():
            continue
        n += 1
        first = first or t
        try:
            r = json.loads(line)
        except ValueError:
            continue
        ev = r.get("event")
        events.add(str(ev))
        if started is None and ev == start_event and r.get("step") == target:
            started, at = t, r.get("at")
print(json.dumps({"first": first, "started": started, "at": at, "lines": n, "events": sorted(events)}))
PY

echo "first run: $steps steps, -j $jobs (fails on $target by design)..." >&2
t0=$(date +%s.%N)
rc=0
"$bin" run dag.yaml -j "$jobs" --state-dir "$state" >/dev/null || rc=$?
t1=$(date +%s.%N)
first_run=$(python3 -c "print(f'{$t1 - $t0:.1f}')")
echo "first run: ${first_run} s, exit $rc" >&2
if [ "$rc" -ne 1 ]; then
    echo "expected the first run to exit 1 (step $target fails), got $rc" >&2
    exit 1
fi
shopt -s nullglob
run_dirs=("$state"/runs/*/)
shopt -u nullglob
if [ "${#run_dirs[@]}" -ne 1 ]; then
    echo "expected exactly one run directory under $state/runs/, found ${#run_dirs[@]}" >&2
    exit 1
fi
run_id=$(basename "${run_dirs[0]}")
state_kb=$(du -sk "$state" | cut -f1)
mv "$state" "$work/pristine"
touch "$marker"

: >"$work/results"
for i in $(seq 1 "$resumes"); do
    rm -rf "$state"
    cp -a "$work/pristine" "$state"
    fifo=$work/ev$i
    ready=$work/ready$i
    mkfifo "$fifo"
    python3 "$work/filter.py" "$fifo" "$target" "$ready" "$start_event" >"$work/m$i" &
    reader=$!
    while [ ! -e "$ready" ]; do
        kill -0 "$reader" 2>/dev/null || { echo "event reader died" >&2; exit 1; }
        sleep 0.01
    done
    rc=0
    t0=$(date +%s.%N)
    "$bin" resume "$run_id" --state-dir "$state" --log-format json -j "$jobs" >"$fifo" || rc=$?
    t1=$(date +%s.%N)
    wait "$reader"
    echo "$t0 $t1 $rc $(cat "$work/m$i")" >>"$work/results"
    echo "resume $i/$resumes: exit $rc, $(python3 -c "print(f'{$t1 - $t0:.3f}')") s" >&2
done

python3 - "$work/results" "$steps" "$run_id" "$target" "$start_event" "$first_run" "$jobs" "$state_kb" <<'PY'
import datetime, json, statistics, sys
path, steps, run_id, target, start_event, first_run, jobs, state_kb = sys.argv[1:9]
rows = []
for line in open(path):
    t0, t1, rc, m = line.split(" ", 3)
    rows.append((float(t0), float(t1), int(rc), json.loads(m)))

def ms(x):
    return "–" if x is None else f"{x*1000:.0f} ms"

def at_epoch(s):
    try:
        return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
    except (AttributeError, ValueError):
        return None

print(f"### resume of a {int(steps):,}-step run with one pending step\n")
print(f"First run (-j {jobs}, fails on `{target}` by design): {first_run} s; state directory "
      f"{int(state_kb)/1024:.1f} MiB. Each resume starts from a fresh copy of it (warm page cache).\n")
print(f"| # | first event | `{start_event}` {target} | same, by its `at` | resume total | exit |")
print("|---|---|---|---|---|---|")
started, totals = [], []
for i, (t0, t1, rc, m) in enumerate(rows, 1):
    first = m["first"] - t0 if m["first"] else None
    st = m["started"] - t0 if m["started"] else None
    at = at_epoch(m["at"])
    print(f"| {i} | {ms(first)} | {ms(st)} | {ms(at - t0 if at else None)} | {ms(t1 - t0)} | {rc} |")
    totals.append(t1 - t0)
    if st is not None:
        started.append(st)
print()
bad = [i for i, r in enumerate(rows, 1) if r[2] != 0]
if bad:
    print(f"**resume exited non-zero in run(s) {bad}**\n")
if len(started) < len(rows):
    print(f"**`{start_event}` for `{target}` not seen in {len(rows) - len(started)} run(s)**; "
          f"events seen: {', '.join(rows[0][3]['events']) or 'none'}\n")
if started:
    print(f"median time to `{start_event}` of the pending step: **{statistics.median(started)*1000:.0f} ms** "
          f"(target < 500 ms); median resume total: **{statistics.median(totals)*1000:.0f} ms**\n")
PY
