#!/usr/bin/env bash
# Installs everything the project needs, idempotently: Debian packages, the Rust toolchain check,
# the Superstore dataset, the Python test tools (a virtualenv), and a release build of the binary.
# Safe to run any number of times.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$REPO_ROOT"

# Debian packages (only those missing are installed).
APT_PACKAGES=(build-essential pkg-config ca-certificates nodejs npm cmake g++ libopenblas-dev liblapack-dev python3-pip python3-venv postgresql chromium wrk)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# node/npm and pip may come from elsewhere on the image; only require the commands.
if command -v node >/dev/null && command -v npm >/dev/null; then
  missing=("${missing[@]/nodejs}"); missing=("${missing[@]/npm}")
fi
if command -v pip3 >/dev/null || command -v pip >/dev/null; then
  missing=("${missing[@]/python3-pip}")
fi
read -r -a missing <<< "${missing[*]:-}"
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "setup: Debian packages present"
fi

command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust with rustup first" >&2; exit 1; }

scripts/fetch_dataset.sh
scripts/fetch_model.sh

# Python test tools (schemathesis, for tests/serve_schemathesis.rs) in a virtualenv outside the
# clone, with exactly the pins of scripts/requirements-test.txt (every file hash-checked). The
# stamp holds the sha256 of the requirements file the venv was built from; any change rebuilds it.
VENV="$FULFILLMENT_CACHE/venv"
REQUIREMENTS=scripts/requirements-test.txt
want="$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "" 2>/dev/null \
  && [ "$(cat "$VENV/requirements.sha256" 2>/dev/null)" = "$want" ]; then
  echo "setup: Python test tools present ($VENV)"
else
  echo "setup: installing Python test tools into $VENV"
  python3 -m venv --clear "$VENV"
  "$VENV/bin/pip" install --quiet --require-hashes --no-deps -r "$REQUIREMENTS"
  "$VENV/bin/pip" check >/dev/null
  echo "$want" > "$VENV/requirements.sha256"
fi

echo "setup: building (target dir $CARGO_TARGET_DIR)"
cargo build --release --locked --quiet
echo "setup: done"
