# Sourced by the other scripts: where libtorch, the cargo target dir and the
# Python venv live. Everything heavy is cached outside the clone, so a fresh
# clone on a machine that already ran setup builds incrementally.
FLEXMODEL_CACHE=${FLEXMODEL_CACHE:-$HOME/.cache/flexmodel}
export TORCH_VERSION=2.11.0
export LIBTORCH=${LIBTORCH:-$FLEXMODEL_CACHE/libtorch-$TORCH_VERSION/torch}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$FLEXMODEL_CACHE/target}
export FLEXMODEL_VENV=${FLEXMODEL_VENV:-$FLEXMODEL_CACHE/venv}
export COMPONENTIZE_PY=${COMPONENTIZE_PY:-$FLEXMODEL_VENV/bin/componentize-py}
# Cargo features of the host built by setup and tests: the MPI backend.
export FLEXMODEL_FEATURES="${FLEXMODEL_FEATURES:-mpi}"
