#!/usr/bin/env bash
# Starts the local Kafka-compatible broker (Nisshi, formerly Tansu) unless
# something already answers on the address, and waits until it accepts
# connections. Installs the broker the first time (15-30 min on 2 cores) into
# LEADFLOW_TOOLS (default ~/.cache/leadflow/tools), where later runs reuse it.
set -euo pipefail

ADDR="${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:9092}"
HOST="${ADDR%%:*}"
PORT="${ADDR##*:}"
TOOLS="${LEADFLOW_TOOLS:-$HOME/.cache/leadflow/tools}"
NISSHI="$TOOLS/bin/nisshi"
STATE_DIR="${LEADFLOW_BROKER_DIR:-$HOME/.cache/leadflow/broker}"
NISSHI_VERSION=0.7.0

answers() { (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; }

install_broker() {
  if [[ -x "$NISSHI" ]] && "$NISSHI" --version 2>/dev/null | grep -q "$NISSHI_VERSION"; then
    return
  fi
  echo "broker: installing nisshi $NISSHI_VERSION into $TOOLS (once; 15-30 minutes on 2 cores)" >&2
  mkdir -p "$TOOLS"
  # rama 0.4 declares rustc 1.96 but builds on 1.95, hence --ignore-rust-version.
  CARGO_TARGET_DIR="$HOME/.cache/leadflow/nisshi-target" \
    cargo install nisshi --version "$NISSHI_VERSION" --locked --ignore-rust-version \
      --features dynostore,postgres --root "$TOOLS"
  rm -rf "$HOME/.cache/leadflow/nisshi-target"
}

case "${1:-start}" in
  install)
    install_broker
    ;;
  start)
    if answers; then
      echo "broker: something already answers on $ADDR; using it" >&2
      exit 0
    fi
    install_broker
    mkdir -p "$STATE_DIR"
    echo "broker: starting nisshi on $ADDR (log: $STATE_DIR/broker.log)" >&2
    nohup "$NISSHI" broker \
      --listener-url "tcp://$ADDR" \
      --advertised-listener-url "tcp://$ADDR" \
      --storage-engine "${LEADFLOW_BROKER_STORAGE:-memory://nisshi/}" \
      >"$STATE_DIR/broker.log" 2>&1 < /dev/null &
    echo $! >"$STATE_DIR/broker.pid"
    for _ in $(seq 1 120); do
      if answers; then echo "broker: ready on $ADDR" >&2; exit 0; fi
      if ! kill -0 "$(cat "$STATE_DIR/broker.pid")" 2>/dev/null; then
        echo "broker: nisshi exited; last lines of its log:" >&2
        tail -20 "$STATE_DIR/broker.log" >&2
        exit 1
      fi
      sleep 0.5
    done
    echo "broker: nisshi did not answer on $ADDR within 60 s" >&2
    exit 1
    ;;
  stop)
    if [[ -f "$STATE_DIR/broker.pid" ]]; then
      kill "$(cat "$STATE_DIR/broker.pid")" 2>/dev/null || true
      rm -f "$STATE_DIR/broker.pid"
    fi
    ;;
  *)
    echo "usage: $0 [install|start|stop]" >&2
    exit 2
    ;;
esac
