#!/usr/bin/env bash
# Build every guest component into artifacts/wasm/:
#   plugins/*            (Rust, wasm32-wasip2)  -> <name>.wasm
#   plugins/*-c          (C: clang + wasi-libc, hook-sdk/c)       -> <name>-c.wasm
#   plugins/*-zig        (Zig: ziglang from PyPI, hook-sdk/zig)  -> <name>-zig.wasm
#   plugins/*-js         (JavaScript: componentize-js, hook-sdk/js) -> <name>-js.wasm
#   plugins/*-py         (Python: componentize-py, hook-sdk/python) -> <name>-py.wasm
#   tests/guests/*       (hostile, bench, fuzz, other-world, old-version, v010, v011, conform
#                         and its builds in other languages, conform-<lang>) -> <name>.wasm
# Example plugins are then packed with their plugin.toml (flexmodel plugin pack).
# Needs: rustup target wasm32-wasip2; clang, lld and wasi-libc (Debian); the venv with
# componentize-py (scripts/setup.sh);
# the host binary (packing).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
source scripts/env.sh
out=artifacts/wasm
mkdir -p "$out"

rust_guests=(plugins/retrieve plugins/scale plugins/ablate plugins/steer plugins/patch plugins/probe
             tests/guests/hostile tests/guests/bench tests/guests/fuzz tests/guests/other-world tests/guests/old-version tests/guests/v010 tests/guests/v011 tests/guests/conform)
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

# C plugins (plugins/*-c): clang --target=wasm32-wasi with Debian's
# wasi-libc, over the C SDK (hook-sdk/c) and the bindings wit-bindgen's C
# generator writes from wit/; made components by flexmodel-guest (the
# world's type information + the WASI preview1 reactor adapter).
cargo build --quiet --release -p flexmodel-guest-tools
guest_tool="$CARGO_TARGET_DIR/release/flexmodel-guest"
cgen="$CARGO_TARGET_DIR/guest-c"
rm -rf "$cgen" && "$guest_tool" c-bindings --out "$cgen"
command -v clang >/dev/null || { echo "build-guests: clang not found; run scripts/setup.sh" >&2; exit 1; }
for d in plugins/*-c tests/guests/*-c; do
  name=$(basename "$d")
  clang --target=wasm32-wasi -O2 -mexec-model=reactor -Wall -Wextra -Werror -Wno-unused-parameter \
    -ffile-prefix-map="$root"=/flexmodel -I hook-sdk/c -I "$cgen" -o "$cgen/$name.core.wasm" \
    "$d"/*.c hook-sdk/c/*.c "$cgen/hook_plugin.c" "$cgen/hook_plugin_component_type.o"
  "$guest_tool" componentize "$cgen/$name.core.wasm" -o "$out/$name.wasm"
done

# Zig plugins (plugins/*-zig): the zig compiler of PyPI's ziglang package,
# over the Zig SDK (hook-sdk/zig, which imports the same C bindings), with
# wasi-libc from zig; made components as the C ones.
zig=("$FLEXMODEL_VENV/bin/python" -m ziglang)
"${zig[@]}" version >/dev/null 2>&1 || { echo "build-guests: ziglang not in $FLEXMODEL_VENV; run scripts/setup.sh" >&2; exit 1; }
export ZIG_GLOBAL_CACHE_DIR="${ZIG_GLOBAL_CACHE_DIR:-$FLEXMODEL_CACHE/zig-cache}"
for d in plugins/*-zig tests/guests/*-zig; do
  name=$(basename "$d")
  src=$(ls "$d"/*.zig | head -1)
  (cd "$cgen" && "${zig[@]}" build-exe -target wasm32-wasi -mexec-model=reactor -fno-entry -O ReleaseSmall -lc --stack 65536 \
    --dep flexmodel_hook -I "$cgen" "$cgen/hook_plugin.c" "$cgen/hook_plugin_component_type.o" \
    -Mroot="$root/$src" -I "$cgen" -Mflexmodel_hook="$root/hook-sdk/zig/flexmodel_hook.zig" \
    --cache-dir "$cgen/zig-cache" -femit-bin="$cgen/$name.core.wasm")
  "$guest_tool" componentize "$cgen/$name.core.wasm" -o "$out/$name.wasm"
done

# JavaScript plugins (plugins/*-js): componentize-js from npm (installed by
# scripts/setup.sh under $FLEXMODEL_CACHE/js) over the JS SDK
# (hook-sdk/js); without the WASI features a hook is not granted (clocks,
# http). Each rebuilt only when its inputs change (~15 s each).
cjs="$FLEXMODEL_CACHE/js/node_modules/.bin/componentize-js"
[ -x "$cjs" ] || { echo "build-guests: $cjs not found; run scripts/setup.sh" >&2; exit 1; }
for d in plugins/*-js tests/guests/*-js; do
  name=$(basename "$d")
  stamp="$out/$name.inputs"
  sum=$(cat wit/hook.wit "$d"/*.js hook-sdk/js/*.js | sha256sum | cut -d' ' -f1)
  if [ ! -f "$out/$name.component" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$sum" ]; then
    src=$(ls "$d"/*.js | head -1)
    "$cjs" "$src" -w wit -n hook-plugin -d http -d fetch-event -d clocks -o "$out/$name.component" >/dev/null
    echo "$sum" > "$stamp"
  fi
  cp "$out/$name.component" "$out/$name.wasm"
done

# Python plugins (plugins/*-py): componentize-py over the Python SDK
# (hook-sdk/python); each rebuilt only when its inputs change (~20 s each).
py=$COMPONENTIZE_PY
[ -x "$py" ] || { echo "build-guests: $py not found; run scripts/setup.sh" >&2; exit 1; }
for d in plugins/*-py tests/guests/*-py; do
  name=$(basename "$d")
  stamp="$out/$name.inputs"
  sum=$(cat wit/hook.wit "$d"/*.py hook-sdk/python/flexmodel_hook/*.py | sha256sum | cut -d' ' -f1)
  # The unpacked component is kept (<name>.component): packing starts from
  # it every time, so the packed bytes do not depend on earlier runs.
  if [ ! -f "$out/$name.component" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$sum" ]; then
    "$py" -d wit -w hook-plugin componentize -p "$d" -p hook-sdk/python app -o "$out/$name.component" >/dev/null
    echo "$sum" > "$stamp"
  fi
  cp "$out/$name.component" "$out/$name.wasm"
done
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
