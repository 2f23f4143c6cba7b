#!/usr/bin/env bash
# The test suite: (re)build the guest components, then every Rust test
# (unit tests of the host library and the integration tests in tests/),
# built with the MPI backend; then the NCCL backend's build and its test
# (which checks it refuses cleanly where there is no GPU).
# Ends with one summary line "N passed, M failed".
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
source scripts/env.sh
# tests/cli.rs runs the `flexmodel` binary and every test compiles plugins with
# the `flexmodel-compile` worker: `cargo test` alone does not rebuild them.
# The binary also packs the example plugins (build-guests.sh).
cargo build --release --quiet -p flexmodel -p flexmodel-compile --bins --features "flexmodel/$FLEXMODEL_FEATURES"
scripts/build-guests.sh >/dev/null
scripts/make-models.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --release --no-fail-fast --features "flexmodel/$FLEXMODEL_FEATURES" "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
cargo test --release -p flexmodel --lib --features nccl nccl 2>&1 | tee -a "$log"
nccl_status=${PIPESTATUS[0]}
[ "$status" -ne 0 ] || status=$nccl_status
# The Python package (python/): built against the venv's torch, then pytest;
# its counts join the summary as a cargo-style line.
pylog=$(mktemp)
scripts/build-python.sh >/dev/null 2>"$pylog" || cat "$pylog"
"$FLEXMODEL_VENV/bin/python" -m pytest -q -p no:cacheprovider --import-mode=importlib python/tests 2>&1 | tee "$pylog"
py_status=${PIPESTATUS[0]}
[ "$status" -ne 0 ] || status=$py_status
awk '/ passed| failed/ { p = 0; f = 0; for (i = 2; i <= NF; i++) { if ($i ~ /^passed/) p = $(i-1); if ($i ~ /^failed/) f = $(i-1) } }
     END { printf "test result: python. %d passed; %d failed;\n", p, f }' "$pylog" >> "$log"
rm -f "$pylog"
set -e
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
