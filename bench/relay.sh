#!/usr/bin/env bash
# Relay throughput A -> B over loopback: N messages of 1 KiB from S concurrent senders into A,
# timed until all are delivered into B's Maildir; with and without outbound TLS. Prints the
# TLS handshakes A made (full and resumed) from its shutdown log line.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-5000}
S=${S:-20}
cargo build --release -q -p smtp-cli
TERN=$PWD/target/release/tern
for mode in none opportunistic; do
  WORK=$(mktemp -d)
  $TERN serve --listen 127.0.0.1:2541 --hostname b.test --local-domain b.test --data-dir "$WORK/b" >/dev/null 2>&1 &
  B=$!
  $TERN serve --listen 127.0.0.1:2540 --hostname a.test --data-dir "$WORK/a" --route b.test=127.0.0.1:2541 \
    --outbound-tls "$mode" >/dev/null 2>"$WORK/a.log" &
  A=$!
  sleep 1
  start=$(date +%s.%N)
  $TERN bench --server 127.0.0.1:2540 --connections "$S" --messages "$N" --size 1024 --rcpt-domain b.test >/dev/null
  for _ in $(seq 1 600); do
    n=$( (ls "$WORK/b/mail/user0/new" 2>/dev/null || true) | wc -l)
    [ "$n" -ge "$N" ] && break
    sleep 0.1
  done
  end=$(date +%s.%N)
  kill -TERM $A; wait $A || true
  kill -TERM $B; wait $B || true
  hs=$(grep -o 'full=[0-9]* resumed=[0-9]*' "$WORK/a.log" | tail -1)
  awk -v n="$n" -v s="$start" -v e="$end" -v m="$mode" -v hs="$hs" \
    'BEGIN { printf "outbound TLS %-13s %d delivered at B in %.2f s: %.0f msg/s end to end; TLS handshakes %s\n", m, n, e - s, n / (e - s), hs }'
  rm -rf "$WORK"
done
