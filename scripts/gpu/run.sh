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
"$py" "$here/check.py" "$here" "$out/models" "$out" "$device" 2>&1 | tee "$out/check.log"
exit "${PIPESTATUS[0]}"
