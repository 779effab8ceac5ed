//! The local store's part of liveness: before each write it reads the old
//! row and applies [`carry`] (restarts, the last crashes, how the previous
//! instance ended), as PostgreSQL's trigger does on Supabase.

use chrono::{DateTime, Utc};
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension};

use crate::model::liveness::{carry, Carried, Ended, Previous};
use crate::model::row::WorkerRow;
use crate::transport::sqlite_control::{parse_time, stamp};

/// The store's columns, with their definitions (`ADDED_COLUMNS` adds them).
pub(crate) const COLUMNS: [(&str, &str); 7] = [
    ("restarts", "integer not null default 0 check (restarts >= 0)"),
    (
        "recent_crashes",
        "text check (recent_crashes is null or (json_valid(recent_crashes) and json_type(recent_crashes) = 'array'))",
    ),
    ("last_exit_at", "text"),
    (
        "last_exit_status",
        "text check (last_exit_status in ('stopped', 'crashed', 'vanished'))",
    ),
    ("last_exit_code", "integer"),
    ("last_exit_signal", "integer"),
    ("last_exit_error", "text"),
];

/// The old row's facts, or `None` when `worker` has no row yet.
fn previous(conn: &Connection, worker: &str) -> rusqlite::Result<Option<Previous>> {
    conn.query_row(
        "select instance_id, status, state, updated_at, last_heartbeat, exit_code, exit_signal,
                last_error, restarts, recent_crashes, last_exit_at, last_exit_status,
                last_exit_code, last_exit_signal, last_exit_error
         from hp_worker_status where worker_name = ?1",
        [worker],
        |r| {
            let crashes: Option<String> = r.get(9)?;
            Ok(Previous {
                instance_id: r.get(0)?,
                status: r.get(1)?,
                state: r.get(2)?,
                updated_at: parse_time(r.get(3)?),
                last_heartbeat: parse_time(r.get(4)?),
                exit_code: r.get(5)?,
                exit_signal: r.get(6)?,
                last_error: r.get(7)?,
                restarts: r.get::<_, Option<i64>>(8)?.unwrap_or(0),
                recent_crashes: crashes
                    .and_then(|c| serde_json::from_str::<Vec<DateTime<Utc>>>(&c).ok())
                    .unwrap_or_default(),
                ended: Ended {
                    at: parse_time(r.get(10)?),
                    status: r.get(11)?,
                    code: r.get(12)?,
                    signal: r.get(13)?,
                    error: r.get(14)?,
                },
            })
        },
    )
    .optional()
}

/// The store's liveness columns for `row`, written at `now`.
pub(crate) fn columns_for(
    conn: &Connection,
    row: &WorkerRow,
    now: DateTime<Utc>,
) -> rusqlite::Result<Vec<(&'static str, SqlValue)>> {
    let old = previous(conn, &row.worker_name)?;
    let Carried {
        restarts,
        recent_crashes,
        ended,
    } = carry(
        old.as_ref(),
        &row.instance_id,
        row.status.as_str(),
        row.circuit_breaker_open,
        now,
    );
    let text = |v: Option<String>| v.map_or(SqlValue::Null, SqlValue::Text);
    let int = |v: Option<i64>| v.map_or(SqlValue::Null, SqlValue::Integer);
    let crashes: Vec<String> = recent_crashes.into_iter().map(stamp).collect();
    Ok(vec![
        ("restarts", SqlValue::Integer(restarts)),
        (
            "recent_crashes",
            text((!crashes.is_empty()).then(|| serde_json::json!(crashes).to_string())),
        ),
        ("last_exit_at", text(ended.at.map(stamp))),
        ("last_exit_status", text(ended.status)),
        ("last_exit_code", int(ended.code)),
        ("last_exit_signal", int(ended.signal)),
        ("last_exit_error", text(ended.error)),
    ])
}
