#!/usr/bin/env bash
# Fuzz what a stranger's plugin controls (not in CI): the manifest parser,
# the signature section parser, component validation. Each target runs for
# RUNS inputs (default 1,000,000) from a small seed corpus (a manifest, tiny
# components with a manifest section and a signature, made here with the
# flexmodel binary); any crash stops it with the input saved under
# fuzz/artifacts/. Inputs are capped at MAX_LEN bytes (default 8192) so a
# million runs take minutes, not hours.
#   scripts/fuzz.sh [RUNS] [MAX_LEN]
# Needs: rustup toolchain nightly; cargo-fuzz (installed when missing).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
source scripts/env.sh
runs=${1:-1000000}
max_len=${2:-8192}
fm="$CARGO_TARGET_DIR/release/flexmodel"
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
export CARGO_TARGET_DIR="$FLEXMODEL_CACHE/fuzz-target"
# The targets link the host library, hence libtorch (no rpath in fuzz builds).
export LD_LIBRARY_PATH="$LIBTORCH/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
seeds=$(mktemp -d)
trap 'rm -rf "$seeds"' EXIT
# Seeds: the manifest of a packed example; a bare component with it as a
# custom section; that component signed.
"$fm" plugin inspect artifacts/wasm/scale.wasm --json \
  | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["manifest"]))' > "$seeds/manifest.json"
python3 - "$seeds" <<'PY'
import sys, pathlib
d = pathlib.Path(sys.argv[1])
def leb(n):
    out = bytearray()
    while True:
        b = n & 0x7f; n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n: return bytes(out)
def custom(name, payload):
    body = leb(len(name)) + name.encode() + payload
    return b"\x00" + leb(len(body)) + body
m = (d / "manifest.json").read_bytes().strip()
(d / "tiny.wasm").write_bytes(b"\0asm\x0d\x00\x01\x00" + custom("flexmodel-manifest", m))
PY
"$fm" plugin keygen -o "$seeds/k" >/dev/null
"$fm" plugin sign "$seeds/tiny.wasm" --key "$seeds/k" -o "$seeds/tiny.signed.wasm" >/dev/null
for t in manifest signature component; do
  corpus="$FLEXMODEL_CACHE/fuzz-corpus/$t"
  mkdir -p "$corpus"
  cp "$seeds"/manifest.json "$seeds"/tiny.wasm "$seeds"/tiny.signed.wasm "$corpus/"
  # No sanitizer: the code is safe Rust; libFuzzer finds panics and aborts.
  start=$(date +%s)
  cargo +nightly fuzz run --sanitizer none --fuzz-dir fuzz "$t" "$corpus" -- \
    -runs="$runs" -max_len="$max_len" -rss_limit_mb=4096 -print_final_stats=1 2>&1 \
    | grep -vE "^\s*(Compiling|Downloaded|Downloading)|^#[0-9]+\s+(NEW|REDUCE|pulse)" | tail -25 || true
  echo "$t: $(( $(date +%s) - start )) s"
done
