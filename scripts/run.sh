#!/usr/bin/env bash
# Sets up the machine if needed and runs the main job on the embedded default source (the
# Superstore history, then live generated orders). Extra arguments go to `fulfillment-ai run`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$REPO_ROOT"
scripts/setup.sh
exec "$CARGO_TARGET_DIR/release/fulfillment-ai" run "$@"
