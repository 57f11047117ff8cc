#!/usr/bin/env bash
# The shared PostgreSQL queue (issue 15): durable accept rate of one node on PostgreSQL against
# the file spool, then two and three nodes on one database. `tern bench` sends MSGS 1 KiB
# messages over 24 connections in all (split between the nodes, run at once); each node relays
# them to a `tern sink` (so every node also claims, delivers and removes while it accepts).
# Prints messages per second from the first connection to the last 250.
#   MSGS=20000 bash bench/cluster.sh
# PostgreSQL runs in a scratch directory as the postgres user (fsync and synchronous_commit on).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
MSGS=${MSGS:-20000}
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
PGPORT=${PGPORT:-25432}
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres: "$WORK"
as_pg "$PGBIN/initdb" -D "$WORK/pg" -A trust -U tern >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -w \
  -o "-p $PGPORT -k $WORK -c listen_addresses=127.0.0.1 -c max_connections=300 ${PGOPTS:-}" start >/dev/null
trap 'as_pg "$PGBIN/pg_ctl" -D "$WORK/pg" -m immediate stop >/dev/null 2>&1 || true; cleanup' EXIT

"$TERN" sink --listen 127.0.0.1:2799 >/dev/null 2>&1 &
pids+=($!)

wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

# run NAME NODES [serve args...]: starts NODES nodes, benches them at once, stops them.
run() {
  local name=$1 nodes=$2
  shift 2
  local started=() i
  for i in $(seq "$nodes"); do
    mkdir -p "$WORK/$name-$i"
    "$TERN" serve --data-dir "$WORK/$name-$i" --listen "127.0.0.1:$((2700 + i))" --hostname mx.test \
      --route far.test=127.0.0.1:2799 --outbound-tls none --metrics-listen "127.0.0.1:$((2750 + i))" "$@" \
      >"$WORK/$name-$i.log" 2>&1 &
    started+=($!)
    wait_port $((2700 + i))
  done
  local per=$((MSGS / nodes)) conns=$((24 / nodes)) t0 t1 benches=()
  t0=$(date +%s.%N)
  for i in $(seq "$nodes"); do
    "$TERN" bench --server "127.0.0.1:$((2700 + i))" --connections "$conns" --messages "$per" --size 1024 \
      --rcpt-domain far.test >"$WORK/$name-bench-$i.txt" &
    benches+=($!)
  done
  for b in "${benches[@]}"; do wait "$b"; done
  t1=$(date +%s.%N)
  # Messages per database commit (the committers' batching), summed over the nodes.
  local commits=0 committed=0 c m
  for i in $(seq "$nodes"); do
    c=$(curl -s "http://127.0.0.1:$((2750 + i))/metrics" | awk '/^tern_queue_db_commits_total/ {print $2}')
    m=$(curl -s "http://127.0.0.1:$((2750 + i))/metrics" | awk '/^tern_queue_db_committed_messages_total/ {print $2}')
    commits=$((commits + ${c:-0})) committed=$((committed + ${m:-0}))
  done
  for p in "${started[@]}"; do kill -TERM "$p"; wait "$p" || true; done
  # "tern bench: N sent, M accepted in S s" per node: the acknowledged ones count.
  local accepted p99
  accepted=$(cat "$WORK/$name-bench-"*.txt | awk '/accepted in/ {s += $5} END {print s + 0}')
  p99=$(cat "$WORK/$name-bench-"*.txt | awk '/latency ms/ {print $8}' | sort -n | tail -1)
  echo "$name: $(rate "$accepted" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')") of $((per * nodes)) sent; worst node's p99 latency $p99 ms$( [ "$commits" -gt 0 ] && awk -v m="$committed" -v c="$commits" 'BEGIN { printf "; %.1f messages per commit", m / c }')"
}

db() { as_pg "$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U tern -d postgres -qc "CREATE DATABASE $1"; echo "postgres://tern@127.0.0.1:$PGPORT/$1"; }

run "spool, 1 node" 1
run "postgres, 1 node" 1 --queue "$(db one)"
run "postgres, 2 nodes" 2 --queue "$(db two)"
run "postgres, 3 nodes" 3 --queue "$(db three)"
