//! The migration in `sql/` on a real PostgreSQL, exercised the way PostgREST
//! does: as `authenticator`, switched per request to the JWT's role, running
//! the exact upsert supabase-js causes.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use heartbeat_sdk::sidecar::FinalState;
use heartbeat_sdk::{Heartbeat, MemoryTransport, StatusRow, WorkerStatus};
use hp_heartbeat_tests::eventually::eventually;
use hp_heartbeat_tests::pg::{self, migrated, Database};
use hp_heartbeat_tests::postgrest_sql::{self, COLUMN_TYPES_SQL};
use serde_json::{json, Value};

fn service() -> Value {
    json!({"role": "service_role"})
}

/// Rows the SDK really builds: a running beat and a final crashed row (every
/// optional field set), captured through its transport seam.
fn sdk_rows() -> Vec<Value> {
    let store = MemoryTransport::new();
    let hb = Heartbeat::builder("contract-worker")
        .transport(store.clone())
        .handle_signals(false)
        .version("9.9.9")
        .metadata("queue", "orders")
        .start()
        .expect("start");
    hb.job_succeeded();
    hb.job_failed("upstream said 502");
    eventually(Duration::from_secs(5), "a first beat", || {
        (!store.rows().is_empty()).then_some(())
    });
    heartbeat_sdk::sidecar::finish(
        &hb,
        FinalState::new(WorkerStatus::Crashed)
            .exit_code(3)
            .exit_signal(9)
            .last_error("panicked at 'boom'"),
    );
    let rows: Vec<Value> = store
        .rows()
        .iter()
        .map(|r| serde_json::to_value(r).expect("row serializes"))
        .collect();
    assert!(rows.len() >= 2, "a beat and a final row");
    rows
}

fn columns(db: &Database) -> BTreeMap<String, String> {
    postgrest_sql::parse_column_types(&db.sql(COLUMN_TYPES_SQL).expect("columns"))
}

fn upsert_as(db: &Database, claims: &Value, row: &Value) -> Result<String, String> {
    let sql = postgrest_sql::upsert(row, &columns(db))?;
    db.as_request(claims, &sql)
}

fn a_row(name: &str) -> Value {
    let mut row = sdk_rows().remove(0);
    row["worker_name"] = json!(name);
    row
}

/// Everything the migration defines, in a comparable text form.
fn schema_snapshot(db: &Database) -> String {
    db.sql(
        "select 'col ' || attname || ' ' || format_type(atttypid, atttypmod) || ' ' || attnotnull || ' ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
           from pg_attribute a left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
          where attrelid = 'public.hp_worker_status'::regclass and attnum > 0 and not attisdropped
         union all select 'con ' || conname || ' ' || pg_get_constraintdef(oid) || ' ' || convalidated
           from pg_constraint where conrelid = 'public.hp_worker_status'::regclass
         union all select 'idx ' || indexrelid::regclass::text from pg_index where indrelid = 'public.hp_worker_status'::regclass
         union all select 'trg ' || tgname || ' ' || tgenabled::text from pg_trigger where tgrelid = 'public.hp_worker_status'::regclass
         union all select 'pol ' || policyname || ' ' || cmd || ' ' || roles::text || ' ' || coalesce(qual, '') || ' ' || coalesce(with_check, '')
           from pg_policies where tablename = 'hp_worker_status'
         union all select 'acl ' || relname || ' ' || coalesce(relacl::text, '') || ' ' || coalesce(reloptions::text, '') || ' ' || relrowsecurity
           from pg_class where relname in ('hp_worker_status', 'hp_worker_health')
         union all select 'view ' || pg_get_viewdef('public.hp_worker_health'::regclass)
         union all select 'fn ' || md5(prosrc) || ' ' || coalesce(proconfig::text, '') from pg_proc where proname = 'hp_worker_status_stamp'
         union all select 'pub ' || pubname || ' ' || tablename from pg_publication_tables where tablename = 'hp_worker_status'
         union all select 'member ' || pg_has_role('authenticator', 'hp_reporter', 'member')
         order by 1;",
    )
    .expect("snapshot")
}

#[test]
fn migrations_apply_on_empty_database_and_again_changing_nothing() {
    let Some(server) = pg::server() else { return };
    let db = server.fresh_database("idem");
    db.sql("create publication supabase_realtime;")
        .expect("publication");
    db.migrate(true).expect("first apply");
    let first = schema_snapshot(&db);
    assert!(first.contains("col worker_name text true"), "{first}");
    assert!(
        first.contains("pub supabase_realtime hp_worker_status"),
        "{first}"
    );
    db.sql("insert into hp_worker_status (worker_name, status) values ('kept', 'running');")
        .expect("a row");
    db.migrate(true).expect("second apply");
    assert_eq!(
        first,
        schema_snapshot(&db),
        "the second apply changed the schema"
    );
    assert_eq!(
        db.sql("select count(*) from hp_worker_status;").as_deref(),
        Ok("1")
    );
}

#[test]
fn core_migration_alone_applies_with_psql_in_order() {
    let Some(server) = pg::server() else { return };
    let db = server.fresh_database("core");
    db.migrate(false).expect("core files alone");
    // Without the optional file there is no hp_reporter policy.
    let policies = db.sql(
        "select string_agg(policyname, ',') from pg_policies where tablename = 'hp_worker_status';",
    );
    assert_eq!(policies.as_deref(), Ok("hp_worker_status_read_signed_in"));
}

#[test]
fn upgrades_a_table_made_by_the_seed_keeping_its_rows() {
    let Some(server) = pg::server() else { return };
    let db = server.fresh_database("seed");
    db.sql(
        "create table public.hp_worker_status (
           worker_name text primary key, status text, last_heartbeat timestamptz default now(),
           jobs_processed integer default 0, error_count integer default 0,
           circuit_breaker_open boolean default false, metadata jsonb default '{}');
         insert into public.hp_worker_status (worker_name, status, jobs_processed) values ('old-worker', 'running', 42);",
    )
    .expect("seed table");
    db.migrate(true).expect("migrates a seed table");
    assert_eq!(
        db.sql("select jobs_processed from hp_worker_status where worker_name = 'old-worker';")
            .as_deref(),
        Ok("42")
    );
    upsert_as(&db, &service(), &a_row("new-worker")).expect("the SDK writes to the upgraded table");
}

/// The original seed guide made the table with RLS on and an "Allow all"
/// policy: with the optional hp_reporter role, a reporter could then read and
/// update every worker's row.
#[test]
fn upgrading_a_seed_table_drops_its_allow_all_policy_and_says_so() {
    let Some(server) = pg::server() else { return };
    let db = server.fresh_database("seedpolicy");
    db.sql(
        "create table public.hp_worker_status (
           worker_name text primary key, status text, last_heartbeat timestamptz default now(),
           jobs_processed integer default 0, error_count integer default 0,
           circuit_breaker_open boolean default false, metadata jsonb default '{}');
         alter table public.hp_worker_status enable row level security;
         create policy \"Allow all\" on public.hp_worker_status for all using (true) with check (true);
         grant all on public.hp_worker_status to anon, authenticated;
         insert into public.hp_worker_status (worker_name, status) values ('other-worker', 'running');",
    )
    .expect("seed table with its policy");
    let notices = db
        .sql_with_notices(
            &std::fs::read_to_string(
                pg::repo_root().join("sql/20261123000001_hp_worker_status.sql"),
            )
            .expect("file"),
        )
        .expect("migrates");
    assert!(
        notices.contains("dropping policy \"Allow all\""),
        "the NOTICE names the dropped policy: {notices}"
    );
    db.migrate(true).expect("the rest applies");
    let policies = db
        .sql("select string_agg(policyname, ',' order by policyname) from pg_policies where tablename = 'hp_worker_status';")
        .expect("policies");
    assert!(
        !policies.contains("Allow all") && policies.split(',').all(|p| p.starts_with("hp_")),
        "{policies}"
    );
    let me = json!({"role": "hp_reporter", "worker_name": "scoped-worker"});
    assert_eq!(
        db.as_request(&me, "select count(*) from hp_worker_status")
            .as_deref(),
        Ok("0"),
        "a reporter no longer sees other workers"
    );
    let anon = db
        .as_request(&json!({"role": "anon"}), "select * from hp_worker_status")
        .expect_err("anon reads");
    assert!(anon.contains("42501"), "{anon}");
}

#[test]
fn service_role_upserts_then_updates_one_row() {
    let Some(db) = migrated("service") else {
        return;
    };
    let mut row = a_row("svc-worker");
    upsert_as(&db, &service(), &row).expect("insert");
    row["jobs_processed"] = json!(1234);
    row["status"] = json!("stopped");
    upsert_as(&db, &service(), &row).expect("update");
    let got = db.sql("select count(*) || ' ' || max(jobs_processed) || ' ' || max(status) from hp_worker_status;");
    assert_eq!(got.as_deref(), Ok("1 1234 stopped"));
    // Only the keys sent are written: a partial upsert keeps the rest.
    let partial = json!({"worker_name": "svc-worker", "status": "running"});
    upsert_as(&db, &service(), &partial).expect("partial");
    assert_eq!(
        db.sql("select jobs_processed from hp_worker_status;")
            .as_deref(),
        Ok("1234")
    );
    // And service_role reads both the table and the view.
    db.as_request(&service(), "select count(*) from hp_worker_health")
        .expect("view readable");
}

#[test]
fn anon_can_neither_read_nor_write() {
    let Some(db) = migrated("anon") else { return };
    upsert_as(&db, &service(), &a_row("w")).expect("seed row");
    let anon = json!({"role": "anon"});
    let read = db
        .as_request(&anon, "select * from hp_worker_status")
        .expect_err("anon reads");
    assert!(read.contains("42501"), "{read}");
    let view = db
        .as_request(&anon, "select * from hp_worker_health")
        .expect_err("anon reads the view");
    assert!(view.contains("42501"), "{view}");
    let write = upsert_as(&db, &anon, &a_row("anon-worker")).expect_err("anon writes");
    assert!(write.contains("42501"), "{write}");
}

#[test]
fn authenticated_reads_but_cannot_write() {
    let Some(db) = migrated("authd") else { return };
    upsert_as(&db, &service(), &a_row("w1")).expect("seed row");
    let user = json!({"role": "authenticated", "sub": "00000000-0000-0000-0000-000000000001"});
    assert_eq!(
        db.as_request(&user, "select count(*) from hp_worker_status")
            .as_deref(),
        Ok("1")
    );
    assert_eq!(
        db.as_request(&user, "select health from hp_worker_health")
            .as_deref(),
        Ok("running")
    );
    let write = upsert_as(&db, &user, &a_row("w2")).expect_err("authenticated writes");
    assert!(write.contains("42501"), "{write}");
    let delete = db
        .as_request(&user, "delete from hp_worker_status")
        .expect_err("authenticated deletes");
    assert!(delete.contains("42501"), "{delete}");
}

#[test]
fn hp_reporter_writes_only_its_own_row_and_columns() {
    let Some(db) = migrated("reporter") else {
        return;
    };
    upsert_as(&db, &service(), &a_row("someone-else")).expect("another worker's row");
    let me = json!({"role": "hp_reporter", "worker_name": "scoped-worker"});
    let mut row = a_row("scoped-worker");
    upsert_as(&db, &me, &row).expect("insert own row");
    row["jobs_processed"] = json!(7);
    upsert_as(&db, &me, &row).expect("update own row");
    assert_eq!(
        db.as_request(
            &me,
            "select string_agg(worker_name, ',') from hp_worker_status"
        )
        .as_deref(),
        Ok("scoped-worker"),
        "sees only its row"
    );
    let other = upsert_as(&db, &me, &a_row("someone-else")).expect_err("writes another row");
    assert!(
        other.contains("42501") || other.contains("row-level security"),
        "{other}"
    );
    let rename = db
        .as_request(&me, "update hp_worker_status set worker_name = 'hijack' where worker_name = 'scoped-worker'")
        .expect_err("renames its row");
    assert!(rename.contains("42501"), "{rename}");
    for forged in [
        "updated_at = now()",
        // The store's count of the worker's lives is not the worker's to write.
        "restarts = 0",
        "recent_crashes = null",
        "last_exit_status = 'stopped'",
    ] {
        let column = db
            .as_request(&me, &format!("update hp_worker_status set {forged}"))
            .expect_err("a column the reporter may not write");
        assert!(column.contains("42501"), "{forged}: {column}");
    }
    // Its own liveness columns it may.
    db.as_request(
        &me,
        "update hp_worker_status set missed_beats = 3, watchdog_seconds = 60, last_progress_at = now()",
    )
    .expect("the worker's liveness columns");
    let delete = db
        .as_request(&me, "delete from hp_worker_status")
        .expect_err("deletes");
    assert!(delete.contains("42501"), "{delete}");
    assert_eq!(
        db.sql("select jobs_processed from hp_worker_status where worker_name = 'scoped-worker';")
            .as_deref(),
        Ok("7")
    );
}

#[test]
fn each_check_rejects_its_bad_value() {
    let Some(db) = migrated("checks") else { return };
    let cases: Vec<(&str, Value, &str)> = vec![
        ("status", json!("paused"), "hp_worker_status_status_allowed"),
        (
            "worker_name",
            json!("has space"),
            "hp_worker_status_name_format",
        ),
        (
            "worker_name",
            json!("x".repeat(129)),
            "hp_worker_status_name_format",
        ),
        ("worker_name", json!(""), "hp_worker_status_name_format"),
        (
            "jobs_processed",
            json!(-1),
            "hp_worker_status_counters_nonneg",
        ),
        ("error_count", json!(-5), "hp_worker_status_counters_nonneg"),
        (
            "consecutive_errors",
            json!(-1),
            "hp_worker_status_counters_nonneg",
        ),
        (
            "metadata",
            json!([1, 2]),
            "hp_worker_status_metadata_object",
        ),
        (
            "metadata",
            json!({"blob": "x".repeat(9000)}),
            "hp_worker_status_metadata_object",
        ),
        (
            "last_error",
            json!("e".repeat(2049)),
            "hp_worker_status_last_error_len",
        ),
        (
            "hostname",
            json!("h".repeat(256)),
            "hp_worker_status_text_lengths",
        ),
        ("pid", json!(0), "hp_worker_status_process_facts"),
        (
            "memory_rss_bytes",
            json!(-1),
            "hp_worker_status_process_facts",
        ),
        ("exit_signal", json!(99), "hp_worker_status_exit_signal"),
        (
            "heartbeat_interval_seconds",
            json!(0),
            "hp_worker_status_interval_range",
        ),
    ];
    for (key, bad, constraint) in cases {
        let mut row = a_row("checked-worker");
        row[key] = bad;
        let err = upsert_as(&db, &service(), &row).expect_err(key);
        assert!(
            err.contains("23514") && err.contains(constraint),
            "{key}: {err}"
        );
    }
    // The largest allowed values pass.
    let mut row = a_row(&"x".repeat(128));
    row["last_error"] = json!("e".repeat(2048));
    upsert_as(&db, &service(), &row).expect("values at the limits");
}

#[test]
fn last_heartbeat_is_the_database_clock_not_the_workers() {
    let Some(db) = migrated("clock") else { return };
    // A seed-style client sends last_heartbeat from a wrong clock: ignored.
    let mut row = a_row("skewed-worker");
    row["last_heartbeat"] = json!("2001-01-01T00:00:00Z");
    upsert_as(&db, &service(), &row).expect("insert");
    let fresh = "select (abs(extract(epoch from now() - last_heartbeat)) < 60) || ' ' || (last_heartbeat = updated_at) from hp_worker_status;";
    assert_eq!(db.sql(fresh).as_deref(), Ok("true true"));
    row["last_heartbeat"] = json!("2099-01-01T00:00:00Z");
    row["client_heartbeat"] = json!("2099-01-01T00:00:00Z");
    upsert_as(&db, &service(), &row).expect("update");
    assert_eq!(
        db.sql(fresh).as_deref(),
        Ok("true true"),
        "a clock in the future cannot look fresh forever"
    );
    // The worker's own time is kept aside for diagnosis.
    assert_eq!(
        db.sql("select extract(year from client_heartbeat) from hp_worker_status;")
            .as_deref(),
        Ok("2099")
    );
}

/// The view and `StatusRow::health` agree on the same rows, at the boundaries.
#[test]
fn health_view_and_rust_agree_at_the_boundaries() {
    let Some(db) = migrated("health") else { return };
    // (name, status, age in microseconds or none, interval, breaker open)
    let mut cases: Vec<(String, &str, Option<i64>, i32, bool)> = Vec::new();
    for (interval, grace_us) in [(30, 75_000_000i64), (1, 2_500_000), (60, 150_000_000)] {
        for (tag, age) in [
            ("fresh", 0),
            ("just-fresh", grace_us - 1_000),
            ("at", grace_us),
            ("just-stale", grace_us + 1_000),
            ("old", grace_us * 10),
        ] {
            for status in ["running", "stopped", "crashed", "unknown"] {
                for breaker in [false, true] {
                    cases.push((
                        format!("{status}-{tag}-{interval}-{breaker}"),
                        status,
                        Some(age),
                        interval,
                        breaker,
                    ));
                }
            }
        }
    }
    cases.push(("running-never".into(), "running", None, 30, false));
    cases.push(("unknown-never".into(), "unknown", None, 30, false));
    // Triggers would stamp now(): write the ages directly, as a replica would,
    // and read them in the same transaction, so now() is one instant for the
    // rows, the view and Rust.
    let mut sql = String::from("begin; set local session_replication_role = replica;\n");
    for (name, status, age, interval, breaker) in &cases {
        let last = match age {
            Some(us) => format!("now() - make_interval(secs => {us}::double precision / 1000000)"),
            None => "null".into(),
        };
        sql.push_str(&format!(
            "insert into hp_worker_status (worker_name, status, last_heartbeat, heartbeat_interval_seconds, circuit_breaker_open) values ('{name}', '{status}', {last}, {interval}, {breaker}) \\g /dev/null\n"
        ));
    }
    sql.push_str("select to_json(now())::text;\n");
    sql.push_str("select worker_name || '|' || status || '|' || coalesce(to_json(last_heartbeat)::text, '') || '|' || heartbeat_interval_seconds || '|' || circuit_breaker_open || '|' || health from hp_worker_health;\n");
    sql.push_str("select '#spot ' || string_agg(worker_name || '=' || health, ',' order by worker_name) from hp_worker_health where worker_name in ('running-at-30-false', 'running-just-stale-30-false', 'running-never', 'running-fresh-30-true', 'running-old-30-true');\n");
    sql.push_str("rollback;\n");
    let out = db.sql(&sql).expect("rows and view");
    let (out, spot) = out.split_once("#spot ").expect("spot line");
    assert_eq!(
        spot.trim(),
        "running-at-30-false=running,running-fresh-30-true=crashed,running-just-stale-30-false=stale,running-never=unknown,running-old-30-true=stale",
        "at the boundary: fresh; just over: stale; never beat: unknown; breaker open: crashed unless silent"
    );
    let mut lines = out.lines();
    let now: DateTime<Utc> = serde_json::from_str(lines.next().expect("now")).expect("now parses");
    let mut compared = 0;
    for line in lines {
        let f: Vec<&str> = line.split('|').collect();
        let mut row = StatusRow::named(f[0]);
        row.status = Some(f[1].to_owned());
        row.last_heartbeat = (!f[2].is_empty()).then(|| serde_json::from_str(f[2]).expect("time"));
        row.heartbeat_interval_seconds = f[3].parse().ok();
        row.circuit_breaker_open = Some(f[4] == "t" || f[4] == "true");
        let rust = row.health(now);
        assert_eq!(
            rust.as_str(),
            f[5],
            "{} disagrees: rust {rust:?}, sql {}",
            f[0],
            f[5]
        );
        compared += 1;
    }
    assert_eq!(compared, cases.len());
}

/// A row of the health test: (name, status, breaker open, column = SQL value).
type HealthCase = (String, &'static str, bool, Vec<(&'static str, String)>);

/// Hung and flapping: the view and `StatusRow::health` agree at the
/// boundaries of the watchdog, of `max_run`, and of the crash window, with
/// the worker's clock ahead, behind and right.
#[test]
fn hung_and_flapping_agree_in_the_view_and_rust() {
    let Some(db) = migrated("hung") else { return };
    let ago = |us: i64| format!("now() - make_interval(secs => {us}::double precision / 1000000)");
    let mut cases: Vec<HealthCase> = Vec::new();
    for skew_s in [-5i64, 0, 7] {
        // client_heartbeat = last_heartbeat + skew: the worker's stamps move with it.
        let client = format!("now() - interval '1 second' + make_interval(secs => {skew_s})");
        let on_worker_clock = |us: i64| format!("{} + make_interval(secs => {skew_s})", ago(us));
        for (tag, us) in [
            ("in", 59_999_000i64),
            ("at", 60_000_000),
            ("past", 60_001_000),
            ("never", 0),
        ] {
            let mut cols = vec![
                ("client_heartbeat", client.clone()),
                ("watchdog_seconds", "60".into()),
            ];
            if tag != "never" {
                cols.push(("last_progress_at", on_worker_clock(us)));
            }
            cases.push((
                format!("watchdog-{tag}-{skew_s}"),
                "running",
                false,
                cols.clone(),
            ));
            // Paused, or between two runs: no progress is expected.
            let mut paused = cols.clone();
            paused.push(("state", "'paused'".into()));
            cases.push((
                format!("watchdog-paused-{tag}-{skew_s}"),
                "running",
                false,
                paused,
            ));
            let mut idle = cols;
            idle.push(("run_state", "'succeeded'".into()));
            cases.push((
                format!("watchdog-idle-{tag}-{skew_s}"),
                "running",
                false,
                idle,
            ));
        }
        for run_state in ["running", "succeeded"] {
            for (tag, us) in [
                ("in", 119_999_000i64),
                ("at", 120_000_000),
                ("past", 120_001_000),
            ] {
                cases.push((
                    format!("maxrun-{run_state}-{tag}-{skew_s}"),
                    "running",
                    false,
                    vec![
                        ("client_heartbeat", client.clone()),
                        ("run_state", format!("'{run_state}'")),
                        ("max_run_seconds", "120".into()),
                        ("run_started_at", on_worker_clock(us)),
                    ],
                ));
            }
        }
    }
    let crashes = |ages_s: [i64; 3]| {
        format!(
            "array[{}]::timestamptz[]",
            ages_s.map(|a| ago(a * 1_000_000)).join(", ")
        )
    };
    for status in ["running", "crashed", "stopped"] {
        for breaker in [false, true] {
            for (tag, list) in [
                ("loop", crashes([300, 200, 100])),
                ("window-at", crashes([610, 300, 10])),
                ("window-past", crashes([611, 300, 10])),
                ("clean", crashes([900, 800, 600])),
                (
                    "two",
                    "array[now() - interval '1 minute', now()]::timestamptz[]".to_owned(),
                ),
            ] {
                cases.push((
                    format!("crashes-{status}-{breaker}-{tag}"),
                    status,
                    breaker,
                    vec![("recent_crashes", list)],
                ));
            }
        }
    }
    let mut sql = String::from("begin; set local session_replication_role = replica;\n");
    for (name, status, breaker, cols) in &cases {
        let (names, values): (Vec<&str>, Vec<String>) = cols.iter().cloned().unzip();
        sql.push_str(&format!(
            "insert into hp_worker_status (worker_name, status, circuit_breaker_open, last_heartbeat, heartbeat_interval_seconds{}{}) values ('{name}', '{status}', {breaker}, now() - interval '1 second', 30{}{}) \\g /dev/null\n",
            if names.is_empty() { "" } else { ", " },
            names.join(", "),
            if values.is_empty() { "" } else { ", " },
            values.join(", ")
        ));
    }
    sql.push_str("select to_json(now())::text;\n");
    sql.push_str("select to_json(w)::text || '#' || h.health from hp_worker_status w join hp_worker_health h using (worker_name);\n");
    sql.push_str("rollback;\n");
    let out = db.sql(&sql).expect("rows and view");
    let mut lines = out.lines();
    let now: DateTime<Utc> = serde_json::from_str(lines.next().expect("now")).expect("now parses");
    let mut seen = std::collections::BTreeMap::new();
    for line in lines {
        let (json, sql_health) = line.rsplit_once('#').expect("row#health");
        let row: StatusRow = serde_json::from_str(json).expect("a row");
        let rust = row.health(now);
        assert_eq!(
            rust.as_str(),
            sql_health,
            "{} disagrees: rust {rust:?}, sql {sql_health}",
            row.worker_name
        );
        seen.insert(row.worker_name.clone(), sql_health.to_owned());
    }
    assert_eq!(seen.len(), cases.len());
    // Spot checks that the rule is the one meant, not only the same twice.
    for (name, health) in [
        ("watchdog-in-7", "running"),
        ("watchdog-at-0", "running"),
        ("watchdog-past-0", "hung"),
        ("watchdog-past--5", "hung"),
        ("watchdog-never-0", "running"),
        ("watchdog-paused-past-0", "running"),
        ("watchdog-idle-past-0", "running"),
        ("maxrun-running-past-7", "hung"),
        ("maxrun-succeeded-past-0", "running"),
        ("crashes-running-false-loop", "flapping"),
        ("crashes-crashed-false-loop", "flapping"),
        ("crashes-stopped-false-loop", "stopped"),
        ("crashes-running-true-loop", "flapping"),
        ("crashes-running-false-window-at", "flapping"),
        ("crashes-running-false-window-past", "running"),
        ("crashes-running-false-clean", "running"),
        ("crashes-crashed-false-two", "crashed"),
    ] {
        assert_eq!(seen.get(name).map(String::as_str), Some(health), "{name}");
    }
}

/// One write of the liveness scenario: (worker, instance, status, breaker
/// open, state, exit code, last error).
type Write = (
    &'static str,
    &'static str,
    &'static str,
    bool,
    &'static str,
    Option<i32>,
    Option<&'static str>,
);

/// A crash loop (started and crashed four times, then started again), an
/// open breaker (no crash), the same crashed row sent twice (one crash), an
/// instance that vanished while it worked (a crash) and one that was paused
/// (not a crash).
const LIVENESS_WRITES: [Write; 21] = [
    ("loop", "i0", "running", false, "active", None, None),
    (
        "loop",
        "i0",
        "crashed",
        false,
        "active",
        Some(1),
        Some("Error: boom 0"),
    ),
    ("loop", "i1", "running", false, "active", None, None),
    (
        "loop",
        "i1",
        "crashed",
        false,
        "active",
        Some(1),
        Some("Error: boom 1"),
    ),
    (
        "loop",
        "i1",
        "crashed",
        false,
        "active",
        Some(1),
        Some("Error: boom 1"),
    ),
    ("loop", "i2", "running", false, "active", None, None),
    (
        "loop",
        "i2",
        "crashed",
        false,
        "active",
        Some(1),
        Some("Error: boom 2"),
    ),
    ("loop", "i3", "running", false, "active", None, None),
    (
        "loop",
        "i3",
        "crashed",
        false,
        "active",
        Some(2),
        Some("Error: boom 3"),
    ),
    ("loop", "i4", "running", false, "active", None, None),
    (
        "loop",
        "i4",
        "crashed",
        true,
        "active",
        None,
        Some("breaker"),
    ),
    ("ghost", "g0", "running", false, "active", None, None),
    ("ghost", "g1", "running", false, "active", None, None),
    ("ghost", "g1", "running", false, "paused", None, None),
    ("ghost", "g2", "running", false, "active", None, None),
    ("calm", "c0", "running", false, "active", None, None),
    ("calm", "c0", "stopped", false, "active", Some(0), None),
    // Errors open the breaker, then the worker crashes with it still open.
    ("tripped", "t0", "running", false, "active", None, None),
    (
        "tripped",
        "t0",
        "crashed",
        true,
        "active",
        None,
        Some("Error: tripped"),
    ),
    (
        "tripped",
        "t0",
        "crashed",
        true,
        "active",
        Some(1),
        Some("Error: tripped"),
    ),
    ("tripped", "t1", "running", false, "active", None, None),
];

/// A fixed instance id for a tag of the scenario (the column is a uuid).
fn instance(tag: &str) -> String {
    let n = tag.bytes().fold(0u64, |a, b| a * 256 + u64::from(b));
    format!("00000000-0000-4000-8000-{n:012x}")
}

/// The scenario as PostgREST's merge-duplicates upserts: only the columns
/// sent are set.
fn liveness_writes_sql() -> String {
    LIVENESS_WRITES
        .iter()
        .map(|(name, tag, status, breaker, state, code, error)| {
            format!(
                "insert into hp_worker_status (worker_name, instance_id, status, circuit_breaker_open, state, exit_code, last_error) values ('{name}', '{}', '{status}', {breaker}, '{state}', {}, {}) on conflict (worker_name) do update set instance_id = excluded.instance_id, status = excluded.status, circuit_breaker_open = excluded.circuit_breaker_open, state = excluded.state, exit_code = excluded.exit_code, last_error = excluded.last_error;\n",
                instance(tag),
                code.map_or("null".into(), |c| c.to_string()),
                error.map_or("null".into(), |e| format!("'{e}'")),
            )
        })
        .collect()
}

/// The scenario written to a local store, as the SDK writes its rows.
fn write_liveness_scenario(store: &heartbeat_sdk::sidecar::SqliteStore) {
    let template = serde_json::from_value::<heartbeat_sdk::WorkerRow>(sdk_rows().remove(0))
        .expect("an SDK row");
    for (name, tag, status, breaker, state, code, error) in LIVENESS_WRITES {
        let mut row = template.clone();
        row.worker_name = name.into();
        row.instance_id = instance(tag);
        row.status = WorkerStatus::parse(Some(status));
        row.circuit_breaker_open = breaker;
        row.state = Some(state.into());
        row.exit_code = code;
        row.last_error = error.map(str::to_owned);
        row.gap = None;
        store.write(&row).expect("write");
    }
}

/// What each store says after the writes: restarts, crashes kept, and how
/// the previous instance ended.
fn liveness_summary(rows: &[StatusRow], now: DateTime<Utc>) -> Vec<String> {
    let mut out: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{} restarts={} crashes={} last_exit={}/{}/{} health={}",
                r.worker_name,
                r.restarts.unwrap_or(0),
                r.recent_crashes.as_ref().map_or(0, Vec::len),
                r.last_exit_status.as_deref().unwrap_or("-"),
                r.last_exit_code.map_or("-".into(), |c| c.to_string()),
                r.last_exit_error.as_deref().unwrap_or("-"),
                r.health(now).as_str()
            )
        })
        .collect();
    out.sort();
    out
}

/// The trigger on PostgreSQL and `model/liveness.rs` on the local store
/// count restarts and crashes alike; a beat leaves them as they are.
#[test]
fn restarts_and_crashes_are_counted_alike_by_postgres_and_the_local_store() {
    let Some(db) = migrated("liveness") else {
        return;
    };
    let mut sql = String::new();
    sql.push_str(&liveness_writes_sql());
    // A beat (same instance, same status) leaves the store's columns as they are.
    sql.push_str(&format!(
        "insert into hp_worker_status (worker_name, instance_id, status, jobs_processed) values ('loop', '{}', 'crashed', 5) on conflict (worker_name) do update set instance_id = excluded.instance_id, status = excluded.status, jobs_processed = excluded.jobs_processed;\n",
        instance("i4")
    ));
    sql.push_str("select to_json(now())::text;\n");
    sql.push_str("select to_json(w)::text from hp_worker_status w;\n");
    let out = db.sql(&sql).expect("writes");
    let mut lines = out
        .lines()
        .filter(|l| l.starts_with('"') || l.starts_with('{'));
    let now: DateTime<Utc> = serde_json::from_str(lines.next().expect("now")).expect("now");
    let pg_rows: Vec<StatusRow> = lines
        .map(|l| serde_json::from_str(l).expect("row"))
        .collect();
    let postgres = liveness_summary(&pg_rows, now);

    let dir = tempfile::tempdir().expect("tmp");
    let store = heartbeat_sdk::sidecar::SqliteStore::new(dir.path().join("liveness.db"));
    write_liveness_scenario(&store);
    let local = liveness_summary(&store.read_all().expect("read"), chrono::Utc::now());

    assert_eq!(postgres, local, "the two stores disagree");
    assert_eq!(
        postgres,
        vec![
            "calm restarts=0 crashes=0 last_exit=-/-/- health=stopped",
            "ghost restarts=2 crashes=1 last_exit=vanished/-/ended without a final row (killed by SIGKILL or the OOM killer, or its host went down) health=running",
            "loop restarts=4 crashes=3 last_exit=crashed/2/Error: boom 3 health=flapping",
            "tripped restarts=1 crashes=1 last_exit=crashed/1/Error: tripped health=running",
        ],
        "the scenario's expected counts"
    );
}

/// The same writes make the same history: the status trigger on PostgreSQL
/// and `model/liveness.rs` on the local store record the same events.
#[test]
fn the_status_trigger_and_the_local_store_record_the_same_events() {
    let Some(db) = migrated("events") else {
        return;
    };
    let mut sql = String::new();
    sql.push_str(&liveness_writes_sql());
    sql.push_str("select worker_name || ' ' || kind || ' ' || coalesce(from_state, '-') || ' ' || coalesce(to_state, '-') from hp_worker_events order by id;\n");
    let postgres: Vec<String> = db
        .sql(&sql)
        .expect("writes")
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with("INSERT"))
        .map(str::to_owned)
        .collect();

    let dir = tempfile::tempdir().expect("tmp");
    let store = heartbeat_sdk::sidecar::SqliteStore::new(dir.path().join("events.db"));
    write_liveness_scenario(&store);
    let local: Vec<String> = store
        .events(None, None)
        .expect("events")
        .iter()
        .map(|e| {
            format!(
                "{} {} {} {}",
                e.worker_name,
                e.kind,
                e.from_state.as_deref().unwrap_or("-"),
                e.to_state.as_deref().unwrap_or("-")
            )
        })
        .collect();
    assert_eq!(postgres, local, "the two stores' histories");
    let loop_kinds: Vec<&str> = postgres
        .iter()
        .filter(|l| l.starts_with("loop "))
        .map(|l| l.split(' ').nth(1).unwrap_or(""))
        .collect();
    assert_eq!(
        loop_kinds,
        [
            "started",
            "crashed",
            "started",
            "crashed",
            "started",
            "crashed",
            "started",
            "crashed",
            "started",
            "breaker_opened"
        ],
        "a crash loop, each crash once, the breaker apart: {postgres:?}"
    );
    assert!(
        postgres.contains(&"ghost vanished running -".to_owned())
            && postgres.contains(&"ghost paused active paused".to_owned())
            && postgres.contains(&"calm stopped running stopped".to_owned()),
        "{postgres:?}"
    );
}

/// A worker that went silent is recorded stale by the sweep, once, however
/// many sweeps run at once; on PostgreSQL and on the local store.
#[test]
fn two_sweeps_at_once_record_a_silent_worker_stale_once() {
    let Some(db) = migrated("sweep") else { return };
    db.sql(
        "insert into hp_worker_status (worker_name, instance_id, status) values ('silent', gen_random_uuid(), 'running'), ('busy', gen_random_uuid(), 'running');
         set session_replication_role = replica;
         update hp_worker_status set last_heartbeat = now() - interval '10 minutes' where worker_name = 'silent';",
    )
    .expect("rows");
    std::thread::scope(|scope| {
        let sweeps: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| db.sql("select count(*) from hp_sweep();")))
            .collect();
        for s in sweeps {
            s.join().expect("sweep thread").expect("sweep");
        }
    });
    assert_eq!(
        db.sql("select string_agg(worker_name || ' ' || kind || ' ' || to_state, ',') from hp_worker_events where kind in ('stale', 'hung', 'recovered');")
            .as_deref(),
        Ok("silent stale stale"),
        "recorded once"
    );
    assert_eq!(
        db.sql("select (now() - (detail->>'last_heartbeat')::timestamptz) > interval '9 minutes' from hp_worker_events where kind = 'stale';")
            .as_deref(),
        Ok("t"),
        "the stale event says when the last beat was"
    );
    db.sql("update hp_worker_status set status = 'running' where worker_name = 'silent';")
        .expect("a beat");
    db.sql("select count(*) from hp_sweep();").expect("sweep");
    assert_eq!(
        db.sql("select kind || ' ' || from_state || ' ' || to_state from hp_worker_events where kind = 'recovered';")
            .as_deref(),
        Ok("recovered stale running"),
        "and back"
    );

    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("sweep.db");
    let store = heartbeat_sdk::sidecar::SqliteStore::new(&path);
    let mut row = serde_json::from_value::<heartbeat_sdk::WorkerRow>(sdk_rows().remove(0))
        .expect("an SDK row");
    row.worker_name = "silent".into();
    row.status = WorkerStatus::Running;
    store.write(&row).expect("write");
    let conn = rusqlite::Connection::open(&path).expect("open");
    conn.execute(
        "update hp_worker_status set last_heartbeat = ?1",
        [(chrono::Utc::now() - chrono::Duration::minutes(10)).to_rfc3339()],
    )
    .expect("age it");
    let sweeps: Vec<_> = (0..4)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || {
                heartbeat_sdk::sidecar::SqliteStore::new(&path)
                    .sweep(chrono::Duration::days(30))
                    .map(|e| e.len())
            })
        })
        .collect();
    let recorded: usize = sweeps
        .into_iter()
        .map(|s| s.join().expect("thread").expect("sweep"))
        .sum();
    assert_eq!(recorded, 1, "four sweeps, one stale event");
    let stale: Vec<_> = store
        .events(None, Some("silent"))
        .expect("events")
        .into_iter()
        .filter(|e| e.kind == "stale")
        .collect();
    assert_eq!(stale.len(), 1, "{stale:?}");
    let last_beat = stale[0].detail["last_heartbeat"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
    assert!(
        last_beat
            .is_some_and(|t| chrono::Utc::now() - t.with_timezone(&chrono::Utc)
                > chrono::Duration::minutes(9)),
        "the stale event says when the last beat was, as PostgreSQL does: {stale:?}"
    );
}

/// The liveness and events migrations need only the first one: on a table
/// without the control and runs migrations, a restart, a crash and a pause
/// column's absence cost no write.
#[test]
fn liveness_and_events_apply_on_the_first_migration_alone() {
    let Some(server) = pg::server() else { return };
    let db = server.fresh_database("liveness_alone");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for file in [
        "sql/20261123000001_hp_worker_status.sql",
        "sql/20261201000001_hp_liveness.sql",
        "sql/20261201000002_hp_events.sql",
    ] {
        db.apply_file(&root.join(file)).expect(file);
    }
    let out = db
        .sql(&format!(
            "insert into hp_worker_status (worker_name, instance_id, status) values ('w', '{a}', 'running');
             update hp_worker_status set status = 'crashed', exit_code = 1 where worker_name = 'w';
             update hp_worker_status set instance_id = '{b}', status = 'running', exit_code = null where worker_name = 'w';
             select restarts || ' ' || cardinality(recent_crashes) || ' ' || last_exit_status from hp_worker_status;
             select string_agg(kind, ',' order by id) from hp_worker_events;
             select count(*) from hp_sweep();",
            a = instance("a0"),
            b = instance("a1")
        ))
        .expect("a restart on the first migration and liveness alone");
    let lines: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
    assert!(lines.contains(&"1 1 crashed"), "{out}");
    assert!(lines.contains(&"started,crashed,started"), "{out}");
}

/// `hp_prune()`: a dry run says which; a run removes them with their control
/// rows, records each, and a pruned worker that comes back reappears.
#[test]
fn prune_removes_ghosts_with_their_control_rows_and_they_may_come_back() {
    let Some(db) = migrated("prune") else { return };
    db.sql(&format!(
        "insert into hp_worker_status (worker_name, instance_id, status) values ('ghost', '{}', 'stopped'), ('alive', '{}', 'running');
         insert into hp_worker_control (worker_name, desired) values ('ghost', 'paused');
         set session_replication_role = replica;
         update hp_worker_status set last_heartbeat = now() - interval '8 days', updated_at = now() - interval '8 days' where worker_name = 'ghost';",
        instance("g0"),
        instance("a0")
    ))
    .expect("rows");
    assert_eq!(
        db.sql("select string_agg(worker_name || ' ' || status, ',') from hp_prune(interval '7 days', true);")
            .as_deref(),
        Ok("ghost stopped"),
        "the dry run says which"
    );
    assert_eq!(
        db.sql("select count(*) from hp_worker_status;").as_deref(),
        Ok("2")
    );
    assert_eq!(
        db.sql("select string_agg(worker_name, ',') from hp_prune(interval '7 days');")
            .as_deref(),
        Ok("ghost")
    );
    assert_eq!(
        db.sql("select string_agg(worker_name, ',') from hp_worker_status;")
            .as_deref(),
        Ok("alive")
    );
    assert_eq!(
        db.sql("select count(*) from hp_worker_control where worker_name = 'ghost';")
            .as_deref(),
        Ok("0"),
        "its control row went with it"
    );
    assert_eq!(
        db.sql("select kind || ' ' || from_state from hp_worker_events where worker_name = 'ghost' and kind = 'pruned';")
            .as_deref(),
        Ok("pruned stopped")
    );
    db.sql(&format!(
        "insert into hp_worker_status (worker_name, instance_id, status) values ('ghost', '{}', 'running');",
        instance("g1")
    ))
    .expect("it comes back");
    assert_eq!(
        db.sql(
            "select status || ' ' || restarts from hp_worker_status where worker_name = 'ghost';"
        )
        .as_deref(),
        Ok("running 0"),
        "a new row, as a new worker's"
    );
    let short = db
        .sql("select * from hp_prune(interval '10 minutes');")
        .expect_err("under an hour");
    assert!(
        short.contains("22023") && short.contains("under an hour"),
        "{short}"
    );
}

/// docs/status.md's pg_cron line, as written, sweeps in the database: a
/// silent worker is recorded stale without any watcher.
#[test]
fn the_documented_pg_cron_lines_sweep_a_silent_worker_and_prune_a_ghost() {
    let Some(server) = pg::server() else { return };
    let db = match server.cron_database() {
        Ok(db) => db,
        Err(why) => {
            hp_heartbeat_tests::skip::or_require(
                "DB",
                &format!("the pg_cron sweep line of docs/status.md cannot run: {why}"),
            );
            return;
        }
    };
    db.migrate(true).expect("migrations");
    let text = std::fs::read_to_string(pg::repo_root().join("docs/status.md")).expect("docs");
    let line = text
        .lines()
        .find(|l| l.starts_with("select cron.schedule('hp-sweep'"))
        .expect("the pg_cron line in docs/status.md");
    db.sql(&format!(
        "create extension if not exists pg_cron;
         insert into hp_worker_status (worker_name, instance_id, status) values ('cron-silent', '{}', 'running');
         set session_replication_role = replica;
         update hp_worker_status set last_heartbeat = now() - interval '10 minutes' where worker_name = 'cron-silent';",
        instance("cron0")
    ))
    .expect("a silent worker");
    db.sql(line).expect("the documented line");
    // pg_cron starts the job at the next minute.
    let stale = hp_heartbeat_tests::eventually::poll_until(Duration::from_secs(150), || {
        db.sql("select count(*) from hp_worker_events where worker_name = 'cron-silent' and kind = 'stale';")
            .ok()
            .filter(|n| n.trim() == "1")
    });
    let runs = db
        .sql("select string_agg(status || ': ' || coalesce(return_message, ''), ' | ') from cron.job_run_details d join cron.job j using (jobid) where j.jobname = 'hp-sweep';")
        .unwrap_or_default();
    db.sql("select cron.unschedule('hp-sweep');")
        .expect("unschedule");
    assert!(
        stale.is_some(),
        "the scheduled sweep did not record it; runs: {runs}"
    );

    // The prune's line: scheduled daily (not waited for); its command, as
    // pg_cron will run it, removes a worker gone for eight days.
    let prune = text
        .lines()
        .find(|l| l.starts_with("select cron.schedule('hp-prune'"))
        .expect("the pg_cron prune line in docs/status.md");
    db.sql(prune).expect("the documented prune line");
    let (schedule, command) = db
        .sql("select schedule || '|' || command from cron.job where jobname = 'hp-prune';")
        .expect("the job")
        .split_once('|')
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .expect("schedule|command");
    assert_eq!(schedule, "17 3 * * *");
    db.sql(&format!(
        "insert into hp_worker_status (worker_name, instance_id, status) values ('cron-ghost', '{}', 'stopped');
         set session_replication_role = replica;
         update hp_worker_status set last_heartbeat = now() - interval '8 days', updated_at = now() - interval '8 days' where worker_name = 'cron-ghost';",
        instance("cron1")
    ))
    .expect("a ghost");
    db.sql(&format!("{command};")).expect("the scheduled prune");
    assert_eq!(
        db.sql("select count(*) from hp_worker_status where worker_name = 'cron-ghost';")
            .as_deref(),
        Ok("0"),
        "pruned"
    );
    db.sql("select cron.unschedule('hp-prune');")
        .expect("unschedule");
}

/// Every key the SDK serializes is a column, of a type PostgREST converts to
/// with json_to_recordset, and reads back as sent.
#[test]
fn every_sdk_key_is_a_column_with_a_compatible_type() {
    let Some(db) = migrated("contract") else {
        return;
    };
    let cols = columns(&db);
    for row in sdk_rows() {
        for key in row.as_object().expect("object").keys() {
            assert!(
                cols.contains_key(key),
                "the SDK sends `{key}`, which the migration lacks"
            );
        }
        upsert_as(&db, &service(), &row).expect("PostgREST's upsert of an SDK row");
        let stored: Value = serde_json::from_str(
            &db.sql("select row_to_json(t)::text from hp_worker_status t;")
                .expect("read back"),
        )
        .expect("json");
        for (key, sent) in row.as_object().expect("object") {
            let back = &stored[key];
            match key.as_str() {
                "client_heartbeat" | "started_at" => {
                    let a: DateTime<Utc> = serde_json::from_value(sent.clone()).expect("time");
                    let b: DateTime<Utc> = serde_json::from_value(back.clone()).expect("time");
                    assert_eq!(a, b, "{key}");
                }
                "cpu_percent" => match (sent.as_f64(), back.as_f64()) {
                    (Some(a), Some(b)) => assert!((a - b).abs() < 1e-3, "{key}: {a} vs {b}"),
                    _ => assert_eq!(sent, back, "{key}"),
                },
                _ => assert_eq!(sent, back, "{key} does not read back as sent"),
            }
        }
    }
}

#[test]
fn a_column_missing_from_the_table_fails_the_contract() {
    let Some(db) = migrated("drift") else { return };
    db.sql("alter table hp_worker_status drop column exit_signal cascade;")
        .expect("drift");
    let e = upsert_as(&db, &service(), &sdk_rows().remove(0)).expect_err("drifted table");
    assert!(e.contains("PGRST204") && e.contains("exit_signal"), "{e}");
}

#[test]
fn realtime_file_adds_the_table_only_where_the_publication_exists() {
    let Some(server) = pg::server() else { return };
    let without = server.fresh_database("norealtime");
    without
        .migrate(true)
        .expect("applies without the publication");
    assert_eq!(
        without
            .sql("select count(*) from pg_publication_tables where tablename = 'hp_worker_status';")
            .as_deref(),
        Ok("0")
    );
    let with = server.fresh_database("realtime");
    with.sql("create publication supabase_realtime;")
        .expect("publication");
    with.migrate(true).expect("applies");
    with.migrate(true).expect("applies twice");
    assert_eq!(with.sql("select count(*) from pg_publication_tables where pubname = 'supabase_realtime' and tablename = 'hp_worker_status';").as_deref(), Ok("1"));
}

/// What a worker prints or sets can never cost it its row: a NUL byte in
/// the crash message (PostgreSQL refuses it in text and jsonb: 22P05) and
/// 500 KB of metadata (over the 8 KiB CHECK) are fitted before they are sent.
#[test]
fn a_nul_byte_and_huge_metadata_never_cost_the_row() {
    let Some(db) = migrated("hostile") else {
        return;
    };
    let store = MemoryTransport::new();
    let hb = Heartbeat::builder("hostile-worker")
        .transport(store.clone())
        .handle_signals(false)
        .metadata("blob", "x".repeat(500_000))
        .start()
        .expect("start");
    hb.set_metadata("note", "a\0b");
    hb.job_failed("disk\0full");
    heartbeat_sdk::sidecar::finish(
        &hb,
        FinalState::new(WorkerStatus::Crashed)
            .exit_code(1)
            .last_error("panicked at 'boom\0'"),
    );
    let rows: Vec<Value> = store
        .rows()
        .iter()
        .map(|r| serde_json::to_value(r).expect("json"))
        .collect();
    for row in &rows {
        upsert_as(&db, &service(), row).expect("PostgreSQL takes every row");
    }
    let back: Value = serde_json::from_str(
        &db.sql("select row_to_json(t)::text from hp_worker_status t;")
            .expect("read back"),
    )
    .expect("json");
    assert_eq!(back["status"], "crashed", "the crash is recorded");
    assert_eq!(back["last_error"], "panicked at 'boom\u{FFFD}'");
    assert_eq!(back["metadata"]["note"], "a\u{FFFD}b");
    assert_eq!(back["metadata"]["hp_dropped_keys"], json!(["blob"]));
}

/// A hung event says since when on the store's clock: its last progress and
/// its run's start, the worker's stamps corrected by its clock's offset (7 s
/// ahead here), on PostgreSQL and on the local store alike.
#[test]
fn a_hung_event_says_since_when_on_the_stores_clock_in_both_stores() {
    let Some(db) = migrated("hung_since") else {
        return;
    };
    db.sql(
        "insert into hp_worker_status (worker_name, instance_id, status, watchdog_seconds, state, run_state,
                                       client_heartbeat, last_progress_at, run_started_at)
         values ('stuck', gen_random_uuid(), 'running', 60, 'active', 'running',
                 now() + interval '7 seconds', now() - interval '10 minutes' + interval '7 seconds',
                 now() - interval '20 minutes' + interval '7 seconds');",
    )
    .expect("a stuck worker");
    db.sql("select count(*) from hp_sweep();").expect("sweep");
    let off = |key: &str, minutes: i64| {
        format!(
            "abs(extract(epoch from (detail->>'{key}')::timestamptz - (now() - interval '{minutes} minutes'))) < 5"
        )
    };
    assert_eq!(
        db.sql(&format!(
            "select {} and {} from hp_worker_events where kind = 'hung';",
            off("last_progress_at", 10),
            off("run_started_at", 20)
        ))
        .as_deref(),
        Ok("t"),
        "{:?}",
        db.sql("select detail from hp_worker_events where kind = 'hung';")
    );

    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("hung.db");
    let store = heartbeat_sdk::sidecar::SqliteStore::new(&path);
    let mut row = serde_json::from_value::<heartbeat_sdk::WorkerRow>(sdk_rows().remove(0))
        .expect("an SDK row");
    row.worker_name = "stuck".into();
    row.status = WorkerStatus::Running;
    store.write(&row).expect("write");
    let now = chrono::Utc::now();
    let stamp =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let ahead = chrono::Duration::seconds(7);
    rusqlite::Connection::open(&path)
        .expect("open")
        .execute(
            "update hp_worker_status set watchdog_seconds = 60, state = 'active', run_state = 'running',
                    last_heartbeat = ?1, client_heartbeat = ?2, last_progress_at = ?3, run_started_at = ?4",
            [
                stamp(now),
                stamp(now + ahead),
                stamp(now - chrono::Duration::minutes(10) + ahead),
                stamp(now - chrono::Duration::minutes(20) + ahead),
            ],
        )
        .expect("stuck");
    store.sweep(chrono::Duration::days(30)).expect("sweep");
    let hung = store
        .events(None, Some("stuck"))
        .expect("events")
        .into_iter()
        .find(|e| e.kind == "hung")
        .expect("a hung event");
    for (key, minutes) in [("last_progress_at", 10), ("run_started_at", 20)] {
        let at = hung.detail[key]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .unwrap_or_else(|| panic!("{key} in {:?}", hung.detail));
        let off = (at.with_timezone(&chrono::Utc) - (now - chrono::Duration::minutes(minutes)))
            .num_seconds()
            .abs();
        assert!(off < 5, "{key} {off} s off: {:?}", hung.detail);
    }
}
