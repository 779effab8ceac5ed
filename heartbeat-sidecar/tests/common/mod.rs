//! Helpers for the sidecar's tests: the binary, a mock PostgREST, rows.
#![allow(dead_code)]

use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use hp_heartbeat_tests::eventually::{eventually, poll_until, poll_until_async};
use serde_json::Value;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

pub const SECRET_KEY: &str = "sb_secret_FAKE_sidecar_test_key";

pub fn sidecar() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_heartbeat-sidecar"));
    for var in [
        "SUPABASE_URL",
        "SUPABASE_SECRET_KEY",
        "SUPABASE_SERVICE_ROLE_KEY",
        "SUPABASE_SERVICE_KEY",
        "HP_STORE",
        "HP_WORKER_NAME",
        "HP_HEARTBEAT_INTERVAL_SECS",
        "HP_SUPABASE_SCHEMA",
        "NODE_APP_INSTANCE",
        "HP_OPERATOR_JWT",
        "SUPABASE_PUBLISHABLE_KEY",
    ] {
        c.env_remove(var);
    }
    c.env("NO_COLOR", "1");
    c
}

/// The sidecar reporting to `server` with a 1 s beat.
pub fn sidecar_to(server: &MockServer) -> Command {
    let mut c = sidecar();
    c.env("SUPABASE_URL", server.uri())
        .env("SUPABASE_SECRET_KEY", SECRET_KEY)
        .env("HP_HEARTBEAT_INTERVAL_SECS", "1");
    c
}

pub async fn postgrest() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/rest/v1/hp_worker_status"))
        .respond_with(ResponseTemplate::new(201))
        .mount(&server)
        .await;
    // The control poll, as PostgREST answers it with the control migration
    // applied and nothing asked: no row.
    Mock::given(method("GET"))
        .and(path("/rest/v1/hp_worker_control"))
        .respond_with(ResponseTemplate::new(200).set_body_string("[]"))
        .mount(&server)
        .await;
    server
}

/// Every row the server received for `name`, oldest first.
pub async fn rows(server: &MockServer, name: &str) -> Vec<Value> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.method.as_str() == "POST")
        .filter_map(|r| serde_json::from_slice::<Value>(&r.body).ok())
        .filter(|v| v["worker_name"] == name)
        .collect()
}

/// Waits until a row for `name` satisfies `want`.
pub async fn wait_row(
    server: &MockServer,
    name: &str,
    timeout: Duration,
    want: impl Fn(&Value) -> bool,
) -> Option<Value> {
    poll_until_async(timeout, || async {
        rows(server, name).await.into_iter().rev().find(|r| want(r))
    })
    .await
}

/// Waits until the local store at `db` holds a row for `name`.
pub fn wait_local_row(db: &std::path::Path, name: &str) -> heartbeat_sdk::StatusRow {
    eventually(
        Duration::from_secs(10),
        &format!("a row for {name} in {}", db.display()),
        || {
            heartbeat_sdk::sidecar::SqliteStore::new(db)
                .read_all()
                .ok()?
                .into_iter()
                .find(|r| r.worker_name == name)
        },
    )
}

pub async fn last_row(server: &MockServer, name: &str) -> Value {
    rows(server, name).await.pop().unwrap_or(Value::Null)
}

/// Waits for the child to end, killing it after `timeout`.
pub async fn wait_exit(mut child: Child, timeout: Duration) -> (ExitStatus, Child) {
    tokio::task::spawn_blocking(move || {
        match poll_until(timeout, || child.try_wait().ok().flatten()) {
            Some(status) => (status, child),
            None => {
                let _ = child.kill();
                let status = child.wait().expect("wait");
                panic!("the sidecar did not end within {timeout:?} (killed: {status:?})");
            }
        }
    })
    .await
    .expect("join")
}

pub fn kill(pid: i32, sig: i32) {
    // SAFETY: kill(2) with a valid signal.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
}

pub fn alive(pid: i32) -> bool {
    // A zombie is dead for our purposes.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .split(") ")
            .nth(1)
            .is_some_and(|rest| rest.starts_with('Z')),
        Err(_) => false,
    }
}

pub fn quiet(c: &mut Command) -> &mut Command {
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
}

pub fn node_available() -> bool {
    let ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        hp_heartbeat_tests::skip::or_require(
            "NODE",
            "node is not installed, so this Node test did not run",
        );
    }
    ok
}

/// Runs to the end collecting stdout and stderr (so a full pipe never blocks
/// the sidecar), killing it after `timeout`.
pub async fn output_within(mut cmd: Command, timeout: Duration) -> std::process::Output {
    quiet(&mut cmd);
    let child = cmd.spawn().expect("spawn");
    let pid = child.id() as i32;
    let watchdog = tokio::spawn(async move {
        tokio::time::sleep(timeout).await;
        // SAFETY: kill(2) on the pid we spawned.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().expect("output"))
        .await
        .expect("join");
    watchdog.abort();
    assert_ne!(
        out.status.signal_or_none(),
        Some(libc::SIGKILL),
        "killed after {timeout:?}"
    );
    out
}

trait SignalOrNone {
    fn signal_or_none(&self) -> Option<i32>;
}

impl SignalOrNone for std::process::ExitStatus {
    fn signal_or_none(&self) -> Option<i32> {
        std::os::unix::process::ExitStatusExt::signal(self)
    }
}

/// A local store holding one row per health state, with their ages set.
pub fn store_with_every_state(path: &std::path::Path) {
    let template = {
        let mem = heartbeat_sdk::MemoryTransport::new();
        let hb = heartbeat_sdk::Heartbeat::builder("t")
            .transport(mem.clone())
            .handle_signals(false)
            .start()
            .expect("start");
        hb.shutdown();
        mem.rows().pop().expect("row")
    };
    let store = heartbeat_sdk::sidecar::SqliteStore::new(path);
    for (name, status) in [
        ("fresh-worker", "running"),
        ("stale-worker", "running"),
        ("stopped-worker", "stopped"),
        ("crashed-worker", "crashed"),
        ("unknown-worker", "unknown"),
        ("breaker-worker", "crashed"),
    ] {
        let mut row = template.clone();
        row.worker_name = name.into();
        row.status = serde_json::from_value(serde_json::json!(status)).expect("status");
        row.heartbeat_interval_seconds = 30;
        row.jobs_processed = 7;
        if name == "crashed-worker" {
            row.last_error = Some("Error: ECONNREFUSED 127.0.0.1:5432".into());
            row.exit_code = Some(1);
        }
        if name == "breaker-worker" {
            row.circuit_breaker_open = true;
            row.consecutive_errors = 10;
        }
        store.write(&row).expect("write");
    }
    let conn = rusqlite::Connection::open(path).expect("open");
    let old = (chrono::Utc::now() - chrono::Duration::seconds(600)).to_rfc3339();
    conn.execute(
        "update hp_worker_status set last_heartbeat = ?1 where worker_name = 'stale-worker'",
        [old],
    )
    .expect("age");
}

/// A sidecar worker in `pool`, reading its control row after each 1 s beat.
pub fn worker(db: &std::path::Path, name: &str, pool: &str) -> Child {
    let mut c = sidecar();
    c.env("HP_STORE", db)
        .env("HP_CONTROL_POLL_SECS", "0")
        // 2 s beats: a late beat on a busy machine does not make it stale.
        .env("HP_HEARTBEAT_INTERVAL_SECS", "2")
        .env("HP_LOG", "warn")
        .args(["run", "--name", name, "--pool", pool, "--"])
        .args([
            "sh",
            "-c",
            "trap 'exit 0' TERM; while :; do sleep 0.05; done",
        ]);
    quiet(&mut c).spawn().expect("spawn")
}

/// Ends the workers however the test ends.
pub struct Fleet(pub Vec<Child>);

impl Drop for Fleet {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
