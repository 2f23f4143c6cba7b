#!/usr/bin/env bash
# Runs on the lent GPU machine, from the unpacked bundle (scripts/gpu-bundle.sh):
#   bash run.sh [cuda|cpu]
# Points the loader at the image's own libtorch and NVIDIA libraries (found
# from `python3 -c "import torch"`: nothing is downloaded there), makes the
# tiny reference models with the image's transformers, and runs check.py;
# results under $OUT (or ./out). `cpu`: the dry run on any machine.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
device=${1:-cuda}
out=${OUT:-$here/out}
py=${PYTHON:-python3}
mkdir -p "$out"
torchdir=$("$py" -c "import torch, os; print(os.path.dirname(torch.__file__))")
version=$("$py" -c "import torch; print(torch.__version__.split('+')[0])")
if [ "$version" != "$(cat "$here/TORCH_VERSION")" ]; then
  echo "this bundle was built against torch $(cat "$here/TORCH_VERSION"); the image has $version" | tee "$out/error.txt"
  exit 1
fi
libs="$torchdir/lib"
for d in "$(dirname "$torchdir")"/nvidia/*/lib "$(dirname "$torchdir")"/nvidia/cu*/lib; do
  [ -d "$d" ] && libs="$libs:$d"
done
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
"$here/bin/flexmodel" --version
start=$(date +%s)
"$py" "$here/reference/make_models.py" "$out/models" > "$out/make_models.log" 2>&1
echo "reference models made in $(( $(date +%s) - start )) s"
set +e
"$py" "$here/check.py" "$here" "$out/models" "$out" "$device" 2>&1 | tee "$out/check.log"
status=${PIPESTATUS[0]}
set -e
# The GPU numbers (BENCHMARKS sections in $out/BENCHMARKS-gpu.md): P1-P3 by
# model-bench on a ~1.1B LLaMA and GPT-2 small, bf16, batch 8 x 512, and
# generation with and without a steering hook by gen-bench. BENCH_QUICK=1:
# GPT-2 small only, tiny sizes (the dry run on a CPU).
export FLEXMODEL_BENCH_WORKER="$here/reference/bench_worker.py"
export FLEXMODEL_COMPILER="$here/bin/flexmodel-compile"
if [ -n "${BENCH_QUICK:-}" ]; then
  models="gpt2-small"; args=(--device "$device" --dtype f32 --batch 1 --seq 16 --reps 1 --threads 2)
  gen=(--device "$device" --dtype f32 --prompt 8 --new 4 --reps 1 --threads 2)
elif [ "$device" != cpu ]; then
  models="llama-1b gpt2-small"; args=(--device "$device" --dtype bf16 --batch 8 --seq 512 --reps 3 --threads 16)
  gen=(--device "$device" --dtype bf16 --prompt 128 --new 64 --reps 3 --threads 16)
else
  models=""
fi
for m in $models; do
  "$here/bin/model-bench" --python "$py" --model-dir "$out/bench/$m" --artifacts "$here/wasm" \
    "${args[@]}" --out "$out/BENCHMARKS-gpu.md" > "$out/model-bench-$m.log" 2>&1 || { status=1; tail -5 "$out/model-bench-$m.log"; }
done
if [ -n "$models" ]; then
  "$here/bin/gen-bench" --python "$py" --model-dir "$out/bench/gpt2-small" --artifacts "$here/wasm" \
    "${gen[@]}" --out "$out/BENCHMARKS-gpu.md" > "$out/gen-bench.log" 2>&1 || { status=1; tail -5 "$out/gen-bench.log"; }
  cat "$out/BENCHMARKS-gpu.md"
fi
exit "$status"
