#!/usr/bin/env bash
# Runs Tern and Postfix side by side on this machine under the same loads (1 KiB messages,
# 20 concurrent sessions) and prints the figures used in the issues' closing notes.
# Needs: cargo, Postfix (bash .ci/install-peers), root (smtp-sink -u nobody, postfix start).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-20000}
S=${S:-20}
source bench/lib.sh

pkill -f 'tern (sink|serve)' 2>/dev/null || true
echo "== sinks, loaded by Postfix smtp-source (-s $S -m $N -l 1024, one session per message stream)"
# One worker thread, like the single-process smtp-sink.
$TERN sink --threads 1 --listen 127.0.0.1:2526 >/dev/null & pids+=($!)
/usr/sbin/smtp-sink -u nobody 127.0.0.1:2527 1000 & pids+=($!)
sleep 0.5
for port in 2526 2527; do
  t=$(secs /usr/sbin/smtp-source -d -s "$S" -m "$N" -l 1024 -f a@x.test -t b@y.test 127.0.0.1:$port)
  echo "  $( [ $port = 2526 ] && echo 'tern sink     ' || echo 'postfix smtp-sink') $(rate "$N" "$t")"
done

echo "== clients, sending to Postfix smtp-sink"
t=$(secs /usr/sbin/smtp-source -d -s "$S" -m "$N" -l 1024 -f a@x.test -t b@y.test 127.0.0.1:2527)
echo "  postfix smtp-source $(rate "$N" "$t")"
$TERN bench --server 127.0.0.1:2527 --connections "$S" --messages "$N" --size 1024 | sed 's/^/  /'

echo "== durable acceptance into the queue (fsync before 250), loaded by smtp-source"
M=${M:-5000}
$TERN serve --listen 127.0.0.1:2528 --hostname tern.test --data-dir "$WORK/tern" >/dev/null 2>&1 & pids+=($!)
sleep 1
# Two runs of M messages from smtp-source: LABEL, recipient, port.
two_runs() {
  for run in 1 2; do
    t=$(secs /usr/sbin/smtp-source -d -s "$S" -m "$M" -l 1024 -f a@x.test -t "$2" "127.0.0.1:$3")
    echo "  $1, run $run $(rate "$M" "$t")"
    sleep 2
  done
}
two_runs "tern serve (spool + Maildir delivery)" user@tern.test 2528
start_postfix
sleep 2
two_runs "postfix smtpd (queue + discard delivery)" user@postfix.test 2529
