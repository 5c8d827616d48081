#!/usr/bin/env bash
# The Kafka-compatible broker for development and tests: Tansu on loopback with durable SQLite
# storage, and the job's topics from config/kafka/topics.yaml.
#
#   scripts/kafka.sh install   install Tansu 0.6.0 if missing (cached outside the clone)
#   scripts/kafka.sh up        install, start the broker, create missing topics
#   scripts/kafka.sh down      stop the broker (data is kept)
#   scripts/kafka.sh restart   stop and start again on the same data
#   scripts/kafka.sh status    is it running, where, which topics
#   scripts/kafka.sh wipe      stop and delete the broker's data
#
# Settings (environment):
#   FULFILLMENT_KAFKA_PORT     listener port on 127.0.0.1 (default 9092)
#   FULFILLMENT_KAFKA_DIR      data, pid and log directory (default ~/.cache/fulfillment-ai/kafka)
#   FULFILLMENT_KAFKA_STORAGE  sqlite (durable, default) or memory (fast, lost on stop)
#   FULFILLMENT_KAFKA_TOPICS_FILE  topics to create (default config/kafka/topics.yaml)
#   FULFILLMENT_BIN            fulfillment-ai binary that creates topics (default: release build)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$REPO_ROOT"

TANSU_VERSION=0.6.0
TOOLS="$FULFILLMENT_CACHE/tools"
TANSU="$TOOLS/bin/tansu"
PORT="${FULFILLMENT_KAFKA_PORT:-9092}"
DIR="${FULFILLMENT_KAFKA_DIR:-$FULFILLMENT_CACHE/kafka}"
STORAGE="${FULFILLMENT_KAFKA_STORAGE:-sqlite}"
PIDFILE="$DIR/tansu.pid"
LOG="$DIR/tansu.log"

say() { echo "kafka: $*"; }

install() {
  if [ -x "$TANSU" ] && "$TANSU" --version 2>/dev/null | grep -qx "tansu $TANSU_VERSION"; then
    return 0
  fi
  command -v cargo >/dev/null || { echo "kafka: cargo is needed to install Tansu" >&2; exit 1; }
  say "installing Tansu $TANSU_VERSION into $TOOLS (a one-off build of several minutes)"
  cargo install tansu --locked --version "$TANSU_VERSION" --features dynostore,libsql \
    --root "$TOOLS" --target-dir "$FULFILLMENT_CACHE/tansu-target" --quiet
  "$TANSU" --version | grep -qx "tansu $TANSU_VERSION"
}

running_pid() {
  [ -f "$PIDFILE" ] || return 1
  local pid; pid="$(cat "$PIDFILE")"
  kill -0 "$pid" 2>/dev/null && [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "tansu" ] && echo "$pid"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

# The process just started (whatever it is called yet) exists and is not a zombie.
started_alive() {
  local pid; pid="$(cat "$PIDFILE")"
  kill -0 "$pid" 2>/dev/null && ! grep -q '^State:[[:space:]]*Z' /proc/"$pid"/status 2>/dev/null
}

start() {
  install
  mkdir -p "$DIR"
  if pid="$(running_pid)"; then
    say "already running (pid $pid) on 127.0.0.1:$PORT"
    return 0
  fi
  if port_open; then
    echo "kafka: port $PORT is taken by another process; set FULFILLMENT_KAFKA_PORT" >&2
    exit 1
  fi
  case "$STORAGE" in
    sqlite) engine="sqlite://tansu.db" ;;  # relative to $DIR, where the broker runs
    memory) engine="memory://tansu/" ;;
    *) echo "kafka: FULFILLMENT_KAFKA_STORAGE must be sqlite or memory, not '$STORAGE'" >&2; exit 1 ;;
  esac
  (cd "$DIR" && exec nohup "$TANSU" broker \
    --listener-url "tcp://127.0.0.1:$PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$PORT" \
    --storage-engine "$engine" >>"$LOG" 2>&1) &
  echo $! >"$PIDFILE"
  for _ in $(seq 1 150); do
    if port_open; then
      say "Tansu $TANSU_VERSION up on 127.0.0.1:$PORT (pid $(cat "$PIDFILE"), storage $engine)"
      return 0
    fi
    # Alive, not `running_pid`: until the subshell has exec'd nohup and nohup Tansu, the
    # process is still called bash or nohup, and a busy machine shows that for a while.
    if ! started_alive; then
      echo "kafka: Tansu exited at start; last log lines:" >&2; tail -20 "$LOG" >&2; exit 1
    fi
    sleep 0.1
  done
  echo "kafka: Tansu did not open port $PORT within 15 s; see $LOG" >&2
  exit 1
}

stop() {
  if pid="$(running_pid)"; then
    kill "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    say "stopped (pid $pid)"
  else
    say "not running"
  fi
  rm -f "$PIDFILE"
}

binary() {
  local bin="${FULFILLMENT_BIN:-$CARGO_TARGET_DIR/release/fulfillment-ai}"
  if [ ! -x "$bin" ]; then
    cargo build --release --locked --quiet
  fi
  echo "$bin"
}

topics() {
  KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$PORT" "$(binary)" kafka create-topics
}

case "${1:-}" in
  install) install; say "Tansu $TANSU_VERSION at $TANSU" ;;
  up) start; topics ;;
  down) stop ;;
  restart) stop; start ;;
  status)
    if pid="$(running_pid)"; then
      say "running (pid $pid) on 127.0.0.1:$PORT, data in $DIR"
      KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$PORT" "$(binary)" kafka topics
    else
      say "not running"; exit 3
    fi ;;
  wipe) stop; rm -rf "$DIR"; say "data removed ($DIR)" ;;
  *) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
