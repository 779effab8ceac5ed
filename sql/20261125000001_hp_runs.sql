-- hp-heartbeat: runs. One cycle of a polling worker, one cron job, one
-- `heartbeat-sidecar once` command is a run; its record lives in the
-- worker's status row. See docs/sdk.md ("Runs").
--
-- Needs 20261123000001_hp_worker_status.sql. Idempotent like it. A table
-- without these columns still takes every beat: the SDK leaves the run
-- columns out (and says once to apply this file).

alter table public.hp_worker_status
  -- running, succeeded or failed: the latest run.
  add column if not exists run_state        text,
  add column if not exists run_started_at   timestamptz,
  -- When the latest finished run ended (a run in flight keeps the previous).
  add column if not exists run_finished_at  timestamptz,
  add column if not exists last_success_at  timestamptz,
  add column if not exists last_run_ms      bigint,
  -- Runs finished, and failed, since this instance started.
  add column if not exists runs_total       bigint,
  add column if not exists runs_failed      bigint,
  -- The latest run's summary or error, bounded.
  add column if not exists last_run_summary text,
  -- A run longer than this reads as hung.
  add column if not exists max_run_seconds  integer;

do $$
declare
  rule record;
begin
  for rule in
    select * from (values
      ('hp_worker_status_run_state_allowed', $c$run_state in ('running', 'succeeded', 'failed')$c$),
      ('hp_worker_status_run_counts',        $c$last_run_ms >= 0 and runs_total >= 0 and runs_failed >= 0 and runs_failed <= runs_total$c$),
      ('hp_worker_status_run_summary_len',   $c$octet_length(last_run_summary) <= 1024$c$),
      ('hp_worker_status_max_run',           $c$max_run_seconds between 1 and 604800$c$)
    ) as r(name, expr)
  loop
    if not exists (
      select 1 from pg_constraint
      where conrelid = 'public.hp_worker_status'::regclass and conname = rule.name
    ) then
      execute format('alter table public.hp_worker_status add constraint %I check (%s) not valid',
                     rule.name, rule.expr);
    end if;
    if exists (
      select 1 from pg_constraint
      where conrelid = 'public.hp_worker_status'::regclass and conname = rule.name and not convalidated
    ) then
      begin
        execute format('alter table public.hp_worker_status validate constraint %I', rule.name);
      exception when check_violation then
        raise warning 'hp_worker_status: existing rows break % (new writes are checked; fix the rows, then VALIDATE CONSTRAINT)', rule.name;
      end;
    end if;
  end loop;
end
$$;

-- The optional least-privilege reporter writes these columns too (that file
-- grants the same when it runs after this one).
do $$
begin
  if exists (select 1 from pg_roles where rolname = 'hp_reporter') then
    grant insert (run_state, run_started_at, run_finished_at, last_success_at, last_run_ms,
                  runs_total, runs_failed, last_run_summary, max_run_seconds),
          update (run_state, run_started_at, run_finished_at, last_success_at, last_run_ms,
                  runs_total, runs_failed, last_run_summary, max_run_seconds)
      on table public.hp_worker_status to hp_reporter;
  end if;
end
$$;
