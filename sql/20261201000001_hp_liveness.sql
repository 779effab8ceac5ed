-- hp-heartbeat: the truth about liveness. Hung (a run past its max_run, or no
-- progress for the watchdog period), crash loops (restarts and crashes
-- counted by the database itself, the previous instance's end kept) and
-- reporting gaps (beats a worker could not deliver, told apart from death).
-- See docs/status.md ("Health").
--
-- Needs 20261123000001_hp_worker_status.sql (and reads the run columns of
-- 20261125000001_hp_runs.sql, which it adds if missing). Idempotent like
-- them. A table without these columns still takes every beat: the SDK
-- leaves its liveness columns out (and says once to apply this file).

alter table public.hp_worker_status
  -- Read by the rules below; the control and runs migrations own them (and
  -- their CHECKs), whichever order the files run in.
  add column if not exists state            text,
  add column if not exists run_state        text,
  add column if not exists run_started_at   timestamptz,
  add column if not exists max_run_seconds  integer,
  -- Written by the worker (its own clock; readers correct it by
  -- last_heartbeat - client_heartbeat).
  add column if not exists last_progress_at timestamptz,
  add column if not exists watchdog_seconds integer,
  -- Beats not delivered before this one, and that gap's bounds: sent by the
  -- beat that got through, then left as they are until the next gap.
  add column if not exists missed_beats     bigint,
  add column if not exists gap_started_at   timestamptz,
  add column if not exists gap_ended_at     timestamptz,
  -- Written by the database (the trigger below), never by a client: new
  -- instances under this name, the last three crashes, and how the previous
  -- instance ended.
  add column if not exists restarts         bigint not null default 0,
  add column if not exists recent_crashes   timestamptz[],
  add column if not exists last_exit_at     timestamptz,
  add column if not exists last_exit_status text,
  add column if not exists last_exit_code   integer,
  add column if not exists last_exit_signal integer,
  add column if not exists last_exit_error  text;

do $$
declare
  rule record;
begin
  for rule in
    select * from (values
      ('hp_worker_status_watchdog_range', $c$watchdog_seconds between 1 and 604800$c$),
      ('hp_worker_status_missed_beats',   $c$missed_beats >= 0$c$)
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

-- Restarts and crashes are the database's count: a worker that crashes
-- every second cannot hide it by writing a fresh row each time. The same
-- rule is in heartbeat-sdk's model/liveness.rs (the local store); a test
-- feeds both the same writes.
create or replace function public.hp_worker_status_liveness()
returns trigger
language plpgsql
set search_path = ''
as $$
declare
  crashes timestamptz[] := coalesce(old.recent_crashes, '{}');
  ended boolean := old.status in ('stopped', 'crashed');
  -- A new instance: both ids known and different (a seed client sends none).
  new_instance boolean := new.instance_id is distinct from old.instance_id
                          and new.instance_id is not null and old.instance_id is not null;
begin
  -- Whatever a client sent for these, the database's values stand.
  new.restarts := coalesce(old.restarts, 0);
  new.last_exit_at := old.last_exit_at;
  new.last_exit_status := old.last_exit_status;
  new.last_exit_code := old.last_exit_code;
  new.last_exit_signal := old.last_exit_signal;
  new.last_exit_error := old.last_exit_error;
  if new_instance then
    new.restarts := coalesce(old.restarts, 0) + 1;
    new.last_exit_at := case when ended then old.updated_at else old.last_heartbeat end;
    new.last_exit_status := case when ended then old.status else 'vanished' end;
    new.last_exit_code := case when ended then old.exit_code end;
    new.last_exit_signal := case when ended then old.exit_signal end;
    new.last_exit_error := case
      when old.status = 'crashed' then old.last_error
      when not ended then 'ended without a final row (killed by SIGKILL or the OOM killer, or its host went down)'
    end;
    -- An instance that vanished while it worked crashed; one that was
    -- paused, draining or restarting was ended on purpose.
    if not ended and coalesce(old.state, 'active') = 'active' and old.last_heartbeat is not null then
      crashes := crashes || old.last_heartbeat;
    end if;
    -- It ended crashed with its breaker open (its final row kept the
    -- breaker): a crash the final row could not say.
    if old.status = 'crashed' and coalesce(old.circuit_breaker_open, false)
       and old.updated_at is not null then
      crashes := crashes || old.updated_at;
    end if;
  end if;
  -- A final crashed row (an open breaker also says crashed, but the worker lives).
  if new.status = 'crashed' and not coalesce(new.circuit_breaker_open, false)
     and (old.status is distinct from 'crashed' or new_instance) then
    crashes := crashes || pg_catalog.now();
  end if;
  new.recent_crashes := case when cardinality(crashes) = 0 then old.recent_crashes
                             else crashes[greatest(1, cardinality(crashes) - 2):] end;
  return new;
end
$$;

revoke all on function public.hp_worker_status_liveness() from public, anon, authenticated, service_role;

-- Beats stay cheap: it fires only when the instance or the status changes
-- (a beat costs two comparisons). The SDK never sends the database's columns
-- and the hp_reporter role may not write them (sql/optional); the secret key
-- can write anything, here as anywhere.
create or replace trigger hp_worker_status_liveness
  before update on public.hp_worker_status
  for each row
  when (old.instance_id is distinct from new.instance_id
        or old.status is distinct from new.status)
  execute function public.hp_worker_status_liveness();

-- A first row that is already a crash counts it.
create or replace function public.hp_worker_status_liveness_insert()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  new.recent_crashes := array[pg_catalog.now()];
  return new;
end
$$;

revoke all on function public.hp_worker_status_liveness_insert() from public, anon, authenticated, service_role;

create or replace trigger hp_worker_status_liveness_insert
  before insert on public.hp_worker_status
  for each row
  when (new.status = 'crashed' and not coalesce(new.circuit_breaker_open, false))
  execute function public.hp_worker_status_liveness_insert();

-- Health gains hung and flapping. Same leading columns as the first
-- migration's view (a view may only gain columns at the end), the rule in
-- heartbeat-sdk's StatusRow::health; a test feeds both the same rows.
--   flapping: three crashes within ten minutes, until ten minutes without one;
--   hung: running and beating, but a run has lasted past max_run_seconds, or,
--         active and not between runs, no progress for watchdog_seconds (the
--         worker's clock corrected by last_heartbeat - client_heartbeat).
create or replace view public.hp_worker_health
with (security_invoker = true)
as
select
  w.worker_name,
  case
    when w.status = 'running' and w.last_heartbeat is null then 'unknown'
    when w.status = 'running'
         and now() - w.last_heartbeat
             > make_interval(secs => 2.5 * coalesce(nullif(w.heartbeat_interval_seconds, 0), 30))
      then 'stale'
    when w.status in ('running', 'crashed')
         and cardinality(w.recent_crashes) >= 3
         and w.recent_crashes[cardinality(w.recent_crashes)]
             - w.recent_crashes[cardinality(w.recent_crashes) - 2] <= interval '10 minutes'
         and now() - w.recent_crashes[cardinality(w.recent_crashes)] < interval '10 minutes'
      then 'flapping'
    when w.status = 'running' and w.circuit_breaker_open then 'crashed'
    when w.status = 'running'
         and ((w.run_state = 'running' and w.max_run_seconds > 0
               and now() - (w.run_started_at + (w.last_heartbeat - coalesce(w.client_heartbeat, w.last_heartbeat)))
                   > make_interval(secs => w.max_run_seconds))
              -- The watchdog is for a worker meant to be working: not one
              -- paused or draining, nor one between runs.
              or (w.watchdog_seconds > 0
                  and coalesce(w.state, 'active') = 'active'
                  and coalesce(w.run_state, 'running') = 'running'
                  and now() - (w.last_progress_at + (w.last_heartbeat - coalesce(w.client_heartbeat, w.last_heartbeat)))
                      > make_interval(secs => w.watchdog_seconds)))
      then 'hung'
    when w.status in ('running', 'stopped', 'crashed') then w.status
    else 'unknown'
  end as health,
  extract(epoch from now() - w.last_heartbeat)::double precision as seconds_since_heartbeat,
  w.status,
  w.last_heartbeat,
  w.heartbeat_interval_seconds,
  w.jobs_processed,
  w.error_count,
  w.consecutive_errors,
  w.circuit_breaker_open,
  w.last_error,
  w.pid,
  w.hostname,
  w.memory_rss_bytes,
  w.uptime_seconds,
  w.exit_code,
  w.exit_signal,
  w.restarts,
  w.last_exit_at,
  w.last_exit_status,
  w.last_progress_at,
  w.watchdog_seconds,
  w.missed_beats,
  w.gap_started_at,
  w.gap_ended_at
from public.hp_worker_status w;

comment on view public.hp_worker_health is
  'hp_worker_status with derived health: running, stale (no beat for 2.5 intervals), flapping (3 crashes in 10 min), hung (run past max_run or no progress for the watchdog), stopped, crashed (or breaker open), unknown.';

revoke all on table public.hp_worker_health from public, anon, authenticated;
grant select on table public.hp_worker_health to service_role, authenticated;

-- The optional least-privilege reporter writes the worker's liveness
-- columns (never the database's).
do $$
begin
  if exists (select 1 from pg_roles where rolname = 'hp_reporter') then
    grant insert (last_progress_at, watchdog_seconds, missed_beats, gap_started_at, gap_ended_at),
          update (last_progress_at, watchdog_seconds, missed_beats, gap_started_at, gap_ended_at)
      on table public.hp_worker_status to hp_reporter;
  end if;
end
$$;
