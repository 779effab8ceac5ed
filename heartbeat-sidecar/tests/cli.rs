//! `check` and `status`: what they print and how they exit.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

async fn check_with(response: ResponseTemplate) -> (Option<i32>, String) {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .mount(&server)
        .await;
    Mock::given(method("DELETE"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(response)
        .mount(&server)
        .await;
    let mut cmd = sidecar_to(&server);
    cmd.args(["check", "--name", "checked"]);
    let out = output_within(cmd, Duration::from_secs(20)).await;
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn pgrst(status: u16, code: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status)
        .set_body_json(json!({"code": code, "details": null, "hint": null, "message": message}))
}

#[tokio::test(flavor = "multi_thread")]
async fn check_says_all_good_or_what_to_fix() {
    let (code, out) = check_with(ResponseTemplate::new(201)).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("All good") && out.contains("sb_secret") && !out.contains("FAKE"),
        "{out}"
    );
    for (response, says) in [
        (
            pgrst(
                404,
                "PGRST205",
                "Could not find the table 'public.hp_worker_status' in the schema cache",
            ),
            "apply the migration",
        ),
        (
            pgrst(401, "PGRST301", "Expected 3 parts in JWT; got 1"),
            "wrong or expired",
        ),
        (
            pgrst(403, "42501", "permission denied for table hp_worker_status"),
            "service_role",
        ),
        (
            pgrst(400, "PGRST204", "Could not find the 'exit_signal' column"),
            "older than the SDK",
        ),
    ] {
        let (code, out) = check_with(response).await;
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains(says), "{out}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn check_names_missing_configuration() {
    let mut cmd = sidecar();
    cmd.env("HP_STORE", "supabase").arg("check");
    let out = output_within(cmd, Duration::from_secs(10)).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUPABASE_URL is not set"));
    let dir = tempfile::tempdir().expect("tmp");
    let mut cmd = sidecar();
    cmd.env("HP_STORE", dir.path().join("local.db"))
        .arg("check");
    let out = output_within(cmd, Duration::from_secs(10)).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "the local store needs no account"
    );
}

/// check proves the write path under a throwaway name: a stopped worker's
/// final row and a live worker's row are exactly as they were, and nothing
/// is left behind.
#[tokio::test(flavor = "multi_thread")]
async fn check_leaves_every_row_as_it_was_and_nothing_behind() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("rows.db");
    let finished = heartbeat_sdk::Heartbeat::builder("finished-worker")
        .local_store(&db)
        .handle_signals(false)
        .start()
        .expect("start");
    for _ in 0..97 {
        finished.job_succeeded();
    }
    assert!(finished.shutdown());
    let live = heartbeat_sdk::Heartbeat::builder("live-worker")
        .local_store(&db)
        .handle_signals(false)
        .start()
        .expect("start");
    wait_local_row(&db, "live-worker");
    let before = heartbeat_sdk::sidecar::SqliteStore::new(&db)
        .read_all()
        .expect("read");
    for name in ["finished-worker", "live-worker", "new-worker"] {
        let mut cmd = sidecar();
        cmd.env("HP_STORE", &db).args(["check", "--name", name]);
        let out = output_within(cmd, Duration::from_secs(10)).await;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(out.status.code(), Some(0), "{text}");
        assert!(text.contains("no worker's row was touched"), "{text}");
    }
    let after = heartbeat_sdk::sidecar::SqliteStore::new(&db)
        .read_all()
        .expect("read");
    let names = |rows: &[heartbeat_sdk::StatusRow]| -> Vec<String> {
        rows.iter().map(|r| r.worker_name.clone()).collect()
    };
    assert_eq!(names(&after), names(&before), "no probe row and no new row");
    let row = |rows: &[heartbeat_sdk::StatusRow], name: &str| {
        rows.iter()
            .find(|r| r.worker_name == name)
            .cloned()
            .expect("row")
    };
    assert_eq!(
        row(&after, "finished-worker"),
        row(&before, "finished-worker"),
        "the stopped worker's final row is exactly as it was"
    );
    let (b, a) = (row(&before, "live-worker"), row(&after, "live-worker"));
    assert_eq!(
        (a.status, a.instance_id, a.pid),
        (b.status, b.instance_id, b.pid),
        "the live worker's row is its own"
    );
    drop(live);
}

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_every_health_state_and_exits_1_when_any_needs_attention() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("s.db");
    store_with_every_state(&db);
    let mut cmd = sidecar();
    cmd.env("HP_STORE", &db).arg("status");
    let out = output_within(cmd, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.starts_with("Worker Status  1/6 running\n"), "{text}");
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(line("fresh-worker").contains("running"), "{text}");
    assert!(
        line("stale-worker").contains("stale") && line("stale-worker").contains("10 min ago"),
        "{text}"
    );
    assert!(line("stopped-worker").contains("stopped"));
    assert!(line("crashed-worker").contains("crashed"));
    assert!(line("unknown-worker").contains("unknown"));
    assert!(line("breaker-worker").contains("OPEN"));
    assert!(!text.contains('\x1b'), "no color when not a terminal");
}

#[tokio::test(flavor = "multi_thread")]
async fn status_exits_0_for_a_healthy_fleet_and_2_when_it_cannot_read() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("ok.db");
    let hb = heartbeat_sdk::Heartbeat::builder("healthy")
        .local_store(&db)
        .handle_signals(false)
        .start()
        .expect("start");
    wait_local_row(&db, "healthy");
    let mut cmd = sidecar();
    cmd.env("HP_STORE", &db).arg("status");
    assert_eq!(
        output_within(cmd, Duration::from_secs(10))
            .await
            .status
            .code(),
        Some(0)
    );
    drop(hb);
    let mut cmd = sidecar();
    cmd.env("HP_STORE", dir.path().join("missing.db"))
        .arg("status");
    let out = output_within(cmd, Duration::from_secs(10)).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no worker has reported here yet"));
}

#[tokio::test(flavor = "multi_thread")]
async fn status_json_has_every_column_plus_health() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("s.db");
    store_with_every_state(&db);
    let mut cmd = sidecar();
    cmd.env("HP_STORE", &db).args(["status", "--json"]);
    let out = output_within(cmd, Duration::from_secs(10)).await;
    assert_eq!(out.status.code(), Some(1));
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON array");
    assert_eq!(rows.len(), 6);
    let keys = [
        "worker_name",
        "status",
        "health",
        "seconds_since_heartbeat",
        "last_heartbeat",
        "jobs_processed",
        "error_count",
        "circuit_breaker_open",
        "consecutive_errors",
        "last_error",
        "metadata",
        "pid",
        "hostname",
        "started_at",
        "uptime_seconds",
        "memory_rss_bytes",
        "cpu_percent",
        "version",
        "reporter",
        "exit_code",
        "exit_signal",
        "heartbeat_interval_seconds",
        "instance_id",
        "client_heartbeat",
        "updated_at",
        "pool",
    ];
    for row in &rows {
        for k in keys {
            assert!(row.get(k).is_some(), "missing {k} in {row}");
        }
    }
    let health = |name: &str| {
        rows.iter()
            .find(|r| r["worker_name"] == name)
            .map(|r| r["health"].clone())
    };
    assert_eq!(health("stale-worker"), Some("stale".into()));
    assert_eq!(health("unknown-worker"), Some("unknown".into()));
    let stale = rows
        .iter()
        .find(|r| r["worker_name"] == "stale-worker")
        .expect("row");
    assert!(stale["seconds_since_heartbeat"].as_f64().unwrap_or(0.0) >= 600.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn status_reads_supabase_with_the_key_and_judges_by_the_servers_clock() {
    let server = MockServer::start().await;
    // The server's clock says an hour later than ours: by it, a beat 90 s
    // before its "now" is stale even though our clock would call it fresh.
    let server_now = chrono::Utc::now() + chrono::Duration::hours(1);
    let rows = json!([
        {"worker_name": "a", "status": "running", "last_heartbeat": (server_now - chrono::Duration::seconds(5)).to_rfc3339(), "heartbeat_interval_seconds": 30, "jobs_processed": 3},
        {"worker_name": "b", "status": "running", "last_heartbeat": (server_now - chrono::Duration::seconds(90)).to_rfc3339(), "heartbeat_interval_seconds": 30},
        {"worker_name": "c", "status": "stopped", "last_heartbeat": (server_now - chrono::Duration::seconds(900)).to_rfc3339()},
        {"worker_name": "d", "status": "crashed", "last_heartbeat": (server_now - chrono::Duration::seconds(3)).to_rfc3339(), "exit_code": 3},
        {"worker_name": "e", "status": "crashed", "circuit_breaker_open": true, "last_heartbeat": (server_now - chrono::Duration::seconds(3)).to_rfc3339()},
        {"worker_name": "seed-row", "status": null, "last_heartbeat": null}
    ]);
    Mock::given(method("GET"))
        .and(path("/rest/v1/hp_worker_status"))
        .and(query_param("select", "*"))
        .and(header("apikey", SECRET_KEY))
        .and(header("accept-profile", "public"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(rows)
                .insert_header(
                    "date",
                    server_now.to_rfc2822().replace("+0000", "GMT").as_str(),
                ),
        )
        .mount(&server)
        .await;
    let mut cmd = sidecar_to(&server);
    cmd.args(["status", "--json"]);
    let out = output_within(cmd, Duration::from_secs(10)).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<Value> = serde_json::from_slice(&out.stdout).expect("json");
    let health: Vec<&str> = got
        .iter()
        .map(|r| r["health"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        health,
        vec!["running", "stale", "stopped", "crashed", "crashed", "unknown"]
    );
    assert_eq!(got[4]["circuit_breaker_open"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn status_from_supabase_says_what_is_wrong() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(pgrst(404, "PGRST205", "Could not find the table"))
        .mount(&server)
        .await;
    let mut cmd = sidecar_to(&server);
    cmd.arg("status");
    let out = output_within(cmd, Duration::from_secs(10)).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("apply the migration"));
}

#[tokio::test(flavor = "multi_thread")]
async fn help_shows_every_setting_with_its_environment_variable() {
    let out = sidecar().args(["run", "--help"]).output().expect("help");
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "SUPABASE_URL",
        "HP_WORKER_NAME",
        "HP_HEARTBEAT_INTERVAL_SECS",
        "HP_SHUTDOWN_BUDGET_MS",
        "HP_CIRCUIT_BREAKER_THRESHOLD",
        "HP_STORE",
        "HP_SUPABASE_SCHEMA",
        "--job-pattern",
        "--error-pattern",
        "--metadata",
        "--instance-suffix",
        "SUPABASE_SECRET_KEY",
    ] {
        assert!(help.contains(needle), "run --help lacks {needle}:\n{help}");
    }
    let top = sidecar().arg("--help").output().expect("help");
    let top = String::from_utf8_lossy(&top.stdout);
    assert!(top.contains("run") && top.contains("check") && top.contains("status"));
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_mistakes_say_the_fix_in_the_cli_s_own_words() {
    let mut cmd = sidecar();
    cmd.args(["run", "--name", "x", "node", "worker.js"]);
    let out = output_within(cmd, Duration::from_secs(10)).await;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("put `--` before the worker's command"),
        "{err}"
    );

    let mut cmd = sidecar();
    cmd.args(["run", "--name", "x", "--interval", "0", "--", "true"]);
    let out = output_within(cmd, Duration::from_secs(10)).await;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--interval") && err.contains("1..=86400"),
        "{err}"
    );
    assert!(!err.contains("ns"), "{err}");

    // Errors name variables and flags, never Rust builder calls.
    let mut cmd = sidecar();
    cmd.env("SUPABASE_URL", "http://db.example.com")
        .env("SUPABASE_SECRET_KEY", SECRET_KEY)
        .arg("check");
    let out = output_within(cmd, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("HP_ALLOW_INSECURE_HTTP") && !text.contains(".allow_"),
        "{text}"
    );

    // With HP_STORE set, the usage line does not show --store as given.
    let mut cmd = sidecar();
    cmd.env("HP_STORE", "/tmp/x.db").args(["run", "--", "true"]);
    let out = output_within(cmd, Duration::from_secs(10)).await;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("--name") && !err.contains("--store"), "{err}");
}
