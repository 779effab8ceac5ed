//! What the operator commands and the live view judge from the rows: a
//! worker's pool and state, availability, a request's impact before it is
//! sent, and whether a worker has applied it.

use std::collections::{BTreeMap, BTreeSet};

use heartbeat_sdk::read::{Reader, Snapshot};
use heartbeat_sdk::sidecar::{env, Operator, PoolBudget};
use heartbeat_sdk::{Health, StatusRow};
use serde_json::Value;

/// Opens the read side and the operator side of the store the flags name;
/// the error is the message to print.
pub fn open(store: &crate::cli::StoreArgs) -> Result<(Reader, Operator), String> {
    let mut settings = store.settings().map_err(|e| e.to_string())?;
    // A signed-in operator's token goes with every request, reads included
    // (with the publishable key alone they read nothing).
    if let Ok(token) = std::env::var(env::OPERATOR_JWT) {
        settings = settings.operator_token(token);
        if let Ok(key) = std::env::var(env::PUBLISHABLE_KEY) {
            settings = settings.key(key, env::PUBLISHABLE_KEY);
        }
    }
    let reader = Reader::open(&settings).map_err(|e| e.to_string())?;
    let operator = Operator::open(&settings).map_err(|e| e.to_string())?;
    Ok((reader, operator))
}

/// [`open`], or the command's end: the error said, exit 2.
pub fn open_or_usage(
    store: &crate::cli::StoreArgs,
) -> Result<(Reader, Operator), crate::exit::Exit> {
    open(store).map_err(|e| crate::exit::fail(crate::exit::USAGE, e))
}

/// `$USER@host`, recorded as declared next to `service_role`.
pub fn declared_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into());
    format!("{user}@{host}")
}

pub fn field<'a>(row: &'a StatusRow, key: &str) -> &'a Value {
    row.extra.get(key).unwrap_or(&Value::Null)
}

pub fn pool_of(row: &StatusRow) -> String {
    field(row, "pool")
        .as_str()
        .unwrap_or(env::DEFAULT_POOL)
        .to_owned()
}

pub fn state_of(row: &StatusRow) -> &str {
    field(row, "state").as_str().unwrap_or("active")
}

/// Taking work now: health running and not paused or on its way out.
pub fn available(row: &StatusRow, snapshot: &Snapshot) -> bool {
    row.health(snapshot.now) == Health::Running && state_of(row) == "active"
}

/// Whether the verb lowers availability (and so meets the budget).
pub fn lowers(action: &str) -> bool {
    matches!(action, "pause" | "disable" | "drain" | "restart")
}

/// The `controls` key a verb is honoured under.
pub fn control_key(action: &str) -> &str {
    match action {
        "disable" => "pause",
        "enable" | "resume" => "resume",
        other => other,
    }
}

/// `steer`'s impact: what it prints before acting, and what `--json` says.
pub struct Impact {
    pub lines: Vec<String>,
    /// The one pool a name must be typed for, when one must.
    pub name_needed: Option<String>,
    /// Two pools that both need their name: one request cannot confirm both.
    pub name_conflict: Option<String>,
}

pub fn impact(
    action: &str,
    targets: &[&StatusRow],
    snapshot: &Snapshot,
    budgets: &BTreeMap<String, PoolBudget>,
    whole_pool: bool,
    force: bool,
) -> Impact {
    let names: Vec<&str> = targets.iter().map(|r| r.worker_name.as_str()).collect();
    let mut lines = vec![format!("{action} {}", names.join(", "))];
    let pools: BTreeSet<String> = targets.iter().map(|r| pool_of(r)).collect();
    let mut name_needed = None;
    let mut name_conflict = None;
    for pool in &pools {
        let members: Vec<&StatusRow> = snapshot
            .rows
            .iter()
            .filter(|r| pool_of(r) == *pool)
            .collect();
        let before = members.iter().filter(|r| available(r, snapshot)).count();
        let hit = targets
            .iter()
            .filter(|r| pool_of(r) == *pool && available(r, snapshot))
            .count();
        let back = targets
            .iter()
            .filter(|r| {
                pool_of(r) == *pool
                    && r.health(snapshot.now) == Health::Running
                    && state_of(r) == "paused"
            })
            .count();
        let after = if lowers(action) {
            before.saturating_sub(hit)
        } else if matches!(action, "resume" | "enable") {
            before + back
        } else {
            before
        };
        let budget = budgets
            .get(pool)
            .cloned()
            .unwrap_or_else(|| PoolBudget::default_for(pool));
        lines.push(format!(
            "  pool {pool}: {} workers, available {before} -> {after} (budget: at most {} down, at least {} up{})",
            members.len(),
            budget.max_unavailable,
            budget.min_available,
            if budget.protected { ", protected" } else { "" },
        ));
        if lowers(action) && (whole_pool || budget.protected || force) {
            if let Some(other) = &name_needed {
                name_conflict = Some(format!("{other} and {pool}"));
            }
            name_needed = Some(pool.clone());
        }
    }
    let mut finish_in: Option<f64> = None;
    for r in targets {
        let doing = match (r.run_state.as_deref(), r.run_started_at) {
            (Some("running"), Some(started)) => {
                let since = (snapshot.now - started).num_milliseconds() as f64 / 1000.0;
                if let Some(took) = field(r, "last_run_ms").as_f64() {
                    let left = (took / 1000.0 - since).max(0.0);
                    finish_in = Some(finish_in.map_or(left, |f: f64| f.max(left)));
                }
                format!("run in flight for {since:.0} s")
            }
            _ => "no run in flight".to_owned(),
        };
        let minutes = r.uptime_seconds.unwrap_or(0).max(1) as f64 / 60.0;
        let per_minute = r.jobs_processed.unwrap_or(0) as f64 / minutes;
        lines.push(format!(
            "  {:<24} {:<8} {:<10} {doing}, {per_minute:.1} jobs/min",
            r.worker_name,
            r.health(snapshot.now).as_str(),
            state_of(r),
        ));
        let how = field(r, "controls")[control_key(action)]
            .as_str()
            .map(str::to_owned);
        match how.as_deref() {
            Some("no") => lines.push(format!(
                "  {} does not honour {action}: its row says so (the request is recorded; nothing changes until it does)",
                r.worker_name
            )),
            Some(how) => lines.push(format!("  {}: {action} {how}", r.worker_name)),
            None => {}
        }
    }
    if let Some(left) = finish_in {
        lines.push(format!(
            "  the runs in flight should finish in about {left:.0} s (from their last durations)"
        ));
    }
    Impact {
        lines,
        name_needed,
        name_conflict,
    }
}

/// What a worker's row says once it has applied `action`.
pub fn applied(action: &str, row: &StatusRow, generation: i64) -> bool {
    let seen = field(row, "control_generation").as_i64().unwrap_or(-1) >= generation;
    let state = state_of(row);
    // The state and the generation are written in one row: a row that has
    // seen the request's generation and is in the state it asks for has
    // done it (a restart that is over reads active again).
    seen && match action {
        "pause" | "disable" => state == "paused",
        // Stopped and paused (the sidecar), or exited for its supervisor (an SDK worker).
        "drain" => {
            state == "paused" || (state == "draining" && row.status.as_deref() == Some("stopped"))
        }
        "resume" | "enable" | "restart" => state == "active",
        _ => true,
    }
}
