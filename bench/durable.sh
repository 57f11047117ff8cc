#!/usr/bin/env bash
# Durable acceptance, Tern vs Postfix, in one run (issue 10's figures): Postfix smtp-source with
# 20 sessions, 1 KiB messages, one message per connection; `tern serve` with Maildir delivery on
# vs Postfix smtpd with its queue and the discard transport. Also prints tern's CPU time per
# message (user + sys from /proc/PID/stat) and its RSS.
# Needs: cargo, Postfix (bash .ci/install-peers), root (postfix start).
set -euo pipefail
cd "$(dirname "$0")/.."
M=${M:-3000}
S=${S:-20}
RUNS=${RUNS:-3}
source bench/lib.sh
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

pkill -f 'tern (sink|serve)' 2>/dev/null || true
start_postfix
$TERN serve --listen 127.0.0.1:2528 --hostname tern.test --data-dir "$WORK/tern" >/dev/null 2>&1 &
TPID=$!
pids+=($TPID)
sleep 2
hz=$(getconf CLK_TCK)
for run in $(seq "$RUNS"); do
  before=$(ticks $TPID)
  t=$(secs /usr/sbin/smtp-source -s "$S" -m "$M" -l 1024 -f a@x.test -t user@tern.test 127.0.0.1:2528)
  # Wait for the Maildir deliveries of this run to finish before reading the CPU time.
  for _ in $(seq 100); do
    [ -z "$(ls -A "$WORK/tern/queue/msg")" ] && break
    sleep 0.1
  done
  after=$(ticks $TPID)
  cpu=$(awk -v a="$after" -v b="$before" -v hz="$hz" -v n="$M" 'BEGIN { printf "%.3f", (a - b) * 1000 / hz / n }')
  echo "  tern serve (spool + Maildir), run $run: $(rate "$M" "$t"); CPU $cpu ms/msg; RSS $(awk '/VmRSS/ { print $2 " kB" }' /proc/$TPID/status)"
  t=$(secs /usr/sbin/smtp-source -s "$S" -m "$M" -l 1024 -f a@x.test -t user@postfix.test 127.0.0.1:2529)
  echo "  postfix smtpd (queue + discard), run $run: $(rate "$M" "$t")"
  sleep 1
done
echo "  delivered: $(ls "$WORK/tern/mail/user/new" | wc -l) of $((M * RUNS))"
