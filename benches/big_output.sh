#!/usr/bin/env bash
# Benchmark: streaming a big step output to its log with flat memory. A one-step
# runbook whose command writes 1 GiB to stdout (`head -c 1073741824 /dev/zero`)
# is run under GNU time: peak RSS and throughput, next to the same command
# writing straight to a file (`sh -c 'head -c N /dev/zero > FILE'`) as the
# peer, alternating, REPS times each (disk writeback makes single runs noisy).
# Also checks that the step log ($STATE/runs/<run-id>/logs/dump.log)
# holds every byte, then deletes it.
# Target (DESIGN.md, Performance): under 64 MiB peak RSS.
# SOURCE=yes writes `yes | head -c N` instead: ~N/2 short lines rather than
# one line without a newline, to load the per-line progress path instead.
#
#   benches/big_output.sh [BYTES] [REPS]      (defaults: 1073741824 = 1 GiB, 3)
#
# Needs: GNU time (/usr/bin/time), python3, about BYTES of free disk in $TMPDIR.
# RUNBOOK_BIN=path uses that binary instead of building target/release/runbook.
# Prints a Markdown section ready for docs/benchmarks.md; progress on stderr.
set -euo pipefail

bytes=${1:-1073741824}
reps=${2:-3}
case ${SOURCE:-zero} in
    zero) cmd="head -c $bytes /dev/zero" ;;
    yes) cmd="yes | head -c $bytes" ;;
    *) echo "SOURCE must be zero or yes" >&2; exit 2 ;;
esac
# shellcheck source=benches/common.sh
. "$(dirname "$0")/common.sh"
bench_setup python3 /usr/bin/time head stat df
avail=$(df --output=avail -B1 "$work" | tail -n 1)
if [ "$avail" -lt $((bytes + 64 * 1024 * 1024)) ]; then
    echo "not enough free space in $work: $avail bytes, need $bytes and some" >&2
    exit 2
fi

cat >"$work/big.yaml" <<EOF
apiVersion: runbook/v1
kind: Runbook
metadata:
  name: bench-big-output
  version: 1.0.0
steps:
  - id: dump
    shell: sh # as the peer runs it; \`yes | head\` fails under pipefail (SIGPIPE)
    run: $cmd
EOF
state=$work/state

# Alternate peer and runbook, REPS times each; every runbook run starts clean
# and its step log is checked and deleted right after.
: >"$work/results"
for r in $(seq 1 "$reps"); do
    echo "[$r/$reps] peer: $cmd > file" >&2
    /usr/bin/time -o "$work/peer.time" -f "%M %e" sh -c "$cmd > '$work/peer.out'"
    peer_size=$(stat -c %s "$work/peer.out")
    rm -f "$work/peer.out"

    echo "[$r/$reps] runbook run big.yaml" >&2
    rm -rf "$state"
    /usr/bin/time -o "$work/rb.time" -f "%M %e" "$bin" run "$work/big.yaml" -j 1 --state-dir "$state" >/dev/null
    shopt -s nullglob
    logs=("$state"/runs/*/logs/dump.log)
    shopt -u nullglob
    if [ "${#logs[@]}" -eq 1 ]; then
        # the log starts with runbook's banner lines ("--- runbook: ...",
        # "--- $ command"); count only the step's own bytes
        log_size=$(python3 -c '
import os, sys
path = sys.argv[1]
head = open(path, "rb").read(4096)
banner = 0
for line in head.split(b"\n"):
    if not line.startswith(b"--- "):
        break
    banner += len(line) + 1
print(os.path.getsize(path) - banner)' "${logs[0]}")
        rm -f "${logs[0]}"
    else
        echo "expected one step log at $state/runs/<run-id>/logs/dump.log; the state dir holds:" >&2
        find "$state" -maxdepth 4 >&2 || true
        log_size=-1
    fi
    echo "$(tail -n 1 "$work/rb.time") $log_size $(tail -n 1 "$work/peer.time") $peer_size" >>"$work/results"
done

python3 - "$work/results" "$bytes" "$cmd" <<'PY'
import statistics, sys
rows = [[float(x) for x in line.split()] for line in open(sys.argv[1])]
n, cmd = int(sys.argv[2]), sys.argv[3]
mib = n / 2**20
# row: runbook KiB, runbook s, log bytes, peer KiB, peer s, peer bytes
rb_kb, pk = max(r[0] for r in rows), max(r[3] for r in rows)
rb_s, ps = statistics.median(r[1] for r in rows), statistics.median(r[4] for r in rows)
tput = lambda s: f"{mib / s:,.0f} MiB/s" if s > 0 else "–"
print(f"### one step writing {mib:,.0f} MiB to stdout (`{cmd}`)\n")
print(f"Median wall of {len(rows)} alternating runs, highest peak RSS.\n")
print("| command | wall | throughput | peak RSS |")
print("|---|---|---|---|")
print(f"| `runbook run` (to the step log) | {rb_s:.2f} s | {tput(rb_s)} | {rb_kb/1024:.1f} MiB |")
cell = cmd.replace("|", "\\|")  # a pipe would end the table cell
print(f"| `{cell} > file` | {ps:.2f} s | {tput(ps)} | {pk/1024:.1f} MiB |")
bad = [int(r[2]) for r in rows if int(r[2]) != n] + [int(r[5]) for r in rows if int(r[5]) != n]
print(f"\nrunbook peak RSS **{rb_kb/1024:.1f} MiB** (target < 64 MiB); "
      + (f"wall {rb_s / ps:.2f}x the plain redirect's; " if ps > 0 else "")
      + ("every step log complete" if not bad else f"**short or missing output: {bad} bytes, expected {n:,}**") + "\n")
sys.exit(1 if bad else 0)
PY
