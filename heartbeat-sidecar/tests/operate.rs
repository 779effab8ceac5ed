//! The operator commands, as an operator runs them: against the local store
//! with real sidecar workers, and against a mocked PostgREST that checks the
//! exact RPC request supabase-js's `rpc()` sends.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::*;
use heartbeat_sdk::sidecar::SqliteStore;
use serde_json::{json, Value};
use wiremock::matchers::{body_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

const WAIT: Duration = Duration::from_secs(20);

/// An operator command on the store at `db`, with no terminal.
fn op(db: &Path, args: &[&str]) -> Output {
    sidecar()
        .env("HP_STORE", db)
        .env("USER", "alice")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn steer_a_pool_of_two_real_workers_from_the_command_line() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("s.db");
    let _fleet = Fleet(vec![
        worker(&db, "web-1", "web"),
        worker(&db, "web-2", "web"),
    ]);
    wait_local_row(&db, "web-1");
    wait_local_row(&db, "web-2");

    let listed = op(&db, &["pool", "list", "--json"]);
    let pools: Value = serde_json::from_slice(&listed.stdout).expect("json");
    assert_eq!(
        pools,
        json!([{"pool": "web", "members": 2, "available": 2, "max_unavailable": 1, "min_available": 1, "protected": false}])
    );

    let out = op(&db, &["pause", "web-1"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("pass --yes"), "{}", text(&out));

    let out = op(
        &db,
        &[
            "pause",
            "web-1",
            "--yes",
            "--reason",
            "deploy 2.4",
            "--wait",
        ],
    );
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains("pool web: 2 workers, available 2 -> 1"),
        "{said}"
    );
    assert!(
        said.contains("web-1: pause by stopping the worker"),
        "{said}"
    );
    assert!(said.contains("web-1 paused after"), "{said}");

    // The other would leave the pool with none: refused with the rule.
    let out = op(&db, &["pause", "web-2", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let answer: Value = serde_json::from_slice(&out.stdout).expect("json answer");
    assert_eq!(
        (answer["outcome"].as_str(), answer["rule"].as_str()),
        (Some("refused"), Some("last_available"))
    );
    assert!(answer["audit_id"].as_i64().is_some() && answer["workers"] == json!(["web-2"]));

    let out = op(&db, &["pause", "web-9", "--yes"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("no worker named \"web-9\""),
        "{}",
        text(&out)
    );

    // A whole pool needs its name.
    let out = op(&db, &["drain", "--pool", "web", "--yes"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("--confirm web"), "{}", text(&out));

    let out = op(&db, &["resume", "--pool", "web", "--yes", "--wait"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("web-1 active after"), "{}", text(&out));

    let out = op(
        &db,
        &[
            "pool",
            "set",
            "web",
            "--max-unavailable",
            "2",
            "--min-available",
            "0",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("pool web: at most 2 down, at least 0 up"),
        "{}",
        text(&out)
    );

    let audit = op(&db, &["audit", "--worker", "web-1", "--json"]);
    let rows: Vec<Value> = serde_json::from_slice(&audit.stdout).expect("audit json");
    let outcomes: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap_or(""),
                r["outcome"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert!(
        outcomes.starts_with(&[("pause", "accepted"), ("pause", "applied")]),
        "{outcomes:?}"
    );
    assert!(outcomes.contains(&("resume", "applied")), "{outcomes:?}");
    assert_eq!(rows[0]["reason"], "deploy 2.4");
    assert!(
        rows[0]["actor"]
            .as_str()
            .is_some_and(|a| a.contains("alice@")),
        "{}",
        rows[0]
    );
    let table = text(&op(&db, &["audit"]));
    assert!(
        table.contains("refused") && table.contains("pool_set"),
        "{table}"
    );
}

/// A worker that never applies what it is asked (a row with no reporter
/// behind it): `--wait` gives up at its timeout, names it, and exits 3.
#[test]
fn wait_times_out_naming_the_worker_that_did_not_apply() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("s.db");
    let _fleet = Fleet(vec![
        worker(&db, "alive", "default"),
        worker(&db, "alive-2", "default"),
    ]);
    wait_local_row(&db, "alive");
    let mem = heartbeat_sdk::MemoryTransport::new();
    let hb = heartbeat_sdk::Heartbeat::builder("deaf")
        .transport(mem.clone())
        .handle_signals(false)
        .start()
        .expect("start");
    let row = eventually_row(&mem);
    SqliteStore::new(&db).write(&row).expect("write");
    drop(hb);
    let out = op(
        &db,
        &["resume", "deaf", "--yes", "--wait", "--timeout", "2s"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("not applied within 2s: deaf"),
        "{}",
        text(&out)
    );
}

fn eventually_row(mem: &heartbeat_sdk::MemoryTransport) -> heartbeat_sdk::WorkerRow {
    hp_heartbeat_tests::eventually::eventually(WAIT, "a row in memory", || mem.rows().pop())
}

/// Over Supabase: the request is `POST /rest/v1/rpc/hp_control` with the
/// function's named arguments, as supabase-js's `rpc()` sends it.
#[tokio::test(flavor = "multi_thread")]
async fn over_supabase_the_request_is_the_rpc_supabase_js_sends() {
    let server = MockServer::start().await;
    let row = json!([{
        "worker_name": "orders-1", "status": "running", "pool": "orders", "state": "active",
        "last_heartbeat": chrono::Utc::now().to_rfc3339(), "heartbeat_interval_seconds": 30,
        "controls": {"pause": "by the worker's code"}
    }]);
    Mock::given(method("GET"))
        .and(path("/rest/v1/hp_worker_status"))
        .respond_with(ResponseTemplate::new(200).set_body_json(row))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/rest/v1/hp_pool"))
        .and(query_param(
            "select",
            "pool,max_unavailable,min_available,protected",
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/rest/v1/rpc/hp_control"))
        .and(header("apikey", SECRET_KEY))
        .and(header("content-type", "application/json"))
        .and(header("content-profile", "public"))
        .and(body_json(json!({
            "action": "pause", "workers": ["orders-1"], "reason": "incident 42",
            "force": false, "actor": "alice@".to_owned() + &hostname()
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "outcome": "accepted", "action": "pause", "rule": null,
            "message": "pause orders-1: pool orders has 3 available now, 2 once applied.",
            "workers": ["orders-1"], "pool": "orders", "available_before": 3, "available_after": 2,
            "forced": false, "pools": [], "generations": {"orders-1": 5}, "audit_id": 77
        })))
        .expect(1)
        .mount(&server)
        .await;
    let mut cmd = sidecar_to(&server);
    cmd.env("USER", "alice")
        .args(["pause", "orders-1", "--yes", "--reason", "incident 42"]);
    let out = output_within(cmd, WAIT).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("accepted (audit #77)"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains(SECRET_KEY), "the key never shows");
}

/// A refusal over Supabase exits 1 with the rule; a caller that may not
/// steer (42501) exits 2 saying which key is needed.
#[tokio::test(flavor = "multi_thread")]
async fn over_supabase_a_refusal_exits_1_and_a_denied_caller_2() {
    for (answer, status, code, want) in [
        (
            json!({"outcome": "refused", "action": "pause", "rule": "max_unavailable",
                   "message": "pausing orders-1 would leave pool orders with 2 of 3 workers unavailable",
                   "workers": ["orders-1"], "pool": "orders", "available_before": 2, "available_after": 1,
                   "forced": false, "pools": [], "audit_id": 3}),
            200,
            1,
            "refused (max_unavailable): pausing orders-1",
        ),
        (
            json!({"code": "42501", "details": null, "hint": null, "message": "hp_control: permission denied"}),
            403,
            2,
            "steering needs the secret key",
        ),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/rest/v1/hp_worker_status"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!([{
                "worker_name": "orders-1", "status": "running", "pool": "orders",
                "last_heartbeat": chrono::Utc::now().to_rfc3339(), "heartbeat_interval_seconds": 30
            }])))
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/rest/v1/hp_pool"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/rest/v1/rpc/hp_control"))
            .respond_with(ResponseTemplate::new(status).set_body_json(answer))
            .mount(&server)
            .await;
        let mut cmd = sidecar_to(&server);
        cmd.args(["pause", "orders-1", "--yes"]);
        let out = output_within(cmd, WAIT).await;
        assert_eq!(out.status.code(), Some(code), "{}", text(&out));
        assert!(text(&out).contains(want), "{}", text(&out));
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

/// A signed-in operator: `HP_OPERATOR_JWT` is the bearer of every request,
/// the reads included, with the publishable key; no actor is declared (the
/// database takes it from the token).
#[tokio::test(flavor = "multi_thread")]
async fn a_signed_in_operator_sends_the_token_on_every_request() {
    // {"alg":"HS256","typ":"JWT"}.{"role":"authenticated"}, signature obviously fake.
    let token =
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJyb2xlIjoiYXV0aGVudGljYXRlZCJ9.FAKE_operator";
    let publishable = "sb_publishable_FAKE_operator_test";
    let bearer = format!("Bearer {token}");
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/rest/v1/hp_worker_status"))
        .and(header("authorization", bearer.as_str()))
        .and(header("apikey", publishable))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([{
            "worker_name": "orders-1", "status": "running", "pool": "orders",
            "last_heartbeat": chrono::Utc::now().to_rfc3339(), "heartbeat_interval_seconds": 30
        }])))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/rest/v1/hp_pool"))
        .and(header("authorization", bearer.as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/rest/v1/rpc/hp_control"))
        .and(header("authorization", bearer.as_str()))
        .and(header("apikey", publishable))
        .and(body_json(
            json!({"action": "resume", "workers": ["orders-1"], "force": false}),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "outcome": "accepted", "action": "resume", "rule": null, "message": "resume orders-1",
            "workers": ["orders-1"], "pool": "orders", "available_before": 1, "available_after": 1,
            "forced": false, "pools": [], "audit_id": 9
        })))
        .expect(1)
        .mount(&server)
        .await;
    let mut cmd = sidecar();
    cmd.env("SUPABASE_URL", server.uri())
        .env("HP_OPERATOR_JWT", token)
        .env("SUPABASE_PUBLISHABLE_KEY", publishable)
        .args(["resume", "orders-1", "--yes"]);
    let out = output_within(cmd, WAIT).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        !text(&out).contains("FAKE_operator"),
        "neither token nor key shows"
    );
}

/// A rollout over six real sidecar workers with `--max-unavailable 2`: the
/// rows, sampled every 100 ms, never show more than two down; every worker
/// comes back with a new pid; each step is in the audit log.
#[test]
fn a_rollout_restarts_six_workers_never_more_than_two_down() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("s.db");
    let names: Vec<String> = (1..=6).map(|i| format!("web-{i}")).collect();
    let _fleet = Fleet(names.iter().map(|n| worker(&db, n, "web")).collect());
    let store = SqliteStore::new(&db);
    let pids_before: Vec<i64> = names
        .iter()
        .map(|n| {
            hp_heartbeat_tests::eventually::eventually(WAIT, "a child's pid", || {
                store.read_one(n).ok().flatten().and_then(|r| r.pid)
            })
        })
        .collect();
    let out = op(&db, &["pool", "set", "web", "--max-unavailable", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = std::thread::spawn({
        let (done, db) = (std::sync::Arc::clone(&done), db.clone());
        move || {
            // Down as the budget counts it: paused, or asked to restart and
            // not yet back as a new instance (the store's own rule).
            let conn = rusqlite::Connection::open_with_flags(
                &db,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .expect("open");
            conn.busy_timeout(Duration::from_secs(2)).expect("busy");
            let mut worst = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let down: i64 = conn
                    .query_row(
                        "select count(*) from hp_worker_status s join hp_worker_control c using (worker_name)
                         where s.pool = 'web' and (c.desired = 'paused' or (c.restart_requested_at is not null
                           and (s.instance_since is null or s.instance_since < c.restart_requested_at)))",
                        [],
                        |r| r.get(0),
                    )
                    .unwrap_or(0);
                worst = worst.max(down);
                std::thread::sleep(Duration::from_millis(100));
            }
            worst
        }
    });
    let out = op(
        &db,
        &[
            "rollout",
            "restart",
            "--pool",
            "web",
            "--settle",
            "1s",
            "--timeout",
            "60s",
            "--yes",
            "--reason",
            "release 2.5",
        ],
    );
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let worst = sampler.join().expect("sampler");
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains("rollout 1 done: 6 restarted, 0 skipped"),
        "{said}"
    );
    assert!(worst <= 2, "{worst} down at once");
    assert!(worst >= 1, "the sampler saw the restarts at all");
    for (name, before) in names.iter().zip(&pids_before) {
        let row = store.read_one(name).ok().flatten().expect("row");
        assert!(
            row.pid.is_some_and(|p| p != *before),
            "{name} has a new pid: {row:?}"
        );
    }
    let audit: Vec<Value> =
        serde_json::from_slice(&op(&db, &["audit", "--json"]).stdout).expect("audit json");
    let restarts_accepted = audit
        .iter()
        .filter(|a| a["action"] == "restart" && a["outcome"] == "accepted")
        .count();
    assert_eq!(restarts_accepted, 3, "three batches of two");
    assert!(audit
        .iter()
        .any(|a| a["action"] == "rollout" && a["outcome"] == "applied"));
    let status = op(&db, &["rollout", "status", "--json"]);
    let summary: Value = serde_json::from_slice(&status.stdout).expect("status json");
    assert_eq!(summary["state"], "done");
}

/// A worker that never comes back stops the rollout, named with why (exit 3).
#[test]
fn a_worker_that_does_not_come_back_leaves_the_rollout_stuck() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("s.db");
    let _fleet = Fleet(vec![
        worker(&db, "api-1", "api"),
        worker(&db, "api-2", "api"),
    ]);
    wait_local_row(&db, "api-1");
    wait_local_row(&db, "api-2");
    // A third member whose row no process keeps: it never restarts.
    let mem = heartbeat_sdk::MemoryTransport::new();
    let hb = heartbeat_sdk::Heartbeat::builder("api-0")
        .transport(mem.clone())
        .pool("api")
        .interval(Duration::from_secs(3600))
        .handle_signals(false)
        .start()
        .expect("start");
    let row = eventually_row(&mem);
    let store = SqliteStore::new(&db);
    store.write(&row).expect("write");
    let out = op(
        &db,
        &[
            "rollout",
            "restart",
            "--pool",
            "api",
            "--settle",
            "0s",
            "--timeout",
            "3s",
            "--yes",
        ],
    );
    drop(hb);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("rollout 1 is stuck: api-0 did not come back within 3 s"),
        "{}",
        text(&out)
    );
}
