#!/usr/bin/env bash
# Upserts per second into the migrated hp_worker_status against a bare table
# with only a primary key, in the same run, and the share of HOT updates.
#
#   scripts/bench-sql.sh [seconds-per-round] [rounds]      (default 20 s, 3 rounds)
#   scripts/bench-sql.sh poll [seconds-per-round] [rounds]
#
# Each transaction is what PostgREST runs for one beat: as authenticator,
# switch to service_role with set_config, then the merge-duplicates upsert of
# one SDK row for one of 10,000 workers. 4 clients, 2 threads. Rounds
# alternate migrated/bare; the medians are reported. Needs PostgreSQL's
# server binaries (apt-get install postgresql) and pgbench.
#
# `poll` instead alternates that upsert with the control poll every worker
# makes (default every 5 s): PostgREST's read for
#   GET /rest/v1/hp_worker_control?worker_name=eq.W&generation=gt.N&select=desired,generation,restart_seq,run_now_seq,drain_seq
# for one of 10,000 workers, each with a control row, nothing changed (the
# answer is empty, as almost always).
set -euo pipefail
mode=upsert
if [ "${1:-}" = poll ]; then mode=poll; shift; fi
secs=${1:-20}
rounds=${2:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -x "$bin/initdb" ] || { echo "PostgreSQL server binaries not found: apt-get install postgresql" >&2; exit 1; }
command -v pgbench >/dev/null || PATH="$bin:$PATH"

dir=$(mktemp -d /tmp/hp-bench-pg-XXXXXX)
as_pg=()
if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; as_pg=(runuser -u postgres --); fi
cleanup() { "${as_pg[@]}" "$bin/pg_ctl" -D "$dir/data" -m fast stop >/dev/null 2>&1 || true; rm -rf "$dir"; }
trap cleanup EXIT
"${as_pg[@]}" "$bin/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --locale=C >/dev/null
# Production-like durability: fsync on, default synchronous_commit.
"${as_pg[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
  -o "-c listen_addresses='' -k $dir -p 5432 -c shared_buffers=256MB" start >/dev/null
psql_() { psql -X -q -v ON_ERROR_STOP=1 -h "$dir" -p 5432 "$@"; }
psql_ -U postgres -d postgres -c "create database bench" >/dev/null
psql_ -U postgres -d bench -f "$root/sql/test/supabase_roles.sql" >/dev/null
for f in "$root"/sql/*.sql; do psql_ -U postgres -d bench -f "$f" >/dev/null; done
psql_ -U postgres -d bench >/dev/null <<'SQL'
-- Same columns and types, no CHECKs, trigger, RLS, view or fillfactor.
create table public.hp_bare (like public.hp_worker_status including defaults);
alter table public.hp_bare add primary key (worker_name);
grant select, insert, update on public.hp_bare to service_role;
SQL

# One SDK row (the shape heartbeat-sdk sends; see tests/sql.rs for the contract).
row='{"circuit_breaker_open":false,"client_heartbeat":"2026-11-23T08:00:00.123456Z","consecutive_errors":0,"cpu_percent":0.4,"error_count":3,"exit_code":null,"exit_signal":null,"heartbeat_interval_seconds":30,"hostname":"vps-1","instance_id":"6035a81d-7fb0-44d3-942b-dc51fdf3be62","jobs_processed":JOBS,"last_error":null,"memory_rss_bytes":12312576,"metadata":{"memory":{"rss":12312576},"pid":7549,"uptime":1234.5},"pid":7549,"reporter":"heartbeat-sdk/0.1.0","started_at":"2026-11-23T07:00:00.000001Z","status":"running","uptime_seconds":3600,"version":"1.0.0","worker_name":"WORKER"}'
cols='"circuit_breaker_open", "client_heartbeat", "consecutive_errors", "cpu_percent", "error_count", "exit_code", "exit_signal", "heartbeat_interval_seconds", "hostname", "instance_id", "jobs_processed", "last_error", "memory_rss_bytes", "metadata", "pid", "reporter", "started_at", "status", "uptime_seconds", "version", "worker_name"'
typed='"circuit_breaker_open" boolean, "client_heartbeat" timestamp with time zone, "consecutive_errors" bigint, "cpu_percent" real, "error_count" bigint, "exit_code" integer, "exit_signal" integer, "heartbeat_interval_seconds" integer, "hostname" text, "instance_id" uuid, "jobs_processed" bigint, "last_error" text, "memory_rss_bytes" bigint, "metadata" jsonb, "pid" integer, "reporter" text, "started_at" timestamp with time zone, "status" text, "uptime_seconds" bigint, "version" text, "worker_name" text'
sets=$(echo "$cols" | sed -E 's/"([a-z_]+)"/"\1" = EXCLUDED."\1"/g')
body=$(echo "$cols" | sed -E 's/"([a-z_]+)"/"pgrst_body"."\1"/g')
for table in hp_worker_status hp_bare; do
  cat > "$dir/$table.sql" <<SQL
\set n random(1, 10000)
BEGIN;
SELECT set_config('role', 'service_role', true), set_config('request.jwt.claims', '{"role":"service_role"}', true);
INSERT INTO "public"."$table"($cols) SELECT $body FROM (SELECT replace(replace('$row', 'WORKER', 'w' || :n), 'JOBS', (:n * 7)::text)::json AS json_data) pgrst_payload, LATERAL (SELECT CASE WHEN json_typeof(pgrst_payload.json_data) = 'array' THEN pgrst_payload.json_data ELSE json_build_array(pgrst_payload.json_data) END AS val) pgrst_uniform_json, LATERAL (SELECT $cols FROM json_to_recordset(pgrst_uniform_json.val) AS _($typed) ) pgrst_body ON CONFLICT("worker_name") DO UPDATE SET $sets RETURNING 1;
COMMIT;
SQL
done

# Seed every worker with a full-size row, as after its first beat, so the
# run measures steady state rather than 10,000 first inserts.
for table in hp_worker_status hp_bare; do
  psql_ -U postgres -d bench >/dev/null <<SQL
insert into public.$table ($cols) select $cols from generate_series(1, 10000) g,
  json_populate_record(null::public.$table, replace(replace('$row', 'WORKER', 'w' || g), 'JOBS', '0')::json) r;
vacuum analyze public.$table;
SQL
done

if [ "$mode" = poll ]; then
  # Every worker has a control row at generation 1, which it has seen.
  psql_ -U postgres -d bench >/dev/null <<'SQL'
insert into public.hp_worker_control (worker_name, generation, last_action, updated_by)
select 'w' || g, 1, 'resume', 'bench' from generate_series(1, 10000) g;
vacuum analyze public.hp_worker_control;
SQL
  # A GET runs read-only, as PostgREST starts it.
  cat > "$dir/poll.sql" <<'SQL'
\set n random(1, 10000)
BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY;
SELECT set_config('role', 'service_role', true), set_config('request.jwt.claims', '{"role":"service_role"}', true);
WITH pgrst_source AS ( SELECT "public"."hp_worker_control"."desired", "public"."hp_worker_control"."generation", "public"."hp_worker_control"."restart_seq", "public"."hp_worker_control"."run_now_seq", "public"."hp_worker_control"."drain_seq" FROM "public"."hp_worker_control" WHERE  "public"."hp_worker_control"."worker_name" = 'w' || :n AND  "public"."hp_worker_control"."generation" > '1'  ) SELECT null::bigint AS total_result_set, pg_catalog.count(_postgrest_t) AS page_total, coalesce(json_agg(_postgrest_t), '[]') AS body, nullif(current_setting('response.headers', true), '') AS response_headers, nullif(current_setting('response.status', true), '') AS response_status, '' AS response_inserted FROM ( SELECT * FROM pgrst_source ) _postgrest_t;
COMMIT;
SQL
  # The poll must answer nothing when nothing changed.
  got=$(sed -e '/^\\set n/d' -e 's/:n/42/' "$dir/poll.sql" | psql_ -U authenticator -d bench -At | sed -n 2p)
  [ "$got" = '|0|[]|||' ] || { echo "the poll answered $got, not an empty body" >&2; exit 1; }
  declare -A tps
  for r in $(seq 1 "$rounds"); do
    for kind in hp_worker_status poll; do
      t=$(pgbench -n -h "$dir" -p 5432 -U authenticator -c 4 -j 2 -T "$secs" -f "$dir/$kind.sql" bench 2>&1 \
          | sed -nE 's/^tps = ([0-9.]+) .*/\1/p')
      tps[$kind]="${tps[$kind]:-} $t"
      echo "round $r $kind: $t per second"
    done
  done
  median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
  u=$(echo "${tps[hp_worker_status]}" | median)
  p=$(echo "${tps[poll]}" | median)
  echo
  echo "median per second  upsert (beat): $u   poll: $p   poll/upsert: $(awk -v p="$p" -v u="$u" 'BEGIN {printf "%.2f", p/u}')"
  echo "PostgreSQL $("$bin/postgres" --version | awk '{print $3}'), $(nproc) cores, $secs s x $rounds rounds, 4 clients"
  exit 0
fi

declare -A tps
psql_ -U postgres -d bench -c "select pg_stat_reset()" >/dev/null
for r in $(seq 1 "$rounds"); do
  for table in hp_worker_status hp_bare; do
    t=$(pgbench -n -h "$dir" -p 5432 -U authenticator -c 4 -j 2 -T "$secs" -f "$dir/$table.sql" bench 2>&1 \
        | sed -nE 's/^tps = ([0-9.]+) .*/\1/p')
    tps[$table]="${tps[$table]:-} $t"
    echo "round $r $table: $t upserts/s"
  done
done
sleep 1
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
m=$(echo "${tps[hp_worker_status]}" | median)
b=$(echo "${tps[hp_bare]}" | median)
echo
echo "median upserts/s  migrated: $m   bare: $b   ratio: $(awk -v m="$m" -v b="$b" 'BEGIN {printf "%.2f", m/b}')"
psql_ -U postgres -d bench -At -c "select relname || ' HOT updates: ' || n_tup_hot_upd || ' of ' || n_tup_upd || ' (' || round(100.0 * n_tup_hot_upd / nullif(n_tup_upd, 0), 1) || '%)' from pg_stat_user_tables where relname in ('hp_worker_status', 'hp_bare') order by relname desc"
echo "PostgreSQL $("$bin/postgres" --version | awk '{print $3}'), $(nproc) cores, $secs s x $rounds rounds, 4 clients"
