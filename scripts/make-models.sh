#!/usr/bin/env bash
# Build the tiny random reference models and their transformers outputs into
# artifacts/models/ (tests/reference/make_models.py), when its inputs changed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
source scripts/env.sh
out=artifacts/models
stamp="$out/.inputs"
# The references are transformers' outputs under the pinned torch: remade
# when the scripts or the pin change.
sum=$( (cat tests/reference/*.py; echo "torch $TORCH_VERSION") | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sum" ]; then
  exit 0
fi
rm -rf "$out"
mkdir -p "$out"
"$FLEXMODEL_VENV/bin/python" tests/reference/make_models.py "$out"
# TransformerLens' own activations, for the alias test (tests/transformer_lens.rs).
"$FLEXMODEL_VENV/bin/python" tests/reference/tl_aliases.py "$out"
echo "$sum" > "$stamp"
