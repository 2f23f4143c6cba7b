#!/usr/bin/env bash
# The GPU bundle for the lent H200 machine (issue 16), built here against
# the project's libtorch pin: that is the libtorch of the `torch` wheel
# (CUDA included) the device image also has, so only our binaries travel.
#   scripts/gpu-bundle.sh [--dry-run]
# Builds `flexmodel`, `flexmodel-compile`, `model-bench` and `gen-bench` (no
# MPI: the image has none; the NCCL backend, loaded at run time) and packs
# them, the benchmarks' PyTorch worker, the Rust guest
# plugins, the reference-model script, check.py and run.sh into
# gpu-bundle/flexmodel-gpu.tar.gz, checked to be under 64 MiB (what a device
# call carries). On the device:
#   mkdir b && tar xzf gpu-bundle/flexmodel-gpu.tar.gz -C b && bash b/run.sh cuda
# --dry-run: then unpack it into a temporary folder and run it on this
# machine's CPU with the project venv's python (the same torch version).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
source scripts/env.sh
limit=$((64 * 1024 * 1024))
# The guest plugins first: packing them runs the project's `flexmodel`,
# which the builds below replace with one that needs the CUDA libraries.
cargo build --release --quiet -p flexmodel --bins --features "flexmodel/$FLEXMODEL_FEATURES"
scripts/build-guests.sh >/dev/null
# Linking libtorch_cuda (FLEXMODEL_LINK_CUDA: host/build.rs, bench/build.rs):
# these binaries load only where CUDA's libraries are (run.sh's loader path).
FLEXMODEL_LINK_CUDA=1 cargo build --release --quiet -p flexmodel -p flexmodel-compile --bins --features flexmodel/nccl
FLEXMODEL_LINK_CUDA=1 cargo build --release --quiet -p flexmodel-bench --bin model-bench --bin gen-bench --features flexmodel/nccl
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/wasm" "$stage/reference"
for b in flexmodel flexmodel-compile model-bench gen-bench; do
  strip -o "$stage/bin/$b" "$CARGO_TARGET_DIR/release/$b"
done
# The bundle's binaries link libtorch_cuda and no MPI (the image has none).
for b in flexmodel model-bench gen-bench; do
  if readelf -d "$stage/bin/$b" | grep -q 'libmpi'; then
    echo "the bundle's $b links MPI" >&2; exit 1
  fi
  readelf -d "$stage/bin/$b" | grep -q 'libtorch_cuda.so' || { echo "the bundle's $b does not link libtorch_cuda" >&2; exit 1; }
done
# The Rust guest plugins (other languages' builds stay here).
for w in retrieve scale steer ablate patch probe hostile conform bench; do
  cp "artifacts/wasm/$w.wasm" "$stage/wasm/"
done
cp tests/reference/make_models.py tests/reference/bench_worker.py "$stage/reference/"
cp scripts/gpu/check.py scripts/gpu/run.sh "$stage/"
echo "$TORCH_VERSION" > "$stage/TORCH_VERSION"
mkdir -p gpu-bundle
tar czf gpu-bundle/flexmodel-gpu.tar.gz -C "$stage" .
size=$(stat -c %s gpu-bundle/flexmodel-gpu.tar.gz)
printf 'gpu-bundle/flexmodel-gpu.tar.gz: %d MiB (limit 64 MiB)\n' $((size / 1024 / 1024))
[ "$size" -lt "$limit" ] || { echo "the bundle is over 64 MiB" >&2; exit 1; }
# The checks' cargo build above left target/release/flexmodel without MPI:
# put the project's build back (relinks only).
cargo build --release --quiet -p flexmodel -p flexmodel-bench --bins --features "flexmodel/$FLEXMODEL_FEATURES"
if [ "${1:-}" = "--dry-run" ]; then
  dry=$(mktemp -d)
  tar xzf gpu-bundle/flexmodel-gpu.tar.gz -C "$dry"
  BENCH_QUICK=1 OUT="$dry/out" PYTHON="$FLEXMODEL_VENV/bin/python" bash "$dry/run.sh" cpu
  cat "$dry/out/gpu-check.md" "$dry/out/BENCHMARKS-gpu.md" > gpu-bundle/dry-run.md
  echo "dry run: gpu-bundle/dry-run.md"
fi
