#!/usr/bin/env bash
# The first minute: two workers report, `heartbeat-sidecar status` shows them
# running with their job counts; SIGTERM stops them, and status shows them
# stopped. No account needed: the rows go to a store of the demo's own,
# removed at the end. Exits non-zero, saying why, when anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
  echo "demo: FAILED: $*" >&2
  for log in "$demo_dir"/*.log; do
    [ -s "$log" ] && { echo "--- $(basename "$log")" >&2; tail -n 20 "$log" >&2; }
  done
  exit 1
}

echo "==> building the sidecar and the example worker (the first build takes a few minutes)"
cargo build -q -p heartbeat-sidecar --bin heartbeat-sidecar
cargo build -q -p heartbeat-sdk --example rust_worker
sidecar=target/debug/heartbeat-sidecar

demo_dir=$(mktemp -d)
pids=()
cleanup() {
  [ ${#pids[@]} -gt 0 ] && kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$demo_dir"
}
trap cleanup EXIT
# HP_STORE wins over any SUPABASE_URL in your environment: the demo never
# writes to your project.
export HP_STORE="$demo_dir/demo.db" HP_HEARTBEAT_INTERVAL_SECS=1

echo "==> starting a Rust worker (examples/rust_worker.rs) and a shell worker under the sidecar"
target/debug/examples/rust_worker 2>"$demo_dir/rust-worker.log" &
pids+=($!)
"$sidecar" run --name demo-shell-worker --job-pattern 'done$' --error-pattern '^ERROR' -- \
  sh -c 'i=0; while :; do i=$((i+1)); if [ $((i % 7)) = 0 ]; then echo "ERROR job $i failed"; else echo "job $i done"; fi; sleep 0.1; done' \
  >/dev/null 2>"$demo_dir/shell-worker.log" &
pids+=($!)

# Wait (at most 20 s) until both rows show jobs done and memory: real
# figures, not zeros.
reported=0
for _ in $(seq 1 200); do
  if "$sidecar" status --json >"$demo_dir/rows.json" 2>/dev/null; then
    jobs=$(grep -c '"jobs_processed": [1-9]' "$demo_dir/rows.json" || true)
    memory=$(grep -c '"memory_rss_bytes": [1-9]' "$demo_dir/rows.json" || true)
    reported=$((jobs < memory ? jobs : memory))
    [ "$reported" -ge 2 ] && break
  fi
  sleep 0.1
done
[ "$reported" -ge 2 ] || fail "the two workers did not report jobs and memory within 20 s"

echo "==> heartbeat-sidecar status"
"$sidecar" status || fail "status exited $? while both workers were running"

echo "==> stopping both with SIGTERM"
kill -TERM "${pids[@]}"
for pid in "${pids[@]}"; do
  wait "$pid" 2>/dev/null || true
done
pids=()

echo "==> heartbeat-sidecar status"
"$sidecar" status --json >"$demo_dir/rows.json" || fail "status exited $? after a clean stop"
[ "$(grep -c '"status": "stopped"' "$demo_dir/rows.json")" -eq 2 ] \
  || fail "both rows should say stopped: $(cat "$demo_dir/rows.json")"
"$sidecar" status
echo "==> done: the rows were in $HP_STORE, which is removed now"
