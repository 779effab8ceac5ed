#!/usr/bin/env bash
# The alerts watcher's costs, in one run:
#   1. hp_sweep() over 10,000 workers on PostgreSQL (half of them silent): the
#      first sweep (10,000 swept-health rows, 5,000 stale events), then the
#      steady sweep every round makes (nothing changed), median of 10;
#   2. the same on the local store (SQLite), through `heartbeat-sidecar
#      events --since 1s`, which sweeps then reads: first, then median of 10;
#   3. the watcher's memory (VmRSS, VmHWM) started, then after delivering
#      1,000 events to a local HTTP receiver, then after a minute idle.
#
#   scripts/bench-alerts.sh
#
# Builds the release sidecar. Needs PostgreSQL's server binaries (apt-get
# install postgresql) and python3 (the receiver, the local store's seed).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release -q -p heartbeat-sidecar --manifest-path "$root/Cargo.toml"
sidecar="$root/target/release/heartbeat-sidecar"
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -x "$bin/initdb" ] || { echo "PostgreSQL server binaries not found: apt-get install postgresql" >&2; exit 1; }

dir=$(mktemp -d /tmp/hp-bench-alerts-XXXXXX)
chmod 755 "$dir"
as_pg=()
if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; as_pg=(runuser -u postgres --); fi
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  "${as_pg[@]}" "$bin/pg_ctl" -D "$dir/data" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT

echo "== 1. hp_sweep() over 10,000 workers, PostgreSQL $("$bin/postgres" --version | awk '{print $3}')"
"${as_pg[@]}" "$bin/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --locale=C >/dev/null
"${as_pg[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
  -o "-c listen_addresses='' -k $dir -p 5432 -c shared_buffers=256MB" start >/dev/null
psql_() { PGOPTIONS='-c client_min_messages=warning' psql -X -q -A -t -v ON_ERROR_STOP=1 -h "$dir" -p 5432 -U postgres "$@"; }
psql_ -d postgres -c "create database bench" >/dev/null
psql_ -d bench -f "$root/sql/test/supabase_roles.sql" >/dev/null
for f in "$root"/sql/*.sql; do psql_ -d bench -f "$f" >/dev/null; done
psql_ -d bench <<'SQL'
insert into public.hp_worker_status (worker_name, instance_id, status, heartbeat_interval_seconds)
select 'w' || g, gen_random_uuid(), 'running', 30 from generate_series(1, 10000) g;
set session_replication_role = replica;
update public.hp_worker_status set last_heartbeat = now() - interval '10 minutes' where worker_name like '%5' or worker_name like '%0' or worker_name like '%2' or worker_name like '%4' or worker_name like '%6';
set session_replication_role = origin;
vacuum analyze;
create function pg_temp.sweep_ms() returns numeric language plpgsql as $$
declare t0 timestamptz := clock_timestamp();
begin
  perform count(*) from public.hp_sweep();
  return round(extract(epoch from clock_timestamp() - t0)::numeric * 1000, 1);
end $$;
select 'first sweep: ' || pg_temp.sweep_ms() || ' ms';
select 'it recorded ' || count(*) || ' stale events' from public.hp_worker_events where kind = 'stale';
select 'steady sweep, median of 10: '
       || percentile_cont(0.5) within group (order by ms) || ' ms (min ' || min(ms) || ', max ' || max(ms) || ')'
from (select pg_temp.sweep_ms() as ms from generate_series(1, 10)) s;
SQL

echo "== 2. the sweep over 10,000 workers, local store (heartbeat-sidecar events --since 1s)"
db="$dir/heartbeat.db"
HP_STORE="$db" HP_LOG=warn "$sidecar" once --name seed -- true >/dev/null
python3 - "$db" <<'PY'
import sqlite3, sys, datetime
db = sqlite3.connect(sys.argv[1])
now = datetime.datetime.now(datetime.timezone.utc)
def stamp(t): return t.strftime('%Y-%m-%dT%H:%M:%S.%fZ')
rows = []
for g in range(1, 10001):
    beat = now - datetime.timedelta(minutes=10) if g % 2 == 0 else now
    rows.append(('w%d' % g, 'running', stamp(beat), stamp(beat)))
db.executemany("insert into hp_worker_status (worker_name, status, last_heartbeat, updated_at, heartbeat_interval_seconds) values (?, ?, ?, ?, 30)", rows)
db.execute("delete from hp_worker_status where worker_name = 'seed'")
db.commit()
PY
ms() { local t0 t1; t0=$(date +%s%N); "$@" >/dev/null; t1=$(date +%s%N); echo $(( (t1 - t0) / 100000 )) | sed -E 's/(.)$/.\1/'; }
echo "first: $(HP_STORE="$db" ms "$sidecar" events --since 1s) ms"
steady=()
for _ in $(seq 10); do steady+=("$(HP_STORE="$db" ms "$sidecar" events --since 1s)"); done
printf '%s\n' "${steady[@]}" | sort -n | awk '{a[NR]=$1} END {printf "steady, median of 10: %.1f ms (min %s, max %s)\n", (a[5]+a[6])/2, a[1], a[NR]}'

echo "== 3. the watcher's memory"
python3 - "$dir/port" <<'PY' &
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get('content-length', 0)))
        self.send_response(200); self.send_header('content-length', '0'); self.end_headers()
    def log_message(self, *a): pass
s = http.server.ThreadingHTTPServer(('127.0.0.1', 0), H)
open(sys.argv[1], 'w').write(str(s.server_address[1]))
s.serve_forever()
PY
pids+=($!)
for _ in $(seq 100); do [ -s "$dir/port" ] && break; sleep 0.1; done
mem() { awk '/^VmRSS|^VmHWM/ {printf "%s %d KiB  ", $1, $2}' "/proc/$1/status"; echo; }
store2="$dir/alerts.db"
HP_STORE="$store2" HP_LOG=warn "$sidecar" once --name seed -- true >/dev/null
HP_STORE="$store2" HP_LOG=warn HP_ALERT_WEBHOOKS="http://127.0.0.1:$(cat "$dir/port")/hook" \
  "$sidecar" alerts --every 1s 2>"$dir/alerts.log" &
pids+=($!)
watcher=$!
until python3 -c "import sqlite3,sys; sys.exit(0 if sqlite3.connect('$store2').execute('select count(*) from hp_alert_cursor where holder is not null').fetchone()[0] else 1)" 2>/dev/null; do sleep 0.2; done
echo "started: $(mem $watcher)"
python3 - "$store2" <<'PY'
import sqlite3, sys, datetime, json
db = sqlite3.connect(sys.argv[1])
at = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.%fZ')
detail = json.dumps({"exit_code": 1, "error": "Error: " + "x" * 400})
db.executemany("insert into hp_worker_events (at, worker_name, kind, from_state, to_state, detail) values (?, ?, 'crashed', 'running', 'crashed', ?)",
               [(at, 'w%d' % g, detail) for g in range(1000)])
db.commit()
PY
t0=$(date +%s%N)
until [ "$(python3 -c "import sqlite3; print(sqlite3.connect('$store2').execute('select delivered from hp_alert_cursor').fetchone()[0])")" = 1000 ]; do sleep 0.2; done
t1=$(date +%s%N)
echo "1,000 events delivered in $(( (t1 - t0) / 1000000 )) ms: $(mem $watcher)"
sleep 60
echo "a minute idle after: $(mem $watcher)"
