-- Optional: a least-privilege role for workers, instead of the secret key.
--
-- A worker gets a JWT signed with the project's JWT secret whose claims are
--   {"role": "hp_reporter", "worker_name": "<its name>", "exp": ...}
-- and may then insert, update and read only the row of that name, and only
-- the columns a reporter writes, and read only its own control row. It
-- cannot read other workers or delete.

do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'hp_reporter') then
    create role hp_reporter nologin noinherit;
  end if;
end
$$;

-- PostgREST's login role switches to the JWT's role.
grant hp_reporter to authenticator;
grant usage on schema public to hp_reporter;

revoke all on table public.hp_worker_status from hp_reporter;
grant select on table public.hp_worker_status to hp_reporter;
grant insert (
  worker_name, status, last_heartbeat, client_heartbeat, jobs_processed, error_count,
  circuit_breaker_open, metadata, pid, hostname, started_at, uptime_seconds,
  memory_rss_bytes, cpu_percent, version, reporter, instance_id,
  consecutive_errors, last_error, exit_code, exit_signal,
  heartbeat_interval_seconds
), update (
  worker_name, status, last_heartbeat, client_heartbeat, jobs_processed, error_count,
  circuit_breaker_open, metadata, pid, hostname, started_at, uptime_seconds,
  memory_rss_bytes, cpu_percent, version, reporter, instance_id,
  consecutive_errors, last_error, exit_code, exit_signal,
  heartbeat_interval_seconds
) on table public.hp_worker_status to hp_reporter;

-- Its own row only. SELECT is needed too: an upsert reads the row it updates.
do $$
declare
  own text := $p$worker_name = (select auth.jwt() ->> 'worker_name')$p$;
begin
  if not exists (select 1 from pg_policies where schemaname = 'public'
                 and tablename = 'hp_worker_status' and policyname = 'hp_reporter_read_own') then
    execute format('create policy hp_reporter_read_own on public.hp_worker_status for select to hp_reporter using (%s)', own);
  end if;
  if not exists (select 1 from pg_policies where schemaname = 'public'
                 and tablename = 'hp_worker_status' and policyname = 'hp_reporter_insert_own') then
    execute format('create policy hp_reporter_insert_own on public.hp_worker_status for insert to hp_reporter with check (%s)', own);
  end if;
  if not exists (select 1 from pg_policies where schemaname = 'public'
                 and tablename = 'hp_worker_status' and policyname = 'hp_reporter_update_own') then
    execute format('create policy hp_reporter_update_own on public.hp_worker_status for update to hp_reporter using (%1$s) with check (%1$s)', own);
  end if;
end
$$;

-- Control (sql/20261124000001_hp_control.sql): the reporter also writes the
-- columns a worker reports about control, and reads its own control row
-- (the poll). Skipped until that migration has run; it grants the same when
-- it finds this role, so either order works.
do $$
begin
  if exists (select 1 from pg_attribute where attrelid = 'public.hp_worker_status'::regclass
             and attname = 'control_generation' and not attisdropped) then
    grant insert (pool, state, control_generation, controls),
          update (pool, state, control_generation, controls)
      on table public.hp_worker_status to hp_reporter;
  end if;
  if to_regclass('public.hp_worker_control') is not null then
    grant select on table public.hp_worker_control to hp_reporter;
    if not exists (select 1 from pg_policies where schemaname = 'public'
                   and tablename = 'hp_worker_control' and policyname = 'hp_reporter_read_own_control') then
      create policy hp_reporter_read_own_control on public.hp_worker_control
        for select to hp_reporter
        using (worker_name = (select auth.jwt() ->> 'worker_name'));
    end if;
  end if;
end
$$;

-- Runs (sql/20261125000001_hp_runs.sql): the same, for the run columns.
do $$
begin
  if exists (select 1 from pg_attribute where attrelid = 'public.hp_worker_status'::regclass
             and attname = 'runs_total' and not attisdropped) then
    grant insert (run_state, run_started_at, run_finished_at, last_success_at, last_run_ms,
                  runs_total, runs_failed, last_run_summary, max_run_seconds),
          update (run_state, run_started_at, run_finished_at, last_success_at, last_run_ms,
                  runs_total, runs_failed, last_run_summary, max_run_seconds)
      on table public.hp_worker_status to hp_reporter;
  end if;
end
$$;

-- Liveness (sql/20261201000001_hp_liveness.sql): the worker's own liveness
-- columns, never the ones the database counts.
do $$
begin
  if exists (select 1 from pg_attribute where attrelid = 'public.hp_worker_status'::regclass
             and attname = 'watchdog_seconds' and not attisdropped) then
    grant insert (last_progress_at, watchdog_seconds, missed_beats, gap_started_at, gap_ended_at),
          update (last_progress_at, watchdog_seconds, missed_beats, gap_started_at, gap_ended_at)
      on table public.hp_worker_status to hp_reporter;
  end if;
end
$$;
