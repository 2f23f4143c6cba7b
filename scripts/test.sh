#!/usr/bin/env bash
# The test suite: (re)build the guest components, then every Rust test
# (unit tests of the host library and the integration tests in tests/).
# Ends with one summary line "N passed, M failed".
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
source scripts/env.sh
scripts/build-guests.sh >/dev/null
scripts/make-models.sh
# tests/cli.rs runs the `flexmodel` binary: `cargo test` alone does not rebuild it.
cargo build --release --quiet -p flexmodel --bins
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --release --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
