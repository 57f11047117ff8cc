# Shared by the bench scripts: the release binary, a scratch directory cleaned up on exit with
# every process in `pids`, and timing helpers. Source it after `cd` to the project root.
cargo build --release -q -p smtp-cli
TERN=$PWD/target/release/tern
WORK=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; postfix stop >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT

# Seconds taken by a command that must succeed (a failed run must not pass for a fast one).
secs() {
  local out
  out=$(/usr/bin/time -f "%e %x" "$@" 2>&1 >/dev/null | tail -1)
  [ "${out#* }" = 0 ] || { echo "FAILED: $* ($out)" >&2; exit 1; }
  echo "${out% *}"
}
rate() { awk -v n="$1" -v t="$2" 'BEGIN { printf "%.0f msg/s (%d in %.2f s)", n / t, n, t }'; }

# Postfix smtpd on 127.0.0.1:2529 with discard delivery: the baseline both comparisons use.
start_postfix() {
  postconf -e "inet_interfaces = 127.0.0.1" "mydestination = postfix.test" "default_transport = discard" \
    "local_transport = discard" "local_recipient_maps =" "mynetworks = 127.0.0.0/8" \
    "smtpd_client_connection_rate_limit = 0" "default_process_limit = 100" >/dev/null
  sed -i 's/^smtp      inet.*/127.0.0.1:2529 inet n - y - - smtpd/' /etc/postfix/master.cf
  postfix stop >/dev/null 2>&1 || true
  postfix start >/dev/null 2>&1
}
