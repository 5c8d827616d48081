#!/usr/bin/env bash
# Sets up the machine if needed and runs every check and test: formatting, clippy with warnings
# as errors, all unit/integration/property tests (CI=true makes dataset tests mandatory), and a
# compile of the benchmarks.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$REPO_ROOT"
scripts/setup.sh
scripts/kafka.sh install   # Tansu, for the broker tests (each test starts its own broker)
echo "test: cargo fmt --check"
cargo fmt --all -- --check
echo "test: cargo clippy"
cargo clippy --locked --all-targets --quiet -- -D warnings
echo "test: cargo bench --no-run"
cargo bench --locked --no-run --quiet 2>&1 | grep -v "^  Executable" || true
echo "test: cargo test"
# The exit status is cargo's (PIPESTATUS[0]), read right after the pipeline: a `|| true` here
# would reset it and let a failing test pass CI.
set +e
CI="${CI:-true}" cargo test --locked --no-fail-fast 2>&1 | tee "$FULFILLMENT_CACHE/last-test.log" | grep -E "^(test result|running|failures:|---- |thread '|error)"
status=${PIPESTATUS[0]}
set -e
passed=$(grep -Eo "[0-9]+ passed" "$FULFILLMENT_CACHE/last-test.log" | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo "[0-9]+ failed" "$FULFILLMENT_CACHE/last-test.log" | awk '{s+=$1} END {print s+0}')
echo "$passed passed, $failed failed"
exit "$status"
