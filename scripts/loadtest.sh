#!/usr/bin/env bash
# Kafka load test: build the release binary, make sure a broker is there, and run
# `fulfillment-ai bench --kafka-ramp` (raise the input rate until the job stops keeping up, then
# measure event -> KPI latency at 50% and 90% of the highest sustainable rate). The verdict
# rules are in src/kafka/ramp.rs. Prints a table; JSON and the table go to --out (default
# out/loadtest/).
#
#   scripts/loadtest.sh [bench flags]      e.g. --ramp-start 4000 --ramp-step-seconds 20 --workers 2
#                                          --ramp-max-p99-ms 2000 (a tighter latency budget)
#
# Broker: with KAFKA_BOOTSTRAP_SERVERS set, that broker is used as it is. Otherwise a private
# Tansu (durable SQLite storage, as scripts/kafka.sh starts it) on 127.0.0.1:$FULFILLMENT_KAFKA_PORT
# (default 19095) with its data in a temporary directory, stopped and deleted at exit.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$REPO_ROOT"

cargo build --release --locked --quiet
BIN="$CARGO_TARGET_DIR/release/fulfillment-ai"

if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  export FULFILLMENT_KAFKA_PORT="${FULFILLMENT_KAFKA_PORT:-19095}"
  FULFILLMENT_KAFKA_DIR="$(mktemp -d "${TMPDIR:-/tmp}/fulfillment-loadtest.XXXXXX")"
  export FULFILLMENT_KAFKA_DIR FULFILLMENT_KAFKA_STORAGE=sqlite FULFILLMENT_BIN="$BIN"
  cleanup() {
    scripts/kafka.sh down || true
    rm -rf "$FULFILLMENT_KAFKA_DIR"
  }
  trap cleanup EXIT
  scripts/kafka.sh up
  export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$FULFILLMENT_KAFKA_PORT"
fi

# librdkafka's PartitionEOF notices from the measuring consumers are warnings; keep them out.
export RUST_LOG="${RUST_LOG:-info,librdkafka=error}"
echo "loadtest: broker $KAFKA_BOOTSTRAP_SERVERS; $(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p')); $(date -u +%FT%TZ)"
"$BIN" bench --kafka-ramp "$@"
