//! Where rows are sent: the seam between "build the row" and "send the row".

mod memory;
pub(crate) mod notify;
pub(crate) mod postgrest;
pub(crate) mod sqlite;
pub(crate) mod sqlite_alerts;
pub(crate) mod sqlite_control;
pub(crate) mod sqlite_liveness;
pub(crate) mod sqlite_rollout;

use std::future::Future;
use std::pin::Pin;

use crate::model::desired::DesiredControl;
use crate::model::error::{ReadError, SendError};
use crate::model::row::WorkerRow;
use crate::model::status_row::StatusRow;

pub use memory::MemoryTransport;

/// Delivers rows somewhere: Supabase's REST API, a local store, or a test.
///
/// The beat loop owns its transport and calls `send` from its own thread, one
/// row at a time; a send never overlaps another. Rows carry absolute totals,
/// so a transport may drop a row that failed.
pub trait Transport: Send + 'static {
    /// Stores one row, replacing the previous row of the same `worker_name`.
    fn send<'a>(
        &'a mut self,
        row: &'a WorkerRow,
    ) -> Pin<Box<dyn Future<Output = Result<(), SendError>> + Send + 'a>>;

    /// Where rows go, for the one log line at start (never contains a secret).
    fn describe(&self) -> String;

    /// The row stored under `worker_name`, if the store can say (used at
    /// start to warn when another live instance already reports that name).
    #[doc(hidden)]
    fn read_row<'a>(&'a mut self, worker_name: &'a str) -> ReadFuture<'a> {
        let _ = worker_name;
        Box::pin(std::future::ready(Ok(None)))
    }

    /// What to report when a send took longer than `after` (the beat gave up).
    #[doc(hidden)]
    fn timed_out(&self, after: std::time::Duration) -> SendError {
        SendError::Timeout(after)
    }
}

/// What [`Transport::read_row`] returns.
#[doc(hidden)]
pub type ReadFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Option<StatusRow>, ReadError>> + Send + 'a>>;

/// What [`Transport::send`] returns.
pub(crate) type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SendError>> + Send + 'a>>;

/// One store to read from or steer through: the local file, or Supabase's
/// REST API (the read side and the operator side both hold one).
#[derive(Debug)]
pub(crate) enum Store {
    Local(sqlite::SqliteStore),
    // Boxed: a client is much larger than a store path.
    Supabase(Box<postgrest::PostgrestClient>),
}

/// Reads one worker's control row: the beat loop's poll. Not part of
/// [`Transport`]: a transport a user writes sends rows and obeys nothing.
pub(crate) trait ControlSource: Send + 'static {
    /// The row if its generation is above `above` (any row when `None`);
    /// `None` when there is no such row.
    fn read_control<'a>(&'a mut self, worker: &'a str, above: Option<i64>) -> ControlFuture<'a>;
}

/// What [`ControlSource::read_control`] returns.
pub(crate) type ControlFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Option<DesiredControl>, ReadError>> + Send + 'a>>;
