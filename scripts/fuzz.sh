#!/usr/bin/env bash
# Fuzz what a stranger's plugin controls (not in CI): the manifest parser,
# the signature section parser, component validation. Each target runs for
# RUNS inputs (default 1,000,000) from a seed corpus of the example plugins;
# any crash stops it with the input saved under fuzz/artifacts/.
#   scripts/fuzz.sh [RUNS]
# Needs: rustup toolchain nightly; cargo install cargo-fuzz.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
source scripts/env.sh
runs=${1:-1000000}
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
fm="$CARGO_TARGET_DIR/release/flexmodel"
export CARGO_TARGET_DIR="$FLEXMODEL_CACHE/fuzz-target"
for t in manifest signature component; do
  corpus="$FLEXMODEL_CACHE/fuzz-corpus/$t"
  mkdir -p "$corpus"
  cp artifacts/wasm/scale.wasm artifacts/wasm/retrieve.wasm "$corpus/" 2>/dev/null || true
  if [ "$t" = manifest ]; then
    "$fm" plugin inspect artifacts/wasm/scale.wasm --json 2>/dev/null \
      | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["manifest"]))' > "$corpus/manifest.json" || true
  fi
  # No sanitizer: the code is safe Rust; libFuzzer finds panics and aborts.
  cargo +nightly fuzz run --sanitizer none --fuzz-dir fuzz "$t" "$corpus" -- \
    -runs="$runs" -max_len=262144 -rss_limit_mb=4096 2>&1 | tail -4
done
