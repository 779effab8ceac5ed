//! The local store's part of liveness: before each write it reads the old
//! row and applies [`carry`] (restarts, the last crashes, how the previous
//! instance ended) and [`events`] (what happened, into `hp_worker_events`),
//! as PostgreSQL's triggers do on Supabase; and `hp_sweep()`'s twin.

use chrono::{DateTime, Utc};
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension};

use crate::model::event::WorkerEvent;
use crate::model::liveness::{carry, events, Carried, Ended, Event, Incoming, Previous};
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
                last_exit_code, last_exit_signal, last_exit_error, circuit_breaker_open, gap_ended_at
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
                breaker_open: r.get::<_, Option<i64>>(15)?.unwrap_or(0) != 0,
                gap_ended_at: parse_time(r.get(16)?),
            })
        },
    )
    .optional()
}

/// What the store adds to a write of `row` at `now`: its own columns, and
/// the events to record once the row is written.
pub(crate) struct Liveness {
    pub columns: Vec<(&'static str, SqlValue)>,
    pub events: Vec<Event>,
}

/// The store's liveness columns and events for `row`, written at `now`.
pub(crate) fn apply(
    conn: &Connection,
    row: &WorkerRow,
    now: DateTime<Utc>,
) -> rusqlite::Result<Liveness> {
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
    let incoming = Incoming {
        instance_id: &row.instance_id,
        status: row.status.as_str(),
        breaker_open: row.circuit_breaker_open,
        state: row.state.as_deref(),
        pid: row.pid,
        exit_code: row.exit_code,
        exit_signal: row.exit_signal,
        last_error: row.last_error.as_deref(),
        consecutive_errors: row.consecutive_errors,
        gap: row.gap,
    };
    let events = events(old.as_ref(), &incoming, restarts);
    let text = |v: Option<String>| v.map_or(SqlValue::Null, SqlValue::Text);
    let int = |v: Option<i64>| v.map_or(SqlValue::Null, SqlValue::Integer);
    let crashes: Vec<String> = recent_crashes.into_iter().map(stamp).collect();
    Ok(Liveness {
        columns: vec![
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
        ],
        events,
    })
}

/// The events table and the sweep's state, as `sql/20261201000002_hp_events.sql`.
pub(crate) const SCHEMA: &str = "
create table if not exists hp_worker_events (
  id integer primary key autoincrement,
  at text not null,
  worker_name text not null,
  kind text not null,
  from_state text,
  to_state text,
  detail text not null default '{}' check (json_valid(detail))
);
create index if not exists hp_worker_events_worker_at on hp_worker_events (worker_name, at);
create index if not exists hp_worker_events_at on hp_worker_events (at);
create table if not exists hp_sweep_state (
  worker_name text primary key,
  health text not null,
  since text not null
);";

/// Records `events` for `worker` at `now`.
pub(crate) fn record(
    conn: &Connection,
    worker: &str,
    now: DateTime<Utc>,
    events: &[Event],
) -> rusqlite::Result<()> {
    for e in events {
        conn.execute(
            "insert into hp_worker_events (at, worker_name, kind, from_state, to_state, detail) values (?1, ?2, ?3, ?4, ?5, ?6)",
            rusqlite::params![stamp(now), worker, e.kind, e.from, e.to, e.detail.to_string()],
        )?;
    }
    Ok(())
}

/// `hp_sweep()` on the local store over `rows`, read in the caller's
/// IMMEDIATE transaction `tx` (so two sweeps at once record each once): the
/// health no write says (stale, hung, and back to running), once per
/// transition, and the retention.
pub(crate) fn sweep(
    tx: &Connection,
    rows: &[crate::model::status_row::StatusRow],
    now: DateTime<Utc>,
    retain: chrono::Duration,
) -> rusqlite::Result<Vec<WorkerEvent>> {
    tx.execute(
        "delete from hp_worker_events where at < ?1",
        [stamp(now - retain)],
    )?;
    let first = tx.query_row(
        "select coalesce(max(id), 0) from hp_worker_events",
        [],
        |r| r.get::<_, i64>(0),
    )?;
    for row in rows {
        let health = row.health(now).as_str();
        let swept: Option<String> = tx
            .query_row(
                "select health from hp_sweep_state where worker_name = ?1",
                [&row.worker_name],
                |r| r.get(0),
            )
            .optional()?;
        if swept.as_deref() == Some(health) {
            continue;
        }
        tx.execute(
            "insert into hp_sweep_state (worker_name, health, since) values (?1, ?2, ?3)
             on conflict (worker_name) do update set health = excluded.health, since = excluded.since",
            rusqlite::params![row.worker_name, health, stamp(now)],
        )?;
        let was: Option<String> = tx
            .query_row(
                "select to_state from hp_worker_events where worker_name = ?1 and kind in ('stale', 'hung', 'recovered') order by id desc limit 1",
                [&row.worker_name],
                |r| r.get(0),
            )
            .optional()?;
        let kind = match health {
            "stale" => Some("stale"),
            "hung" => Some("hung"),
            "running" if matches!(was.as_deref(), Some("stale" | "hung")) => Some("recovered"),
            _ => None,
        };
        if let Some(kind) = kind {
            // Since when, as hp_sweep() says it: the worker's times on the
            // store's clock.
            let skew = row.clock_offset();
            let mut since = serde_json::Map::new();
            let mut put = |key: &str, t: Option<DateTime<Utc>>| {
                if let Some(t) = t {
                    since.insert(key.to_owned(), stamp(t).into());
                }
            };
            match kind {
                "stale" => put("last_heartbeat", row.last_heartbeat),
                "hung" => {
                    put("last_progress_at", row.last_progress_at.map(|t| t + skew));
                    let running = row.run_state.as_deref() == Some("running");
                    put(
                        "run_started_at",
                        row.run_started_at.filter(|_| running).map(|t| t + skew),
                    );
                }
                _ => {}
            }
            let detail = serde_json::Value::Object(since);
            record(
                tx,
                &row.worker_name,
                now,
                &[Event {
                    kind,
                    from: was,
                    to: Some(health.to_owned()),
                    detail,
                }],
            )?;
        }
    }
    tx.execute(
        "delete from hp_sweep_state where worker_name not in (select worker_name from hp_worker_status)",
        [],
    )?;
    Ok(read_events(tx, None, None)?
        .into_iter()
        .filter(|e| e.id > first)
        .collect())
}

/// The events since `since`, about `worker` when given, oldest first.
pub(crate) fn read_events(
    conn: &Connection,
    since: Option<DateTime<Utc>>,
    worker: Option<&str>,
) -> rusqlite::Result<Vec<WorkerEvent>> {
    let mut statement = conn.prepare(&format!(
        "select {EVENT_COLUMNS} from hp_worker_events
         where (?1 is null or at >= ?1) and (?2 is null or worker_name = ?2) order by id"
    ))?;
    let rows = statement.query_map(rusqlite::params![since.map(stamp), worker], event_from)?;
    rows.collect()
}

/// The columns [`event_from`] reads, in its order.
pub(crate) const EVENT_COLUMNS: &str = "id, at, worker_name, kind, from_state, to_state, detail";

/// One event from a row of [`EVENT_COLUMNS`].
pub(crate) fn event_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<WorkerEvent> {
    let detail: String = r.get(6)?;
    Ok(WorkerEvent {
        id: r.get(0)?,
        at: parse_time(r.get(1)?).unwrap_or_default(),
        worker_name: r.get(2)?,
        kind: r.get(3)?,
        from_state: r.get(4)?,
        to_state: r.get(5)?,
        detail: serde_json::from_str(&detail).unwrap_or_default(),
    })
}

/// `hp_prune()` on the local store over `rows`, in the caller's IMMEDIATE
/// transaction `tx`: the workers not seen for `gone_for`, removed with their
/// control row and swept health (unless `dry_run`), each recorded as a
/// `pruned` event.
pub(crate) fn prune(
    tx: &Connection,
    rows: Vec<crate::model::status_row::StatusRow>,
    now: DateTime<Utc>,
    gone_for: chrono::Duration,
    dry_run: bool,
) -> rusqlite::Result<Vec<crate::model::event::Pruned>> {
    let cutoff = now - gone_for;
    let gone: Vec<crate::model::event::Pruned> = rows
        .into_iter()
        .filter_map(|r| {
            let last_seen = r.last_heartbeat.or(r.updated_at);
            last_seen
                .filter(|&at| at < cutoff)
                .map(|_| crate::model::event::Pruned {
                    worker_name: r.worker_name,
                    last_seen,
                    status: r.status,
                })
        })
        .collect();
    if !dry_run {
        for p in &gone {
            record(
                tx,
                &p.worker_name,
                now,
                &[Event {
                    kind: "pruned",
                    from: p.status.clone(),
                    to: None,
                    detail: serde_json::json!({
                        "last_seen": p.last_seen,
                        "gone_for": format!("{} seconds", gone_for.num_seconds()),
                    }),
                }],
            )?;
            for table in ["hp_worker_control", "hp_sweep_state", "hp_worker_status"] {
                tx.execute(
                    &format!("delete from {table} where worker_name = ?1"),
                    [&p.worker_name],
                )?;
            }
        }
    }
    Ok(gone)
}
