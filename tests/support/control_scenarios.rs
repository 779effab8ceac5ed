//! The control rules as data: `tests/control_scenarios.json`, read by the
//! PostgreSQL runner (`tests/control_sql.rs`) and meant for the local store's
//! runner too. A runner only has to build the state a scenario describes,
//! make the request, and report what it sees as an [`Observed`]; [`check`]
//! compares that with the scenario's expectations the same way for every store.
//!
//! # The file
//!
//! An array of scenarios. Each one starts from an empty store:
//!
//! ```json
//! {
//!   "name": "what it shows",
//!   "pools": [{"pool": "orders", "max_unavailable": 1, "min_available": 1, "protected": false}],
//!   "workers": [{"name": "orders-1", "pool": "orders", "status": "running", "age_seconds": 1,
//!                "interval": 30, "desired": "paused", "restart_pending": false, "exit_code": 3}],
//!   "request": {"action": "pause", "workers": ["orders-2"], "pool": null, "reason": null,
//!               "confirm": null, "force": false, "actor": null},
//!   "expect": {"outcome": "refused", "rule": "max_unavailable", "available_before": 4,
//!              "available_after": 3, "forced": false, "pool": "orders",
//!              "message_contains": ["2 of 5 workers unavailable"],
//!              "control": {"orders-2": null, "orders-1": {"desired": "paused", "generation": 1}}}
//! }
//! ```
//!
//! - `pools`: rows of `hp_pool`; a field left out takes the column default
//!   (1, 1, false). A pool with no entry has no row.
//! - `workers`: status rows. `status` as stored (`running`, `stopped`,
//!   `crashed`, `unknown`); the last beat was `age_seconds` ago, at
//!   `interval` seconds (stale after 2.5 intervals, the health view's rule);
//!   `exit_code` optional. The instance started an hour ago.
//! - A worker with `desired` or `restart_pending` also has a control row:
//!   `desired` (default `active`), generation 1, `restart_seq` 1 and a restart
//!   requested a second ago when `restart_pending` is true (else no restart
//!   ever requested), other counters 0. Other workers have no control row.
//! - `request`: the arguments of `hp_control` (left out = its default). The
//!   caller is service_role.
//! - `expect`, either `error` (the SQLSTATE, `22023` for bad input) with
//!   `message_contains`, or the answer: `outcome`, `rule` (null when none),
//!   `available_before`, `available_after`, and optionally `forced`, `pool`,
//!   `message_contains` (substrings of `message`). `control` maps a worker to
//!   the fields its control row must have afterwards (`desired`,
//!   `generation`, `restart_seq`, `run_now_seq`, `drain_seq`,
//!   `restart_pending`), or to null for no row.
//!
//! Checked for every scenario, beyond `expect`: an error writes nothing (no
//! audit row, control rows as set up); an answer writes exactly one audit
//! row with the action as given and the answer's outcome; a refusal changes
//! no control row; an acceptance adds one to the generation of each target
//! and changes no other row.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

/// One scenario of the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// What it shows.
    pub name: String,
    /// `hp_pool` rows.
    #[serde(default)]
    pub pools: Vec<PoolSetup>,
    /// Status rows (and control rows when `desired`/`restart_pending`).
    pub workers: Vec<WorkerSetup>,
    /// The `hp_control` arguments.
    pub request: Request,
    /// What must come out.
    pub expect: Expect,
}

/// An `hp_pool` row; `None` = the column default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSetup {
    /// The pool's name.
    pub pool: String,
    /// Default 1.
    pub max_unavailable: Option<i32>,
    /// Default 1.
    pub min_available: Option<i32>,
    /// Default false.
    pub protected: Option<bool>,
}

/// A worker as its rows describe it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSetup {
    /// `worker_name`.
    pub name: String,
    /// Default `default`.
    #[serde(default = "default_pool")]
    pub pool: String,
    /// `status` as stored.
    pub status: String,
    /// Seconds since its last beat.
    pub age_seconds: f64,
    /// `heartbeat_interval_seconds`.
    pub interval: i32,
    /// The control row's `desired`.
    pub desired: Option<String>,
    /// A restart was requested after this instance started.
    pub restart_pending: Option<bool>,
    /// `exit_code`.
    pub exit_code: Option<i32>,
}

fn default_pool() -> String {
    "default".into()
}

impl WorkerSetup {
    /// Whether the scenario gives this worker a control row.
    pub fn has_control_row(&self) -> bool {
        self.desired.is_some() || self.restart_pending.is_some()
    }
}

/// The arguments of `hp_control`; `None` = left out (its default).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// `action`; null is allowed (and refused).
    pub action: Option<String>,
    /// `workers`.
    pub workers: Option<Vec<String>>,
    /// `pool`.
    pub pool: Option<String>,
    /// `reason`.
    pub reason: Option<String>,
    /// `confirm`.
    pub confirm: Option<String>,
    /// `force`.
    pub force: Option<bool>,
    /// `actor`.
    pub actor: Option<String>,
}

/// What must come out of a scenario.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The SQLSTATE of an error.
    pub error: Option<String>,
    /// `accepted` or `refused`.
    pub outcome: Option<String>,
    /// The rule broken; `None` when none (or when `error`).
    #[serde(default)]
    pub rule: Option<String>,
    /// The answer's `available_before`.
    pub available_before: Option<i64>,
    /// The answer's `available_after`.
    pub available_after: Option<i64>,
    /// The answer's `forced`.
    pub forced: Option<bool>,
    /// The answer's `pool`.
    pub pool: Option<String>,
    /// Substrings of the answer's (or the error's) message.
    #[serde(default)]
    pub message_contains: Vec<String>,
    /// Control rows afterwards: fields to compare, or null for no row.
    #[serde(default)]
    pub control: BTreeMap<String, Option<ControlExpect>>,
}

/// Fields of a control row to compare; `None` = not compared.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlExpect {
    /// `desired`.
    pub desired: Option<String>,
    /// `generation`.
    pub generation: Option<i64>,
    /// `restart_seq`.
    pub restart_seq: Option<i64>,
    /// `run_now_seq`.
    pub run_now_seq: Option<i64>,
    /// `drain_seq`.
    pub drain_seq: Option<i64>,
    /// A restart is requested and no newer instance has started.
    pub restart_pending: Option<bool>,
}

/// A control row as a store holds it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ControlRow {
    /// `desired`.
    pub desired: String,
    /// `generation`.
    pub generation: i64,
    /// `restart_seq`.
    pub restart_seq: i64,
    /// `run_now_seq`.
    pub run_now_seq: i64,
    /// `drain_seq`.
    pub drain_seq: i64,
    /// A restart is requested and no newer instance has started.
    pub restart_pending: bool,
}

/// An error the store raised for a request.
#[derive(Debug, Clone)]
pub struct StoreError {
    /// SQLSTATE (or the local store's equivalent code).
    pub code: String,
    /// The message.
    pub message: String,
}

/// An audit row, the fields the checks read.
#[derive(Debug, Clone, Deserialize)]
pub struct AuditRow {
    /// `actor`.
    pub actor: String,
    /// `action`, as the request gave it.
    pub action: String,
    /// `outcome`.
    pub outcome: String,
    /// `detail`.
    pub detail: Value,
}

/// What a runner saw after the request.
#[derive(Debug, Clone)]
pub struct Observed {
    /// The answer, or the error.
    pub answer: Result<Value, StoreError>,
    /// Every control row afterwards, by worker.
    pub control: BTreeMap<String, ControlRow>,
    /// Every audit row afterwards, oldest first.
    pub audit: Vec<AuditRow>,
}

/// Reads the scenario file.
///
/// # Panics
/// When the file is missing or malformed: the test cannot run.
pub fn load(path: &Path) -> Vec<Scenario> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// The control rows a scenario sets up (see the module docs).
pub fn initial_control(s: &Scenario) -> BTreeMap<String, ControlRow> {
    s.workers
        .iter()
        .filter(|w| w.has_control_row())
        .map(|w| {
            let pending = w.restart_pending.unwrap_or(false);
            (
                w.name.clone(),
                ControlRow {
                    desired: w.desired.clone().unwrap_or_else(|| "active".into()),
                    generation: 1,
                    restart_seq: i64::from(pending),
                    run_now_seq: 0,
                    drain_seq: 0,
                    restart_pending: pending,
                },
            )
        })
        .collect()
}

/// Every way `seen` differs from what the scenario expects; empty = pass.
pub fn check(s: &Scenario, seen: &Observed) -> Vec<String> {
    let mut bad = Vec::new();
    let before = initial_control(s);
    let e = &s.expect;
    match (&e.error, &seen.answer) {
        (Some(code), Err(err)) => {
            if &err.code != code {
                bad.push(format!(
                    "error code {} (want {code}): {}",
                    err.code, err.message
                ));
            }
            for part in &e.message_contains {
                if !err.message.contains(part.as_str()) {
                    bad.push(format!("error message lacks {part:?}: {}", err.message));
                }
            }
            if !seen.audit.is_empty() {
                bad.push(format!("an error wrote {} audit rows", seen.audit.len()));
            }
            if seen.control != before {
                bad.push(format!(
                    "an error changed control rows: {:?} -> {:?}",
                    before, seen.control
                ));
            }
        }
        (Some(code), Ok(answer)) => bad.push(format!("want error {code}, got {answer}")),
        (None, Err(err)) => bad.push(format!("unexpected error {}: {}", err.code, err.message)),
        (None, Ok(answer)) => check_answer(s, &before, answer, seen, &mut bad),
    }
    for (worker, want) in &e.control {
        match (want, seen.control.get(worker)) {
            (None, None) => {}
            (None, Some(row)) => bad.push(format!("{worker}: want no control row, got {row:?}")),
            (Some(_), None) => bad.push(format!("{worker}: want a control row, got none")),
            (Some(want), Some(row)) => {
                let mut field = |name: &str, want: Option<String>, got: String| {
                    if let Some(want) = want {
                        if want != got {
                            bad.push(format!("{worker}.{name} = {got}, want {want}"));
                        }
                    }
                };
                field("desired", want.desired.clone(), row.desired.clone());
                let num = |v: Option<i64>| v.map(|v| v.to_string());
                field(
                    "generation",
                    num(want.generation),
                    row.generation.to_string(),
                );
                field(
                    "restart_seq",
                    num(want.restart_seq),
                    row.restart_seq.to_string(),
                );
                field(
                    "run_now_seq",
                    num(want.run_now_seq),
                    row.run_now_seq.to_string(),
                );
                field("drain_seq", num(want.drain_seq), row.drain_seq.to_string());
                field(
                    "restart_pending",
                    want.restart_pending.map(|b| b.to_string()),
                    row.restart_pending.to_string(),
                );
            }
        }
    }
    bad
}

fn check_answer(
    s: &Scenario,
    before: &BTreeMap<String, ControlRow>,
    answer: &Value,
    seen: &Observed,
    bad: &mut Vec<String>,
) {
    let e = &s.expect;
    let text = |v: &Value| v.as_str().map(str::to_owned);
    let mut same = |name: &str, want: Option<Value>| {
        if let Some(want) = want {
            if answer[name] != want {
                bad.push(format!("{name} = {}, want {want}", answer[name]));
            }
        }
    };
    same("outcome", e.outcome.clone().map(Value::from));
    // `rule` is always compared: null when the scenario names none.
    same(
        "rule",
        Some(e.rule.clone().map_or(Value::Null, Value::from)),
    );
    same("available_before", e.available_before.map(Value::from));
    same("available_after", e.available_after.map(Value::from));
    same("forced", e.forced.map(Value::from));
    same("pool", e.pool.clone().map(Value::from));
    let message = text(&answer["message"]).unwrap_or_default();
    for part in &e.message_contains {
        if !message.contains(part.as_str()) {
            bad.push(format!("message lacks {part:?}: {message}"));
        }
    }
    let outcome = text(&answer["outcome"]).unwrap_or_default();
    match seen.audit.as_slice() {
        [row] => {
            let given = s.request.action.clone().unwrap_or_default();
            if row.action != given || row.outcome != outcome {
                bad.push(format!(
                    "audit row {}/{}, want {given}/{outcome}",
                    row.action, row.outcome
                ));
            }
            let normalised = match given.as_str() {
                "enable" => "resume",
                "disable" => "pause",
                other => other,
            };
            if row.detail["normalised_action"] != normalised {
                bad.push(format!(
                    "audit detail.normalised_action = {}, want {normalised}",
                    row.detail["normalised_action"]
                ));
            }
        }
        rows => bad.push(format!("want 1 audit row, got {}", rows.len())),
    }
    let targets: Vec<String> = answer["workers"]
        .as_array()
        .map(|a| a.iter().filter_map(text).collect())
        .unwrap_or_default();
    if outcome == "refused" && &seen.control != before {
        bad.push(format!(
            "a refusal changed control rows: {before:?} -> {:?}",
            seen.control
        ));
    }
    if outcome == "accepted" {
        for (worker, row) in &seen.control {
            let was = before.get(worker).map_or(0, |r| r.generation);
            let want = if targets.contains(worker) {
                was + 1
            } else {
                was
            };
            if row.generation != want {
                bad.push(format!(
                    "{worker}: generation {} after, want {want}",
                    row.generation
                ));
            }
        }
        for t in &targets {
            if !seen.control.contains_key(t) {
                bad.push(format!("target {t} has no control row after an acceptance"));
            }
        }
    }
}
