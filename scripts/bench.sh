#!/usr/bin/env bash
# Run the benchmarks and update their sections of BENCHMARKS.md:
#   hook-bench  (hook runtime: per-call cost, data movement, instantiation, CPU limits)
#   model-bench (model host: P1-P3 against transformers / PyTorch hooks / nnsight)
#   dist-bench  (distributed engine: P6, P7, collectives vs memcpy; MPI via mpirun)
#   gen-bench   (generation: tokens/s with and without a steering hook, vs transformers generate)
#   data-bench  (padded batches and harvesting on SmolLM2: P8, P9)
#   service-bench (the hook service on SmolLM2: P11, throughput with and without co-tenancy batching)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
source scripts/env.sh
scripts/build-guests.sh >/dev/null
cargo build --release -p flexmodel-bench -p flexmodel -p flexmodel-compile --bins --features "flexmodel/$FLEXMODEL_FEATURES"
"$CARGO_TARGET_DIR/release/hook-bench" --artifacts artifacts/wasm --out BENCHMARKS.md
"$FLEXMODEL_VENV/bin/pip" install --quiet nnsight 2>/dev/null || echo "nnsight could not be installed; its row is skipped" >&2
"$CARGO_TARGET_DIR/release/model-bench" --python "$FLEXMODEL_VENV/bin/python" --artifacts artifacts/wasm \
  --model-dir artifacts/bench/gpt2-small --out BENCHMARKS.md "$@"
# The same on a LLaMA shaped as SmolLM2-135M (GQA, tied embeddings): peak RSS on the model the issue named.
"$CARGO_TARGET_DIR/release/model-bench" --python "$FLEXMODEL_VENV/bin/python" --artifacts artifacts/wasm \
  --model-dir artifacts/bench/llama-135m --out BENCHMARKS.md "$@"
"$CARGO_TARGET_DIR/release/dist-bench" --artifacts artifacts/wasm --model-dir artifacts/bench/gpt2-small \
  --out BENCHMARKS.md
"$CARGO_TARGET_DIR/release/gen-bench" --python "$FLEXMODEL_VENV/bin/python" --artifacts artifacts/wasm \
  --model-dir artifacts/bench/gpt2-small --out BENCHMARKS.md
# Real text at scale (issue 11): P8 padded batches, P9 harvesting, on SmolLM2 (made by setup.sh).
"$CARGO_TARGET_DIR/release/data-bench" --python "$FLEXMODEL_VENV/bin/python" \
  --model-dir artifacts/smollm2-135m-instruct --out BENCHMARKS.md
# The hook service (issue 13): P11, throughput and queue waits with 8 and 32 tenants.
"$CARGO_TARGET_DIR/release/service-bench" --model-dir artifacts/smollm2-135m-instruct \
  --artifacts artifacts/wasm --out BENCHMARKS.md
