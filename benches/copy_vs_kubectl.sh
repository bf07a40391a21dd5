#!/usr/bin/env bash
# Benchmark: `copy` of a tree of FILES small files (in 20 directories) into a
# pod and back, runbook's `copy` step vs `kubectl cp`, against the same fake
# API server (`cargo run --release --example fake-apiserver`, real exec of
# real tar in the pod's own filesystem when run as root). Alternating, REPS
# times each (which goes first alternates; `sync` before each), wall time and
# peak RSS (GNU time) of the whole command, and a check that every file
# arrived (count and total bytes). Median and best wall are printed: on a
# shared machine disk writeback makes single runs noisy.
# Target (issue 8): wall time <= kubectl cp, memory flat.
#
#   benches/copy_vs_kubectl.sh [FILES] [REPS]     (defaults: 10000, 3)
#
# Needs: kubectl, GNU time (/usr/bin/time), python3. Builds the release
# binaries in $CARGO_TARGET_DIR (else target/) unless RUNBOOK_BIN and
# FAKE_APISERVER_BIN point at them. Prints a Markdown section ready for
# docs/benchmarks.md; progress on stderr.
set -euo pipefail

files=${1:-10000}
reps=${2:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
for tool in kubectl /usr/bin/time python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 2; }
done
target=${CARGO_TARGET_DIR:-$root/target}
if [ -z "${RUNBOOK_BIN:-}" ] || [ -z "${FAKE_APISERVER_BIN:-}" ]; then
    cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin runbook --example fake-apiserver
fi
bin=${RUNBOOK_BIN:-$target/release/runbook}
fake=${FAKE_APISERVER_BIN:-$target/release/examples/fake-apiserver}
work=$(mktemp -d)
server=""
cleanup() {
    # SIGINT: the server removes its pods' directories as it stops
    if [ -n "$server" ]; then kill -INT "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

export KUBECONFIG=$work/kubeconfig
"$fake" --kubeconfig "$KUBECONFIG" >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 1 100); do [ -s "$KUBECONFIG" ] && break; sleep 0.1; done
[ -s "$KUBECONFIG" ] || { echo "the fake API server did not start" >&2; cat "$work/server.log" >&2; exit 1; }

cat >"$work/deploy.yaml" <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata: { name: files, labels: { app: files } }
spec:
  replicas: 1
  selector: { matchLabels: { app: files } }
  template:
    metadata: { labels: { app: files } }
    spec: { containers: [ { name: main, image: busybox } ] }
EOF
kubectl apply --validate=false -f "$work/deploy.yaml" >/dev/null
pod=""
for _ in $(seq 1 100); do
    pod=$(kubectl get pods -l app=files -o jsonpath='{.items[0].metadata.name}' 2>/dev/null || true)
    [ -n "$pod" ] && break
    sleep 0.1
done
[ -n "$pod" ] || { echo "no pod came up" >&2; exit 1; }

# the tree: FILES files of 100..1,100 bytes in 20 directories
python3 - "$work/tree" "$files" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i % 20:02d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:05d}.txt"), "wb") as f:
        f.write(bytes([97 + i % 26]) * (100 + i % 1000))
PY
tree_bytes=$(find "$work/tree" -type f -printf '%s\n' | awk '{s+=$1} END {print s}')

runbook_file() { # NAME DIRECTION REMOTE LOCAL
    cat >"$work/$1.yaml" <<EOF
apiVersion: runbook/v1
kind: Runbook
metadata: { name: bench-copy-$1, version: 1.0.0 }
steps:
  - id: copy
    copy: { pod: { selector: app=files }, direction: $2, remote: '$3', local: '$4' }
EOF
}

# count and bytes of the files under a local directory, or in the pod
local_sum() { find "$1" -type f -printf '%s\n' | awk '{n++; s+=$1} END {print n+0, s+0}'; }
pod_sum() {
    kubectl exec "$pod" -- sh -c "find '$1' -type f -exec stat -c %s {} + | awk '{n++; s+=\$1} END {print n+0, s+0}'"
}

timed() { # LABEL OUTFILE CMD...
    local label=$1 out=$2
    shift 2
    echo "  $label" >&2
    # start each from clean page cache writeback: the previous copy's dirty
    # pages would otherwise slow down whichever command comes next
    sync
    /usr/bin/time -o "$out" -f "%e %M" "$@" >"$work/cmd.log" 2>&1 || {
        echo "$label failed:" >&2
        cat "$work/cmd.log" >&2
        exit 1
    }
}

: >"$work/results"
for r in $(seq 1 "$reps"); do
    echo "[$r/$reps]" >&2
    kubectl exec "$pod" -- rm -rf /var/up-k /var/up-r >/dev/null
    rm -rf "$work/down-k" "$work/down-r" "$work/state"

    runbook_file up to-pod /var/up-r "$work/tree"
    runbook_file down from-pod /var/up-k "$work/down-r"
    k_up() { timed "kubectl cp (to pod)" "$work/k-up.time" kubectl cp "$work/tree" "default/$pod:/var/up-k"; }
    r_up() { timed "runbook copy (to pod)" "$work/r-up.time" "$bin" run "$work/up.yaml" --state-dir "$work/state"; }
    k_down() { timed "kubectl cp (from pod)" "$work/k-down.time" kubectl cp "default/$pod:/var/up-k" "$work/down-k"; }
    r_down() { timed "runbook copy (from pod)" "$work/r-down.time" "$bin" run "$work/down.yaml" --state-dir "$work/state"; }
    if [ $((r % 2)) -eq 1 ]; then
        k_up; r_up; k_down; r_down
    else
        r_up; k_up; r_down; k_down
    fi
    k_up=$(pod_sum /var/up-k)
    r_up=$(pod_sum /var/up-r)
    k_down=$(local_sum "$work/down-k")
    r_down=$(local_sum "$work/down-r")

    echo "$(cat "$work/k-up.time") $(cat "$work/r-up.time") $(cat "$work/k-down.time") $(cat "$work/r-down.time") $k_up $r_up $k_down $r_down" >>"$work/results"
done

python3 - "$work/results" "$files" "$tree_bytes" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
n, total = int(sys.argv[2]), int(sys.argv[3])
col = lambda i: [float(r[i]) for r in rows]
med = lambda i: statistics.median(col(i))
peak = lambda i: max(col(i)) / 1024
print(f"### copy of {n:,} files ({total / 2**20:.1f} MiB) into a pod and back, vs `kubectl cp`\n")
best = lambda i: min(col(i))
print(f"{len(rows)} runs each, which goes first alternating; median (best) wall, highest peak RSS; the same fake API server.\n")
print("| direction | `kubectl cp` | runbook `copy` | ratio of medians (of bests) | kubectl RSS | runbook RSS |")
print("|---|---|---|---|---|---|")
for name, k, r in (("to pod", 0, 2), ("from pod", 4, 6)):
    print(f"| {name} | {med(k):.2f} s ({best(k):.2f} s) | {med(r):.2f} s ({best(r):.2f} s) | {med(r) / med(k):.2f}x ({best(r) / best(k):.2f}x) | {peak(k + 1):.1f} MiB | {peak(r + 1):.1f} MiB |")
bad = []
for r in rows:
    sums = [(int(r[i]), int(r[i + 1])) for i in range(8, 16, 2)]
    for what, s in zip(("kubectl to pod", "runbook to pod", "kubectl from pod", "runbook from pod"), sums):
        if s != (n, total):
            bad.append(f"{what}: {s[0]} files, {s[1]} bytes")
print("\nevery copy complete (" + f"{n:,} files, {total:,} bytes)" if not bad else "\n**incomplete copies: " + "; ".join(bad) + "**")
sys.exit(1 if bad else 0)
PY
