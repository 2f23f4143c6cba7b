#!/usr/bin/env bash
# Run the hook-runtime benchmark and update its section of BENCHMARKS.md.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
source scripts/env.sh
scripts/build-guests.sh >/dev/null
cargo build --release -p flexmodel --bin hook-bench
"$CARGO_TARGET_DIR/release/hook-bench" --artifacts artifacts/wasm --out BENCHMARKS.md "$@"
