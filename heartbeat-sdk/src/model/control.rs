//! Control: what an operator asks (`ControlRequest`), what the store answers
//! (`ControlAnswer`), and the rule that decides, written once in Rust for the
//! local store. `hp_control()` in `sql/` is the same rule for PostgreSQL; the
//! scenario file `tests/control_scenarios.json` runs against both.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::health::Health;

/// What a request does, once `enable`/`disable` are read as `resume`/`pause`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verb {
    /// Stop taking new work, finish the current job, stay alive.
    Pause,
    /// Take work again.
    Resume,
    /// Pause, and end the current work now.
    Drain,
    /// Finish the current work and come back active (a new instance).
    Restart,
    /// Start one run at once.
    RunNow,
}

impl Verb {
    /// Reads an action as `hp_control()` does (`enable` = resume, `disable` = pause).
    pub fn parse(action: &str) -> Option<Verb> {
        Some(match action {
            "pause" | "disable" => Verb::Pause,
            "resume" | "enable" => Verb::Resume,
            "drain" => Verb::Drain,
            "restart" => Verb::Restart,
            "run_now" => Verb::RunNow,
            _ => return None,
        })
    }

    /// The name in the store (`run_now`).
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Pause => "pause",
            Verb::Resume => "resume",
            Verb::Drain => "drain",
            Verb::Restart => "restart",
            Verb::RunNow => "run_now",
        }
    }

    /// Whether it takes workers out of service (and so is checked against budgets).
    pub fn lowers_availability(self) -> bool {
        matches!(self, Verb::Pause | Verb::Drain | Verb::Restart)
    }
}

/// A request to steer workers: `hp_control()`'s arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ControlRequest {
    /// `pause`, `resume`, `drain`, `restart`, `run_now`, `enable`, `disable`.
    pub action: Option<String>,
    /// The workers, or...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<Vec<String>>,
    /// ...a whole pool.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Why, for the audit log (at most 500 bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The pool's name, typed to confirm.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirm: Option<String>,
    /// Override the budget (counts only with `confirm` = the pool).
    pub force: bool,
    /// Who asks (`user@host`), recorded as declared.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

impl ControlRequest {
    /// `action` on these workers.
    pub fn workers(action: impl Into<String>, workers: Vec<String>) -> Self {
        ControlRequest {
            action: Some(action.into()),
            workers: Some(workers),
            ..ControlRequest::default()
        }
    }

    /// `action` on every worker of `pool`.
    pub fn pool(action: impl Into<String>, pool: impl Into<String>) -> Self {
        ControlRequest {
            action: Some(action.into()),
            pool: Some(pool.into()),
            ..ControlRequest::default()
        }
    }
}

/// One pool's numbers in an answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolImpact {
    /// The pool.
    pub pool: String,
    /// Its workers (status rows).
    pub members: i64,
    /// The request's workers in it.
    pub targets: Option<Vec<String>>,
    /// Available now.
    pub available_before: i64,
    /// Available once the request is applied.
    pub available_after: i64,
    /// Its budget.
    pub max_unavailable: i64,
    /// Its floor.
    pub min_available: i64,
    /// Lowering actions need its name typed.
    pub protected: bool,
}

/// What the store answered: accepted (and applied to the control rows) or
/// refused (nothing changed), with the numbers; audited either way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ControlAnswer {
    /// `accepted` or `refused`.
    pub outcome: String,
    /// The action as given.
    pub action: String,
    /// The rule broken: `protected`, `last_available`, `max_unavailable`, `min_available`.
    pub rule: Option<String>,
    /// In words, with the numbers and the fix.
    pub message: String,
    /// The workers acted on.
    pub workers: Vec<String>,
    /// The pool the numbers are about (the refusing one, else the first).
    pub pool: Option<String>,
    /// Available in that pool now.
    pub available_before: i64,
    /// Available in that pool once applied.
    pub available_after: i64,
    /// Whether `force` with `confirm` overrode the budget.
    pub forced: bool,
    /// Every pool touched.
    pub pools: Vec<PoolImpact>,
    /// Each worker's new generation (accepted only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generations: Option<BTreeMap<String, i64>>,
    /// The audit row.
    pub audit_id: i64,
}

impl ControlAnswer {
    /// Whether the request was accepted.
    pub fn accepted(&self) -> bool {
        self.outcome == "accepted"
    }
}

/// Why a control request could not be answered (a refusal is an answer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// Bad input (SQLSTATE 22023): nothing was written.
    #[error("{message}")]
    Invalid {
        /// `22023`, or another SQLSTATE the store raised.
        code: String,
        /// What is wrong and the fix.
        message: String,
    },
    /// The caller may not steer workers (42501).
    #[error("{0}")]
    Denied(String),
    /// The store could not be reached or failed.
    #[error("{0}")]
    Store(String),
}

/// A pool's budget as an operator sees it (`heartbeat-sidecar pool list`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolBudget {
    /// The pool.
    pub pool: String,
    /// At most this many of its workers unavailable at once.
    pub max_unavailable: i64,
    /// At least this many available.
    pub min_available: i64,
    /// Lowering availability needs the pool's name typed.
    pub protected: bool,
}

impl PoolBudget {
    /// A pool with no `hp_pool` row has these.
    pub fn default_for(pool: &str) -> PoolBudget {
        let b = Budget::default();
        PoolBudget {
            pool: pool.to_owned(),
            max_unavailable: b.max_unavailable,
            min_available: b.min_available,
            protected: b.protected,
        }
    }
}

/// One row of `hp_audit_log`: who asked what, when, and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Grows with every row.
    pub id: i64,
    /// The store's clock.
    pub at: chrono::DateTime<chrono::Utc>,
    /// Who asked (from the JWT; or `service_role` with a declared `user@host`).
    pub actor: String,
    /// The verb, `pool_set`, a rollout step...
    pub action: String,
    /// The workers it was about.
    #[serde(default)]
    pub workers: Option<Vec<String>>,
    /// The pool it was about.
    #[serde(default)]
    pub pool: Option<String>,
    /// Why, as the operator said.
    #[serde(default)]
    pub reason: Option<String>,
    /// `accepted`, `refused`, `applied`, `failed` or `timed_out`.
    pub outcome: String,
    /// The rule, the numbers, the generations.
    #[serde(default)]
    pub detail: serde_json::Value,
}

/// A pool's budget; a pool with no `hp_pool` row has the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Budget {
    pub max_unavailable: i64,
    pub min_available: i64,
    pub protected: bool,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            max_unavailable: 1,
            min_available: 1,
            protected: false,
        }
    }
}

/// A worker as the rule sees it (the view `hp_worker_availability`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Member {
    pub name: String,
    pub health: Health,
    pub paused: bool,
    pub restart_pending: bool,
}

impl Member {
    /// Health running, desired active, no restart pending.
    pub fn available(&self) -> bool {
        self.health == Health::Running && !self.paused && !self.restart_pending
    }
}

/// One pool, its budget and its members, counted under its lock.
#[derive(Debug, Clone)]
pub(crate) struct PoolState {
    pub pool: String,
    pub budget: Budget,
    pub members: Vec<Member>,
}

/// The rule's verdict on a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decision {
    pub rule: Option<&'static str>,
    pub message: String,
    pub pool: String,
    pub available_before: i64,
    pub available_after: i64,
    pub forced: bool,
    pub pools: Vec<PoolImpact>,
}

/// "a, b, c, d, e and 3 more": at most five names.
fn first_names(names: &[String]) -> String {
    let mut text = names.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > 5 {
        text.push_str(&format!(" and {} more", names.len() - 5));
    }
    text
}

/// The rule of `hp_control()`, for pools given in sorted order and targets
/// sorted and distinct. Keep equal to the SQL: the scenario file runs both.
pub(crate) fn decide(
    action: &str,
    verb: Verb,
    targets: &[String],
    pools: &[PoolState],
    force: bool,
    confirm: Option<&str>,
) -> Decision {
    let ing = match action {
        "pause" => "pausing",
        "disable" => "disabling",
        "drain" => "draining",
        "restart" => "restarting",
        _ => "",
    };
    let lowering = verb.lowers_availability();
    let mut rule: Option<&'static str> = None;
    let mut message = String::new();
    let mut chosen: Option<(String, i64, i64, bool)> = None;
    let mut first: Option<(String, i64, i64, bool)> = None;
    let mut impacts = Vec::new();
    for p in pools {
        let is_target = |m: &&Member| targets.contains(&m.name);
        let members = p.members.len() as i64;
        let available = p.members.iter().filter(|m| m.available()).count() as i64;
        let down: Vec<String> = p
            .members
            .iter()
            .filter(|m| m.available())
            .filter(is_target)
            .map(|m| m.name.clone())
            .collect();
        let back_up = p
            .members
            .iter()
            .filter(is_target)
            .filter(|m| m.health == Health::Running && m.paused && !m.restart_pending)
            .count() as i64;
        let after = match verb {
            _ if lowering => available - down.len() as i64,
            Verb::Resume => available + back_up,
            _ => available,
        };
        let forced = force && confirm == Some(p.pool.as_str());
        let budget = p.budget;
        if rule.is_none() && lowering && !down.is_empty() {
            let names = first_names(&down);
            let pool = &p.pool;
            let refusal = if budget.protected && confirm != Some(pool.as_str()) {
                Some((
                    "protected",
                    format!("{ing} {names} needs confirmation: pool {pool} is protected. Call again with confirm = '{pool}', the pool's name."),
                ))
            } else if after == 0 && available > 0 && !forced {
                Some((
                    "last_available",
                    format!("{ing} {names} would leave pool {pool} with no available worker ({available} of {members} available now). Taking a whole pool down needs force = true and confirm = '{pool}'."),
                ))
            } else if members - after > budget.max_unavailable && !forced {
                Some((
                    "max_unavailable",
                    format!(
                        "{ing} {names} would leave pool {pool} with {} of {members} workers unavailable; its budget allows {} (max_unavailable). Wait for the unavailable workers to come back, or raise the budget with hp_pool_set(pool := '{pool}', max_unavailable := {}), or override with force = true and confirm = '{pool}'.",
                        members - after,
                        budget.max_unavailable,
                        members - after
                    ),
                ))
            } else if after < budget.min_available && !forced {
                Some((
                    "min_available",
                    format!(
                        "{ing} {names} would leave pool {pool} with {after} of {members} workers available; it needs at least {} (min_available). Wait for the unavailable workers to come back, or lower it with hp_pool_set(pool := '{pool}', min_available := {after}), or override with force = true and confirm = '{pool}'.",
                        budget.min_available
                    ),
                ))
            } else {
                None
            };
            if let Some((r, m)) = refusal {
                rule = Some(r);
                message = m;
                chosen = Some((p.pool.clone(), available, after, forced));
            }
        }
        if first.is_none() {
            first = Some((p.pool.clone(), available, after, forced));
        }
        let in_pool: Vec<String> = p
            .members
            .iter()
            .filter(is_target)
            .map(|m| m.name.clone())
            .collect();
        impacts.push(PoolImpact {
            pool: p.pool.clone(),
            members,
            targets: (!in_pool.is_empty()).then_some(in_pool),
            available_before: available,
            available_after: after,
            max_unavailable: budget.max_unavailable,
            min_available: budget.min_available,
            protected: budget.protected,
        });
    }
    let (pool, available_before, available_after, forced) =
        chosen.or(first).unwrap_or((String::new(), 0, 0, false));
    if rule.is_none() {
        message = format!(
            "{action} {}{}: pool {pool} has {available_before} available now, {available_after} once applied.",
            first_names(targets),
            if forced && lowering { " (forced)" } else { "" },
        );
    }
    Decision {
        rule,
        message,
        pool,
        available_before,
        available_after,
        forced,
        pools: impacts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, health: Health, paused: bool) -> Member {
        Member {
            name: name.into(),
            health,
            paused,
            restart_pending: false,
        }
    }

    #[test]
    fn verbs_read_as_the_sql_reads_them() {
        assert_eq!(Verb::parse("enable"), Some(Verb::Resume));
        assert_eq!(Verb::parse("disable"), Some(Verb::Pause));
        assert_eq!(Verb::parse("run-now"), None);
        assert!(Verb::Restart.lowers_availability());
        assert!(!Verb::RunNow.lowers_availability());
    }

    #[test]
    fn workers_already_down_never_refuse() {
        let pool = PoolState {
            pool: "p".into(),
            budget: Budget::default(),
            members: vec![
                member("a", Health::Crashed, false),
                member("b", Health::Stale, false),
            ],
        };
        let d = decide("pause", Verb::Pause, &["a".into()], &[pool], false, None);
        assert_eq!(d.rule, None, "{}", d.message);
        assert_eq!((d.available_before, d.available_after), (0, 0));
    }

    #[test]
    fn names_are_cut_at_five() {
        let names: Vec<String> = (1..=8).map(|i| format!("w{i}")).collect();
        assert_eq!(first_names(&names), "w1, w2, w3, w4, w5 and 3 more");
    }
}
