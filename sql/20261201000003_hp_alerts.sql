-- hp-heartbeat: alerts. `heartbeat-sidecar alerts` posts new events of
-- hp_worker_events to webhooks; this is where each webhook's delivery
-- cursor lives, so an event is delivered at least once and, by watchers
-- that stay up, never twice: across restarts (the cursor is here, not in
-- the watcher) and with several watchers running (one holds a webhook's
-- cursor at a time, under a lease it renews; the others wait to take over).
-- See docs/alerts.md. At its end, hp_sweep() again, its stale and hung events
-- now saying since when.
--
-- Needs 20261201000002_hp_events.sql. Idempotent like it.

create table if not exists public.hp_alert_cursor (
  -- A digest of the webhook URL, never the URL, which for Slack and Discord
  -- is itself the secret.
  sink          text primary key check (length(sink) between 1 and 100),
  -- Every event up to this id was delivered (or was of a kind not sent).
  last_event_id bigint not null,
  holder        text check (length(holder) <= 200),
  -- The kinds the holder sends: a watcher waiting with other --on says so.
  kinds         text[] not null default '{}',
  lease_until   timestamptz,
  lease         interval not null default interval '2 minutes',
  delivered     bigint not null default 0,
  created_at    timestamptz not null default now(),
  updated_at    timestamptz not null default now()
);

-- A store made by a pre-release of this file lacks it.
alter table public.hp_alert_cursor add column if not exists kinds text[] not null default '{}';

comment on table public.hp_alert_cursor is
  'Where each alerts webhook is in hp_worker_events, and which watcher holds it: written by hp_alert_claim() and hp_alert_ack().';

alter table public.hp_alert_cursor enable row level security;
revoke all on table public.hp_alert_cursor from public, anon, authenticated;
grant select, insert, update, delete on table public.hp_alert_cursor to service_role;

-- Takes (or renews) the cursor of `sink` for `holder` and returns the events
-- after it of `kinds`, oldest first, at most `max_events`:
--   {"held": true, "holder": ..., "kinds": [...], "lease_until": ..., "events": [...], "through": N}
-- `through`: the cursor may move there once the events are delivered (past
-- the events of other kinds too). While another watcher's lease runs:
--   {"held": false, "holder": <theirs>, "kinds": <theirs>, "lease_until": ..., "events": []}.
-- A sink seen for the first time starts at the newest event: only what
-- happens from now on is sent. Sinks no watcher claimed for 30 days go.
create or replace function public.hp_alert_claim(
  sink text,
  holder text,
  kinds text[],
  lease interval default interval '2 minutes',
  max_events integer default 100
)
returns jsonb
language plpgsql
security definer
set search_path = ''
set lock_timeout = '200ms'
as $$
declare
  cur public.hp_alert_cursor;
  batch jsonb;
  newest bigint;
begin
  if hp_alert_claim.sink is null or length(hp_alert_claim.sink) not between 1 and 100
     or hp_alert_claim.holder is null or length(hp_alert_claim.holder) not between 1 and 200 then
    raise exception 'hp_alert_claim: sink (1-100 characters) and holder (1-200) are required'
      using errcode = '22023';
  end if;
  if coalesce(cardinality(hp_alert_claim.kinds), 0) = 0 then
    -- With none, nothing would be sent and the cursor would pass everything.
    raise exception 'hp_alert_claim: no kinds: name at least one' using errcode = '22023';
  end if;
  if hp_alert_claim.lease < interval '5 seconds' or hp_alert_claim.max_events not between 1 and 1000 then
    raise exception 'hp_alert_claim: lease % under 5 s or max_events % outside 1-1000',
      hp_alert_claim.lease, hp_alert_claim.max_events using errcode = '22023';
  end if;
  -- Ids are taken in order but committed in any order. Once this lock is
  -- held every transaction that took an id has ended (an insert holds ROW
  -- EXCLUSIVE until it commits), so no event can appear below the cursor
  -- after it moved past. Writers queue behind a claim that waits for it, so
  -- it waits at most lock_timeout (set below): then the claim fails
  -- (55P03) and the watcher tries again next round.
  lock table public.hp_worker_events in share mode;
  select coalesce(max(e.id), 0) into newest from public.hp_worker_events e;
  -- A webhook no watcher has claimed for 30 days (its URL changed, or it was
  -- removed) is forgotten, as events are after 30 days; should it come back,
  -- it starts at the newest event (a month of old alerts helps no one). A
  -- watcher renews its own every round, so a live one is never caught.
  delete from public.hp_alert_cursor c
   where c.updated_at < pg_catalog.now() - interval '30 days'
     and (c.lease_until is null or c.lease_until < pg_catalog.now());
  insert into public.hp_alert_cursor as c (sink, last_event_id, lease)
  values (hp_alert_claim.sink, newest, hp_alert_claim.lease)
  on conflict on constraint hp_alert_cursor_pkey do nothing;
  select * into cur from public.hp_alert_cursor c where c.sink = hp_alert_claim.sink for update;
  if cur.holder is not null and cur.holder <> hp_alert_claim.holder
     and cur.lease_until > pg_catalog.now() then
    return jsonb_build_object('held', false, 'holder', cur.holder, 'kinds', to_jsonb(cur.kinds),
                              'lease_until', cur.lease_until, 'events', '[]'::jsonb,
                              'through', cur.last_event_id);
  end if;
  update public.hp_alert_cursor c
     set holder = hp_alert_claim.holder, kinds = hp_alert_claim.kinds,
         lease_until = pg_catalog.now() + hp_alert_claim.lease,
         lease = hp_alert_claim.lease, updated_at = pg_catalog.now()
   where c.sink = hp_alert_claim.sink
  returning * into cur;
  select coalesce(jsonb_agg(to_jsonb(e) order by e.id), '[]'::jsonb) into batch
  from (select * from public.hp_worker_events e
        where e.id > cur.last_event_id and e.kind = any(hp_alert_claim.kinds)
        order by e.id limit hp_alert_claim.max_events) e;
  return jsonb_build_object(
    'held', true, 'holder', cur.holder, 'kinds', to_jsonb(cur.kinds),
    'lease_until', cur.lease_until, 'events', batch,
    'through', case when jsonb_array_length(batch) = hp_alert_claim.max_events
                    then (batch -> -1 ->> 'id')::bigint
                    else greatest(cur.last_event_id, newest) end);
end
$$;

-- The events up to `through` were delivered (`delivered` of them sent): the
-- cursor moves there and the lease is renewed. False when `holder` no longer
-- holds the sink (its lease ran out and another watcher took it): stop.
create or replace function public.hp_alert_ack(sink text, holder text, through bigint, delivered integer default 0)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
begin
  update public.hp_alert_cursor c
     set last_event_id = greatest(c.last_event_id, hp_alert_ack.through),
         delivered = c.delivered + greatest(hp_alert_ack.delivered, 0),
         lease_until = pg_catalog.now() + c.lease, updated_at = pg_catalog.now()
   where c.sink = hp_alert_ack.sink and c.holder = hp_alert_ack.holder;
  return found;
end
$$;

-- A watcher that stops lets go at once: another takes over without waiting
-- for the lease.
create or replace function public.hp_alert_release(sink text, holder text)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
begin
  update public.hp_alert_cursor c
     set holder = null, lease_until = null, updated_at = pg_catalog.now()
   where c.sink = hp_alert_release.sink and c.holder = hp_alert_release.holder;
  return found;
end
$$;

revoke all on function public.hp_alert_claim(text, text, text[], interval, integer) from public, anon, authenticated;
revoke all on function public.hp_alert_ack(text, text, bigint, integer) from public, anon, authenticated;
revoke all on function public.hp_alert_release(text, text) from public, anon, authenticated;
grant execute on function public.hp_alert_claim(text, text, text[], interval, integer) to service_role;
grant execute on function public.hp_alert_ack(text, text, bigint, integer) to service_role;
grant execute on function public.hp_alert_release(text, text) to service_role;

-- The sweep of 20261201000002_hp_events.sql, whose stale and hung events now
-- say since when (the alerts say "last beat 10m before"); the rest is as it
-- was. Each worker's swept health is one row of hp_sweep_state; the upsert's
-- row lock makes two sweeps at once record each transition once. Returns the
-- events recorded.
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
  -- Since when: the last beat for stale; for hung the last progress and the
  -- run's start, on the database's clock (the worker's corrected by
  -- last_heartbeat - client_heartbeat, as the view does); alerts say how long.
  insert into public.hp_worker_events (worker_name, kind, from_state, to_state, detail)
  select p.worker_name,
         case when p.health in ('stale', 'hung') then p.health else 'recovered' end,
         p.was, p.health,
         case p.health
           when 'stale' then pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object('last_heartbeat', w.last_heartbeat))
           when 'hung' then pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
             'last_progress_at', w.last_progress_at + (w.last_heartbeat - coalesce(w.client_heartbeat, w.last_heartbeat)),
             'run_started_at', case when w.run_state = 'running'
                                    then w.run_started_at + (w.last_heartbeat - coalesce(w.client_heartbeat, w.last_heartbeat)) end))
           else '{}'::jsonb
         end
  from previous p
  left join public.hp_worker_status w on w.worker_name = p.worker_name
  where p.health in ('stale', 'hung')
     or (p.health = 'running' and p.was in ('stale', 'hung'))
  returning *;
  delete from public.hp_sweep_state s
  where not exists (select 1 from public.hp_worker_status w where w.worker_name = s.worker_name);
end
$$;

revoke all on function public.hp_sweep(interval) from public, anon, authenticated;
grant execute on function public.hp_sweep(interval) to service_role;
