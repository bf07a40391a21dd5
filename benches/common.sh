# Shared set-up of the benchmark scripts (sourced, not run):
#   bench_setup TOOL...   checks the tools, sets $root, $gen (gen_dag.py),
#                         $bin (runbook: $RUNBOOK_BIN or a fresh release
#                         build) and $work (a temp dir removed on exit).
# shellcheck shell=bash disable=SC2034 # the variables are for the sourcing script

bench_setup() {
    root=$(cd "$(dirname "${BASH_SOURCE[1]}")/.." && pwd)
    gen=${GEN_DAG:-$root/../shared/bench/gen_dag.py}
    [ -f "$gen" ] || gen=/work/shared/bench/gen_dag.py
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || {
            echo "missing $tool (apt-get install -y make ninja-build hyperfine time)" >&2
            exit 2
        }
    done
    if [ -n "${RUNBOOK_BIN:-}" ]; then
        bin=$RUNBOOK_BIN
    else
        cargo build --release --quiet --manifest-path "$root/Cargo.toml"
        bin=$root/target/release/runbook
    fi
    work=$(mktemp -d)
    # shellcheck disable=SC2064 # expand $work now
    trap "rm -rf '$work'" EXIT
}
