#!/usr/bin/env bash
# A queue of N deferred messages (default 100 000; 1 KiB each, next attempt in an hour): time
# to start accepting mail, time to a delivered new message while the index is rebuilt, idle CPU
# once it is rebuilt, `tern queue list` time, and how fast SIGTERM stops a server that is still
# rebuilding its index.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-100000}
cargo build --release -q -p smtp-cli
TERN=$PWD/target/release/tern
WORK=$(mktemp -d -p /var/tmp)
trap 'pkill -f "data-dir $WORK" 2>/dev/null || true; rm -rf "$WORK"' EXIT
python3 - "$WORK/queue" "$N" <<'PY'
import os, sys, time
q, n = sys.argv[1], int(sys.argv[2])
for sub in ("tmp", "msg", "corrupt", "free"):
    os.makedirs(os.path.join(q, sub), exist_ok=True)
body = b"Subject: deferred\r\n\r\n" + b"x" * 1000 + b"\r\n"
later = int(time.time()) + 3600
for i in range(n):
    mid = "D%012d" % i
    head = ("TERN-SPOOL 1\nid %s\narrival %d\nmail MAIL FROM:<s@origin.test>\n"
            "rcpt RCPT TO:<r@far.test>\nbody %020d\n" % (mid, int(time.time()), len(body))).encode()
    with open(os.path.join(q, "msg", mid), "wb") as f:
        f.write(head + body)
    with open(os.path.join(q, "msg", mid + ".st"), "wb") as f:
        f.write(b"TERN-STATE 2\ndelay-warned 0\nrcpt 0 3 %d 0 -\nstatus 0 pending\n" % later)
PY
sync
echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
echo "== $N deferred messages in $WORK/queue (page cache dropped)"
s=$(date +%s.%N)
out=$($TERN queue list --data-dir "$WORK" | wc -l)
e=$(date +%s.%N)
echo "  tern queue list: $((out - 1)) lines in $(echo "$e - $s" | bc) s (cold)"
s=$(date +%s.%N)
out=$($TERN queue list --data-dir "$WORK" | wc -l)
e=$(date +%s.%N)
echo "  tern queue list: $((out - 1)) lines in $(echo "$e - $s" | bc) s (warm)"

port=2630
start_server() {
  s=$(date +%s.%N)
  $TERN serve --listen 127.0.0.1:$port --hostname mx.test --data-dir "$WORK" --log-format json > "$WORK/out.log" 2> "$WORK/err.log" &
  PID=$!
  until grep -q listening "$WORK/out.log" 2>/dev/null; do sleep 0.01; done
  e=$(date +%s.%N)
}
start_server
echo "  start-up to listening: $(echo "$e - $s" | bc) s"
python3 - $port <<'PY'
import smtplib, sys, time
t = time.time()
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=30)
s.sendmail("a@x.test", ["u@mx.test"], b"Subject: new\r\n\r\nnew mail\r\n")
s.quit()
print("  a new message accepted in %.3f s" % (time.time() - t))
PY
until ls "$WORK/mail/u/new" 2>/dev/null | grep -q .; do sleep 0.01; done
e2=$(date +%s.%N)
echo "  start-up to the new message delivered: $(echo "$e2 - $s" | bc) s"
until grep -q "resuming queued messages" "$WORK/err.log"; do sleep 0.05; done
e3=$(date +%s.%N)
echo "  index rebuilt after $(echo "$e3 - $s" | bc) s; RSS $(awk '/VmRSS/ { print $2 " kB" }' /proc/$PID/status)"
hz=$(getconf CLK_TCK)
a=$(awk '{ print $14 + $15 }' /proc/$PID/stat)
sleep 10
b=$(awk '{ print $14 + $15 }' /proc/$PID/stat)
echo "  idle CPU over 10 s: $(awk -v a="$a" -v b="$b" -v hz="$hz" 'BEGIN { printf "%.2f%%", (b - a) * 100 / hz / 10 }') of a core"
kill -TERM $PID; wait $PID || true

echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
start_server
sleep 0.2
t=$(date +%s.%N)
kill -TERM $PID; wait $PID || true
t2=$(date +%s.%N)
echo "  SIGTERM while rebuilding the index (cold cache): stopped in $(echo "$t2 - $t" | bc) s"
