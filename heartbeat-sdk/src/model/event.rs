//! One entry of `hp_worker_events`, as readers see it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What happened to a worker, recorded by the store (never by the worker).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerEvent {
    /// Grows with every event.
    pub id: i64,
    /// The store's clock.
    pub at: DateTime<Utc>,
    /// The worker.
    pub worker_name: String,
    /// `started`, `stopped`, `crashed`, `vanished`, `breaker_opened`,
    /// `breaker_closed`, `paused`, `resumed`, `drained`, `restarted`,
    /// `reporting_gap`, and from the sweep `stale`, `hung`, `recovered`.
    pub kind: String,
    /// The status, state or health before, when the kind has one.
    #[serde(default)]
    pub from_state: Option<String>,
    /// ...and after.
    #[serde(default)]
    pub to_state: Option<String>,
    /// Exit code, error, missed beats...
    #[serde(default)]
    pub detail: serde_json::Value,
}

/// A worker `prune` removed (or, dry, would remove).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pruned {
    /// The worker.
    pub worker_name: String,
    /// When the store last heard from it.
    pub last_seen: Option<DateTime<Utc>>,
    /// What its row said then.
    pub status: Option<String>,
}
