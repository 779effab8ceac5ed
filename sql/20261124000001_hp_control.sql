-- hp-heartbeat: control. What operators want (hp_worker_control), pool
-- budgets (hp_pool), an insert-only audit log, rollouts, and the functions
-- that are the only way to change them. See docs/control.md.
--
-- Needs 20261123000001_hp_worker_status.sql. Idempotent like it: applying it
-- again changes nothing, and rows already there are kept. Defines nothing
-- the first file owns; it adds columns and triggers of its own.

-- ---------------------------------------------------------------------------
-- The worker's side, in its status row.

alter table public.hp_worker_status
  add column if not exists pool               text        not null default 'default',
  -- What the worker is doing about control: active, paused, draining, restarting.
  add column if not exists state              text,
  -- The hp_worker_control.generation the worker has applied; null = never.
  add column if not exists control_generation bigint,
  -- verb -> how the worker honours it, e.g. {"pause": "stops the child", "run_now": "no"}.
  add column if not exists controls           jsonb,
  -- The database clock when the current instance_id first wrote. Existing
  -- rows get the time of this migration: their real start is unknown, and
  -- any restart requested from now on is after it.
  add column if not exists instance_since     timestamptz default now();

do $$
declare
  rule record;
begin
  for rule in
    select * from (values
      ('hp_worker_status_pool_format',        $c$pool ~ '^[A-Za-z0-9._:-]{1,128}$'$c$),
      ('hp_worker_status_state_allowed',      $c$state in ('active', 'paused', 'draining', 'restarting')$c$),
      ('hp_worker_status_control_generation', $c$control_generation >= 0$c$),
      ('hp_worker_status_controls_object',    $c$jsonb_typeof(controls) = 'object' and octet_length(controls::text) <= 2048$c$)
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

-- instance_since is the database's clock, never the worker's: a new
-- instance_id starts it, the same instance keeps it, whatever is sent.
create or replace function public.hp_worker_status_instance_since()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if tg_op = 'INSERT' or new.instance_id is distinct from old.instance_id then
    new.instance_since := pg_catalog.now();
  else
    new.instance_since := old.instance_since;
  end if;
  return new;
end
$$;

revoke all on function public.hp_worker_status_instance_since() from public, anon, authenticated, service_role;

-- Beats stay cheap: the column default already is now(), so an insert fires
-- this only when a client sent its own value; an update only when the
-- instance changed or a client tried to set the column.
create or replace trigger hp_worker_status_instance_since_insert
  before insert on public.hp_worker_status
  for each row
  when (new.instance_since is distinct from now())
  execute function public.hp_worker_status_instance_since();

create or replace trigger hp_worker_status_instance_since_update
  before update on public.hp_worker_status
  for each row
  when (old.instance_id is distinct from new.instance_id
        or old.instance_since is distinct from new.instance_since)
  execute function public.hp_worker_status_instance_since();

-- ---------------------------------------------------------------------------
-- What operators want. Written only by the functions below.

create table if not exists public.hp_worker_control (
  worker_name          text        primary key,
  desired              text        not null default 'active',
  -- Grows by one on every change of the row: workers poll generation=gt.N.
  generation           bigint      not null default 0,
  -- One-shot requests are counters: nothing is lost or done twice.
  restart_seq          bigint      not null default 0,
  run_now_seq          bigint      not null default 0,
  drain_seq            bigint      not null default 0,
  -- Database clock of the last restart request.
  restart_requested_at timestamptz,
  last_action          text,
  reason               text,
  updated_by           text,
  updated_at           timestamptz not null default now(),
  constraint hp_worker_control_name_format check (worker_name ~ '^[A-Za-z0-9._:-]{1,128}$'),
  constraint hp_worker_control_desired_allowed check (desired in ('active', 'paused')),
  constraint hp_worker_control_counters_nonneg
    check (generation >= 0 and restart_seq >= 0 and run_now_seq >= 0 and drain_seq >= 0),
  constraint hp_worker_control_reason_len check (octet_length(reason) <= 500)
);

comment on table public.hp_worker_control is
  'What operators want each worker to do; changed only through hp_control() and rollouts. See docs/control.md.';

create table if not exists public.hp_pool (
  pool            text        primary key,
  max_unavailable integer     not null default 1,
  min_available   integer     not null default 1,
  -- Actions that lower availability need confirm = the pool's name.
  protected       boolean     not null default false,
  updated_by      text,
  updated_at      timestamptz not null default now(),
  constraint hp_pool_name_format check (pool ~ '^[A-Za-z0-9._:-]{1,128}$'),
  constraint hp_pool_budget_nonneg check (max_unavailable >= 0 and min_available >= 0)
);

comment on table public.hp_pool is
  'Availability budget per pool; a pool with no row has max_unavailable 1, min_available 1, not protected. Changed through hp_pool_set().';

create table if not exists public.hp_audit_log (
  id      bigint      generated always as identity primary key,
  at      timestamptz not null default now(),
  actor   text        not null,
  action  text        not null,
  workers text[],
  pool    text,
  reason  text,
  outcome text        not null,
  detail  jsonb       not null default '{}'::jsonb,
  constraint hp_audit_log_outcome_allowed
    check (outcome in ('accepted', 'refused', 'applied', 'failed', 'timed_out'))
);

comment on table public.hp_audit_log is
  'Insert-only: one row per control request (accepted or refused) and per outcome (applied, failed, timed_out).';

-- Requests a worker has not yet reported applying; the status trigger turns
-- each into an `applied` audit row, then deletes it.
create table if not exists public.hp_control_pending (
  worker_name  text        not null,
  generation   bigint      not null,
  audit_id     bigint      not null,
  action       text        not null,
  requested_at timestamptz not null default now(),
  primary key (worker_name, generation)
);

create table if not exists public.hp_rollout (
  id                bigint      generated always as identity primary key,
  pool              text        not null,
  batch_size        integer     not null,
  settle_seconds    integer     not null,
  timeout_seconds   integer     not null,
  state             text        not null default 'running',
  reason            text,
  -- Why it is stuck, aborted or done.
  state_reason      text,
  created_by        text        not null,
  created_at        timestamptz not null default now(),
  updated_at        timestamptz not null default now(),
  -- Since when no worker could be restarted for want of capacity.
  no_capacity_since timestamptz,
  constraint hp_rollout_state_allowed check (state in ('running', 'done', 'aborted', 'stuck')),
  constraint hp_rollout_numbers check (batch_size >= 1 and settle_seconds >= 0 and timeout_seconds >= 1)
);

create unique index if not exists hp_rollout_one_running_per_pool
  on public.hp_rollout (pool) where state = 'running';

create table if not exists public.hp_rollout_worker (
  rollout_id           bigint      not null references public.hp_rollout (id),
  worker_name          text        not null,
  position             integer     not null,
  state                text        not null,
  skip_reason          text,
  -- The instance it had when its restart was requested, and the one that came back.
  old_instance_id      uuid,
  new_instance_id      uuid,
  restart_requested_at timestamptz,
  back_at              timestamptz,
  done_at              timestamptz,
  primary key (rollout_id, worker_name),
  constraint hp_rollout_worker_state_allowed
    check (state in ('pending', 'restarting', 'done', 'skipped'))
);

-- ---------------------------------------------------------------------------
-- Privileges. Nothing but the SECURITY DEFINER functions (running as the
-- owner) writes these tables; the API roles read what they may.

do $$
declare
  t text;
  grantee text;
  seq text;
begin
  foreach t in array array['hp_worker_control', 'hp_pool', 'hp_audit_log',
                           'hp_control_pending', 'hp_rollout', 'hp_rollout_worker']
  loop
    execute format('alter table public.%I enable row level security', t);
    execute format('revoke all on table public.%I from public, anon, authenticated, service_role', t);
    -- Older projects' default privileges may have granted writes to other roles too.
    for grantee in
      select distinct a.grantee::regrole::text
      from pg_class c, aclexplode(c.relacl) a
      where c.oid = format('public.%I', t)::regclass
        and a.grantee <> 0 and a.grantee <> c.relowner
        and a.privilege_type in ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')
    loop
      execute format('revoke insert, update, delete, truncate on table public.%I from %s', t, grantee);
    end loop;
    execute format('grant select on table public.%I to service_role, authenticated', t);
    seq := (select pg_get_serial_sequence(format('public.%I', t), 'id') from pg_attribute
            where attrelid = format('public.%I', t)::regclass and attname = 'id' and not attisdropped);
    if seq is not null then
      execute format('revoke all on sequence %s from public, anon, authenticated, service_role', seq);
    end if;
  end loop;
  -- The audit log is insert-only for its owner too (the trigger below is
  -- the backstop, also for superusers).
  execute format('revoke update, delete, truncate on table public.hp_audit_log from %I',
                 (select r.rolname from pg_class c join pg_roles r on r.oid = c.relowner
                  where c.oid = 'public.hp_audit_log'::regclass));
end
$$;

create or replace function public.hp_audit_log_insert_only()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  raise exception using
    errcode = '42501',
    message = format('hp_audit_log is insert-only: %s is not allowed, for any role', tg_op),
    hint = 'Audit rows are never changed or removed; to archive old rows, copy them elsewhere.';
end
$$;

revoke all on function public.hp_audit_log_insert_only() from public, anon, authenticated, service_role;

create or replace trigger hp_audit_log_no_update_delete
  before update or delete on public.hp_audit_log
  for each row execute function public.hp_audit_log_insert_only();

create or replace trigger hp_audit_log_no_truncate
  before truncate on public.hp_audit_log
  for each statement execute function public.hp_audit_log_insert_only();

-- Read policies. Signed-in users (dashboards) read control rows, pools and
-- rollouts; the audit log only operators. service_role bypasses RLS.
do $$
declare
  t text;
begin
  foreach t in array array['hp_worker_control', 'hp_pool', 'hp_control_pending',
                           'hp_rollout', 'hp_rollout_worker']
  loop
    if not exists (select 1 from pg_policies where schemaname = 'public' and tablename = t
                   and policyname = t || '_read_signed_in') then
      execute format('create policy %I on public.%I for select to authenticated using (true)',
                     t || '_read_signed_in', t);
    end if;
  end loop;
  if not exists (select 1 from pg_policies where schemaname = 'public' and tablename = 'hp_audit_log'
                 and policyname = 'hp_audit_log_read_operators') then
    create policy hp_audit_log_read_operators on public.hp_audit_log
      for select to authenticated
      using ((select nullif(current_setting('request.jwt.claims', true), '')::jsonb
                     -> 'app_metadata' ->> 'hp_role') = 'operator');
  end if;
end
$$;

-- The optional least-privilege reporter (sql/optional/20261123000003_hp_reporter_role.sql):
-- when it exists, it reads its own control row and writes the new status
-- columns. That file does the same when it runs after this one.
do $$
begin
  if exists (select 1 from pg_roles where rolname = 'hp_reporter') then
    grant insert (pool, state, control_generation, controls),
          update (pool, state, control_generation, controls)
      on table public.hp_worker_status to hp_reporter;
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

-- ---------------------------------------------------------------------------
-- Availability, the one rule: health running (hp_worker_health), desired
-- active (no control row = active), and no restart pending (none requested,
-- or an instance that started after the request is running).

create or replace view public.hp_worker_availability
with (security_invoker = true)
as
select
  s.worker_name,
  s.pool,
  h.health,
  coalesce(c.desired, 'active') as desired,
  coalesce(c.restart_requested_at is not null
           and (s.instance_since is null or s.instance_since < c.restart_requested_at), false)
    as restart_pending,
  (h.health = 'running'
   and coalesce(c.desired, 'active') = 'active'
   and not coalesce(c.restart_requested_at is not null
                    and (s.instance_since is null or s.instance_since < c.restart_requested_at), false))
    as available,
  case
    when h.health = 'crashed' then
      'crashed' || coalesce(' with exit code ' || s.exit_code, '')
                || coalesce(' (signal ' || s.exit_signal || ')', '')
    when h.health = 'stale' then
      format('stale (no beat for %s s)', round(h.seconds_since_heartbeat))
    when h.health <> 'running' then h.health
    when coalesce(c.desired, 'active') = 'paused' then 'paused'
    when c.restart_requested_at is not null
         and (s.instance_since is null or s.instance_since < c.restart_requested_at)
      then 'restart pending (still the instance from before the request)'
  end as unavailable_reason,
  s.instance_id,
  s.instance_since,
  c.generation,
  s.control_generation,
  s.state,
  s.controls
from public.hp_worker_status s
join public.hp_worker_health h on h.worker_name = s.worker_name
left join public.hp_worker_control c on c.worker_name = s.worker_name;

comment on view public.hp_worker_availability is
  'Each worker with its pool and whether it is available: health running, desired active, no restart pending.';

revoke all on table public.hp_worker_availability from public, anon, authenticated;
grant select on table public.hp_worker_availability to service_role, authenticated;

-- ---------------------------------------------------------------------------
-- Internal helpers: callable only by the owner (the functions below run as it).

-- Who is calling, from the JWT claims PostgREST sets per request (inside a
-- SECURITY DEFINER function current_user is the owner; the claims are what
-- identifies the caller). Raises 42501 for anyone but an operator.
create or replace function public.hp_control_caller(declared_actor text)
returns jsonb
language plpgsql
stable
set search_path = ''
as $$
declare
  claims jsonb := nullif(pg_catalog.current_setting('request.jwt.claims', true), '')::jsonb;
  jwt_role text := claims ->> 'role';
  declared text := nullif(pg_catalog.btrim(declared_actor), '');
  who text;
begin
  if pg_catalog.octet_length(declared) > 200 then
    raise exception using errcode = '22023',
      message = format('actor is %s bytes; keep it to 200 (e.g. user@host)', pg_catalog.octet_length(declared));
  end if;
  if claims is null then
    -- An API role reaching here without claims did not come through PostgREST.
    if pg_catalog.current_setting('role', true) in ('anon', 'authenticated', 'service_role') then
      raise exception using errcode = '42501',
        message = format('hp-heartbeat control: role %s called without JWT claims; call it through the API',
                         pg_catalog.current_setting('role', true));
    end if;
    -- SQL editor, psql, pg_cron: a database login.
    who := 'database:' || session_user;
    return pg_catalog.jsonb_build_object(
      'actor', case when declared is null then who else who || ' (declared ' || declared || ')' end,
      'role', 'database', 'actor_declared', declared is not null, 'declared_actor', declared);
  end if;
  if jwt_role = 'service_role' then
    return pg_catalog.jsonb_build_object(
      'actor', case when declared is null then 'service_role' else 'service_role (declared ' || declared || ')' end,
      'role', 'service_role', 'actor_declared', declared is not null, 'declared_actor', declared);
  end if;
  if jwt_role = 'authenticated' and claims -> 'app_metadata' ->> 'hp_role' = 'operator' then
    who := coalesce(nullif(claims ->> 'email', ''), nullif(claims ->> 'sub', ''));
    if who is null then
      raise exception using errcode = '42501',
        message = 'hp-heartbeat control: the operator''s JWT has neither email nor sub, so the audit log could not name them';
    end if;
    return pg_catalog.jsonb_build_object(
      'actor', who, 'role', 'authenticated', 'sub', claims ->> 'sub',
      'actor_declared', false, 'declared_actor', declared);
  end if;
  raise exception using errcode = '42501',
    message = format('hp-heartbeat control needs an operator: role %s is neither service_role nor a signed-in user whose JWT has app_metadata.hp_role = "operator"',
                     coalesce(jwt_role, 'none')),
    hint = 'Give the user app_metadata {"hp_role": "operator"} (docs/control.md, "Operators"), then sign in again for a new JWT.';
end
$$;

-- One transaction-level advisory lock per pool, taken in sorted key order so
-- two requests over the same pools can never deadlock on them. Counting
-- after it sees every request that held it before only under READ COMMITTED
-- (a new snapshot per statement) or SERIALIZABLE (conflicts are detected).
create or replace function public.hp_pool_lock(pools text[])
returns void
language plpgsql
set search_path = ''
as $$
declare
  k bigint;
begin
  if pg_catalog.current_setting('transaction_isolation') = 'repeatable read' then
    raise exception using errcode = '0A000',
      message = 'hp-heartbeat control needs READ COMMITTED or SERIALIZABLE, not REPEATABLE READ: counted from an old snapshot, concurrent requests could pass a pool''s budget together';
  end if;
  for k in
    select distinct pg_catalog.hashtextextended('hp_pool:' || p, 0)
    from pg_catalog.unnest(pools) p
    where p is not null
    order by 1
  loop
    perform pg_catalog.pg_advisory_xact_lock(k);
  end loop;
end
$$;

-- The control-row change for a verb on these workers, in a fixed order;
-- returns {worker: new generation}.
create or replace function public.hp_control_apply(targets text[], verb text, why text, actor text)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  generations jsonb;
begin
  with changed as (
    insert into public.hp_worker_control as c
      (worker_name, desired, generation, restart_seq, run_now_seq, drain_seq,
       restart_requested_at, last_action, reason, updated_by, updated_at)
    select t,
           case when verb in ('pause', 'drain') then 'paused' else 'active' end,
           1,
           (verb = 'restart')::int,
           (verb = 'run_now')::int,
           (verb = 'drain')::int,
           case when verb = 'restart' then pg_catalog.now() end,
           verb, why, actor, pg_catalog.now()
    from pg_catalog.unnest(targets) t
    order by t
    on conflict (worker_name) do update set
      desired = case when verb in ('pause', 'drain') then 'paused'
                     when verb in ('resume', 'restart') then 'active'
                     else c.desired end,
      generation = c.generation + 1,
      restart_seq = c.restart_seq + (verb = 'restart')::int,
      run_now_seq = c.run_now_seq + (verb = 'run_now')::int,
      drain_seq = c.drain_seq + (verb = 'drain')::int,
      restart_requested_at = case when verb = 'restart' then pg_catalog.now()
                                  else c.restart_requested_at end,
      last_action = excluded.last_action,
      reason = excluded.reason,
      updated_by = excluded.updated_by,
      updated_at = excluded.updated_at
    returning c.worker_name, c.generation
  )
  select coalesce(pg_catalog.jsonb_object_agg(worker_name, generation), '{}'::jsonb)
  into generations
  from changed;
  return generations;
end
$$;

-- Writes the audit row of an accepted request and remembers, per worker, the
-- generation it produced, for the `applied` row when the worker reports it.
create or replace function public.hp_control_audit_accepted(
  actor text, action text, verb text, workers text[], pool text, why text,
  generations jsonb, detail jsonb)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  audit_id bigint;
begin
  insert into public.hp_audit_log (actor, action, workers, pool, reason, outcome, detail)
  values (actor, action, workers, pool, why, 'accepted', detail || pg_catalog.jsonb_build_object('generations', generations))
  returning id into audit_id;
  insert into public.hp_control_pending (worker_name, generation, audit_id, action)
  select g.key, g.value::bigint, audit_id, verb
  from pg_catalog.jsonb_each_text(generations) g
  on conflict do nothing;
  return audit_id;
end
$$;

do $$
declare
  f text;
begin
  foreach f in array array['public.hp_control_caller(text)', 'public.hp_pool_lock(text[])',
                           'public.hp_control_apply(text[], text, text, text)',
                           'public.hp_control_audit_accepted(text, text, text, text[], text, text, jsonb, jsonb)']
  loop
    execute format('revoke all on function %s from public, anon, authenticated, service_role', f);
  end loop;
end
$$;

-- ---------------------------------------------------------------------------
-- `applied`: the database writes it when a worker first reports a
-- control_generation at or past the generation a request produced for it.

create or replace function public.hp_worker_status_control_applied()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  with served as (
    delete from public.hp_control_pending p
    where p.worker_name = new.worker_name and p.generation <= new.control_generation
    returning p.audit_id, p.generation, p.action, p.requested_at
  )
  insert into public.hp_audit_log (actor, action, workers, pool, outcome, detail)
  select 'worker:' || new.worker_name, s.action, array[new.worker_name], new.pool, 'applied',
         pg_catalog.jsonb_build_object(
           'request_audit_id', s.audit_id,
           'generation', s.generation,
           'control_generation', new.control_generation,
           'instance_id', new.instance_id,
           'state', new.state,
           'seconds_to_apply', pg_catalog.round(extract(epoch from pg_catalog.now() - s.requested_at)::numeric, 3))
  from served s
  order by s.generation;
  return null;
end
$$;

revoke all on function public.hp_worker_status_control_applied() from public, anon, authenticated, service_role;

-- Fires only when control_generation changes: never on an ordinary beat.
create or replace trigger hp_worker_status_control_applied
  after update on public.hp_worker_status
  for each row
  when (old.control_generation is distinct from new.control_generation)
  execute function public.hp_worker_status_control_applied();

-- ---------------------------------------------------------------------------
-- hp_control: the one way to steer workers.

create or replace function public.hp_control(
  action  text,
  workers text[]  default null,
  pool    text    default null,
  reason  text    default null,
  confirm text    default null,
  force   boolean default false,
  actor   text    default null
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_action  text := hp_control.action;
  v_workers text[] := hp_control.workers;
  v_pool    text := hp_control.pool;
  v_reason  text := hp_control.reason;
  v_confirm text := hp_control.confirm;
  v_force   boolean := coalesce(hp_control.force, false);
  caller    jsonb;
  verb      text;
  lowering  boolean;
  ing       text;
  targets   text[];
  missing   text[];
  touched   text[];
  p         text;
  budget    record;
  counts    record;
  names     text;
  forced    boolean;
  after_n   integer;
  rule      text;
  message   text;
  pools_out jsonb := '[]'::jsonb;
  r_pool    text;
  r_before  integer;
  r_after   integer;
  r_forced  boolean;
  generations jsonb;
  detail    jsonb;
  audit_id  bigint;
begin
  caller := public.hp_control_caller(hp_control.actor);

  verb := case v_action when 'enable' then 'resume' when 'disable' then 'pause' else v_action end;
  if verb is null or verb not in ('pause', 'resume', 'drain', 'restart', 'run_now') then
    raise exception using errcode = '22023',
      message = format('hp_control: unknown action %s; use one of pause, resume, drain, restart, run_now (or enable = resume, disable = pause)',
                       coalesce(pg_catalog.quote_literal(v_action), 'null'));
  end if;
  lowering := verb in ('pause', 'drain', 'restart');
  ing := case v_action when 'pause' then 'pausing' when 'disable' then 'disabling'
                       when 'drain' then 'draining' when 'restart' then 'restarting' end;

  if v_workers is not null and v_pool is not null then
    raise exception using errcode = '22023',
      message = 'hp_control: give workers or pool, not both';
  end if;
  if v_workers is null and v_pool is null then
    raise exception using errcode = '22023',
      message = 'hp_control: give workers (a list of worker names) or pool (a pool name)';
  end if;
  if v_workers is not null and pg_catalog.cardinality(v_workers) = 0 then
    raise exception using errcode = '22023',
      message = 'hp_control: workers is an empty list; name at least one worker, or give pool';
  end if;
  if pg_catalog.array_position(v_workers, null) is not null then
    raise exception using errcode = '22023',
      message = 'hp_control: workers contains null; give worker names only';
  end if;
  if pg_catalog.octet_length(v_reason) > 500 then
    raise exception using errcode = '22023',
      message = format('hp_control: reason is %s bytes; keep it to 500 bytes', pg_catalog.octet_length(v_reason));
  end if;

  if v_workers is not null then
    select pg_catalog.array_agg(distinct w order by w) into targets from pg_catalog.unnest(v_workers) w;
    select pg_catalog.array_agg(t order by t) into missing
    from pg_catalog.unnest(targets) t
    where not exists (select 1 from public.hp_worker_status s where s.worker_name = t);
    if missing is not null then
      raise exception using errcode = '22023',
        message = format('hp_control: no worker named %s in hp_worker_status; check the names (a worker has a row after its first beat)',
                         pg_catalog.array_to_string(missing, ', '));
    end if;
    select pg_catalog.array_agg(distinct s.pool order by s.pool) into touched
    from public.hp_worker_status s where s.worker_name = any (targets);
    perform public.hp_pool_lock(touched);
  else
    perform public.hp_pool_lock(array[v_pool]);
    select pg_catalog.array_agg(s.worker_name order by s.worker_name) into targets
    from public.hp_worker_status s where s.pool = v_pool;
    if targets is null then
      raise exception using errcode = '22023',
        message = format('hp_control: pool %L has no workers; check the name (a worker''s pool is the pool column of its row; pools with workers: %s)',
                         v_pool,
                         coalesce((select pg_catalog.string_agg(distinct s.pool, ', ' order by s.pool)
                                   from public.hp_worker_status s), 'none'));
    end if;
    touched := array[v_pool];
  end if;

  -- Counted after the locks: a concurrent request on these pools has committed.
  foreach p in array touched loop
    select coalesce(hp.max_unavailable, 1) as max_unavailable,
           coalesce(hp.min_available, 1) as min_available,
           coalesce(hp.protected, false) as protected
    into budget
    from (select 1) one left join public.hp_pool hp on hp.pool = p;

    select pg_catalog.count(*)::int as members,
           (pg_catalog.count(*) filter (where a.available))::int as available,
           (pg_catalog.count(*) filter (where a.available and a.worker_name = any (targets)))::int as newly_down,
           pg_catalog.array_agg(a.worker_name order by a.worker_name)
             filter (where a.available and a.worker_name = any (targets)) as down_names,
           -- resume brings back those whose only reason to be out is the pause
           (pg_catalog.count(*) filter (where a.worker_name = any (targets) and a.health = 'running'
                                          and a.desired = 'paused' and not a.restart_pending))::int as back_up,
           pg_catalog.array_agg(a.worker_name order by a.worker_name)
             filter (where a.worker_name = any (targets)) as in_pool
    into counts
    from public.hp_worker_availability a
    where a.pool = p;

    after_n := case when lowering then counts.available - counts.newly_down
                    when verb = 'resume' then counts.available + counts.back_up
                    else counts.available end;
    forced := v_force and v_confirm is not distinct from p;

    if rule is null and lowering and counts.newly_down > 0 then
      names := pg_catalog.array_to_string(counts.down_names[1:5], ', ')
               || case when counts.newly_down > 5 then format(' and %s more', counts.newly_down - 5) else '' end;
      if budget.protected and v_confirm is distinct from p then
        rule := 'protected';
        message := format('%s %s needs confirmation: pool %s is protected. Call again with confirm = %L, the pool''s name.',
                          ing, names, p, p);
      elsif after_n = 0 and counts.available > 0 and not forced then
        rule := 'last_available';
        message := format('%s %s would leave pool %s with no available worker (%s of %s available now). Taking a whole pool down needs force = true and confirm = %L.',
                          ing, names, p, counts.available, counts.members, p);
      elsif counts.members - after_n > budget.max_unavailable and not forced then
        rule := 'max_unavailable';
        message := format('%s %s would leave pool %s with %s of %s workers unavailable; its budget allows %s (max_unavailable). Wait for the unavailable workers to come back, or raise the budget with hp_pool_set(pool := %L, max_unavailable := %s), or override with force = true and confirm = %L.',
                          ing, names, p, counts.members - after_n, counts.members, budget.max_unavailable,
                          p, counts.members - after_n, p);
      elsif after_n < budget.min_available and not forced then
        rule := 'min_available';
        message := format('%s %s would leave pool %s with %s of %s workers available; it needs at least %s (min_available). Wait for the unavailable workers to come back, or lower it with hp_pool_set(pool := %L, min_available := %s), or override with force = true and confirm = %L.',
                          ing, names, p, after_n, counts.members, budget.min_available,
                          p, after_n, p);
      end if;
      if rule is not null then
        r_pool := p;
        r_before := counts.available;
        r_after := after_n;
        r_forced := forced;
      end if;
    end if;
    if r_pool is null and p = touched[1] then
      r_before := counts.available;
      r_after := after_n;
      r_forced := forced;
    end if;

    pools_out := pools_out || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
      'pool', p, 'members', counts.members, 'targets', pg_catalog.to_jsonb(counts.in_pool),
      'available_before', counts.available, 'available_after', after_n,
      'max_unavailable', budget.max_unavailable, 'min_available', budget.min_available,
      'protected', budget.protected));
  end loop;
  r_pool := coalesce(r_pool, touched[1]);

  detail := pg_catalog.jsonb_build_object(
    'role', caller ->> 'role', 'actor_declared', (caller ->> 'actor_declared')::boolean,
    'declared_actor', caller ->> 'declared_actor', 'sub', caller ->> 'sub',
    'normalised_action', verb, 'force', v_force, 'confirm', v_confirm, 'forced', r_forced,
    'rule', rule, 'available_before', r_before, 'available_after', r_after, 'pools', pools_out);

  if rule is not null then
    -- A refusal is an answer, not an error, so its audit row commits.
    insert into public.hp_audit_log (actor, action, workers, pool, reason, outcome, detail)
    values (caller ->> 'actor', v_action, targets, r_pool, v_reason, 'refused',
            detail || pg_catalog.jsonb_build_object('message', message))
    returning id into audit_id;
    return pg_catalog.jsonb_build_object(
      'outcome', 'refused', 'action', v_action, 'rule', rule, 'message', message,
      'workers', pg_catalog.to_jsonb(targets), 'pool', r_pool,
      'available_before', r_before, 'available_after', r_after, 'forced', r_forced,
      'pools', pools_out, 'audit_id', audit_id);
  end if;

  generations := public.hp_control_apply(targets, verb, v_reason, caller ->> 'actor');
  message := format('%s %s%s: pool %s has %s available now, %s once applied.',
                    v_action, pg_catalog.array_to_string(targets[1:5], ', ')
                      || case when pg_catalog.cardinality(targets) > 5
                              then format(' and %s more', pg_catalog.cardinality(targets) - 5) else '' end,
                    case when r_forced and lowering then ' (forced)' else '' end,
                    r_pool, r_before, r_after);
  audit_id := public.hp_control_audit_accepted(
    caller ->> 'actor', v_action, verb, targets, r_pool, v_reason, generations,
    detail || pg_catalog.jsonb_build_object('message', message));
  return pg_catalog.jsonb_build_object(
    'outcome', 'accepted', 'action', v_action, 'rule', null, 'message', message,
    'workers', pg_catalog.to_jsonb(targets), 'pool', r_pool,
    'available_before', r_before, 'available_after', r_after, 'forced', r_forced,
    'pools', pools_out, 'generations', generations, 'audit_id', audit_id);
end
$$;

comment on function public.hp_control(text, text[], text, text, text, boolean, text) is
  'Steer workers: pause, resume, drain, restart, run_now (enable = resume, disable = pause), within each pool''s budget. See docs/control.md.';

-- ---------------------------------------------------------------------------
-- hp_pool_set: a pool's budget (null = keep).

create or replace function public.hp_pool_set(
  pool            text,
  max_unavailable integer default null,
  min_available   integer default null,
  protected       boolean default null,
  actor           text    default null
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_pool text := hp_pool_set.pool;
  caller jsonb;
  before jsonb;
  after  public.hp_pool;
  audit_id bigint;
begin
  caller := public.hp_control_caller(hp_pool_set.actor);
  if v_pool is null or v_pool !~ '^[A-Za-z0-9._:-]{1,128}$' then
    raise exception using errcode = '22023',
      message = format('hp_pool_set: pool %s is not a pool name; use 1-128 of A-Z a-z 0-9 . _ : -',
                       coalesce(pg_catalog.quote_literal(v_pool), 'null'));
  end if;
  if hp_pool_set.max_unavailable < 0 or hp_pool_set.min_available < 0 then
    raise exception using errcode = '22023',
      message = format('hp_pool_set: max_unavailable (%s) and min_available (%s) must be 0 or more',
                       hp_pool_set.max_unavailable, hp_pool_set.min_available);
  end if;
  perform public.hp_pool_lock(array[v_pool]);
  select pg_catalog.to_jsonb(hp) into before from public.hp_pool hp where hp.pool = v_pool;
  insert into public.hp_pool as hp (pool, max_unavailable, min_available, protected, updated_by, updated_at)
  values (v_pool, coalesce(hp_pool_set.max_unavailable, 1), coalesce(hp_pool_set.min_available, 1),
          coalesce(hp_pool_set.protected, false), caller ->> 'actor', pg_catalog.now())
  on conflict on constraint hp_pool_pkey do update set
    max_unavailable = coalesce(hp_pool_set.max_unavailable, hp.max_unavailable),
    min_available = coalesce(hp_pool_set.min_available, hp.min_available),
    protected = coalesce(hp_pool_set.protected, hp.protected),
    updated_by = excluded.updated_by,
    updated_at = excluded.updated_at
  returning hp.* into after;
  insert into public.hp_audit_log (actor, action, pool, outcome, detail)
  values (caller ->> 'actor', 'pool_set', v_pool, 'accepted',
          pg_catalog.jsonb_build_object(
            'role', caller ->> 'role', 'actor_declared', (caller ->> 'actor_declared')::boolean,
            'declared_actor', caller ->> 'declared_actor',
            'before', before, 'after', pg_catalog.to_jsonb(after)))
  returning id into audit_id;
  return pg_catalog.jsonb_build_object(
    'outcome', 'accepted', 'pool', after.pool, 'max_unavailable', after.max_unavailable,
    'min_available', after.min_available, 'protected', after.protected, 'audit_id', audit_id);
end
$$;

-- ---------------------------------------------------------------------------
-- Rollouts: restart a pool's workers a batch at a time, never more than the
-- batch down, each back and settled before the next batch.

create or replace function public.hp_rollout_summary(rollout_id bigint)
returns jsonb
language sql
stable
set search_path = ''
as $$
  select pg_catalog.jsonb_build_object(
    'rollout_id', r.id, 'pool', r.pool, 'state', r.state, 'state_reason', r.state_reason,
    'batch_size', r.batch_size, 'settle_seconds', r.settle_seconds,
    'timeout_seconds', r.timeout_seconds, 'reason', r.reason, 'created_by', r.created_by,
    'workers', coalesce((
      select pg_catalog.jsonb_object_agg(w.worker_name, w.state || coalesce(': ' || w.skip_reason, ''))
      from public.hp_rollout_worker w where w.rollout_id = r.id), '{}'::jsonb))
  from public.hp_rollout r
  where r.id = rollout_id
$$;

create or replace function public.hp_rollout_start(
  pool            text,
  max_unavailable integer default null,
  settle_seconds  integer default 10,
  timeout_seconds integer default 300,
  reason          text    default null,
  confirm         text    default null,
  actor           text    default null
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_pool   text := hp_rollout_start.pool;
  v_reason text := hp_rollout_start.reason;
  caller   jsonb;
  budget   record;
  running  bigint;
  members  integer;
  batch    integer;
  rule     text;
  message  text;
  new_id   bigint;
  audit_id bigint;
  detail   jsonb;
  result   jsonb;
begin
  caller := public.hp_control_caller(hp_rollout_start.actor);
  if v_pool is null then
    raise exception using errcode = '22023', message = 'hp_rollout_start: give pool, the pool to restart';
  end if;
  if hp_rollout_start.max_unavailable < 1 then
    raise exception using errcode = '22023',
      message = format('hp_rollout_start: max_unavailable is %s; a batch restarts at least 1 worker',
                       hp_rollout_start.max_unavailable);
  end if;
  if hp_rollout_start.settle_seconds is null or hp_rollout_start.settle_seconds < 0 then
    raise exception using errcode = '22023',
      message = format('hp_rollout_start: settle_seconds is %s; give 0 or more',
                       coalesce(hp_rollout_start.settle_seconds::text, 'null'));
  end if;
  if hp_rollout_start.timeout_seconds is null or hp_rollout_start.timeout_seconds < 1 then
    raise exception using errcode = '22023',
      message = format('hp_rollout_start: timeout_seconds is %s; give 1 or more',
                       coalesce(hp_rollout_start.timeout_seconds::text, 'null'));
  end if;
  if pg_catalog.octet_length(v_reason) > 500 then
    raise exception using errcode = '22023',
      message = format('hp_rollout_start: reason is %s bytes; keep it to 500 bytes', pg_catalog.octet_length(v_reason));
  end if;

  perform public.hp_pool_lock(array[v_pool]);
  select pg_catalog.count(*)::int into members from public.hp_worker_status s where s.pool = v_pool;
  if members = 0 then
    raise exception using errcode = '22023',
      message = format('hp_rollout_start: pool %L has no workers; check the name (a worker''s pool is the pool column of its row)', v_pool);
  end if;
  select coalesce(hp.max_unavailable, 1) as max_unavailable, coalesce(hp.protected, false) as protected
  into budget
  from (select 1) one left join public.hp_pool hp on hp.pool = v_pool;
  batch := coalesce(hp_rollout_start.max_unavailable, greatest(budget.max_unavailable, 1));

  select r.id into running from public.hp_rollout r where r.pool = v_pool and r.state = 'running';
  if running is not null then
    rule := 'rollout_running';
    message := format('pool %s already has rollout %s running; wait for it, or stop it with hp_rollout_abort(id := %s)',
                      v_pool, running, running);
  elsif budget.protected and hp_rollout_start.confirm is distinct from v_pool then
    rule := 'protected';
    message := format('a rollout of pool %s needs confirmation: the pool is protected. Call again with confirm = %L, the pool''s name.',
                      v_pool, v_pool);
  elsif batch > greatest(budget.max_unavailable, 1) and hp_rollout_start.confirm is distinct from v_pool then
    -- Going over the pool's budget is a choice made by name, as force is.
    rule := 'max_unavailable';
    message := format('a rollout of pool %s in batches of %s would have more down at once than its budget allows (%s, max_unavailable). Call again with confirm = %L, the pool''s name, to go over it, or raise the budget with hp_pool_set(pool := %L, max_unavailable := %s).',
                      v_pool, batch, greatest(budget.max_unavailable, 1), v_pool, v_pool, batch);
  end if;
  detail := pg_catalog.jsonb_build_object(
    'role', caller ->> 'role', 'actor_declared', (caller ->> 'actor_declared')::boolean,
    'declared_actor', caller ->> 'declared_actor', 'batch_size', batch,
    'settle_seconds', hp_rollout_start.settle_seconds, 'timeout_seconds', hp_rollout_start.timeout_seconds);
  if rule is not null then
    insert into public.hp_audit_log (actor, action, pool, reason, outcome, detail)
    values (caller ->> 'actor', 'rollout_start', v_pool, v_reason, 'refused',
            detail || pg_catalog.jsonb_build_object('rule', rule, 'message', message, 'running_rollout_id', running))
    returning id into audit_id;
    return pg_catalog.jsonb_build_object('outcome', 'refused', 'rule', rule, 'message', message,
                                         'pool', v_pool, 'rollout_id', running, 'audit_id', audit_id);
  end if;

  insert into public.hp_rollout (pool, batch_size, settle_seconds, timeout_seconds, reason, created_by)
  values (v_pool, batch, hp_rollout_start.settle_seconds, hp_rollout_start.timeout_seconds, v_reason, caller ->> 'actor')
  returning id into new_id;
  -- The workers available now take part, by name; the others are skipped, with why.
  insert into public.hp_rollout_worker (rollout_id, worker_name, position, state, skip_reason)
  select new_id, a.worker_name, pg_catalog.row_number() over (order by a.worker_name),
         case when a.available then 'pending' else 'skipped' end,
         case when not a.available then a.unavailable_reason end
  from public.hp_worker_availability a
  where a.pool = v_pool;

  result := public.hp_rollout_summary(new_id);
  message := format('rollout %s of pool %s: %s workers, %s at a time', new_id, v_pool,
                    (select pg_catalog.count(*) from public.hp_rollout_worker w
                     where w.rollout_id = new_id and w.state = 'pending'), batch);
  insert into public.hp_audit_log (actor, action, workers, pool, reason, outcome, detail)
  values (caller ->> 'actor', 'rollout_start',
          (select pg_catalog.array_agg(w.worker_name order by w.position) from public.hp_rollout_worker w
           where w.rollout_id = new_id and w.state = 'pending'),
          v_pool, v_reason, 'accepted',
          detail || pg_catalog.jsonb_build_object('rollout_id', new_id, 'message', message,
                                                  'workers', result -> 'workers'))
  returning id into audit_id;
  return result || pg_catalog.jsonb_build_object('outcome', 'accepted', 'message', message, 'audit_id', audit_id);
end
$$;

create or replace function public.hp_rollout_step(id bigint)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_id        bigint := hp_rollout_step.id;
  caller      jsonb;
  ro          public.hp_rollout;
  w           record;
  stuck       text[];
  restarting  integer;
  pending     integer;
  unavailable integer;
  down_list   text;
  capacity    integer;
  chosen      text[];
  generations jsonb;
  audit_id    bigint;
  base        jsonb;
begin
  caller := public.hp_control_caller(null);
  select * into ro from public.hp_rollout r where r.id = v_id;
  if not found then
    raise exception using errcode = '22023',
      message = format('hp_rollout_step: no rollout with id %s; see the hp_rollout table', v_id);
  end if;
  if ro.state <> 'running' then
    return public.hp_rollout_summary(v_id);
  end if;
  -- One step at a time per pool, and never alongside an hp_control request on it.
  perform public.hp_pool_lock(array[ro.pool]);
  select * into ro from public.hp_rollout r where r.id = v_id for update;
  if ro.state <> 'running' then
    return public.hp_rollout_summary(v_id);
  end if;
  base := pg_catalog.jsonb_build_object('role', caller ->> 'role', 'rollout_id', v_id);

  -- Restarting workers: back (a new instance, running, active) and settled
  -- -> done; not back within the timeout -> the rollout is stuck.
  for w in
    select rw.worker_name, rw.restart_requested_at, rw.old_instance_id,
           a.health, a.desired, a.instance_id, a.instance_since, a.unavailable_reason,
           coalesce(a.instance_since >= rw.restart_requested_at, false)
             and a.health = 'running' and a.desired = 'active' as back
    from public.hp_rollout_worker rw
    left join public.hp_worker_availability a on a.worker_name = rw.worker_name
    where rw.rollout_id = v_id and rw.state = 'restarting'
    order by rw.position
  loop
    if w.back and w.instance_since + pg_catalog.make_interval(secs => ro.settle_seconds) <= pg_catalog.now() then
      update public.hp_rollout_worker rw
      set state = 'done', back_at = w.instance_since, new_instance_id = w.instance_id, done_at = pg_catalog.now()
      where rw.rollout_id = v_id and rw.worker_name = w.worker_name;
      insert into public.hp_audit_log (actor, action, workers, pool, reason, outcome, detail)
      values (caller ->> 'actor', 'restart', array[w.worker_name], ro.pool, ro.reason, 'applied',
              base || pg_catalog.jsonb_build_object(
                'old_instance_id', w.old_instance_id, 'new_instance_id', w.instance_id,
                'back_at', w.instance_since, 'settle_seconds', ro.settle_seconds));
    elsif w.back then
      update public.hp_rollout_worker rw set back_at = w.instance_since
      where rw.rollout_id = v_id and rw.worker_name = w.worker_name and rw.back_at is distinct from w.instance_since;
    elsif pg_catalog.now() > w.restart_requested_at + pg_catalog.make_interval(secs => ro.timeout_seconds) then
      stuck := stuck || format('%s did not come back within %s s: %s', w.worker_name, ro.timeout_seconds,
        case
          when w.health is null then 'its status row is gone'
          when w.health = 'crashed' then 'its row says ' || w.unavailable_reason
          when w.health <> 'running' then 'its row says ' || w.unavailable_reason
          when w.instance_since < w.restart_requested_at or w.instance_since is null then
            format('still the old instance (%s)', coalesce(w.instance_id::text, 'no instance_id'))
          when w.desired <> 'active' then 'it was paused meanwhile'
          else coalesce(w.unavailable_reason, 'not available')
        end);
    end if;
  end loop;

  if stuck is not null then
    update public.hp_rollout r
    set state = 'stuck', state_reason = pg_catalog.array_to_string(stuck, '; '), updated_at = pg_catalog.now()
    where r.id = v_id;
    insert into public.hp_audit_log (actor, action, workers, pool, reason, outcome, detail)
    values (caller ->> 'actor', 'rollout', (select pg_catalog.array_agg(pg_catalog.split_part(s, ' ', 1)) from pg_catalog.unnest(stuck) s),
            ro.pool, ro.reason, 'timed_out',
            base || pg_catalog.jsonb_build_object('message', pg_catalog.array_to_string(stuck, '; ')));
    return public.hp_rollout_summary(v_id);
  end if;

  select pg_catalog.count(*) filter (where rw.state = 'restarting')::int,
         pg_catalog.count(*) filter (where rw.state = 'pending')::int
  into restarting, pending
  from public.hp_rollout_worker rw where rw.rollout_id = v_id;
  if restarting > 0 then
    update public.hp_rollout r set updated_at = pg_catalog.now() where r.id = v_id;
    return public.hp_rollout_summary(v_id);
  end if;

  -- The next batch: as many as the batch size allows with the pool's
  -- unavailable workers counted.
  select pg_catalog.count(*) filter (where not a.available)::int,
         pg_catalog.string_agg(a.worker_name || ' (' || a.unavailable_reason || ')', ', ' order by a.worker_name)
           filter (where not a.available)
  into unavailable, down_list
  from public.hp_worker_availability a where a.pool = ro.pool;
  capacity := ro.batch_size - unavailable;

  -- Pending workers in order. One that went down since the start is skipped
  -- when its turn comes (a restart would also undo an operator's pause).
  for w in
    select rw.worker_name, a.available, a.unavailable_reason
    from public.hp_rollout_worker rw
    left join public.hp_worker_availability a on a.worker_name = rw.worker_name
    where rw.rollout_id = v_id and rw.state = 'pending'
    order by rw.position
  loop
    if not coalesce(w.available, false) then
      update public.hp_rollout_worker rw
      set state = 'skipped',
          skip_reason = coalesce(w.unavailable_reason, 'its status row is gone') || ' when its turn came'
      where rw.rollout_id = v_id and rw.worker_name = w.worker_name;
    elsif coalesce(pg_catalog.cardinality(chosen), 0) < capacity then
      chosen := chosen || w.worker_name;
    else
      exit;
    end if;
  end loop;

  if chosen is null then
    if not exists (select 1 from public.hp_rollout_worker rw where rw.rollout_id = v_id and rw.state = 'pending') then
      update public.hp_rollout r
      set state = 'done', updated_at = pg_catalog.now(), no_capacity_since = null,
          state_reason = format('%s restarted, %s skipped',
            (select pg_catalog.count(*) from public.hp_rollout_worker rw where rw.rollout_id = v_id and rw.state = 'done'),
            (select pg_catalog.count(*) from public.hp_rollout_worker rw where rw.rollout_id = v_id and rw.state = 'skipped'))
      where r.id = v_id;
      insert into public.hp_audit_log (actor, action, workers, pool, reason, outcome, detail)
      values (caller ->> 'actor', 'rollout',
              (select pg_catalog.array_agg(rw.worker_name order by rw.position) from public.hp_rollout_worker rw
               where rw.rollout_id = v_id and rw.state = 'done'),
              ro.pool, ro.reason, 'applied',
              base || pg_catalog.jsonb_build_object('message', 'rollout done',
                                                    'workers', public.hp_rollout_summary(v_id) -> 'workers'));
    elsif ro.no_capacity_since is null then
      -- Pending workers, but the pool has no room for one more down.
      update public.hp_rollout r set no_capacity_since = pg_catalog.now(), updated_at = pg_catalog.now() where r.id = v_id;
    elsif pg_catalog.now() > ro.no_capacity_since + pg_catalog.make_interval(secs => ro.timeout_seconds) then
      update public.hp_rollout r
      set state = 'stuck', updated_at = pg_catalog.now(),
          state_reason = format('no capacity for %s s: pool %s has %s unavailable (%s) and the batch size is %s',
                                ro.timeout_seconds, ro.pool, unavailable, down_list, ro.batch_size)
      where r.id = v_id;
      insert into public.hp_audit_log (actor, action, workers, pool, reason, outcome, detail)
      values (caller ->> 'actor', 'rollout',
              (select pg_catalog.array_agg(a.worker_name order by a.worker_name)
               from public.hp_worker_availability a where a.pool = ro.pool and not a.available),
              ro.pool, ro.reason, 'timed_out',
              base || pg_catalog.jsonb_build_object('message',
                format('no capacity for %s s: unavailable %s', ro.timeout_seconds, down_list)));
    end if;
    return public.hp_rollout_summary(v_id);
  end if;

  generations := public.hp_control_apply(chosen, 'restart', ro.reason, caller ->> 'actor');
  update public.hp_rollout_worker rw
  set state = 'restarting', restart_requested_at = pg_catalog.now(), old_instance_id = s.instance_id
  from public.hp_worker_status s
  where rw.rollout_id = v_id and rw.worker_name = any (chosen) and s.worker_name = rw.worker_name;
  update public.hp_rollout r set no_capacity_since = null, updated_at = pg_catalog.now() where r.id = v_id;
  audit_id := public.hp_control_audit_accepted(
    caller ->> 'actor', 'restart', 'restart', chosen, ro.pool, ro.reason, generations,
    base || pg_catalog.jsonb_build_object('capacity', capacity, 'unavailable_before', unavailable,
                                          'batch_size', ro.batch_size));
  return public.hp_rollout_summary(v_id) || pg_catalog.jsonb_build_object('restarted', pg_catalog.to_jsonb(chosen));
end
$$;

create or replace function public.hp_rollout_abort(
  id     bigint,
  reason text default null,
  actor  text default null
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_id     bigint := hp_rollout_abort.id;
  v_reason text := hp_rollout_abort.reason;
  caller   jsonb;
  ro       public.hp_rollout;
  audit_id bigint;
begin
  caller := public.hp_control_caller(hp_rollout_abort.actor);
  if pg_catalog.octet_length(v_reason) > 500 then
    raise exception using errcode = '22023',
      message = format('hp_rollout_abort: reason is %s bytes; keep it to 500 bytes', pg_catalog.octet_length(v_reason));
  end if;
  select * into ro from public.hp_rollout r where r.id = v_id;
  if not found then
    raise exception using errcode = '22023',
      message = format('hp_rollout_abort: no rollout with id %s; see the hp_rollout table', v_id);
  end if;
  perform public.hp_pool_lock(array[ro.pool]);
  select * into ro from public.hp_rollout r where r.id = v_id for update;
  if ro.state not in ('running', 'stuck') then
    raise exception using errcode = '22023',
      message = format('hp_rollout_abort: rollout %s is already %s; only a running or stuck rollout can be aborted',
                       v_id, ro.state);
  end if;
  update public.hp_rollout r
  set state = 'aborted', updated_at = pg_catalog.now(),
      state_reason = 'aborted by ' || (caller ->> 'actor') || coalesce(': ' || v_reason, '')
  where r.id = v_id;
  insert into public.hp_audit_log (actor, action, pool, reason, outcome, detail)
  values (caller ->> 'actor', 'rollout_abort', ro.pool, v_reason, 'accepted',
          pg_catalog.jsonb_build_object('role', caller ->> 'role',
            'actor_declared', (caller ->> 'actor_declared')::boolean,
            'declared_actor', caller ->> 'declared_actor',
            'rollout_id', v_id, 'state_before', ro.state))
  returning hp_audit_log.id into audit_id;
  return public.hp_rollout_summary(v_id) || pg_catalog.jsonb_build_object('outcome', 'accepted', 'audit_id', audit_id);
end
$$;

-- Operators call these through the API (authenticated: the claim is checked
-- inside; service_role); anon never. Postgres grants EXECUTE to PUBLIC by
-- default, and Supabase to its API roles: revoke, then grant.
do $$
declare
  f text;
begin
  foreach f in array array[
    'public.hp_control(text, text[], text, text, text, boolean, text)',
    'public.hp_pool_set(text, integer, integer, boolean, text)',
    'public.hp_rollout_start(text, integer, integer, integer, text, text, text)',
    'public.hp_rollout_step(bigint)',
    'public.hp_rollout_abort(bigint, text, text)']
  loop
    execute format('revoke all on function %s from public, anon, authenticated, service_role', f);
    execute format('grant execute on function %s to authenticated, service_role', f);
  end loop;
  execute 'revoke all on function public.hp_rollout_summary(bigint) from public, anon, authenticated, service_role';
end
$$;
