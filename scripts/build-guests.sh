#!/usr/bin/env bash
# Build every guest component into artifacts/wasm/:
#   plugins/*            (Rust, wasm32-wasip2)  -> <name>.wasm
#   plugins/scale-py     (Python, componentize-py) -> scale-py.wasm
#   tests/guests/*       (hostile, bench, fuzz, other-world, old-version, v010, v011) -> <name>.wasm
# Needs: rustup target wasm32-wasip2; the venv with componentize-py (scripts/setup.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
source scripts/env.sh
out=artifacts/wasm
mkdir -p "$out"

rust_guests=(plugins/retrieve plugins/scale plugins/ablate plugins/steer plugins/patch plugins/probe
             tests/guests/hostile tests/guests/bench tests/guests/fuzz tests/guests/other-world tests/guests/old-version tests/guests/v010 tests/guests/v011)
pkgs=()
for g in "${rust_guests[@]}"; do
  pkgs+=(-p "$(sed -n 's/^name = "\(.*\)"/\1/p' "$g/Cargo.toml" | head -1)")
done
# Reproducible components: the same sources give the same bytes (and so the
# same content hash) whatever the checkout and cargo home paths are.
cargo_home=${CARGO_HOME:-$HOME/.cargo}
export CARGO_TARGET_WASM32_WASIP2_RUSTFLAGS="--remap-path-prefix=$root=/flexmodel --remap-path-prefix=$cargo_home=/cargo"
cargo build --quiet --release --target wasm32-wasip2 "${pkgs[@]}"
for g in "${rust_guests[@]}"; do
  name=$(basename "$g")
  crate=$(sed -n 's/^name = "\(.*\)"/\1/p' "$g/Cargo.toml" | head -1 | tr - _)
  cp "$CARGO_TARGET_DIR/wasm32-wasip2/release/$crate.wasm" "$out/$name.wasm"
done

# Python plugin (second guest language): only rebuilt when its inputs change.
py=$COMPONENTIZE_PY
if [ -x "$py" ]; then
  stamp="$out/scale-py.inputs"
  sum=$(cat wit/hook.wit plugins/scale-py/*.py | sha256sum | cut -d' ' -f1)
  if [ ! -f "$out/scale-py.wasm" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$sum" ]; then
    "$py" -d wit -w hook-plugin componentize -p plugins/scale-py app -o "$out/scale-py.wasm"
    echo "$sum" > "$stamp"
  fi
else
  echo "build-guests: $py not found; run scripts/setup.sh (Python plugin not built)" >&2
  exit 1
fi
ls -1 "$out"/*.wasm
