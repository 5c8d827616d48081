#!/usr/bin/env bash
# Runs the retrieval experiments (run.py) from a clean checkout: a pinned virtualenv under
# ~/.cache/fulfillment-ai/, MiniLM (scripts/fetch_model.sh) and all-mpnet-base-v2
# (fetch_mpnet.sh), the Rust knowledge base index and `kb eval --json` of each evaluation set
# for the parity check. Not part of the test command: the MPNet download is ~400 MB and the
# numpy encoders take ~10 minutes on a cold cache.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
source "$ROOT/scripts/env.sh"
VENV="$FULFILLMENT_CACHE/kb-experiments-venv"
[[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet -r "$HERE/requirements.txt"
bash "$ROOT/scripts/fetch_model.sh"
PIP="$VENV/bin/pip" bash "$HERE/fetch_mpnet.sh"
cd "$ROOT"
cargo build --release --locked --quiet
BIN="$CARGO_TARGET_DIR/release/fulfillment-ai"
"$BIN" kb index > /dev/null
EVAL="$(mktemp -d)"
trap 'rm -rf "$EVAL"' EXIT
for set in questions heldout blind; do
  "$BIN" kb eval --questions "tests/kb_eval/$set.yaml" --json > "$EVAL/$set.yaml.json"
done
"$VENV/bin/python" "$HERE/run.py" "$EVAL"
