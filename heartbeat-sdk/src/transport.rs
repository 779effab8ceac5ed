//! The seam between "build the row" and "send the row".

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use crate::error::SendError;
use crate::row::WorkerRow;

/// The future a [`Transport`] returns for one row.
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SendError>> + Send + 'a>>;

/// Delivers rows somewhere: Supabase's REST API, a local store, or a test.
///
/// The beat loop owns its transport and calls `send` from its own thread, one
/// row at a time; a send never overlaps another. Rows carry absolute totals,
/// so a transport may drop a row that failed.
pub trait Transport: Send + 'static {
    /// Stores one row, replacing the previous row of the same `worker_name`.
    fn send<'a>(&'a mut self, row: &'a WorkerRow) -> SendFuture<'a>;

    /// Where rows go, for the one log line at start (never contains a secret).
    fn describe(&self) -> String;
}

/// Keeps every row in memory: for tests of code that reports.
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
}
