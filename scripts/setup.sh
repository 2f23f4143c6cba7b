#!/usr/bin/env bash
# One-time setup of a fresh machine, then the built-in example.
#   - Rust target wasm32-wasip2 (guests);
#   - lean libtorch (torch==2.13.0 wheel, CPU runtime libs) for tch, cached;
#   - Python venv with componentize-py (Python guest plugin), cached;
#   - build the host, the guest components, and run the hook demo.
# Idempotent: a second run only checks and rebuilds what changed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
source scripts/env.sh

step() { printf '\n==> %s\n' "$*"; }

step "Rust target wasm32-wasip2"
rustup target add wasm32-wasip2 >/dev/null

step "libtorch $TORCH_VERSION for tch (in $(dirname "$LIBTORCH"))"
if [ ! -f "$LIBTORCH/lib/libtorch_cpu.so" ]; then
  python3 -m pip install --quiet --no-deps --target "$(dirname "$LIBTORCH")" \
    "torch==$TORCH_VERSION" nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85
fi
ls "$LIBTORCH/lib/libtorch_cpu.so" >/dev/null

step "Python venv with componentize-py (in $FLEXMODEL_VENV)"
if [ ! -x "$COMPONENTIZE_PY" ]; then
  python3 -m venv "$FLEXMODEL_VENV"
  "$FLEXMODEL_VENV/bin/pip" install --quiet componentize-py==0.25.1
fi

step "Build host and guest components"
cargo build --release -p flexmodel --bins --examples
scripts/build-guests.sh

step "Demo: the example plugins on a real activation"
"$CARGO_TARGET_DIR/release/examples/hook_demo" artifacts/wasm
