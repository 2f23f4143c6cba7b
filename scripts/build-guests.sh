#!/usr/bin/env bash
# Build every guest component into artifacts/wasm/:
#   plugins/*            (Rust, wasm32-wasip2)  -> <name>.wasm
#   plugins/scale-py     (Python, componentize-py) -> scale-py.wasm
#   tests/guests/*       (hostile, bench, fuzz, other-world, old-version, v010, v011) -> <name>.wasm
# Example plugins are then packed with their plugin.toml (flexmodel plugin pack).
# Needs: rustup target wasm32-wasip2; the venv with componentize-py (scripts/setup.sh);
# the host binary (packing).
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
  # The unpacked component is kept (scale-py.component): packing starts
  # from it every time, so the packed bytes do not depend on earlier runs.
  if [ ! -f "$out/scale-py.component" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$sum" ]; then
    "$py" -d wit -w hook-plugin componentize -p plugins/scale-py app -o "$out/scale-py.component"
    echo "$sum" > "$stamp"
  fi
  cp "$out/scale-py.component" "$out/scale-py.wasm"
else
  echo "build-guests: $py not found; run scripts/setup.sh (Python plugin not built)" >&2
  exit 1
fi
# Every example plugin ships packed: its plugins/<name>/plugin.toml (identity,
# config schema) written into the component by `flexmodel plugin pack`
# (deterministic: the same bytes every build). Needs the host binary.
fm="$CARGO_TARGET_DIR/release/flexmodel"
[ -x "$fm" ] || { echo "build-guests: $fm not built (cargo build --release -p flexmodel)" >&2; exit 1; }
for toml in plugins/*/plugin.toml; do
  name=$(basename "$(dirname "$toml")")
  "$fm" plugin pack "$out/$name.wasm" --manifest "$toml" -o "$out/$name.wasm.packed" >/dev/null
  mv "$out/$name.wasm.packed" "$out/$name.wasm"
done
ls -1 "$out"/*.wasm
