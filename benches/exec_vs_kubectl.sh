#!/usr/bin/env bash
# Benchmark: the `exec` action streaming a 1 GiB file out of a pod into a
# local gzip file, against `kubectl exec POD -- cat FILE | gzip > OUT` on the
# same fake API server and against a local `cat FILE | gzip > OUT`.
# The data is compressible like a SQL dump: each MiB is 768 KiB of repeated
# INSERT lines and 256 KiB of base64 of random bytes (gzip -6 gets it to
# about a quarter). The same file is put into the pod (its own /tmp, as
# root) and kept locally for the local baseline.
# Wall times with hyperfine (RUNS runs each, interleaved per command), peak
# RSS of runbook with GNU time. Targets (issue 8): throughput >= kubectl's,
# >= 0.8x the local pipeline, runbook RSS < 32 MiB.
#
#   benches/exec_vs_kubectl.sh [MIB] [RUNS]      (defaults: 1024, 3)
#
# Needs: hyperfine, kubectl, GNU time, gzip, about 3x MIB of free disk.
# RUNBOOK_BIN / FAKE_APISERVER_BIN use those binaries instead of building
# them (release). Prints a Markdown section for docs/benchmarks.md.
set -euo pipefail

mib=${1:-1024}
runs=${2:-3}
# shellcheck source=benches/common.sh
. "$(dirname "$0")/common.sh"
target=${CARGO_TARGET_DIR:-$(cd "$(dirname "$0")/.." && pwd)/target}
if [ -z "${RUNBOOK_BIN:-}" ] || [ -z "${FAKE_APISERVER_BIN:-}" ]; then
    cargo build --release --quiet --manifest-path "$(dirname "$0")/../Cargo.toml" \
        --bin runbook --example fake-apiserver
fi
RUNBOOK_BIN=${RUNBOOK_BIN:-$target/release/runbook}
fake=${FAKE_APISERVER_BIN:-$target/release/examples/fake-apiserver}
bench_setup hyperfine kubectl /usr/bin/time gzip base64

kc="$work/kubeconfig"
"$fake" --kubeconfig "$kc" >"$work/fake.log" 2>&1 &
fake_pid=$!
# shellcheck disable=SC2064 # expand $fake_pid and $work now
trap "rc=\$?; kill $fake_pid 2>/dev/null; wait $fake_pid 2>/dev/null || true; rm -rf '$work'; exit \$rc" EXIT
for _ in $(seq 100); do [ -s "$kc" ] && break; sleep 0.1; done
k() { kubectl --kubeconfig "$kc" "$@"; }

cat >"$work/deploy.yaml" <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata: { name: db, labels: { app: db } }
spec:
  replicas: 1
  selector: { matchLabels: { app: db } }
  template:
    metadata: { labels: { app: db } }
    spec: { containers: [ { name: mysql, image: mysql } ] }
EOF
k apply --validate=false -f "$work/deploy.yaml" >/dev/null
pod=
for _ in $(seq 100); do
    pod=$(k get pods -l app=db -o name 2>/dev/null | head -n 1 | sed 's|^pod/||')
    [ -n "$pod" ] && break
    sleep 0.1
done
[ -n "$pod" ] || { echo "no pod came up" >&2; exit 1; }

echo "generating $mib MiB of dump-like data..." >&2
data="$work/bench.dat"
set +o pipefail # `yes | head` ends `yes` with SIGPIPE
for i in $(seq 1 "$mib"); do
    yes "INSERT INTO orders (id, customer, placed_at, state) VALUES ($i, 'Customer Name $i', '2026-11-22 08:00:00', 'shipped');" | head -c 786432
    head -c 196608 /dev/urandom | base64 -w 100 | head -c 262144
done >"$data"
set -o pipefail
echo "copying it into pod $pod..." >&2
k exec -i "$pod" -- sh -c 'cat > /tmp/bench.dat' <"$data"
k exec "$pod" -- sh -c 'wc -c < /tmp/bench.dat' | grep -qx "$((mib * 1048576))" || {
    echo "the pod's copy is incomplete" >&2
    exit 1
}

cat >"$work/exec.yaml" <<EOF
apiVersion: runbook/v1
kind: Runbook
metadata: { name: bench-exec, version: 1.0.0 }
steps:
  - id: dump
    exec:
      pod: { selector: app=db }
      command: [cat, /tmp/bench.dat]
      stdout: { file: $work/out-runbook.gz, gzip: true }
EOF
runbook_cmd="$RUNBOOK_BIN run $work/exec.yaml --state-dir $work/state --kubeconfig $kc"
kubectl_cmd="kubectl --kubeconfig $kc exec $pod -- cat /tmp/bench.dat | gzip > $work/out-kubectl.gz"
local_cmd="cat $data | gzip > $work/out-local.gz"

hyperfine --runs "$runs" --export-json "$work/times.json" \
    --prepare "rm -rf $work/state $work/out-*.gz" \
    -n runbook "$runbook_cmd" -n kubectl "$kubectl_cmd" -n local "$local_cmd" >&2

rm -rf "$work/state"
/usr/bin/time -v $runbook_cmd >/dev/null 2>"$work/time.txt"
rss_kib=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$work/time.txt")
gz_bytes=$(stat -c %s "$work/out-runbook.gz")
# the file is whole: it decompresses to the pod's data
cmp <(gzip -dc "$work/out-runbook.gz") "$data" || { echo "runbook's output differs" >&2; exit 1; }

python3 - "$work/times.json" "$mib" "$rss_kib" "$gz_bytes" <<'PY'
import json, sys
times = {r["command"]: r for r in json.load(open(sys.argv[1]))["results"]}
mib, rss, gz = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
print(f"#### exec of {mib} MiB into a local gzip file ({gz / 2**20:.0f} MiB gzipped)\n")
print("| command | median | mean ± σ | throughput | vs runbook |")
print("|---|---|---|---|---|")
base = times["runbook"]["median"]
for name in ("runbook", "kubectl", "local"):
    r = times[name]
    print(f"| {name} | {r['median']:.2f} s | {r['mean']:.2f} ± {r['stddev'] or 0:.2f} s "
          f"| {mib / r['median']:.0f} MiB/s | {r['median'] / base:.2f}x |")
print(f"\nrunbook peak RSS: {rss / 1024:.1f} MiB; "
      f"runbook/kubectl throughput {times['kubectl']['median'] / base:.2f}x, "
      f"runbook/local {times['local']['median'] / base:.2f}x")
PY
