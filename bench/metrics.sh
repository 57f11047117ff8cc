#!/usr/bin/env bash
# The cost of the metrics endpoint (issue 14): durable accepts with `tern serve
# --metrics-listen` on and off, alternating rounds, 20 connections of `tern bench`, 1 KiB
# messages to a local mailbox (Maildir, fsync'd). Prints throughput and the server's CPU ticks
# (user + sys from /proc/PID/stat) per round.
#   cargo build --release -p smtp-cli && BENCH_DIR=/dev/shm ROUNDS=8 MSGS=40000 bash bench/metrics.sh
# BENCH_DIR on tmpfs takes the disk out, so what is left is CPU: where metrics would cost.
set -euo pipefail
T=${TERN:-target/release/tern}
PORT=${PORT:-2700}
for round in $(seq "${ROUNDS:-3}"); do
  for mode in off on; do
    d=$(mktemp -d "${BENCH_DIR:-/var/tmp}/tern-metrics.XXXX")
    extra=()
    [ "$mode" = on ] && extra=(--metrics-listen 127.0.0.1:0)
    "$T" serve --data-dir "$d" --listen "127.0.0.1:$PORT" --hostname mx.test "${extra[@]}" >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
    r=$("$T" bench --server "127.0.0.1:$PORT" --connections 20 --messages "${MSGS:-20000}" --size 1024 --rcpt-domain mx.test | grep throughput)
    cpu=$(awk '{print $14+$15}' "/proc/$pid/stat")
    echo "round $round metrics $mode: $r cpu_ticks=$cpu"
    kill -TERM "$pid"
    wait "$pid" || true
    rm -rf "$d"
  done
done
