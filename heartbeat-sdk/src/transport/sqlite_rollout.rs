//! Rolling restarts on the local store: `hp_rollout_start()`,
//! `hp_rollout_step()` and `hp_rollout_abort()` as `sql/` has them, each one
//! transaction, answering the same JSON (`hp_rollout_summary()`). A step
//! restarts the next batch only when every worker of the previous one is
//! back (a new instance, running, active) and has stayed so for the settle
//! time; a worker that does not come back within the timeout makes the
//! rollout `stuck`, with its name and why.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde_json::{json, Value};

use crate::model::control::{Budget, ControlError, Member, Verb};
use crate::model::health::Health;
use crate::transport::sqlite_control::{
    apply, audit, caller, invalid, member, parse_time, read_budgets, read_controls, read_status,
    stamp, store,
};

pub(crate) const SCHEMA: &str = "
create table if not exists hp_rollout (
  id integer primary key autoincrement,
  pool text not null,
  batch_size integer not null check (batch_size >= 1),
  settle_seconds integer not null check (settle_seconds >= 0),
  timeout_seconds integer not null check (timeout_seconds >= 1),
  state text not null default 'running' check (state in ('running', 'done', 'aborted', 'stuck')),
  reason text,
  state_reason text,
  created_by text not null,
  created_at text not null,
  updated_at text not null,
  no_capacity_since text
);
create unique index if not exists hp_rollout_one_running_per_pool on hp_rollout (pool) where state = 'running';
create table if not exists hp_rollout_worker (
  rollout_id integer not null references hp_rollout (id),
  worker_name text not null,
  position integer not null,
  state text not null check (state in ('pending', 'restarting', 'done', 'skipped')),
  skip_reason text,
  old_instance_id text,
  new_instance_id text,
  restart_requested_at text,
  back_at text,
  done_at text,
  primary key (rollout_id, worker_name)
);
";

/// `hp_rollout_start()`'s arguments.
#[derive(Debug, Clone)]
pub(crate) struct RolloutStart<'a> {
    pub pool: &'a str,
    pub max_unavailable: Option<i64>,
    pub settle_seconds: i64,
    pub timeout_seconds: i64,
    pub reason: Option<&'a str>,
    pub confirm: Option<&'a str>,
    pub actor: Option<&'a str>,
}

/// Why a member is not available, as the view says it.
fn unavailable_reason(m: &Member) -> String {
    if m.health != Health::Running {
        m.health.as_str().to_owned()
    } else if m.paused {
        "paused".into()
    } else {
        "restart pending".into()
    }
}

/// A member as the rule sees it, its `instance_id`, and when that instance
/// first wrote (the store's clock).
type MemberFacts = (Member, Option<String>, Option<DateTime<Utc>>);

/// A rollout's row: pool, state, batch size, settle and timeout seconds,
/// reason, since when no capacity.
type RolloutRow = (
    String,
    String,
    i64,
    i64,
    i64,
    Option<String>,
    Option<String>,
);

/// The pool's members as the rule sees them, in name order, with the
/// status facts a rollout needs (instance and since when).
fn members(
    conn: &Connection,
    pool: &str,
    now: DateTime<Utc>,
) -> rusqlite::Result<Vec<MemberFacts>> {
    let status = read_status(conn)?;
    let controls = read_controls(conn)?;
    let mut instances =
        conn.prepare("select instance_id from hp_worker_status where worker_name = ?1")?;
    let mut out = Vec::new();
    for s in status.values().filter(|s| s.pool == pool) {
        let instance: Option<String> = instances
            .query_row(params![s.name], |r| r.get(0))
            .optional()?
            .flatten();
        out.push((
            member(s, controls.get(&s.name), now),
            instance,
            s.instance_since,
        ));
    }
    Ok(out)
}

fn summary(conn: &Connection, id: i64) -> rusqlite::Result<Value> {
    let (pool, state, state_reason, batch, settle, timeout, reason, created_by): (
        String,
        String,
        Option<String>,
        i64,
        i64,
        i64,
        Option<String>,
        String,
    ) = conn.query_row(
        "select pool, state, state_reason, batch_size, settle_seconds, timeout_seconds, reason, created_by from hp_rollout where id = ?1",
        params![id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?)),
    )?;
    let mut workers = serde_json::Map::new();
    let mut stmt = conn.prepare(
        "select worker_name, state, skip_reason from hp_rollout_worker where rollout_id = ?1 order by position",
    )?;
    let rows = stmt.query_map(params![id], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Option<String>>(2)?,
        ))
    })?;
    for row in rows {
        let (name, state, skip) = row?;
        let text = match skip {
            Some(why) => format!("{state}: {why}"),
            None => state,
        };
        workers.insert(name, Value::from(text));
    }
    Ok(json!({
        "rollout_id": id, "pool": pool, "state": state, "state_reason": state_reason,
        "batch_size": batch, "settle_seconds": settle, "timeout_seconds": timeout,
        "reason": reason, "created_by": created_by, "workers": workers,
    }))
}

fn merge(mut base: Value, extra: Value) -> Value {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        b.extend(e);
    }
    base
}

/// `hp_rollout_start()` on the local store.
pub(crate) fn start(
    conn: &mut Connection,
    args: &RolloutStart<'_>,
    now: DateTime<Utc>,
) -> Result<Value, ControlError> {
    let who = caller(args.actor)?;
    if let Some(n) = args.max_unavailable.filter(|n| *n < 1) {
        return Err(invalid(format!(
            "hp_rollout_start: max_unavailable is {n}; a batch restarts at least 1 worker"
        )));
    }
    if args.settle_seconds < 0 {
        return Err(invalid(format!(
            "hp_rollout_start: settle_seconds is {}; give 0 or more",
            args.settle_seconds
        )));
    }
    if args.timeout_seconds < 1 {
        return Err(invalid(format!(
            "hp_rollout_start: timeout_seconds is {}; give 1 or more",
            args.timeout_seconds
        )));
    }
    if let Some(r) = args.reason.filter(|r| r.len() > 500) {
        return Err(invalid(format!(
            "hp_rollout_start: reason is {} bytes; keep it to 500 bytes",
            r.len()
        )));
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(store)?;
    let pool = args.pool;
    let members = members(&tx, pool, now).map_err(store)?;
    if members.is_empty() {
        return Err(invalid(format!(
            "hp_rollout_start: pool '{pool}' has no workers; check the name (a worker's pool is the pool column of its row)"
        )));
    }
    let budget = read_budgets(&tx)
        .map_err(store)?
        .get(pool)
        .copied()
        .unwrap_or_else(Budget::default);
    let allowed = budget.max_unavailable.max(1);
    let batch = args.max_unavailable.unwrap_or(allowed);
    let running: Option<i64> = tx
        .query_row(
            "select id from hp_rollout where pool = ?1 and state = 'running'",
            params![pool],
            |r| r.get(0),
        )
        .optional()
        .map_err(store)?;
    let refusal = if let Some(id) = running {
        Some(("rollout_running", format!("pool {pool} already has rollout {id} running; wait for it, or stop it with hp_rollout_abort(id := {id})")))
    } else if budget.protected && args.confirm != Some(pool) {
        Some(("protected", format!("a rollout of pool {pool} needs confirmation: the pool is protected. Call again with confirm = '{pool}', the pool's name.")))
    } else if batch > allowed && args.confirm != Some(pool) {
        Some(("max_unavailable", format!(
            "a rollout of pool {pool} in batches of {batch} would have more down at once than its budget allows ({allowed}, max_unavailable). Call again with confirm = '{pool}', the pool's name, to go over it, or raise the budget with hp_pool_set(pool := '{pool}', max_unavailable := {batch})."
        )))
    } else {
        None
    };
    let detail = json!({"batch_size": batch, "settle_seconds": args.settle_seconds, "timeout_seconds": args.timeout_seconds, "declared_actor": who.declared});
    if let Some((rule, message)) = refusal {
        let mut d = detail.clone();
        d["rule"] = json!(rule);
        d["message"] = json!(message);
        let audit_id = audit(
            &tx,
            now,
            &who.actor,
            "rollout_start",
            None,
            Some(pool),
            args.reason,
            "refused",
            &d,
        )
        .map_err(store)?;
        tx.commit().map_err(store)?;
        return Ok(
            json!({"outcome": "refused", "rule": rule, "message": message, "pool": pool, "rollout_id": running, "audit_id": audit_id}),
        );
    }
    tx.execute(
        "insert into hp_rollout (pool, batch_size, settle_seconds, timeout_seconds, reason, created_by, created_at, updated_at) values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
        params![pool, batch, args.settle_seconds, args.timeout_seconds, args.reason, who.actor, stamp(now)],
    )
    .map_err(store)?;
    let id = tx.last_insert_rowid();
    let mut pending = Vec::new();
    for (position, (m, _, _)) in members.iter().enumerate() {
        let (state, skip) = if m.available() {
            pending.push(m.name.clone());
            ("pending", None)
        } else {
            ("skipped", Some(unavailable_reason(m)))
        };
        tx.execute(
            "insert into hp_rollout_worker (rollout_id, worker_name, position, state, skip_reason) values (?1, ?2, ?3, ?4, ?5)",
            params![id, m.name, position as i64 + 1, state, skip],
        )
        .map_err(store)?;
    }
    let result = summary(&tx, id).map_err(store)?;
    let message = format!(
        "rollout {id} of pool {pool}: {} workers, {batch} at a time",
        pending.len()
    );
    let mut d = detail;
    d["rollout_id"] = json!(id);
    d["message"] = json!(message);
    d["workers"] = result["workers"].clone();
    let audit_id = audit(
        &tx,
        now,
        &who.actor,
        "rollout_start",
        Some(&pending),
        Some(pool),
        args.reason,
        "accepted",
        &d,
    )
    .map_err(store)?;
    tx.commit().map_err(store)?;
    Ok(merge(
        result,
        json!({"outcome": "accepted", "message": message, "audit_id": audit_id}),
    ))
}

/// `hp_rollout_step()` on the local store: idempotent, one transaction.
pub(crate) fn step(
    conn: &mut Connection,
    id: i64,
    now: DateTime<Utc>,
) -> Result<Value, ControlError> {
    let who = caller(None)?;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(store)?;
    let found: Option<RolloutRow> = tx
        .query_row(
            "select pool, state, batch_size, settle_seconds, timeout_seconds, reason, no_capacity_since from hp_rollout where id = ?1",
            params![id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)),
        )
        .optional()
        .map_err(store)?;
    let Some((pool, state, batch, settle, timeout, reason, no_capacity_since)) = found else {
        return Err(invalid(format!(
            "hp_rollout_step: no rollout with id {id}; see the hp_rollout table"
        )));
    };
    if state != "running" {
        return summary(&tx, id).map_err(store);
    }
    let members = members(&tx, &pool, now).map_err(store)?;
    let find = |name: &str| members.iter().find(|(m, _, _)| m.name == name);
    let base = json!({"rollout_id": id});
    let settle = chrono::Duration::seconds(settle);
    let timeout_d = chrono::Duration::seconds(timeout);

    // Restarting workers: back and settled -> done; not back in time -> stuck.
    let restarting: Vec<(String, Option<DateTime<Utc>>, Option<String>)> = {
        let mut stmt = tx
            .prepare("select worker_name, restart_requested_at, old_instance_id from hp_rollout_worker where rollout_id = ?1 and state = 'restarting' order by position")
            .map_err(store)?;
        let rows = stmt
            .query_map(params![id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    parse_time(r.get(1)?),
                    r.get::<_, Option<String>>(2)?,
                ))
            })
            .map_err(store)?;
        rows.collect::<rusqlite::Result<_>>().map_err(store)?
    };
    let mut stuck = Vec::new();
    for (name, asked, old_instance) in &restarting {
        let asked = asked.unwrap_or(now);
        let facts = find(name);
        let back = facts.is_some_and(|(m, _, since)| {
            since.is_some_and(|s| s >= asked) && m.health == Health::Running && !m.paused
        });
        if back {
            let (_, instance, since) = facts.expect("back means found");
            let since = since.expect("back means a since");
            if since + settle <= now {
                tx.execute(
                    "update hp_rollout_worker set state = 'done', back_at = ?3, new_instance_id = ?4, done_at = ?5 where rollout_id = ?1 and worker_name = ?2",
                    params![id, name, stamp(since), instance, stamp(now)],
                )
                .map_err(store)?;
                let mut d = base.clone();
                d["old_instance_id"] = json!(old_instance);
                d["new_instance_id"] = json!(instance);
                d["back_at"] = json!(stamp(since));
                d["settle_seconds"] = json!(settle.num_seconds());
                audit(
                    &tx,
                    now,
                    &who.actor,
                    "restart",
                    Some(std::slice::from_ref(name)),
                    Some(&pool),
                    reason.as_deref(),
                    "applied",
                    &d,
                )
                .map_err(store)?;
            } else {
                tx.execute(
                    "update hp_rollout_worker set back_at = ?3 where rollout_id = ?1 and worker_name = ?2",
                    params![id, name, stamp(since)],
                )
                .map_err(store)?;
            }
        } else if now > asked + timeout_d {
            let why = match facts {
                None => "its status row is gone".to_owned(),
                Some((m, _, _)) if m.health != Health::Running => {
                    format!("its row says {}", m.health.as_str())
                }
                Some((_, instance, since)) if since.is_none_or(|s| s < asked) => {
                    format!(
                        "still the old instance ({})",
                        instance.as_deref().unwrap_or("no instance_id")
                    )
                }
                Some((m, _, _)) if m.paused => "it was paused meanwhile".into(),
                Some((m, _, _)) => unavailable_reason(m),
            };
            stuck.push((
                name.clone(),
                format!("{name} did not come back within {timeout} s: {why}"),
            ));
        }
    }
    if !stuck.is_empty() {
        let text: Vec<&str> = stuck.iter().map(|(_, t)| t.as_str()).collect();
        let text = text.join("; ");
        tx.execute("update hp_rollout set state = 'stuck', state_reason = ?2, updated_at = ?3 where id = ?1", params![id, text, stamp(now)])
            .map_err(store)?;
        let names: Vec<String> = stuck.into_iter().map(|(n, _)| n).collect();
        let mut d = base.clone();
        d["message"] = json!(text);
        audit(
            &tx,
            now,
            &who.actor,
            "rollout",
            Some(&names),
            Some(&pool),
            reason.as_deref(),
            "timed_out",
            &d,
        )
        .map_err(store)?;
        let s = summary(&tx, id).map_err(store)?;
        tx.commit().map_err(store)?;
        return Ok(s);
    }
    let count = |state: &str| -> Result<i64, ControlError> {
        tx.query_row(
            "select count(*) from hp_rollout_worker where rollout_id = ?1 and state = ?2",
            params![id, state],
            |r| r.get(0),
        )
        .map_err(store)
    };
    if count("restarting")? > 0 {
        tx.execute(
            "update hp_rollout set updated_at = ?2 where id = ?1",
            params![id, stamp(now)],
        )
        .map_err(store)?;
        let s = summary(&tx, id).map_err(store)?;
        tx.commit().map_err(store)?;
        return Ok(s);
    }

    // The next batch: as many as the batch size allows, the pool's
    // unavailable workers counted.
    let down: Vec<String> = members
        .iter()
        .filter(|(m, _, _)| !m.available())
        .map(|(m, _, _)| format!("{} ({})", m.name, unavailable_reason(m)))
        .collect();
    let capacity = batch - down.len() as i64;
    let pending: Vec<String> = {
        let mut stmt = tx
            .prepare("select worker_name from hp_rollout_worker where rollout_id = ?1 and state = 'pending' order by position")
            .map_err(store)?;
        let rows = stmt
            .query_map(params![id], |r| r.get::<_, String>(0))
            .map_err(store)?;
        rows.collect::<rusqlite::Result<_>>().map_err(store)?
    };
    let mut chosen: Vec<String> = Vec::new();
    for name in &pending {
        match find(name) {
            Some((m, _, _)) if m.available() => {
                if (chosen.len() as i64) < capacity {
                    chosen.push(name.clone());
                } else {
                    break;
                }
            }
            facts => {
                let why = facts.map_or_else(
                    || "its status row is gone".to_owned(),
                    |(m, _, _)| unavailable_reason(m),
                );
                tx.execute(
                    "update hp_rollout_worker set state = 'skipped', skip_reason = ?3 where rollout_id = ?1 and worker_name = ?2",
                    params![id, name, format!("{why} when its turn came")],
                )
                .map_err(store)?;
            }
        }
    }
    if chosen.is_empty() {
        if count("pending")? == 0 {
            let reason_text = format!(
                "{} restarted, {} skipped",
                count("done")?,
                count("skipped")?
            );
            tx.execute(
                "update hp_rollout set state = 'done', state_reason = ?2, updated_at = ?3, no_capacity_since = null where id = ?1",
                params![id, reason_text, stamp(now)],
            )
            .map_err(store)?;
            let done: Vec<String> = {
                let mut stmt = tx
                    .prepare("select worker_name from hp_rollout_worker where rollout_id = ?1 and state = 'done' order by position")
                    .map_err(store)?;
                let rows = stmt
                    .query_map(params![id], |r| r.get::<_, String>(0))
                    .map_err(store)?;
                rows.collect::<rusqlite::Result<_>>().map_err(store)?
            };
            let mut d = base.clone();
            d["message"] = json!("rollout done");
            d["workers"] = summary(&tx, id).map_err(store)?["workers"].clone();
            audit(
                &tx,
                now,
                &who.actor,
                "rollout",
                Some(&done),
                Some(&pool),
                reason.as_deref(),
                "applied",
                &d,
            )
            .map_err(store)?;
        } else {
            match parse_time(no_capacity_since) {
                None => {
                    tx.execute("update hp_rollout set no_capacity_since = ?2, updated_at = ?2 where id = ?1", params![id, stamp(now)])
                        .map_err(store)?;
                }
                Some(since) if now > since + timeout_d => {
                    let text = format!(
                        "no capacity for {timeout} s: pool {pool} has {} unavailable ({}) and the batch size is {batch}",
                        down.len(),
                        down.join(", ")
                    );
                    tx.execute("update hp_rollout set state = 'stuck', state_reason = ?2, updated_at = ?3 where id = ?1", params![id, text, stamp(now)])
                        .map_err(store)?;
                    let names: Vec<String> = members
                        .iter()
                        .filter(|(m, _, _)| !m.available())
                        .map(|(m, _, _)| m.name.clone())
                        .collect();
                    let mut d = base.clone();
                    d["message"] = json!(text);
                    audit(
                        &tx,
                        now,
                        &who.actor,
                        "rollout",
                        Some(&names),
                        Some(&pool),
                        reason.as_deref(),
                        "timed_out",
                        &d,
                    )
                    .map_err(store)?;
                }
                Some(_) => {}
            }
        }
        let s = summary(&tx, id).map_err(store)?;
        tx.commit().map_err(store)?;
        return Ok(s);
    }

    let generations = apply(
        &tx,
        &chosen,
        Verb::Restart,
        reason.as_deref(),
        &who.actor,
        now,
    )
    .map_err(store)?;
    for name in &chosen {
        let old = find(name).and_then(|(_, instance, _)| instance.clone());
        tx.execute(
            "update hp_rollout_worker set state = 'restarting', restart_requested_at = ?3, old_instance_id = ?4 where rollout_id = ?1 and worker_name = ?2",
            params![id, name, stamp(now), old],
        )
        .map_err(store)?;
    }
    tx.execute(
        "update hp_rollout set no_capacity_since = null, updated_at = ?2 where id = ?1",
        params![id, stamp(now)],
    )
    .map_err(store)?;
    let mut d = base;
    d["capacity"] = json!(capacity);
    d["unavailable_before"] = json!(down.len());
    d["batch_size"] = json!(batch);
    d["generations"] = json!(generations);
    let audit_id = audit(
        &tx,
        now,
        &who.actor,
        "restart",
        Some(&chosen),
        Some(&pool),
        reason.as_deref(),
        "accepted",
        &d,
    )
    .map_err(store)?;
    for (worker, generation) in &generations {
        tx.execute(
            "insert or ignore into hp_control_pending (worker_name, generation, audit_id, action, requested_at) values (?1, ?2, ?3, 'restart', ?4)",
            params![worker, generation, audit_id, stamp(now)],
        )
        .map_err(store)?;
    }
    let s = summary(&tx, id).map_err(store)?;
    tx.commit().map_err(store)?;
    Ok(merge(s, json!({"restarted": chosen})))
}

/// `hp_rollout_abort()` on the local store.
pub(crate) fn abort(
    conn: &mut Connection,
    id: i64,
    reason: Option<&str>,
    actor: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Value, ControlError> {
    let who = caller(actor)?;
    if let Some(r) = reason.filter(|r| r.len() > 500) {
        return Err(invalid(format!(
            "hp_rollout_abort: reason is {} bytes; keep it to 500 bytes",
            r.len()
        )));
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(store)?;
    let found: Option<(String, String)> = tx
        .query_row(
            "select pool, state from hp_rollout where id = ?1",
            params![id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(store)?;
    let Some((pool, state)) = found else {
        return Err(invalid(format!(
            "hp_rollout_abort: no rollout with id {id}; see the hp_rollout table"
        )));
    };
    if state != "running" && state != "stuck" {
        return Err(invalid(format!(
            "hp_rollout_abort: rollout {id} is already {state}; only a running or stuck rollout can be aborted"
        )));
    }
    let why = format!(
        "aborted by {}{}",
        who.actor,
        reason.map(|r| format!(": {r}")).unwrap_or_default()
    );
    tx.execute(
        "update hp_rollout set state = 'aborted', state_reason = ?2, updated_at = ?3 where id = ?1",
        params![id, why, stamp(now)],
    )
    .map_err(store)?;
    let d = json!({"rollout_id": id, "state_before": state, "declared_actor": who.declared});
    let audit_id = audit(
        &tx,
        now,
        &who.actor,
        "rollout_abort",
        None,
        Some(&pool),
        reason,
        "accepted",
        &d,
    )
    .map_err(store)?;
    let s = summary(&tx, id).map_err(store)?;
    tx.commit().map_err(store)?;
    Ok(merge(
        s,
        json!({"outcome": "accepted", "audit_id": audit_id}),
    ))
}

/// The rollout's summary (`hp_rollout_summary()`), or the pool's latest.
pub(crate) fn status(
    conn: &Connection,
    id: Option<i64>,
    pool: Option<&str>,
) -> Result<Option<Value>, ControlError> {
    let id: Option<i64> = match (id, pool) {
        (Some(id), _) => Some(id),
        (None, Some(pool)) => conn
            .query_row(
                "select max(id) from hp_rollout where pool = ?1",
                params![pool],
                |r| r.get(0),
            )
            .map_err(store)?,
        (None, None) => conn
            .query_row("select max(id) from hp_rollout", [], |r| r.get(0))
            .map_err(store)?,
    };
    match id {
        Some(id) => summary(conn, id).optional().map_err(store),
        None => Ok(None),
    }
}
