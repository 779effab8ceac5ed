//! The embedded default store: the same row, columns and rules as the
//! Postgres table, in a local SQLite file that several processes share.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::types::Value as SqlValue;
use rusqlite::{params_from_iter, Connection, OpenFlags, OptionalExtension};
use serde_json::{Map, Value};

use crate::model::clock::now_micros;
use crate::model::control::{AuditEntry, ControlAnswer, ControlError, ControlRequest, PoolBudget};
use crate::model::desired::DesiredControl;
use crate::model::error::{ReadError, SendError};
use crate::model::row::WorkerRow;
use crate::model::status_row::StatusRow;
use crate::transport::sqlite_control;
use crate::transport::{ControlFuture, ControlSource, ReadFuture, SendFuture, Transport};

/// The table, with the Postgres migration's CHECKs. `last_heartbeat` and
/// `updated_at` are the store's clock at each write, as in Postgres.
const SCHEMA: &str = "
create table if not exists hp_worker_status (
  worker_name text primary key
    check (length(worker_name) between 1 and 128 and worker_name not glob '*[^A-Za-z0-9._:-]*'),
  status text not null default 'unknown' check (status in ('unknown', 'running', 'stopped', 'crashed')),
  last_heartbeat text,
  client_heartbeat text,
  jobs_processed integer not null default 0 check (jobs_processed >= 0),
  error_count integer not null default 0 check (error_count >= 0),
  circuit_breaker_open integer not null default 0 check (circuit_breaker_open in (0, 1)),
  metadata text not null default '{}'
    check (json_valid(metadata) and json_type(metadata) = 'object' and length(cast(metadata as blob)) <= 8192),
  pid integer check (pid > 0),
  hostname text check (length(cast(hostname as blob)) <= 255),
  started_at text,
  uptime_seconds integer check (uptime_seconds >= 0),
  memory_rss_bytes integer check (memory_rss_bytes >= 0),
  cpu_percent real check (cpu_percent >= 0),
  version text check (length(cast(version as blob)) <= 128),
  reporter text check (length(cast(reporter as blob)) <= 128),
  instance_id text,
  consecutive_errors integer not null default 0 check (consecutive_errors >= 0),
  last_error text check (length(cast(last_error as blob)) <= 2048),
  exit_code integer,
  exit_signal integer check (exit_signal between 1 and 64),
  heartbeat_interval_seconds integer not null default 30 check (heartbeat_interval_seconds between 1 and 86400),
  updated_at text
);";

/// Columns later versions added, as `(name, definition)`: an older store
/// file gains them in place, as the SQL migrations add theirs.
const ADDED_COLUMNS: [(&str, &str); 19] = [
    (
        "pool",
        "text not null default 'default' check (length(pool) between 1 and 128 and pool not glob '*[^A-Za-z0-9._:-]*')",
    ),
    (
        "state",
        "text check (state in ('active', 'paused', 'draining', 'restarting'))",
    ),
    ("control_generation", "integer check (control_generation >= 0)"),
    (
        "controls",
        "text check (controls is null or (json_valid(controls) and json_type(controls) = 'object'))",
    ),
    // The store's clock when the current instance_id first wrote.
    ("instance_since", "text"),
    // Runs (sql/20261125000001_hp_runs.sql).
    (
        "run_state",
        "text check (run_state in ('running', 'succeeded', 'failed'))",
    ),
    ("run_started_at", "text"),
    ("run_finished_at", "text"),
    ("last_success_at", "text"),
    ("last_run_ms", "integer check (last_run_ms >= 0)"),
    ("runs_total", "integer check (runs_total >= 0)"),
    ("runs_failed", "integer check (runs_failed >= 0 and runs_failed <= runs_total)"),
    (
        "last_run_summary",
        "text check (length(cast(last_run_summary as blob)) <= 1024)",
    ),
    (
        "max_run_seconds",
        "integer check (max_run_seconds between 1 and 604800)",
    ),
    // Liveness (sql/20261201000001_hp_liveness.sql): the worker's columns;
    // the store's own are sqlite_liveness::COLUMNS.
    ("last_progress_at", "text"),
    (
        "watchdog_seconds",
        "integer check (watchdog_seconds between 1 and 604800)",
    ),
    ("missed_beats", "integer check (missed_beats >= 0)"),
    ("gap_started_at", "text"),
    ("gap_ended_at", "text"),
];

/// Columns stored as 0/1 that read back as JSON booleans.
const BOOLEAN_COLUMNS: [&str; 1] = ["circuit_breaker_open"];
/// Columns stored as JSON text that read back as JSON.
const JSON_COLUMNS: [&str; 3] = ["metadata", "controls", "recent_crashes"];

/// A local SQLite store (WAL mode, busy timeout), opened on first use so a
/// bad path is reported by the beat loop and never stops the worker.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    path: PathBuf,
    create_parent: bool,
    connection: Arc<Mutex<Option<Connection>>>,
    /// One write at a time: a write stuck behind another process's lock
    /// holds the permit, and the next send waits for it (bounded by the
    /// beat loop's deadline) instead of parking a second blocking thread.
    writing: Arc<tokio::sync::Semaphore>,
}

impl SqliteStore {
    /// A store at `path`; nothing is opened yet. A missing directory is an
    /// error (a typo in `HP_STORE` should not scatter stores around).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SqliteStore {
            path: path.into(),
            create_parent: false,
            connection: Arc::new(Mutex::new(None)),
            writing: Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }

    /// A store at a default path, whose directory is created when missing.
    pub(crate) fn at_default_path(path: impl Into<PathBuf>) -> Self {
        SqliteStore {
            create_parent: true,
            ..SqliteStore::new(path)
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one row now, creating the file and table on first use.
    ///
    /// # Errors
    /// [`SendError::Store`] saying what is wrong with the file and the fix.
    pub fn write(&self, row: &WorkerRow) -> Result<(), SendError> {
        self.with_connection(|conn| upsert(conn, row))
    }

    /// Removes `worker`'s row (what `check` wrote to prove the write path).
    ///
    /// # Errors
    /// [`SendError::Store`] saying what is wrong with the file and the fix.
    pub fn delete(&self, worker: &str) -> Result<(), SendError> {
        self.with_connection(|conn| {
            conn.execute(
                "delete from hp_worker_status where worker_name = ?1",
                [worker],
            )
            .map(|_| ())
        })
    }

    /// Steers workers: `hp_control()`'s rule and effects on this store.
    ///
    /// # Errors
    /// [`ControlError`] for bad input (nothing written) or a store that fails.
    pub fn control(&self, request: &ControlRequest) -> Result<ControlAnswer, ControlError> {
        self.with_raw_connection(|conn| sqlite_control::hp_control(conn, request, now_micros()))
    }

    /// Sets a pool's budget (`None` = keep): `hp_pool_set()` on this store.
    ///
    /// # Errors
    /// [`ControlError`] for bad input (nothing written) or a store that fails.
    pub fn pool_set(
        &self,
        pool: &str,
        max_unavailable: Option<i64>,
        min_available: Option<i64>,
        protected: Option<bool>,
        actor: Option<&str>,
    ) -> Result<Value, ControlError> {
        self.with_raw_connection(|conn| {
            sqlite_control::pool_set(
                conn,
                pool,
                max_unavailable,
                min_available,
                protected,
                actor,
                now_micros(),
            )
        })
    }

    /// Every pool with a budget row, and every pool a worker names, with
    /// the defaults where there is no row; by name.
    ///
    /// # Errors
    /// [`ControlError`] when the store cannot be read.
    pub fn pools(&self) -> Result<Vec<PoolBudget>, ControlError> {
        self.with_raw_connection(|conn| sqlite_control::pools(conn))
    }

    /// Starts a rolling restart of `pool`: `hp_rollout_start()` on this
    /// store. Batches of `max_unavailable` (default the pool's budget; more
    /// needs `confirm` = the pool's name).
    ///
    /// # Errors
    /// [`ControlError`] for bad input (nothing written) or a store that fails.
    #[allow(clippy::too_many_arguments)]
    pub fn rollout_start(
        &self,
        pool: &str,
        max_unavailable: Option<i64>,
        settle_seconds: i64,
        timeout_seconds: i64,
        reason: Option<&str>,
        confirm: Option<&str>,
        actor: Option<&str>,
    ) -> Result<Value, ControlError> {
        let args = crate::transport::sqlite_rollout::RolloutStart {
            pool,
            max_unavailable,
            settle_seconds,
            timeout_seconds,
            reason,
            confirm,
            actor,
        };
        self.with_raw_connection(|conn| {
            crate::transport::sqlite_rollout::start(conn, &args, now_micros())
        })
    }

    /// Moves rollout `id` on (idempotent): `hp_rollout_step()` on this store.
    ///
    /// # Errors
    /// [`ControlError`] for an unknown id or a store that fails.
    pub fn rollout_step(&self, id: i64) -> Result<Value, ControlError> {
        self.with_raw_connection(|conn| {
            crate::transport::sqlite_rollout::step(conn, id, now_micros())
        })
    }

    /// Stops rollout `id` where it is: `hp_rollout_abort()` on this store.
    ///
    /// # Errors
    /// [`ControlError`] for an unknown or finished rollout, or a store that fails.
    pub fn rollout_abort(
        &self,
        id: i64,
        reason: Option<&str>,
        actor: Option<&str>,
    ) -> Result<Value, ControlError> {
        self.with_raw_connection(|conn| {
            crate::transport::sqlite_rollout::abort(conn, id, reason, actor, now_micros())
        })
    }

    /// A rollout's summary: `id`'s, else the pool's latest, else the latest.
    ///
    /// # Errors
    /// [`ControlError`] when the store cannot be read.
    pub fn rollout_status(
        &self,
        id: Option<i64>,
        pool: Option<&str>,
    ) -> Result<Option<Value>, ControlError> {
        self.with_raw_connection(|conn| crate::transport::sqlite_rollout::status(conn, id, pool))
    }

    /// The audit log since `since`, about `worker` when given, oldest first.
    ///
    /// # Errors
    /// [`ControlError`] when the store cannot be read.
    pub fn audit(
        &self,
        since: Option<chrono::DateTime<chrono::Utc>>,
        worker: Option<&str>,
    ) -> Result<Vec<AuditEntry>, ControlError> {
        self.with_raw_connection(|conn| sqlite_control::read_audit(conn, since, worker))
    }

    fn with_raw_connection<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, ControlError>,
    ) -> Result<T, ControlError> {
        let mut slot = self
            .connection
            .lock()
            .map_err(|_| ControlError::Store("local store lock poisoned".into()))?;
        let conn = match slot.as_mut() {
            Some(conn) => conn,
            None => slot.insert(
                open_for_writing(&self.path, self.create_parent)
                    .map_err(|e| ControlError::Store(e.to_string()))?,
            ),
        };
        f(conn)
    }

    /// Runs `f` on the writing connection, opened (and the table made) on first use.
    fn with_connection<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, SendError> {
        let mut slot = self
            .connection
            .lock()
            .map_err(|_| SendError::Store("local store lock poisoned".into()))?;
        let conn = match slot.as_mut() {
            Some(conn) => conn,
            None => slot.insert(open_for_writing(&self.path, self.create_parent)?),
        };
        let result = f(conn);
        if result.is_err() {
            // Reopen next time: the file may have been replaced or fixed.
            *slot = None;
        }
        result.map_err(|e| SendError::Store(explain(&self.path, &e)))
    }

    /// Every row, by worker name.
    ///
    /// # Errors
    /// [`ReadError::Store`] when the file is missing or not a store.
    pub fn read_all(&self) -> Result<Vec<StatusRow>, ReadError> {
        if !self.path.exists() {
            return Err(ReadError::Store(format!(
                "no local store at {}: no worker has reported here yet (set HP_STORE to the path the workers use)",
                self.path.display()
            )));
        }
        self.read(None)
    }

    /// `worker`'s row, if the store exists and has one.
    ///
    /// # Errors
    /// [`ReadError::Store`] when the file is not a store.
    pub fn read_one(&self, worker: &str) -> Result<Option<StatusRow>, ReadError> {
        if !self.path.exists() {
            return Ok(None);
        }
        Ok(self.read(Some(worker))?.pop())
    }

    /// `worker`'s control row if its generation is above `above`. No file
    /// or no control table yet (nothing was ever asked) is no row.
    pub(crate) fn control_row(
        &self,
        worker: &str,
        above: Option<i64>,
    ) -> Result<Option<DesiredControl>, ReadError> {
        if !self.path.exists() {
            return Ok(None);
        }
        let read = |e: rusqlite::Error| ReadError::Store(explain(&self.path, &e));
        let conn = Connection::open_with_flags(&self.path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(read)?;
        conn.busy_timeout(Duration::from_secs(2)).map_err(read)?;
        let exists: bool = conn
            .query_row(
                "select count(*) > 0 from sqlite_master where type = 'table' and name = 'hp_worker_control'",
                [],
                |r| r.get(0),
            )
            .map_err(read)?;
        if !exists {
            return Ok(None);
        }
        conn.query_row(
            "select desired, generation, restart_seq, run_now_seq, drain_seq from hp_worker_control
             where worker_name = ?1 and generation > ?2",
            rusqlite::params![worker, above.unwrap_or(-1)],
            |r| {
                Ok(DesiredControl {
                    paused: r.get::<_, String>(0)? == "paused",
                    generation: r.get(1)?,
                    restart_seq: r.get(2)?,
                    run_now_seq: r.get(3)?,
                    drain_seq: r.get(4)?,
                })
            },
        )
        .optional()
        .map_err(read)
    }

    /// What happened (`hp_worker_events`) since `since`, about `worker` when
    /// given, oldest first. A store older than the events is empty.
    ///
    /// # Errors
    /// [`ReadError::Store`] when the file is missing or not a store.
    pub fn events(
        &self,
        since: Option<chrono::DateTime<chrono::Utc>>,
        worker: Option<&str>,
    ) -> Result<Vec<crate::model::event::WorkerEvent>, ReadError> {
        let read = |e: rusqlite::Error| ReadError::Store(explain(&self.path, &e));
        if !self.path.exists() {
            return Ok(Vec::new());
        }
        let conn = Connection::open_with_flags(&self.path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(read)?;
        conn.busy_timeout(Duration::from_secs(2)).map_err(read)?;
        let exists: bool = conn
            .query_row(
                "select count(*) > 0 from sqlite_master where name = 'hp_worker_events'",
                [],
                |r| r.get(0),
            )
            .map_err(read)?;
        if !exists {
            return Ok(Vec::new());
        }
        crate::transport::sqlite_liveness::read_events(&conn, since, worker).map_err(read)
    }

    /// `hp_sweep()`: records stale, hung and recovered workers once per
    /// transition, drops events older than `retain`; returns what it recorded.
    ///
    /// # Errors
    /// [`SendError::Store`] saying what is wrong with the file and the fix.
    pub fn sweep(
        &self,
        retain: chrono::Duration,
    ) -> Result<Vec<crate::model::event::WorkerEvent>, SendError> {
        // No store yet: nothing to sweep, and a read must not make one.
        if !self.path.exists() {
            return Ok(Vec::new());
        }
        self.with_connection(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let rows = read_rows(&tx, None)?;
            let recorded =
                crate::transport::sqlite_liveness::sweep(&tx, &rows, now_micros(), retain)?;
            tx.commit()?;
            Ok(recorded)
        })
    }

    /// `hp_alert_claim()`: takes or renews `claim.sink` for `claim.holder`
    /// and returns the events after its cursor (made at the newest event the
    /// first time), unless another watcher's lease runs.
    ///
    /// # Errors
    /// [`SendError::Store`] saying what is wrong with the file and the fix.
    pub fn alert_claim(
        &self,
        claim: &crate::model::alert::AlertClaim,
    ) -> Result<crate::model::alert::AlertBatch, SendError> {
        self.with_connection(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let batch = crate::transport::sqlite_alerts::claim(&tx, claim, now_micros())?;
            tx.commit()?;
            Ok(batch)
        })
    }

    /// `hp_alert_ack()`: the cursor of `sink` moves to `through`; false when
    /// `holder` no longer holds it.
    ///
    /// # Errors
    /// [`SendError::Store`] saying what is wrong with the file and the fix.
    pub fn alert_ack(
        &self,
        sink: &str,
        holder: &str,
        through: i64,
        delivered: u32,
    ) -> Result<bool, SendError> {
        self.with_connection(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let held = crate::transport::sqlite_alerts::ack(
                &tx,
                sink,
                holder,
                through,
                delivered,
                now_micros(),
            )?;
            tx.commit()?;
            Ok(held)
        })
    }

    /// `hp_alert_release()`: `holder` lets go of `sink`.
    ///
    /// # Errors
    /// [`SendError::Store`] saying what is wrong with the file and the fix.
    pub fn alert_release(&self, sink: &str, holder: &str) -> Result<bool, SendError> {
        self.with_connection(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let released =
                crate::transport::sqlite_alerts::release(&tx, sink, holder, now_micros())?;
            tx.commit()?;
            Ok(released)
        })
    }

    /// `hp_prune()`: removes the workers not seen for `gone_for` (each
    /// recorded as an event), or with `dry_run` only says which.
    ///
    /// # Errors
    /// [`SendError::Store`] saying what is wrong with the file and the fix.
    pub fn prune(
        &self,
        gone_for: chrono::Duration,
        dry_run: bool,
    ) -> Result<Vec<crate::model::event::Pruned>, SendError> {
        if !self.path.exists() {
            return Ok(Vec::new());
        }
        self.with_connection(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let rows = read_rows(&tx, None)?;
            let gone = crate::transport::sqlite_liveness::prune(
                &tx,
                rows,
                now_micros(),
                gone_for,
                dry_run,
            )?;
            tx.commit()?;
            Ok(gone)
        })
    }

    fn read(&self, worker: Option<&str>) -> Result<Vec<StatusRow>, ReadError> {
        let read = |e: rusqlite::Error| ReadError::Store(explain(&self.path, &e));
        let conn = Connection::open_with_flags(&self.path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(read)?;
        conn.busy_timeout(Duration::from_secs(2)).map_err(read)?;
        read_rows(&conn, worker).map_err(read)
    }
}

impl Transport for SqliteStore {
    fn send<'a>(&'a mut self, row: &'a WorkerRow) -> SendFuture<'a> {
        let store = self.clone();
        let row = row.clone();
        let writing = Arc::clone(&self.writing);
        // Off the loop's thread: a busy file can then not hold the shutdown
        // past its budget (the loop's timeout still fires). One at a time:
        // the permit lives as long as the blocking write, even one the loop
        // gave up on.
        Box::pin(async move {
            let permit = writing
                .acquire_owned()
                .await
                .map_err(|e| SendError::Store(format!("local store closed: {e}")))?;
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                store.write(&row)
            })
            .await
            .unwrap_or_else(|e| Err(SendError::Store(format!("local store task failed: {e}"))))
        })
    }

    fn describe(&self) -> String {
        describe(&self.path)
    }

    fn read_row<'a>(&'a mut self, worker_name: &'a str) -> ReadFuture<'a> {
        let store = self.clone();
        let worker = worker_name.to_owned();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || store.read_one(&worker))
                .await
                .unwrap_or_else(|e| Err(ReadError::Store(format!("local store task failed: {e}"))))
        })
    }

    fn timed_out(&self, after: Duration) -> SendError {
        SendError::Store(format!(
            "the local store {} stayed locked by another process for {after:?}: the row was not written this beat",
            self.path.display()
        ))
    }
}

impl ControlSource for SqliteStore {
    fn read_control<'a>(&'a mut self, worker: &'a str, above: Option<i64>) -> ControlFuture<'a> {
        let store = self.clone();
        let worker = worker.to_owned();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || store.control_row(&worker, above))
                .await
                .unwrap_or_else(|e| Err(ReadError::Store(format!("local store task failed: {e}"))))
        })
    }
}

/// "the local store /path/heartbeat.db": where rows go, in messages.
pub(crate) fn describe(path: &Path) -> String {
    format!("the local store {}", path.display())
}

fn open_for_writing(path: &Path, create_parent: bool) -> Result<Connection, SendError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            if create_parent {
                std::fs::create_dir_all(dir).map_err(|e| {
                    SendError::Store(format!(
                        "cannot create {}: {e} (set HP_STORE to a writable path)",
                        dir.display()
                    ))
                })?;
            } else {
                return Err(SendError::Store(format!(
                    "the local store's directory {} does not exist: create it, or set HP_STORE to a path in an existing directory",
                    dir.display()
                )));
            }
        }
    }
    // Two processes opening a new store at once contend for the switch to
    // WAL, which SQLite does not retry through the busy handler: retry the
    // whole setup, within the same bound as a busy write.
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match prepare(path) {
            Err(e) if is_busy(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10 + u64::from(fastrand::u8(..40))));
            }
            result => return result.map_err(|e| SendError::Store(explain(path, &e))),
        }
    }
}

/// How long a write waits for another process's lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

fn prepare(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // WAL lets several sidecars on one host write while `status` reads.
    conn.pragma_update(None, "journal_mode", "wal")?;
    conn.pragma_update(None, "synchronous", "normal")?;
    // One small table: SQLite's default 2 MB page cache would be most of our memory.
    conn.pragma_update(None, "cache_size", -64)?;
    // IMMEDIATE takes the write lock up front, so the table is created under
    // the busy timeout rather than failing when another writer got in between.
    conn.execute_batch("begin immediate")?;
    let made = create_schema(&conn);
    conn.execute_batch(if made.is_ok() { "commit" } else { "rollback" })?;
    made.map(|()| conn)
}

fn create_schema(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(SCHEMA)?;
    add_missing_columns(
        conn,
        "hp_worker_status",
        ADDED_COLUMNS
            .iter()
            .chain(&crate::transport::sqlite_liveness::COLUMNS),
    )?;
    conn.execute_batch(crate::transport::sqlite_control::SCHEMA)?;
    conn.execute_batch(crate::transport::sqlite_liveness::SCHEMA)?;
    conn.execute_batch(crate::transport::sqlite_alerts::SCHEMA)?;
    add_missing_columns(
        conn,
        "hp_alert_cursor",
        &crate::transport::sqlite_alerts::ADDED_COLUMNS,
    )?;
    conn.execute_batch(crate::transport::sqlite_rollout::SCHEMA)
}

/// A store made by an older version gains the columns its table lacks.
fn add_missing_columns<'a>(
    conn: &Connection,
    table: &str,
    columns: impl IntoIterator<Item = &'a (&'a str, &'a str)>,
) -> rusqlite::Result<()> {
    let existing: Vec<String> = conn
        .prepare(&format!("select name from pragma_table_info('{table}')"))?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for (name, definition) in columns {
        if !existing.iter().any(|c| c == name) {
            conn.execute_batch(&format!(
                "alter table {table} add column {name} {definition}"
            ))?;
        }
    }
    Ok(())
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ffi::ErrorCode::DatabaseBusy | rusqlite::ffi::ErrorCode::DatabaseLocked)
    )
}

fn upsert(conn: &mut Connection, row: &WorkerRow) -> rusqlite::Result<()> {
    let Ok(Value::Object(fields)) = serde_json::to_value(row) else {
        return Err(rusqlite::Error::InvalidQuery);
    };
    let at = now_micros();
    let now = at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let mut columns: Vec<&str> = fields.keys().map(String::as_str).collect();
    let mut values: Vec<SqlValue> = fields.values().map(to_sql).collect();
    // Read and written in one transaction: the store's count of restarts
    // and crashes cannot miss a write made between the two.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let liveness = crate::transport::sqlite_liveness::apply(&tx, row, at)?;
    for (column, value) in liveness.columns {
        columns.push(column);
        values.push(value);
    }
    columns.extend(["last_heartbeat", "updated_at", "instance_since"]);
    values.extend([
        SqlValue::Text(now.clone()),
        SqlValue::Text(now.clone()),
        SqlValue::Text(now),
    ]);
    let placeholders: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
    let updates: Vec<String> = columns
        .iter()
        .filter(|c| **c != "worker_name")
        .map(|c| match *c {
            // The store's clock when this instance first wrote, as PostgreSQL's trigger keeps it.
            "instance_since" => "instance_since = case when hp_worker_status.instance_id is excluded.instance_id then hp_worker_status.instance_since else excluded.instance_since end".to_owned(),
            c => format!("{c} = excluded.{c}"),
        })
        .collect();
    let sql = format!(
        "insert into hp_worker_status ({}) values ({}) on conflict(worker_name) do update set {}",
        columns.join(", "),
        placeholders.join(", "),
        updates.join(", ")
    );
    tx.prepare_cached(&sql)?.execute(params_from_iter(values))?;
    crate::transport::sqlite_liveness::record(&tx, &row.worker_name, at, &liveness.events)?;
    tx.commit()
}

fn to_sql(v: &Value) -> SqlValue {
    match v {
        Value::Null => SqlValue::Null,
        Value::Bool(b) => SqlValue::Integer(i64::from(*b)),
        Value::Number(n) => n
            .as_i64()
            .map(SqlValue::Integer)
            .unwrap_or_else(|| SqlValue::Real(n.as_f64().unwrap_or(0.0))),
        Value::String(s) => SqlValue::Text(s.clone()),
        other => SqlValue::Text(other.to_string()),
    }
}

fn read_rows(conn: &Connection, worker: Option<&str>) -> rusqlite::Result<Vec<StatusRow>> {
    let sql = match worker {
        Some(_) => "select * from hp_worker_status where worker_name = ?1",
        None => "select * from hp_worker_status order by worker_name",
    };
    let mut stmt = conn.prepare(sql)?;
    let names: Vec<String> = stmt
        .column_names()
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let params: Vec<&str> = worker.into_iter().collect();
    let rows = stmt.query_map(params_from_iter(params), |r| {
        let mut obj = Map::new();
        for (i, name) in names.iter().enumerate() {
            let v: SqlValue = r.get(i)?;
            obj.insert(name.clone(), from_sql(name, v));
        }
        Ok(obj)
    })?;
    let mut out = Vec::new();
    for obj in rows {
        if let Ok(row) = serde_json::from_value::<StatusRow>(Value::Object(obj?)) {
            out.push(row);
        }
    }
    Ok(out)
}

fn from_sql(column: &str, v: SqlValue) -> Value {
    match v {
        SqlValue::Null => Value::Null,
        SqlValue::Integer(i) if BOOLEAN_COLUMNS.contains(&column) => Value::Bool(i != 0),
        SqlValue::Integer(i) => Value::from(i),
        SqlValue::Real(f) => Value::from(f),
        SqlValue::Text(t) if JSON_COLUMNS.contains(&column) => {
            serde_json::from_str(&t).unwrap_or(Value::Null)
        }
        SqlValue::Text(t) => Value::String(t),
        SqlValue::Blob(_) => Value::Null,
    }
}

/// Says what is wrong with the file in words, with the fix.
fn explain(path: &Path, e: &rusqlite::Error) -> String {
    use rusqlite::ffi::ErrorCode;
    let p = path.display();
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) | Some(ErrorCode::DatabaseCorrupt) => {
            format!("the local store {p} is not a valid SQLite database ({e}): move it away, or set HP_STORE to another path")
        }
        Some(ErrorCode::ReadOnly) | Some(ErrorCode::PermissionDenied) => read_only(path, e),
        Some(ErrorCode::CannotOpen) if !writable(path) => read_only(path, e),
        Some(ErrorCode::CannotOpen) => {
            format!("cannot open the local store {p} ({e}): check that the directory exists and is writable, or set HP_STORE")
        }
        Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => {
            format!("the local store {p} stayed locked by another process ({e}): try again once it lets go (a beat is sent again at the next one)")
        }
        Some(ErrorCode::ConstraintViolation) => format!("the local store {p} refused the row: {e}"),
        _ => format!("local store {p}: {e}"),
    }
}

fn read_only(path: &Path, e: &rusqlite::Error) -> String {
    format!(
        "the local store {} is read-only for this user ({e}): the file and its directory must be writable (SQLite adds -wal and -shm files beside it); fix the permissions, or set HP_STORE to a writable path",
        path.display()
    )
}

/// Whether this process may write the file and create files beside it.
fn writable(path: &Path) -> bool {
    let file_ok = !path.exists() || std::fs::OpenOptions::new().append(true).open(path).is_ok();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let probe = dir.join(format!(".hp-heartbeat-probe-{}", std::process::id()));
    let dir_ok = std::fs::File::create(&probe)
        .map(|_| std::fs::remove_file(&probe))
        .is_ok();
    file_ok && dir_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_and_json_read_back_as_json() {
        assert_eq!(
            from_sql("circuit_breaker_open", SqlValue::Integer(1)),
            Value::Bool(true)
        );
        assert_eq!(
            from_sql("metadata", SqlValue::Text("{\"a\":1}".into()))["a"],
            1
        );
        assert_eq!(to_sql(&Value::Bool(true)), SqlValue::Integer(1));
    }
}
