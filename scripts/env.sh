# Shared environment for the project's scripts: build cache and tool locations outside the
# clone, so fresh clones (and CI) reuse earlier builds. Source it; do not run it.
export FULFILLMENT_CACHE="${FULFILLMENT_CACHE:-$HOME/.cache/fulfillment-ai}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$FULFILLMENT_CACHE/target}"
export PATH="$HOME/.cargo/bin:$FULFILLMENT_CACHE/bin:$PATH"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export REPO_ROOT
