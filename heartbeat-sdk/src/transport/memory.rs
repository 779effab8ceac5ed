//! Keeps rows in memory, for tests of code that reports.

use std::sync::{Arc, Mutex};

use crate::model::row::WorkerRow;
use crate::model::status_row::StatusRow;
use crate::transport::{ReadFuture, SendFuture, Transport};

/// Keeps every row in memory: for tests of code that reports.
///
/// ```
/// use heartbeat_sdk::{Heartbeat, MemoryTransport};
/// let rows = MemoryTransport::new();
/// let hb = Heartbeat::builder("tested").transport(rows.clone()).start()?;
/// hb.job_succeeded();
/// assert!(hb.shutdown());
/// assert_eq!(rows.rows().last().map(|r| r.jobs_processed), Some(1));
/// # Ok::<(), heartbeat_sdk::ConfigError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemoryTransport {
    rows: Arc<Mutex<Vec<WorkerRow>>>,
}

impl MemoryTransport {
    /// An empty store; clones share the same rows.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every row sent so far, oldest first.
    pub fn rows(&self) -> Vec<WorkerRow> {
        self.rows.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Transport for MemoryTransport {
    fn send<'a>(&'a mut self, row: &'a WorkerRow) -> SendFuture<'a> {
        if let Ok(mut rows) = self.rows.lock() {
            rows.push(row.clone());
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn describe(&self) -> String {
        "memory".into()
    }

    fn read_row<'a>(&'a mut self, worker_name: &'a str) -> ReadFuture<'a> {
        let last = self
            .rows()
            .into_iter()
            .rev()
            .find(|r| r.worker_name == worker_name)
            .and_then(|r| serde_json::to_value(r).ok())
            .and_then(|v| serde_json::from_value::<StatusRow>(v).ok())
            .map(|mut r| {
                // The store stamps its clock, as the real ones do.
                r.last_heartbeat = r.client_heartbeat;
                r
            });
        Box::pin(std::future::ready(Ok(last)))
    }
}
