//! Control in the local store: the tables of `sql/20261124000001_hp_control.sql`
//! in SQLite, and `hp_control()` / `hp_pool_set()` as one transaction each
//! around the shared rule (`model::control::decide`). SQLite's write lock
//! (`BEGIN IMMEDIATE`) serialises requests, as PostgreSQL's pool locks do.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde_json::{json, Value};

use crate::model::control::{
    decide, AuditEntry, Budget, ControlAnswer, ControlError, ControlRequest, Member, PoolBudget,
    PoolState, Verb,
};
use crate::model::status_row::StatusRow;

/// The control tables, their CHECKs, the insert-only audit log and the
/// `applied` trigger, as in PostgreSQL.
pub(crate) const SCHEMA: &str = "
create table if not exists hp_worker_control (
  worker_name text primary key
    check (length(worker_name) between 1 and 128 and worker_name not glob '*[^A-Za-z0-9._:-]*'),
  desired text not null default 'active' check (desired in ('active', 'paused')),
  generation integer not null default 0 check (generation >= 0),
  restart_seq integer not null default 0 check (restart_seq >= 0),
  run_now_seq integer not null default 0 check (run_now_seq >= 0),
  drain_seq integer not null default 0 check (drain_seq >= 0),
  restart_requested_at text,
  last_action text,
  reason text check (length(cast(reason as blob)) <= 500),
  updated_by text,
  updated_at text
);
create table if not exists hp_pool (
  pool text primary key
    check (length(pool) between 1 and 128 and pool not glob '*[^A-Za-z0-9._:-]*'),
  max_unavailable integer not null default 1 check (max_unavailable >= 0),
  min_available integer not null default 1 check (min_available >= 0),
  protected integer not null default 0 check (protected in (0, 1)),
  updated_by text,
  updated_at text
);
create table if not exists hp_audit_log (
  id integer primary key autoincrement,
  at text not null,
  actor text not null,
  action text not null,
  workers text,
  pool text,
  reason text,
  outcome text not null check (outcome in ('accepted', 'refused', 'applied', 'failed', 'timed_out')),
  detail text not null default '{}'
);
create trigger if not exists hp_audit_log_no_update before update on hp_audit_log
begin select raise(abort, 'hp_audit_log is insert-only: UPDATE is not allowed'); end;
create trigger if not exists hp_audit_log_no_delete before delete on hp_audit_log
begin select raise(abort, 'hp_audit_log is insert-only: DELETE is not allowed'); end;
create table if not exists hp_control_pending (
  worker_name text not null,
  generation integer not null,
  audit_id integer not null,
  action text not null,
  requested_at text not null,
  primary key (worker_name, generation)
);
create trigger if not exists hp_worker_status_control_applied
after update of control_generation on hp_worker_status
when old.control_generation is not new.control_generation
begin
  insert into hp_audit_log (at, actor, action, workers, pool, outcome, detail)
  select new.updated_at, 'worker:' || new.worker_name, p.action, json_array(new.worker_name),
         new.pool, 'applied',
         json_object('request_audit_id', p.audit_id, 'generation', p.generation,
                     'control_generation', new.control_generation,
                     'instance_id', new.instance_id, 'state', new.state)
  from hp_control_pending p
  where p.worker_name = new.worker_name and p.generation <= new.control_generation
  order by p.generation;
  delete from hp_control_pending
  where worker_name = new.worker_name and generation <= new.control_generation;
end;
";

pub(crate) fn invalid(message: String) -> ControlError {
    ControlError::Invalid {
        code: "22023".into(),
        message,
    }
}

/// Every pool with a budget row or a worker, with the defaults where there
/// is no row; by name.
pub(crate) fn pools(conn: &Connection) -> Result<Vec<PoolBudget>, ControlError> {
    let defaults = PoolBudget::default_for("");
    let mut statement = conn
        .prepare(
            "select p.pool, coalesce(b.max_unavailable, ?1), coalesce(b.min_available, ?2),
                    coalesce(b.protected, ?3)
             from (select pool from hp_pool union select pool from hp_worker_status) p
             left join hp_pool b on b.pool = p.pool
             order by p.pool",
        )
        .map_err(store)?;
    let rows = statement
        .query_map(
            rusqlite::params![
                defaults.max_unavailable,
                defaults.min_available,
                defaults.protected
            ],
            |r| {
                Ok(PoolBudget {
                    pool: r.get(0)?,
                    max_unavailable: r.get(1)?,
                    min_available: r.get(2)?,
                    protected: r.get(3)?,
                })
            },
        )
        .and_then(Iterator::collect)
        .map_err(store)?;
    Ok(rows)
}

/// The audit log since `since`, about `worker` when given, oldest first.
pub(crate) fn read_audit(
    conn: &Connection,
    since: Option<DateTime<Utc>>,
    worker: Option<&str>,
) -> Result<Vec<AuditEntry>, ControlError> {
    let mut statement = conn
        .prepare(
            "select id, at, actor, action, workers, pool, reason, outcome, detail
             from hp_audit_log
             where at >= ?1
               and (?2 is null or exists (select 1 from json_each(hp_audit_log.workers) w where w.value = ?2))
             order by id",
        )
        .map_err(store)?;
    let since = since.map_or_else(String::new, stamp);
    let rows = statement
        .query_map(rusqlite::params![since, worker], |r| {
            let workers: Option<String> = r.get(4)?;
            let detail: Option<String> = r.get(8)?;
            Ok(AuditEntry {
                id: r.get(0)?,
                at: parse_time(r.get(1)?).unwrap_or_else(Utc::now),
                actor: r.get(2)?,
                action: r.get(3)?,
                workers: workers.and_then(|t| serde_json::from_str(&t).ok()),
                pool: r.get(5)?,
                reason: r.get(6)?,
                outcome: r.get(7)?,
                detail: detail
                    .and_then(|t| serde_json::from_str(&t).ok())
                    .unwrap_or(Value::Null),
            })
        })
        .and_then(Iterator::collect)
        .map_err(store)?;
    Ok(rows)
}

pub(crate) fn store(e: rusqlite::Error) -> ControlError {
    ControlError::Store(format!("the local store failed: {e}"))
}

pub(crate) fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

pub(crate) fn parse_time(text: Option<String>) -> Option<DateTime<Utc>> {
    text.and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// Who asks, for the audit log: the local store has no sign-in, so the
/// actor is what the caller declares.
pub(crate) struct Caller {
    pub actor: String,
    pub declared: Option<String>,
}

pub(crate) fn caller(declared: Option<&str>) -> Result<Caller, ControlError> {
    let declared = declared.map(str::trim).filter(|d| !d.is_empty());
    if let Some(d) = declared.filter(|d| d.len() > 200) {
        return Err(invalid(format!(
            "actor is {} bytes; keep it to 200 (e.g. user@host)",
            d.len()
        )));
    }
    Ok(Caller {
        actor: match declared {
            Some(d) => format!("local (declared {d})"),
            None => "local".into(),
        },
        declared: declared.map(str::to_owned),
    })
}

/// `'name'`, or `null`: how PostgreSQL's quote_literal shows a value.
fn literal(value: Option<&str>) -> String {
    value.map_or_else(|| "null".into(), |v| format!("'{}'", v.replace('\'', "''")))
}

/// `hp_control()` on the local store: one transaction, audited either way.
pub(crate) fn hp_control(
    conn: &mut Connection,
    request: &ControlRequest,
    now: DateTime<Utc>,
) -> Result<ControlAnswer, ControlError> {
    let who = caller(request.actor.as_deref())?;
    let action = request.action.clone();
    let verb = action.as_deref().and_then(Verb::parse).ok_or_else(|| {
        invalid(format!(
            "hp_control: unknown action {}; use one of pause, resume, drain, restart, run_now (or enable = resume, disable = pause)",
            literal(action.as_deref())
        ))
    })?;
    let action = action.unwrap_or_default();
    match (&request.workers, &request.pool) {
        (Some(_), Some(_)) => {
            return Err(invalid("hp_control: give workers or pool, not both".into()))
        }
        (None, None) => {
            return Err(invalid(
                "hp_control: give workers (a list of worker names) or pool (a pool name)".into(),
            ))
        }
        (Some(w), None) if w.is_empty() => {
            return Err(invalid(
                "hp_control: workers is an empty list; name at least one worker, or give pool"
                    .into(),
            ))
        }
        _ => {}
    }
    if let Some(r) = request.reason.as_deref().filter(|r| r.len() > 500) {
        return Err(invalid(format!(
            "hp_control: reason is {} bytes; keep it to 500 bytes",
            r.len()
        )));
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(store)?;
    let status = read_status(&tx).map_err(store)?;
    let (targets, touched) = match (&request.workers, &request.pool) {
        (Some(workers), None) => {
            let mut targets = workers.clone();
            targets.sort();
            targets.dedup();
            let missing: Vec<&str> = targets
                .iter()
                .filter(|t| !status.contains_key(*t))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                return Err(invalid(format!(
                    "hp_control: no worker named {} in hp_worker_status; check the names (a worker has a row after its first beat)",
                    missing.join(", ")
                )));
            }
            let mut touched: Vec<String> = targets.iter().map(|t| status[t].pool.clone()).collect();
            touched.sort();
            touched.dedup();
            (targets, touched)
        }
        (None, Some(pool)) => {
            let targets: Vec<String> = status
                .values()
                .filter(|s| &s.pool == pool)
                .map(|s| s.name.clone())
                .collect();
            if targets.is_empty() {
                let mut pools: Vec<&str> = status.values().map(|s| s.pool.as_str()).collect();
                pools.sort();
                pools.dedup();
                let with_workers = if pools.is_empty() {
                    "none".to_owned()
                } else {
                    pools.join(", ")
                };
                return Err(invalid(format!(
                    "hp_control: pool {} has no workers; check the name (a worker's pool is the pool column of its row; pools with workers: {with_workers})",
                    literal(Some(pool))
                )));
            }
            (targets, vec![pool.clone()])
        }
        // Both, or neither, were refused above.
        _ => return Err(invalid("hp_control: give workers or pool".into())),
    };
    let controls = read_controls(&tx).map_err(store)?;
    let budgets = read_budgets(&tx).map_err(store)?;
    let pools: Vec<PoolState> = touched
        .iter()
        .map(|pool| PoolState {
            pool: pool.clone(),
            budget: budgets.get(pool).copied().unwrap_or_default(),
            members: status
                .values()
                .filter(|s| &s.pool == pool)
                .map(|s| member(s, controls.get(&s.name), now))
                .collect(),
        })
        .collect();
    let decision = decide(
        &action,
        verb,
        &targets,
        &pools,
        request.force,
        request.confirm.as_deref(),
    );
    let mut detail = json!({
        "role": "local",
        "actor_declared": who.declared.is_some(),
        "declared_actor": who.declared,
        "sub": null,
        "normalised_action": verb.as_str(),
        "force": request.force,
        "confirm": request.confirm,
        "forced": decision.forced,
        "rule": decision.rule,
        "available_before": decision.available_before,
        "available_after": decision.available_after,
        "pools": decision.pools,
        "message": decision.message,
    });
    let refused = decision.rule.is_some();
    let generations = if refused {
        None
    } else {
        Some(
            apply(
                &tx,
                &targets,
                verb,
                request.reason.as_deref(),
                &who.actor,
                now,
            )
            .map_err(store)?,
        )
    };
    if let Some(g) = &generations {
        detail["generations"] = json!(g);
    }
    let audit_id = audit(
        &tx,
        now,
        &who.actor,
        &action,
        Some(&targets),
        Some(&decision.pool),
        request.reason.as_deref(),
        if refused { "refused" } else { "accepted" },
        &detail,
    )
    .map_err(store)?;
    if let Some(g) = &generations {
        for (worker, generation) in g {
            tx.execute(
                "insert or ignore into hp_control_pending (worker_name, generation, audit_id, action, requested_at) values (?1, ?2, ?3, ?4, ?5)",
                params![worker, generation, audit_id, verb.as_str(), stamp(now)],
            )
            .map_err(store)?;
        }
    }
    tx.commit().map_err(store)?;
    Ok(ControlAnswer {
        outcome: if refused { "refused" } else { "accepted" }.into(),
        action,
        rule: decision.rule.map(str::to_owned),
        message: decision.message,
        workers: targets,
        pool: Some(decision.pool),
        available_before: decision.available_before,
        available_after: decision.available_after,
        forced: decision.forced,
        pools: decision.pools,
        generations,
        audit_id,
    })
}

/// A status row's facts the rule needs.
pub(crate) struct StatusFacts {
    pub name: String,
    pub pool: String,
    pub row: StatusRow,
    pub instance_since: Option<DateTime<Utc>>,
}

pub(crate) fn read_status(conn: &Connection) -> rusqlite::Result<BTreeMap<String, StatusFacts>> {
    let mut stmt = conn.prepare(
        "select worker_name, pool, status, last_heartbeat, heartbeat_interval_seconds, circuit_breaker_open, instance_since from hp_worker_status order by worker_name",
    )?;
    let rows = stmt.query_map([], |r| {
        let name: String = r.get(0)?;
        let mut row = StatusRow::named(name.clone());
        row.status = r.get(2)?;
        row.last_heartbeat = parse_time(r.get(3)?);
        row.heartbeat_interval_seconds = r.get(4)?;
        row.circuit_breaker_open = r.get::<_, Option<i64>>(5)?.map(|b| b != 0);
        Ok(StatusFacts {
            name,
            pool: r
                .get::<_, Option<String>>(1)?
                .unwrap_or_else(|| "default".into()),
            row,
            instance_since: parse_time(r.get(6)?),
        })
    })?;
    rows.map(|r| r.map(|f| (f.name.clone(), f))).collect()
}

/// A control row's facts the rule needs: paused, and when a restart was asked.
pub(crate) struct ControlFacts {
    paused: bool,
    restart_requested_at: Option<DateTime<Utc>>,
}

pub(crate) fn read_controls(conn: &Connection) -> rusqlite::Result<BTreeMap<String, ControlFacts>> {
    let mut stmt =
        conn.prepare("select worker_name, desired, restart_requested_at from hp_worker_control")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            ControlFacts {
                paused: r.get::<_, String>(1)? == "paused",
                restart_requested_at: parse_time(r.get(2)?),
            },
        ))
    })?;
    rows.collect()
}

pub(crate) fn read_budgets(conn: &Connection) -> rusqlite::Result<BTreeMap<String, Budget>> {
    let mut stmt =
        conn.prepare("select pool, max_unavailable, min_available, protected from hp_pool")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            Budget {
                max_unavailable: r.get(1)?,
                min_available: r.get(2)?,
                protected: r.get::<_, i64>(3)? != 0,
            },
        ))
    })?;
    rows.collect()
}

/// The view `hp_worker_availability`'s facts for one worker.
pub(crate) fn member(
    s: &StatusFacts,
    control: Option<&ControlFacts>,
    now: DateTime<Utc>,
) -> Member {
    let restart_pending = control
        .and_then(|c| c.restart_requested_at)
        .is_some_and(|asked| s.instance_since.is_none_or(|since| since < asked));
    Member {
        name: s.name.clone(),
        health: s.row.health(now),
        paused: control.is_some_and(|c| c.paused),
        restart_pending,
    }
}

/// The control-row change for a verb on these workers, in name order;
/// returns each worker's new generation.
pub(crate) fn apply(
    conn: &Connection,
    targets: &[String],
    verb: Verb,
    reason: Option<&str>,
    actor: &str,
    now: DateTime<Utc>,
) -> rusqlite::Result<BTreeMap<String, i64>> {
    let mut generations = BTreeMap::new();
    for worker in targets {
        let desired_new = match verb {
            Verb::Pause | Verb::Drain => "'paused'",
            Verb::Resume | Verb::Restart => "'active'",
            Verb::RunNow => "hp_worker_control.desired",
        };
        let generation: i64 = conn.query_row(
            &format!(
                "insert into hp_worker_control (worker_name, desired, generation, restart_seq, run_now_seq, drain_seq, restart_requested_at, last_action, reason, updated_by, updated_at)
                 values (?1, ?2, 1, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 on conflict (worker_name) do update set
                   desired = {desired_new},
                   generation = hp_worker_control.generation + 1,
                   restart_seq = hp_worker_control.restart_seq + ?3,
                   run_now_seq = hp_worker_control.run_now_seq + ?4,
                   drain_seq = hp_worker_control.drain_seq + ?5,
                   restart_requested_at = coalesce(?6, hp_worker_control.restart_requested_at),
                   last_action = ?7, reason = ?8, updated_by = ?9, updated_at = ?10
                 returning generation"
            ),
            params![
                worker,
                if matches!(verb, Verb::Pause | Verb::Drain) {
                    "paused"
                } else {
                    "active"
                },
                i64::from(verb == Verb::Restart),
                i64::from(verb == Verb::RunNow),
                i64::from(verb == Verb::Drain),
                (verb == Verb::Restart).then(|| stamp(now)),
                verb.as_str(),
                reason,
                actor,
                stamp(now),
            ],
            |r| r.get(0),
        )?;
        generations.insert(worker.clone(), generation);
    }
    Ok(generations)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn audit(
    conn: &Connection,
    now: DateTime<Utc>,
    actor: &str,
    action: &str,
    workers: Option<&[String]>,
    pool: Option<&str>,
    reason: Option<&str>,
    outcome: &str,
    detail: &Value,
) -> rusqlite::Result<i64> {
    conn.query_row(
        "insert into hp_audit_log (at, actor, action, workers, pool, reason, outcome, detail) values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) returning id",
        params![
            stamp(now),
            actor,
            action,
            workers.map(|w| json!(w).to_string()),
            pool,
            reason,
            outcome,
            detail.to_string()
        ],
        |r| r.get(0),
    )
}

/// `hp_pool_set()` on the local store: a pool's budget, null = keep.
pub(crate) fn pool_set(
    conn: &mut Connection,
    pool: &str,
    max_unavailable: Option<i64>,
    min_available: Option<i64>,
    protected: Option<bool>,
    actor: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Value, ControlError> {
    let who = caller(actor)?;
    let valid_name = !pool.is_empty()
        && pool.len() <= 128
        && pool
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
    if !valid_name {
        return Err(invalid(format!(
            "hp_pool_set: pool {} is not a pool name; use 1-128 of A-Z a-z 0-9 . _ : -",
            literal(Some(pool))
        )));
    }
    if max_unavailable.is_some_and(|n| n < 0) || min_available.is_some_and(|n| n < 0) {
        let show = |n: Option<i64>| n.map_or_else(String::new, |n| n.to_string());
        return Err(invalid(format!(
            "hp_pool_set: max_unavailable ({}) and min_available ({}) must be 0 or more",
            show(max_unavailable),
            show(min_available)
        )));
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(store)?;
    let row = |r: &rusqlite::Row| -> rusqlite::Result<Value> {
        Ok(json!({
            "pool": r.get::<_, String>(0)?,
            "max_unavailable": r.get::<_, i64>(1)?,
            "min_available": r.get::<_, i64>(2)?,
            "protected": r.get::<_, i64>(3)? != 0,
            "updated_by": r.get::<_, Option<String>>(4)?,
            "updated_at": r.get::<_, Option<String>>(5)?,
        }))
    };
    let select = "select pool, max_unavailable, min_available, protected, updated_by, updated_at from hp_pool where pool = ?1";
    let before = tx
        .query_row(select, [pool], row)
        .optional()
        .map_err(store)?;
    tx.execute(
        "insert into hp_pool (pool, max_unavailable, min_available, protected, updated_by, updated_at)
         values (?1, coalesce(?2, 1), coalesce(?3, 1), coalesce(?4, 0), ?5, ?6)
         on conflict (pool) do update set
           max_unavailable = coalesce(?2, hp_pool.max_unavailable),
           min_available = coalesce(?3, hp_pool.min_available),
           protected = coalesce(?4, hp_pool.protected),
           updated_by = ?5, updated_at = ?6",
        params![
            pool,
            max_unavailable,
            min_available,
            protected.map(i64::from),
            who.actor,
            stamp(now)
        ],
    )
    .map_err(store)?;
    let after = tx.query_row(select, [pool], row).map_err(store)?;
    let detail = json!({
        "role": "local",
        "actor_declared": who.declared.is_some(),
        "declared_actor": who.declared,
        "before": before,
        "after": after,
    });
    let audit_id = audit(
        &tx,
        now,
        &who.actor,
        "pool_set",
        None,
        Some(pool),
        None,
        "accepted",
        &detail,
    )
    .map_err(store)?;
    tx.commit().map_err(store)?;
    Ok(json!({
        "outcome": "accepted",
        "pool": pool,
        "max_unavailable": after["max_unavailable"],
        "min_available": after["min_available"],
        "protected": after["protected"],
        "audit_id": audit_id,
    }))
}
