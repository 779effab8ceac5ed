//! `sql/20261201000003_hp_alerts.sql` on a real PostgreSQL, called as
//! PostgREST calls it for the SDK's `Operator` (the claim is the JSON body
//! the SDK sends): one watcher holds a webhook's cursor at a time, the cursor
//! starts at the newest event and passes over other kinds, a release hands
//! it over, and an event committed late is never skipped.

use std::time::{Duration, Instant};

use heartbeat_sdk::sidecar::{AlertBatch, AlertClaim};
use hp_heartbeat_tests::pg::{migrated, Database};
use hp_heartbeat_tests::postgrest_sql;
use serde_json::{json, Value};

fn service() -> Value {
    json!({"role": "service_role"})
}

fn claim_for(holder: &str) -> AlertClaim {
    AlertClaim {
        sink: "webhook-0123456789abcdef0123456789abcdef".into(),
        holder: holder.into(),
        kinds: vec!["crashed".into(), "stale".into()],
        lease: Duration::from_secs(120),
        max_events: 100,
    }
}

/// `POST /rest/v1/rpc/<function>` with `body`, as service_role.
fn rpc(db: &Database, claims: &Value, function: &str, body: &Value) -> Result<String, String> {
    db.as_request(claims, &postgrest_sql::rpc(function, body)?)
}

fn claim(db: &Database, holder: &str) -> AlertBatch {
    let body = serde_json::to_value(claim_for(holder)).expect("the SDK's body");
    let out = rpc(db, &service(), "hp_alert_claim", &body).expect("hp_alert_claim");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out}: {e}"))
}

fn ack(db: &Database, holder: &str, through: i64) -> bool {
    let body = json!({"sink": claim_for(holder).sink, "holder": holder, "through": through, "delivered": 1});
    rpc(db, &service(), "hp_alert_ack", &body).expect("hp_alert_ack") == "t"
}

fn release(db: &Database, holder: &str) -> bool {
    let body = json!({"sink": claim_for(holder).sink, "holder": holder});
    rpc(db, &service(), "hp_alert_release", &body).expect("hp_alert_release") == "t"
}

fn event(db: &Database, worker: &str, kind: &str) -> i64 {
    db.sql(&format!(
        "insert into hp_worker_events (worker_name, kind) values ('{worker}', '{kind}') returning id;"
    ))
    .expect("event")
    .parse()
    .expect("id")
}

#[test]
fn one_watcher_holds_a_webhook_and_hands_it_over() {
    let Some(db) = migrated("alerts_claim") else {
        return;
    };
    let old = event(&db, "before", "crashed");

    // First claim: the cursor starts at the newest event, sending nothing old.
    let first = claim(&db, "ops@a pid 1");
    assert!(first.held, "{first:?}");
    assert!(
        first.events.is_empty(),
        "history is not replayed: {first:?}"
    );
    assert_eq!(first.through, old);

    let started = event(&db, "w1", "started");
    let crashed = event(&db, "w1", "crashed");
    let stale = event(&db, "w2", "stale");
    let batch = claim(&db, "ops@a pid 1");
    let sent: Vec<(i64, &str)> = batch
        .events
        .iter()
        .map(|e| (e.id, e.kind.as_str()))
        .collect();
    assert_eq!(
        sent,
        [(crashed, "crashed"), (stale, "stale")],
        "only the kinds asked for"
    );
    assert_eq!(batch.through, stale);
    assert!(started < crashed);

    // Another watcher waits while the lease runs.
    let other = claim(&db, "ops@b pid 2");
    assert!(!other.held && other.events.is_empty(), "{other:?}");
    assert_eq!(other.holder.as_deref(), Some("ops@a pid 1"));
    assert_eq!(other.kinds, ["crashed", "stale"], "and what it sends");
    assert!(
        !ack(&db, "ops@b pid 2", stale),
        "a watcher not holding it cannot move the cursor"
    );

    assert!(ack(&db, "ops@a pid 1", crashed));
    let rest = claim(&db, "ops@a pid 1");
    assert_eq!(
        rest.events.iter().map(|e| e.id).collect::<Vec<_>>(),
        [stale],
        "after the ack"
    );
    assert!(ack(&db, "ops@a pid 1", rest.through));
    assert!(claim(&db, "ops@a pid 1").events.is_empty());
    assert_eq!(
        db.sql("select delivered from hp_alert_cursor;").as_deref(),
        Ok("2")
    );

    // A release hands it over at once, at the same place.
    assert!(release(&db, "ops@a pid 1"));
    let later = event(&db, "w3", "crashed");
    let taken = claim(&db, "ops@b pid 2");
    assert!(taken.held, "{taken:?}");
    assert_eq!(
        taken.events.iter().map(|e| e.id).collect::<Vec<_>>(),
        [later]
    );

    // Only the secret key: the other roles can neither claim nor read.
    for role in [
        json!({"role": "anon"}),
        json!({"role": "authenticated", "sub": "6f2c1a7e-0000-4000-8000-000000000009"}),
    ] {
        let body = serde_json::to_value(claim_for("intruder")).expect("body");
        let err = rpc(&db, &role, "hp_alert_claim", &body).expect_err("refused");
        assert!(err.contains("42501"), "{role}: {err}");
        let err = db
            .as_request(&role, "select * from hp_alert_cursor")
            .expect_err("no reading");
        assert!(err.contains("42501"), "{role}: {err}");
    }
}

#[test]
fn a_full_batch_moves_the_cursor_only_to_its_last_event() {
    let Some(db) = migrated("alerts_batch") else {
        return;
    };
    assert!(claim(&db, "w").held);
    db.sql("insert into hp_worker_events (worker_name, kind) select 'w' || n, 'crashed' from generate_series(1, 150) n;")
        .expect("events");
    let batch = claim(&db, "w");
    assert_eq!(batch.events.len(), 100);
    assert_eq!(batch.through, batch.events[99].id);
    assert!(ack(&db, "w", batch.through));
    let next = claim(&db, "w");
    assert_eq!(next.events.len(), 50);
    assert_eq!(next.events[0].id, batch.through + 1);
}

/// Ids are taken in order and committed in any order. A transaction that
/// took an id and has not committed when a later event is already visible
/// must not be skipped: the claim will not pass it (without the SHARE lock
/// it would answer the later event alone and move the cursor past both).
#[test]
fn an_event_committed_late_is_never_skipped() {
    let Some(db) = migrated("alerts_barrier") else {
        return;
    };
    assert!(claim(&db, "w").held);
    let mut slow = db.session().expect("session");
    slow.send("begin;\ninsert into hp_worker_events (worker_name, kind) values ('slow', 'crashed');\nselect 'inserted';\n")
        .expect("slow insert");
    // The slow insert has its id (and its lock) before the fast one is made.
    hp_heartbeat_tests::eventually::eventually(
        Duration::from_secs(10),
        "the slow transaction has taken its id",
        || {
            let pending: i64 = db
                .sql("select count(*) from pg_locks l join pg_class c on c.oid = l.relation where c.relname = 'hp_worker_events' and l.mode = 'RowExclusiveLock' and l.granted;")
                .ok()?
                .parse()
                .ok()?;
            (pending > 0).then_some(())
        },
    );
    let fast = event(&db, "fast", "crashed");

    // The claim does not pass the open insert: it waits for it at most
    // lock_timeout (the writers queued behind it must not wait longer), then
    // fails, leaving the cursor where it was.
    let body = serde_json::to_value(claim_for("w")).expect("body");
    let started = Instant::now();
    let err = rpc(&db, &service(), "hp_alert_claim", &body).expect_err("waits, then gives up");
    assert!(err.contains("55P03"), "lock_timeout: {err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    slow.send("commit;\n").expect("commit");
    let out = slow.finish().expect("session");
    assert!(out.success, "{}", out.stderr);
    let batch = claim(&db, "w");
    let ids: Vec<(&str, i64)> = batch
        .events
        .iter()
        .map(|e| (e.worker_name.as_str(), e.id))
        .collect();
    assert_eq!(ids.len(), 2, "the late one too: {ids:?}");
    assert_eq!(ids[0].0, "slow", "in id order: {ids:?}");
    assert_eq!(ids[1], ("fast", fast));
}

#[test]
fn a_claim_without_kinds_is_refused() {
    let Some(db) = migrated("alerts_kinds") else {
        return;
    };
    let mut body = serde_json::to_value(claim_for("w")).expect("body");
    body["kinds"] = json!([]);
    let err = rpc(&db, &service(), "hp_alert_claim", &body).expect_err("no kinds");
    assert!(err.contains("22023") && err.contains("no kinds"), "{err}");
}

/// A webhook no watcher has claimed for 30 days (its URL changed, or it was
/// removed) is forgotten at the next claim of another, unless its lease
/// still runs; the same in the local store.
#[test]
fn a_webhook_no_watcher_claimed_for_30_days_is_forgotten() {
    let Some(db) = migrated("alerts_forget") else {
        return;
    };
    db.sql(
        "insert into hp_alert_cursor (sink, last_event_id, updated_at, holder, lease_until) values
           ('webhook-gone', 0, now() - interval '31 days', null, null),
           ('webhook-held-long', 0, now() - interval '31 days', 'ops@c pid 3', now() + interval '1 day'),
           ('webhook-quiet', 0, now() - interval '29 days', null, null);",
    )
    .expect("old cursors");
    assert!(claim(&db, "ops@a pid 1").held);
    assert_eq!(
        db.sql("select string_agg(sink, ',' order by sink) from hp_alert_cursor;")
            .as_deref(),
        Ok("webhook-0123456789abcdef0123456789abcdef,webhook-held-long,webhook-quiet")
    );
    // A watcher back after a month starts anew: no month of old alerts.
    event(&db, "w-old", "crashed");
    db.sql("update hp_alert_cursor set last_event_id = 0, holder = null, lease_until = null, updated_at = now() - interval '31 days' where sink like 'webhook-0123%';")
        .expect("a month away");
    let back = claim(&db, "ops@a pid 1");
    assert!(back.held && back.events.is_empty(), "{back:?}");

    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("alerts.db");
    let store = heartbeat_sdk::sidecar::SqliteStore::new(&path);
    assert!(
        store
            .alert_claim(&claim_for("ops@a pid 1"))
            .expect("claim")
            .held
    );
    let conn = rusqlite::Connection::open(&path).expect("open");
    let ago = |days: i64| {
        (chrono::Utc::now() - chrono::Duration::days(days))
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    };
    let later = (chrono::Utc::now() + chrono::Duration::days(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    for (sink, updated, holder, lease) in [
        ("webhook-gone", ago(31), None, None),
        (
            "webhook-held-long",
            ago(31),
            Some("ops@c pid 3"),
            Some(later),
        ),
        ("webhook-quiet", ago(29), None, None),
    ] {
        conn.execute(
            "insert into hp_alert_cursor (sink, last_event_id, holder, lease_until, created_at, updated_at) values (?1, 0, ?2, ?3, ?4, ?4)",
            rusqlite::params![sink, holder, lease, updated],
        )
        .expect("old cursor");
    }
    assert!(
        store
            .alert_claim(&claim_for("ops@a pid 1"))
            .expect("claim")
            .held
    );
    let mut left: Vec<String> = conn
        .prepare("select sink from hp_alert_cursor order by sink")
        .expect("select")
        .query_map([], |r| r.get(0))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("sinks");
    left.sort();
    assert_eq!(
        left,
        [
            "webhook-0123456789abcdef0123456789abcdef",
            "webhook-held-long",
            "webhook-quiet"
        ],
        "the local store forgets alike"
    );
}

/// A local store whose `hp_alert_cursor` was made before the `kinds` column
/// gains it when opened, as PostgreSQL's `add column if not exists` does.
#[test]
fn a_local_store_made_before_the_kinds_column_gains_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("old.db");
    rusqlite::Connection::open(&path)
        .expect("open")
        .execute_batch(
            "create table hp_alert_cursor (
               sink text primary key check (length(sink) between 1 and 100),
               last_event_id integer not null,
               holder text check (length(holder) <= 200),
               lease_until text,
               lease_seconds integer not null default 120,
               delivered integer not null default 0,
               created_at text not null,
               updated_at text not null
             );",
        )
        .expect("the old table");
    let store = heartbeat_sdk::sidecar::SqliteStore::new(&path);
    assert!(
        store
            .alert_claim(&claim_for("ops@a pid 1"))
            .expect("claim")
            .held
    );
    let other = store.alert_claim(&claim_for("ops@b pid 2")).expect("claim");
    assert!(!other.held);
    assert_eq!(other.kinds, ["crashed", "stale"], "{other:?}");
}
