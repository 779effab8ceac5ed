-- hp-heartbeat: the worker status table, its rules and its health view.
--
-- Apply with `psql -v ON_ERROR_STOP=1 -f` or the Supabase CLI (copy into
-- supabase/migrations/). Idempotent: applying it again changes nothing, and
-- on a table made by the original seed it only adds what is missing.

create table if not exists public.hp_worker_status (
  worker_name text primary key
);

-- Columns one by one, so an existing (seed) table gains what it lacks.
alter table public.hp_worker_status
  add column if not exists status                     text        not null default 'unknown',
  add column if not exists last_heartbeat             timestamptz,
  add column if not exists jobs_processed             bigint      not null default 0,
  add column if not exists error_count                bigint      not null default 0,
  add column if not exists circuit_breaker_open       boolean     not null default false,
  add column if not exists metadata                   jsonb       not null default '{}'::jsonb,
  add column if not exists pid                        integer,
  add column if not exists hostname                   text,
  add column if not exists started_at                 timestamptz,
  add column if not exists uptime_seconds             bigint,
  add column if not exists memory_rss_bytes           bigint,
  add column if not exists cpu_percent                real,
  add column if not exists version                    text,
  add column if not exists reporter                   text,
  add column if not exists instance_id                uuid,
  add column if not exists consecutive_errors         bigint      not null default 0,
  add column if not exists last_error                 text,
  add column if not exists exit_code                  integer,
  add column if not exists exit_signal                integer,
  add column if not exists heartbeat_interval_seconds integer     not null default 30,
  -- The worker's own clock at its last beat, kept for diagnosis only:
  -- last_heartbeat is always the database's clock (see the trigger).
  add column if not exists client_heartbeat           timestamptz,
  add column if not exists updated_at                 timestamptz not null default now();

-- One row per worker, rewritten every 30 s: leave room in each page so the
-- update stays on the page (a HOT update, no index work). No index on any
-- column that changes per beat; the primary key is the only one.
alter table public.hp_worker_status set (fillfactor = 70);

comment on table public.hp_worker_status is
  'One row per worker, upserted by heartbeat-sdk / heartbeat-sidecar on every beat. See hp_worker_health for derived health.';

-- CHECK constraints turn bad input into a clear 400 (23514) from PostgREST.
-- Added NOT VALID, then validated: on an old table with rows that break a
-- rule the migration still applies (new writes are checked) and says which.
do $$
declare
  rule record;
begin
  for rule in
    select * from (values
      ('hp_worker_status_name_format',      $c$worker_name ~ '^[A-Za-z0-9._:-]{1,128}$'$c$),
      ('hp_worker_status_status_allowed',   $c$status in ('unknown', 'running', 'stopped', 'crashed')$c$),
      ('hp_worker_status_counters_nonneg',  $c$jobs_processed >= 0 and error_count >= 0 and consecutive_errors >= 0$c$),
      ('hp_worker_status_metadata_object',  $c$jsonb_typeof(metadata) = 'object' and octet_length(metadata::text) <= 8192$c$),
      ('hp_worker_status_last_error_len',   $c$octet_length(last_error) <= 2048$c$),
      ('hp_worker_status_text_lengths',     $c$octet_length(hostname) <= 255 and octet_length(version) <= 128 and octet_length(reporter) <= 128$c$),
      ('hp_worker_status_process_facts',    $c$pid > 0 and uptime_seconds >= 0 and memory_rss_bytes >= 0 and cpu_percent >= 0$c$),
      ('hp_worker_status_exit_signal',      $c$exit_signal between 1 and 64$c$),
      ('hp_worker_status_interval_range',   $c$heartbeat_interval_seconds between 1 and 86400$c$)
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

-- The database's clock decides freshness: a worker whose clock is wrong can
-- look neither fresh nor stale, whatever it sends as last_heartbeat (the seed
-- client sends one). The SDK sends its own time as client_heartbeat.
create or replace function public.hp_worker_status_stamp()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  new.last_heartbeat := pg_catalog.now();
  new.updated_at := pg_catalog.now();
  return new;
end
$$;

revoke all on function public.hp_worker_status_stamp() from public;

create or replace trigger hp_worker_status_stamp
  before insert or update on public.hp_worker_status
  for each row execute function public.hp_worker_status_stamp();

-- Health as readers derive it. The same rule is in heartbeat-sdk's
-- StatusRow::health (Rust); a test feeds both the same rows.
-- security_invoker: callers see only what their own grants and RLS allow.
-- Made only where it does not exist: a later migration
-- (20261201000001_hp_liveness.sql) extends it, and running this file again
-- must not take that back.
do $do$
begin
  if to_regclass('public.hp_worker_health') is null then
    execute $view$
create view public.hp_worker_health
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
    -- An open breaker is a crash whatever the status column says (seed
    -- clients report `running` with the breaker open).
    when w.status = 'running' and w.circuit_breaker_open then 'crashed'
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
  w.exit_signal
from public.hp_worker_status w
    $view$;
  end if;
end
$do$;

comment on view public.hp_worker_health is
  'hp_worker_status with derived health: running, stale (no beat for 2.5 intervals), stopped, crashed (or breaker open), unknown.';

-- Secure by default. Supabase no longer grants new tables to its API roles,
-- and older projects granted everything to all of them: say it explicitly.
alter table public.hp_worker_status enable row level security;

revoke all on table public.hp_worker_status from public, anon, authenticated;
revoke all on table public.hp_worker_health from public, anon, authenticated;

-- Workers report with the secret (service_role) key: it bypasses RLS, but
-- still needs table privileges.
grant select, insert, update, delete on table public.hp_worker_status to service_role;
grant select on table public.hp_worker_health to service_role;

-- Signed-in users (dashboards) read; nobody but service_role writes.
grant select on table public.hp_worker_status to authenticated;
grant select on table public.hp_worker_health to authenticated;

-- The table's policies are this migration's: a table made by the seed guide
-- may carry its "Allow all" policy (FOR ALL USING (true)), which would let any
-- role with a grant read and write every row. Policies not named hp_... are
-- dropped, each named in a NOTICE; name your own policies hp_local_... to keep them.
do $$
declare
  foreign_policy record;
begin
  for foreign_policy in
    select policyname from pg_policies
    where schemaname = 'public' and tablename = 'hp_worker_status'
      and policyname not like 'hp\_%'
  loop
    raise notice 'hp_worker_status: dropping policy "%" (not one of hp-heartbeat''s; name your own policies hp_local_... to keep them)', foreign_policy.policyname;
    execute format('drop policy %I on public.hp_worker_status', foreign_policy.policyname);
  end loop;
  if not exists (
    select 1 from pg_policies
    where schemaname = 'public' and tablename = 'hp_worker_status'
      and policyname = 'hp_worker_status_read_signed_in'
  ) then
    create policy hp_worker_status_read_signed_in
      on public.hp_worker_status
      for select
      to authenticated
      using (true);
  end if;
end
$$;
