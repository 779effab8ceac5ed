//! Alerts: a webhook's claim on its delivery cursor, and what the store
//! answers (`hp_alert_claim()` on Supabase, the same rule in the local store).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::event::WorkerEvent;

/// A watcher asks for the events after a webhook's cursor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlertClaim {
    /// The webhook's key: a digest of its URL, never the URL.
    pub sink: String,
    /// The watcher asking (`user@host pid N`): one holds a sink at a time.
    pub holder: String,
    /// The kinds of event it sends; others are passed over.
    pub kinds: Vec<String>,
    /// How long the claim holds without being renewed.
    #[serde(serialize_with = "as_interval")]
    pub lease: std::time::Duration,
    /// At most this many events per answer.
    pub max_events: u32,
}

fn as_interval<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{} seconds", d.as_secs()))
}

/// The store's answer to an [`AlertClaim`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AlertBatch {
    /// Whether the asking watcher holds the sink now; if not, `holder` does
    /// until `lease_until` and `events` is empty.
    pub held: bool,
    /// Who holds it.
    #[serde(default)]
    pub holder: Option<String>,
    /// The kinds the holder sends.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Until when, unless renewed.
    #[serde(default)]
    pub lease_until: Option<DateTime<Utc>>,
    /// The events to send, oldest first.
    #[serde(default)]
    pub events: Vec<WorkerEvent>,
    /// Once `events` are delivered the cursor may move here (past the events
    /// of kinds not sent too).
    pub through: i64,
}
