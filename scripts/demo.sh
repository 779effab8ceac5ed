#!/usr/bin/env bash
# The first minute: two workers report, `heartbeat-sidecar status` shows them
# running; SIGTERM stops them, and status shows them stopped. No account
# needed: without SUPABASE_URL rows go to the local store (HP_STORE).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "==> building (the first build takes a few minutes)"
cargo build -q -p heartbeat-sidecar -p heartbeat-sdk --example rust_worker
sidecar=target/debug/heartbeat-sidecar
export HP_HEARTBEAT_INTERVAL_SECS=${HP_HEARTBEAT_INTERVAL_SECS:-5}

echo "==> starting a Rust worker (examples/rust_worker.rs) and a shell worker under the sidecar"
target/debug/examples/rust_worker &
rust_pid=$!
"$sidecar" run --name demo-shell-worker --job-pattern 'done$' --error-pattern '^ERROR' -- \
  sh -c 'i=0; while :; do i=$((i+1)); if [ $((i % 7)) = 0 ]; then echo "ERROR job $i failed"; else echo "job $i done"; fi; sleep 0.3; done' \
  >/dev/null 2>&1 &
shell_pid=$!
trap 'kill $rust_pid $shell_pid 2>/dev/null || true' EXIT
sleep 3

echo "==> heartbeat-sidecar status"
"$sidecar" status || true

echo "==> stopping both with SIGTERM"
kill -TERM "$rust_pid" "$shell_pid"
wait "$rust_pid" "$shell_pid" 2>/dev/null || true
trap - EXIT

echo "==> heartbeat-sidecar status"
"$sidecar" status || true
