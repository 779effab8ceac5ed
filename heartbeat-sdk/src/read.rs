//! The read side: every worker's row, from Supabase or the local store, and
//! the clock to judge them by.
//!
//! ```no_run
//! # async fn show() -> Result<(), Box<dyn std::error::Error>> {
//! use heartbeat_sdk::{read::Reader, StoreSettings};
//! let reader = Reader::open(&StoreSettings::default().from_env())?;
//! let snapshot = reader.fetch().await?;
//! for row in &snapshot.rows {
//!     println!("{} {}", row.worker_name, row.health(snapshot.now).as_str());
//! }
//! # Ok(()) }
//! ```

use chrono::{DateTime, Utc};

use crate::config::target::StoreSettings;
use crate::model::error::{ConfigError, ReadError};
use crate::model::health::Health;
use crate::model::status_row::StatusRow;
use crate::transport::Store;

/// Every row at one moment, and that moment by the store's clock when it
/// says (Supabase's `Date` header), so staleness does not depend on the
/// reader's clock.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The rows, ordered by worker name.
    pub rows: Vec<StatusRow>,
    /// "Now", to judge the rows by.
    pub now: DateTime<Utc>,
}

impl Snapshot {
    /// How many workers are healthy and running.
    pub fn running(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| r.health(self.now) == Health::Running)
            .count()
    }

    /// Whether any worker needs attention (stale, crashed, breaker open).
    pub fn needs_attention(&self) -> bool {
        self.rows.iter().any(|r| r.needs_attention(self.now))
    }
}

/// Reads `hp_worker_status`. Open it once and [`fetch`](Self::fetch) as often
/// as needed: the HTTP connection is reused.
#[derive(Debug)]
pub struct Reader {
    source: Store,
    description: String,
    /// The local stores looked at when none was named (for the message when none exists).
    looked_at: Vec<std::path::PathBuf>,
}

impl Reader {
    /// Opens the store `settings` point to (nothing is read yet).
    ///
    /// # Errors
    /// A [`ConfigError`] for a missing or malformed setting.
    pub fn open(settings: &StoreSettings) -> Result<Reader, ConfigError> {
        let (target, looked_at) = settings.resolve_for_reading()?;
        let description = target.describe();
        let source = target.into_store(concat!("heartbeat-sdk/", env!("CARGO_PKG_VERSION")))?;
        Ok(Reader {
            source,
            description,
            looked_at,
        })
    }

    /// Where rows are read from, in words.
    pub fn describe(&self) -> &str {
        &self.description
    }

    /// Reads every row.
    ///
    /// # Errors
    /// A [`ReadError`] saying what is wrong and the fix.
    pub async fn fetch(&self) -> Result<Snapshot, ReadError> {
        match &self.source {
            Store::Local(store) => {
                if !store.path().exists() && !self.looked_at.is_empty() {
                    let places: Vec<String> = self
                        .looked_at
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect();
                    return Err(ReadError::Store(format!(
                        "no local store: no worker has reported at {} (set HP_STORE to the path the workers use)",
                        places.join(", ")
                    )));
                }
                let store = store.clone();
                let rows = tokio::task::spawn_blocking(move || store.read_all())
                    .await
                    .map_err(|e| ReadError::Store(format!("the read task failed: {e}")))??;
                Ok(Snapshot {
                    rows,
                    now: Utc::now(),
                })
            }
            Store::Supabase(client) => {
                let (rows, server_now) = client.select_status().await?;
                Ok(Snapshot {
                    rows,
                    now: server_now.unwrap_or_else(Utc::now),
                })
            }
        }
    }
}
