#!/usr/bin/env bash
# The sidecar's cost, measured with the release build:
#   scripts/bench-sidecar.sh rss         steady-state RSS wrapping `sleep` (local store, and HTTP to a local server)
#   scripts/bench-sidecar.sh cpu [secs]  CPU time over `secs` (default 600) of 30 s beats
#   scripts/bench-sidecar.sh throughput  a 130 MB log through the sidecar with two patterns, against cat (9 runs each, interleaved, medians)
#
# Throughput: `heartbeat-sidecar run -- cat LOG` is a producer, a pipe and a
# copier. Its baseline is the same shape with cat as the copier, `cat LOG | cat`;
# plain `cat LOG > /dev/null` (no pipe) is shown for scale.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --release -p heartbeat-sidecar
bin=$PWD/target/release/heartbeat-sidecar
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
export HP_STORE="$tmp/bench.db"
unset SUPABASE_URL SUPABASE_SECRET_KEY SUPABASE_SERVICE_ROLE_KEY SUPABASE_SERVICE_KEY

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
rss_split() { awk '/^VmRSS/ {r=$2} /^RssAnon/ {a=$2} /^RssFile/ {f=$2} END {printf "%d KiB (private %d KiB, file-backed code %d KiB)", r, a, f}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

case "${1:-}" in
rss)
  HP_HEARTBEAT_INTERVAL_SECS=1 "$bin" run --name rss-local -- sleep 60 2>/dev/null &
  local_pid=$!
  # A local HTTP server answering 201, so the HTTP client and TLS stack are loaded as with Supabase.
  python3 - "$tmp/port" <<'PY' &
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get('content-length', 0)))
        self.send_response(201); self.send_header('content-length', '0'); self.end_headers()
    def log_message(self, *a): pass
s = http.server.HTTPServer(('127.0.0.1', 0), H)
open(sys.argv[1], 'w').write(str(s.server_port))
s.serve_forever()
PY
  sleep 1
  SUPABASE_URL="http://127.0.0.1:$(cat "$tmp/port")" SUPABASE_SECRET_KEY=sb_secret_FAKE_bench HP_STORE=supabase \
    HP_HEARTBEAT_INTERVAL_SECS=1 "$bin" run --name rss-http -- sleep 60 2>/dev/null &
  http_pid=$!
  sleep 15   # 15 beats each
  # The guard that ends the worker's process group with the sidecar: the
  # sidecar's child that is not the worker (`sleep`).
  guard_of() { for c in $(cat /proc/"$1"/task/*/children); do
      [ "$(cat /proc/"$c"/comm)" != sleep ] && echo "$c"; done | head -n 1; }
  echo "sidecar RSS after 15 beats, wrapping sleep:"
  echo "  reporting to Supabase (HTTP client loaded): $(rss_split $http_pid)"
  echo "  reporting to the local SQLite store:        $(rss_split $local_pid)"
  echo "  its process-group guard (a fork, pages shared until written): $(rss_split "$(guard_of $local_pid)")"
  ;;
cpu)
  secs=${2:-600}
  "$bin" run --name cpu -- sleep $((secs + 60)) 2>/dev/null &
  pid=$!
  sleep "$secs"
  ticks=$(cpu_ticks $pid)
  hz=$(getconf CLK_TCK)
  echo "sidecar CPU time over $secs s of 30 s beats: $(awk -v t="$ticks" -v hz="$hz" 'BEGIN {printf "%.2f", t/hz}') s (user+system), RSS $(rss_kib $pid) KiB"
  ;;
throughput)
  log="$tmp/app.log"
  awk 'BEGIN { for (i = 1; i <= 1560000; i++) {
      if (i % 50 == 0) printf "2026-11-23T08:00:00Z ERROR job %d failed: upstream timed out after 30000 ms\n", i;
      else printf "2026-11-23T08:00:00Z info  job %d done in 12 ms queue=orders worker=roundtable\n", i } }' > "$log"
  size=$(stat -c %s "$log")
  run() { local t0 t1; t0=$(date +%s%N); "$@" > /dev/null; t1=$(date +%s%N); echo $(( (t1 - t0) / 1000000 )); }
  median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
  cat_ms=(); pipe_ms=(); side_ms=()
  for _ in 1 2 3 4 5 6 7 8 9; do
    cat_ms+=("$(run cat "$log")")
    pipe_ms+=("$(run sh -c 'cat "$1" | cat' sh "$log")")
    side_ms+=("$(HP_LOG=warn run "$bin" run --name tp --job-pattern 'done in' --error-pattern ' ERROR ' -- cat "$log")")
  done
  c=$(printf '%s\n' "${cat_ms[@]}" | median)
  p=$(printf '%s\n' "${pipe_ms[@]}" | median)
  s=$(printf '%s\n' "${side_ms[@]}" | median)
  mbs() { awk -v b="$size" -v m="$1" 'BEGIN {printf "%.0f", b/1e6/(m/1000)}'; }
  echo "log: $(awk -v b="$size" 'BEGIN {printf "%.0f", b/1e6}') MB, 1,560,000 lines; medians of 9 interleaved runs:"
  echo "  cat LOG > /dev/null                          $c ms  $(mbs "$c") MB/s"
  echo "  cat LOG | cat > /dev/null                    $p ms  $(mbs "$p") MB/s"
  echo "  heartbeat-sidecar run (2 patterns) -- cat LOG  $s ms  $(mbs "$s") MB/s"
  echo "  sidecar / (cat | cat) throughput: $(awk -v p="$p" -v s="$s" 'BEGIN {printf "%.2f", p/s}');  sidecar / plain cat: $(awk -v c="$c" -v s="$s" 'BEGIN {printf "%.2f", c/s}')"
  "$bin" status --json | python3 -c 'import json,sys; r=[x for x in json.load(sys.stdin) if x["worker_name"]=="tp"][0]; print("  counted: jobs", r["jobs_processed"], "errors", r["error_count"], "(expected 1528800 and 31200)")'
  ;;
*)
  echo "usage: $0 rss | cpu [secs] | throughput" >&2; exit 2 ;;
esac
