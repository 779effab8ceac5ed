-- hp-heartbeat: what happened. An append-only history of each worker's
-- transitions, written by the database itself: the status trigger records
-- started, stopped, crashed, vanished, breaker opened/closed, paused,
-- resumed, drained, restarted and reporting gaps as the rows change;
-- hp_sweep() records what no write says (a worker that went stale or hung,
-- and its recovery), once per transition however many sweeps run at once,
-- and applies the retention; hp_prune() removes workers gone for days. See
-- docs/status.md ("What happened").
--
-- Needs 20261201000001_hp_liveness.sql. Idempotent like it.

create table if not exists public.hp_worker_events (
  id          bigint generated always as identity primary key,
  at          timestamptz not null default now(),
  worker_name text not null,
  kind        text not null,
  from_state  text,
  to_state    text,
  detail      jsonb not null default '{}'::jsonb
);

create index if not exists hp_worker_events_worker_at on public.hp_worker_events (worker_name, at);
create index if not exists hp_worker_events_at on public.hp_worker_events (at);

comment on table public.hp_worker_events is
  'What happened to each worker, written by the database (hp_worker_status''s trigger and hp_sweep()); append-only.';

-- The health each worker was last swept at: a transition is recorded once.
create table if not exists public.hp_sweep_state (
  worker_name text primary key,
  health      text not null,
  since       timestamptz not null default now()
);

alter table public.hp_worker_events enable row level security;
alter table public.hp_sweep_state enable row level security;
revoke all on table public.hp_worker_events from public, anon, authenticated;
revoke all on table public.hp_sweep_state from public, anon, authenticated;
grant select, insert, delete on table public.hp_worker_events to service_role;
grant select on table public.hp_worker_events to authenticated;
grant select, insert, update, delete on table public.hp_sweep_state to service_role;

do $$
begin
  if not exists (select 1 from pg_policies where schemaname = 'public'
                 and tablename = 'hp_worker_events' and policyname = 'hp_events_read') then
    create policy hp_events_read on public.hp_worker_events for select to authenticated using (true);
  end if;
end
$$;

-- The status trigger's events. The rule is heartbeat-sdk's
-- model/liveness.rs `events()` for the local store; a test feeds both the
-- same writes.
create or replace function public.hp_worker_status_events()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  new_instance boolean := tg_op = 'INSERT' or new.instance_id is distinct from old.instance_id;
begin
  if tg_op = 'UPDATE' and new_instance and old.status = 'running'
     and coalesce(old.state, 'active') = 'active' then
    insert into public.hp_worker_events (worker_name, kind, from_state, to_state, detail)
    values (new.worker_name, 'vanished', 'running', null,
            jsonb_build_object('instance_id', old.instance_id, 'last_heartbeat', old.last_heartbeat));
  end if;
  if new_instance and new.status <> 'unknown' then
    insert into public.hp_worker_events (worker_name, kind, from_state, to_state, detail)
    values (new.worker_name, 'started', case when tg_op = 'UPDATE' then old.status end, new.status,
            jsonb_build_object('instance_id', new.instance_id, 'pid', new.pid,
                               'restarts', coalesce(new.restarts, 0)));
  end if;
  if new.status in ('stopped', 'crashed')
     and (tg_op = 'INSERT' or old.status is distinct from new.status or new_instance)
     and not (new.status = 'crashed' and coalesce(new.circuit_breaker_open, false)) then
    insert into public.hp_worker_events (worker_name, kind, from_state, to_state, detail)
    values (new.worker_name, new.status, case when tg_op = 'UPDATE' then old.status end, new.status,
            jsonb_strip_nulls(jsonb_build_object('exit_code', new.exit_code, 'exit_signal', new.exit_signal,
                                                 'error', new.last_error)));
  end if;
  if coalesce(new.circuit_breaker_open, false)
     is distinct from (tg_op = 'UPDATE' and coalesce(old.circuit_breaker_open, false)) then
    insert into public.hp_worker_events (worker_name, kind, from_state, to_state, detail)
    values (new.worker_name,
            case when coalesce(new.circuit_breaker_open, false) then 'breaker_opened' else 'breaker_closed' end,
            null, null,
            jsonb_strip_nulls(jsonb_build_object('consecutive_errors', new.consecutive_errors,
                                                 'error', new.last_error)));
  end if;
  if tg_op = 'UPDATE' and new.state is distinct from old.state and new.state is not null then
    insert into public.hp_worker_events (worker_name, kind, from_state, to_state, detail)
    select new.worker_name, k, old.state, new.state, '{}'::jsonb
    from (select case
            when new.state = 'paused' then 'paused'
            when new.state = 'draining' then 'drained'
            when new.state = 'restarting' then 'restarted'
            when new.state = 'active' and old.state = 'paused' then 'resumed'
          end as k) kinds
    where k is not null;
  end if;
  if tg_op = 'UPDATE' and new.gap_ended_at is distinct from old.gap_ended_at
     and new.gap_ended_at is not null and coalesce(new.missed_beats, 0) > 0 then
    insert into public.hp_worker_events (worker_name, kind, from_state, to_state, detail)
    values (new.worker_name, 'reporting_gap', null, null,
            jsonb_build_object('missed_beats', new.missed_beats,
                               'gap_started_at', new.gap_started_at, 'gap_ended_at', new.gap_ended_at));
  end if;
  return null;
end
$$;

revoke all on function public.hp_worker_status_events() from public, anon, authenticated, service_role;

-- Beats stay cheap: an update fires it only when something it records changed.
create or replace trigger hp_worker_status_events_update
  after update on public.hp_worker_status
  for each row
  when (old.instance_id is distinct from new.instance_id
        or old.status is distinct from new.status
        or old.circuit_breaker_open is distinct from new.circuit_breaker_open
        or old.state is distinct from new.state
        or old.gap_ended_at is distinct from new.gap_ended_at)
  execute function public.hp_worker_status_events();

create or replace trigger hp_worker_status_events_insert
  after insert on public.hp_worker_status
  for each row execute function public.hp_worker_status_events();

-- The sweep: health the rows cannot say by themselves. Each worker's swept
-- health is one row of hp_sweep_state; the upsert's row lock makes two
-- sweeps at once record each transition once. Returns the events recorded.
create or replace function public.hp_sweep(retain interval default interval '30 days')
returns setof public.hp_worker_events
language plpgsql
security definer
set search_path = ''
as $$
begin
  delete from public.hp_worker_events where at < pg_catalog.now() - retain;
  return query
  with current as (
    select h.worker_name, h.health from public.hp_worker_health h
  ),
  changed as (
    insert into public.hp_sweep_state as s (worker_name, health)
    select c.worker_name, c.health from current c
    on conflict (worker_name) do update
      set health = excluded.health, since = pg_catalog.now()
      where s.health is distinct from excluded.health
    returning s.worker_name, s.health
  ),
  previous as (
    select c.worker_name, c.health,
           (select ev.to_state from public.hp_worker_events ev
            where ev.worker_name = c.worker_name and ev.kind in ('stale', 'hung', 'recovered')
            order by ev.id desc limit 1) as was
    from changed c
  )
  insert into public.hp_worker_events (worker_name, kind, from_state, to_state, detail)
  select p.worker_name,
         case when p.health in ('stale', 'hung') then p.health else 'recovered' end,
         p.was, p.health, '{}'::jsonb
  from previous p
  where p.health in ('stale', 'hung')
     or (p.health = 'running' and p.was in ('stale', 'hung'))
  returning *;
  delete from public.hp_sweep_state s
  where not exists (select 1 from public.hp_worker_status w where w.worker_name = s.worker_name);
end
$$;

revoke all on function public.hp_sweep(interval) from public, anon, authenticated;
grant execute on function public.hp_sweep(interval) to service_role;

-- Ghosts: workers not seen for `gone_for` (renamed, scaled down, a host gone)
-- are removed with their control row and swept health, each recorded as a
-- `pruned` event. A pruned worker that comes back simply reappears. With
-- `dry_run` it only says which. Returns the workers and when they were last seen.
create or replace function public.hp_prune(gone_for interval, dry_run boolean default false)
returns table (worker_name text, last_seen timestamptz, status text)
language plpgsql
security definer
set search_path = ''
as $$
declare
  gone text[];
begin
  if gone_for < interval '1 hour' then
    raise exception 'hp_prune: gone_for % is under an hour: a worker that beats slowly would be removed', gone_for
      using errcode = '22023', hint = 'prune workers gone for days, e.g. interval ''7 days''';
  end if;
  select coalesce(array_agg(w.worker_name order by w.worker_name), '{}') into gone
  from public.hp_worker_status w
  where coalesce(w.last_heartbeat, w.updated_at) < pg_catalog.now() - gone_for;
  return query
    select w.worker_name, coalesce(w.last_heartbeat, w.updated_at), w.status
    from public.hp_worker_status w
    where w.worker_name = any(gone)
    order by w.worker_name;
  if dry_run then
    return;
  end if;
  insert into public.hp_worker_events (worker_name, kind, from_state, to_state, detail)
  select w.worker_name, 'pruned', w.status, null,
         jsonb_build_object('last_seen', coalesce(w.last_heartbeat, w.updated_at), 'gone_for', gone_for::text)
  from public.hp_worker_status w
  where w.worker_name = any(gone);
  if to_regclass('public.hp_worker_control') is not null then
    execute 'delete from public.hp_worker_control where worker_name = any($1)' using gone;
  end if;
  delete from public.hp_sweep_state s where s.worker_name = any(gone);
  -- Checked again: one that beat meanwhile stays.
  delete from public.hp_worker_status w
  where w.worker_name = any(gone)
    and coalesce(w.last_heartbeat, w.updated_at) < pg_catalog.now() - gone_for;
end
$$;

revoke all on function public.hp_prune(interval, boolean) from public, anon, authenticated;
grant execute on function public.hp_prune(interval, boolean) to service_role;
