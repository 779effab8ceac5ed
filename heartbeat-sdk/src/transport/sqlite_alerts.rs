//! `sql/20261201000003_hp_alerts.sql` on the local store: each webhook's
//! delivery cursor and who holds it. SQLite has one writer at a time, so ids
//! commit in order and the claim needs no barrier beyond its IMMEDIATE
//! transaction.

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension};

use crate::model::alert::{AlertBatch, AlertClaim};
use crate::transport::sqlite_control::{parse_time, stamp};
use crate::transport::sqlite_liveness::{event_from, EVENT_COLUMNS};

pub(crate) const SCHEMA: &str = "
create table if not exists hp_alert_cursor (
  sink text primary key check (length(sink) between 1 and 100),
  last_event_id integer not null,
  holder text check (length(holder) <= 200),
  kinds text not null default '[]',
  lease_until text,
  lease_seconds integer not null default 120,
  delivered integer not null default 0,
  created_at text not null,
  updated_at text not null
);";

/// Columns added since the table was first made, for stores made before.
pub(crate) const ADDED_COLUMNS: [(&str, &str); 1] = [("kinds", "text not null default '[]'")];

/// A cursor no watcher claimed for this long is forgotten (events are kept
/// 30 days by default too).
const FORGET_AFTER_DAYS: i64 = 30;

/// `hp_alert_claim()`, in the caller's IMMEDIATE transaction `tx`.
pub(crate) fn claim(
    tx: &Connection,
    claim: &AlertClaim,
    now: DateTime<Utc>,
) -> rusqlite::Result<AlertBatch> {
    if claim.kinds.is_empty() {
        // With none, nothing would be sent and the cursor would pass everything.
        return Err(rusqlite::Error::InvalidParameterName(
            "hp_alert_claim: no kinds: name at least one".into(),
        ));
    }
    let newest: i64 = tx.query_row(
        "select coalesce(max(id), 0) from hp_worker_events",
        [],
        |r| r.get(0),
    )?;
    // As hp_alert_claim(): a webhook no watcher claimed for 30 days goes.
    tx.execute(
        "delete from hp_alert_cursor where updated_at < ?1
           and (lease_until is null or lease_until < ?2)",
        rusqlite::params![
            stamp(now - chrono::Duration::days(FORGET_AFTER_DAYS)),
            stamp(now)
        ],
    )?;
    tx.execute(
        "insert into hp_alert_cursor (sink, last_event_id, lease_seconds, created_at, updated_at)
         values (?1, ?2, ?3, ?4, ?4) on conflict (sink) do nothing",
        rusqlite::params![claim.sink, newest, claim.lease.as_secs(), stamp(now)],
    )?;
    let (cursor, holder, held_kinds, lease_until): (i64, Option<String>, String, Option<String>) =
        tx.query_row(
            "select last_event_id, holder, kinds, lease_until from hp_alert_cursor where sink = ?1",
            [&claim.sink],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?;
    let lease_until = parse_time(lease_until);
    if let (Some(other), Some(until)) = (&holder, lease_until) {
        if *other != claim.holder && until > now {
            return Ok(AlertBatch {
                held: false,
                holder,
                kinds: serde_json::from_str(&held_kinds).unwrap_or_default(),
                lease_until: Some(until),
                events: Vec::new(),
                through: cursor,
            });
        }
    }
    let lease = chrono::Duration::from_std(claim.lease).unwrap_or(chrono::Duration::MAX);
    let until = now.checked_add_signed(lease).unwrap_or(now);
    let kinds = serde_json::to_string(&claim.kinds).unwrap_or_else(|_| "[]".into());
    tx.execute(
        "update hp_alert_cursor set holder = ?2, kinds = ?6, lease_until = ?3, lease_seconds = ?4, updated_at = ?5
         where sink = ?1",
        rusqlite::params![claim.sink, claim.holder, stamp(until), claim.lease.as_secs(), stamp(now), kinds],
    )?;
    let mut statement = tx.prepare(&format!(
        "select {EVENT_COLUMNS} from hp_worker_events
         where id > ?1 and kind in (select value from json_each(?2)) order by id limit ?3"
    ))?;
    let events = statement
        .query_map(
            rusqlite::params![cursor, kinds, claim.max_events],
            event_from,
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let through = match events.last() {
        Some(last) if events.len() == claim.max_events as usize => last.id,
        _ => cursor.max(newest),
    };
    Ok(AlertBatch {
        held: true,
        holder: Some(claim.holder.clone()),
        kinds: claim.kinds.clone(),
        lease_until: Some(until),
        events,
        through,
    })
}

/// `hp_alert_ack()`: false when `holder` no longer holds `sink`.
pub(crate) fn ack(
    tx: &Connection,
    sink: &str,
    holder: &str,
    through: i64,
    delivered: u32,
    now: DateTime<Utc>,
) -> rusqlite::Result<bool> {
    let lease: Option<i64> = tx
        .query_row(
            "select lease_seconds from hp_alert_cursor where sink = ?1 and holder = ?2",
            [sink, holder],
            |r| r.get(0),
        )
        .optional()?;
    let Some(lease) = lease else {
        return Ok(false);
    };
    tx.execute(
        "update hp_alert_cursor set last_event_id = max(last_event_id, ?3), delivered = delivered + ?4,
                lease_until = ?5, updated_at = ?6
         where sink = ?1 and holder = ?2",
        rusqlite::params![
            sink,
            holder,
            through,
            delivered,
            stamp(now + chrono::Duration::seconds(lease)),
            stamp(now)
        ],
    )?;
    Ok(true)
}

/// `hp_alert_release()`: false when `holder` did not hold `sink`.
pub(crate) fn release(
    tx: &Connection,
    sink: &str,
    holder: &str,
    now: DateTime<Utc>,
) -> rusqlite::Result<bool> {
    let changed = tx.execute(
        "update hp_alert_cursor set holder = null, lease_until = null, updated_at = ?3
         where sink = ?1 and holder = ?2",
        rusqlite::params![sink, holder, stamp(now)],
    )?;
    Ok(changed > 0)
}
