#!/usr/bin/env bash
# The long seeded fuzz run of every host function (issue 9): at least a
# million host calls (FLEXMODEL_FUZZ_FORWARDS x 3 rounds x FLEXMODEL_FUZZ_CALLS),
# no host panic, no rollback missed. Not part of CI (which runs a short one).
#   scripts/fuzz.sh [SEED]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
source scripts/env.sh
scripts/build-guests.sh >/dev/null
cargo build --release --quiet -p flexmodel -p flexmodel-compile --bins --features "flexmodel/$FLEXMODEL_FEATURES"
export FLEXMODEL_FUZZ_SEED=${1:-$(date +%s)}
export FLEXMODEL_FUZZ_FORWARDS=${FLEXMODEL_FUZZ_FORWARDS:-1400}
export FLEXMODEL_FUZZ_CALLS=${FLEXMODEL_FUZZ_CALLS:-250}
echo "seed $FLEXMODEL_FUZZ_SEED: $FLEXMODEL_FUZZ_FORWARDS registrations x 3 calls x $FLEXMODEL_FUZZ_CALLS host calls"
cargo test --release --features "flexmodel/$FLEXMODEL_FEATURES" --test fuzz -- --nocapture 2>&1 | grep -E "^fuzz:|test result|panicked|assert"
