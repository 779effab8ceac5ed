//! The row tells the truth in the hard cases, with real processes on the
//! local store: a worker that beats but does nothing is hung; one that
//! crashes again and again is flapping, with the store's own restart count.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use heartbeat_sdk::sidecar::SqliteStore;
use heartbeat_sdk::{Health, StatusRow};
use hp_heartbeat_tests::eventually::poll_until;

fn row(db: &Path, name: &str) -> Option<StatusRow> {
    SqliteStore::new(db)
        .read_all()
        .ok()?
        .into_iter()
        .find(|r| r.worker_name == name)
}

/// Waits until `name`'s row reads `health` by the reader's rule.
fn wait_health(db: &Path, name: &str, health: Health) -> StatusRow {
    poll_until(Duration::from_secs(20), || {
        row(db, name).filter(|r| r.health(chrono::Utc::now()) == health)
    })
    .unwrap_or_else(|| {
        panic!(
            "{name} never read {health:?}; last row: {:?}",
            row(db, name)
        )
    })
}

fn status(db: &Path) -> std::process::Output {
    sidecar()
        .env("HP_STORE", db)
        .args(["status"])
        .output()
        .expect("status")
}

#[test]
fn a_child_that_prints_once_then_sleeps_turns_hung_and_status_exits_1() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("hung.db");
    let mut c = sidecar();
    c.env("HP_STORE", &db)
        .env("HP_HEARTBEAT_INTERVAL_SECS", "1")
        .env("HP_LOG", "warn")
        .args(["run", "--name", "stuck", "--hung-after", "2s", "--"])
        .args(["sh", "-c", "echo started; exec sleep 60"]);
    let child = quiet(&mut c).spawn().expect("spawn");
    let _fleet = Fleet(vec![child]);

    let first = wait_health(&db, "stuck", Health::Running);
    assert_eq!(first.watchdog_seconds, Some(2));
    assert!(first.last_progress_at.is_some(), "{first:?}");
    let hung = wait_health(&db, "stuck", Health::Hung);
    assert_eq!(hung.status.as_deref(), Some("running"), "alive and beating");
    let out = status(&db);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("stuck") && text.contains("hung"), "{text}");
}

#[test]
fn a_socket_progress_line_keeps_a_quiet_worker_from_reading_hung() {
    if !node_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("progress.db");
    // Says nothing on stdout; tells the sidecar's socket it progresses every
    // 0.3 s for 6 s (twice the watchdog), then nothing, alive.
    let worker = r#"
const net = require('net');
const hb = net.createConnection(process.env.HP_SIDECAR_SOCKET, () => {
  const tick = setInterval(() => hb.write('progress\n'), 300);
  setTimeout(() => clearInterval(tick), 6000);
});
setTimeout(() => {}, 60000);
"#;
    let mut c = sidecar();
    c.env("HP_STORE", &db)
        .env("HP_HEARTBEAT_INTERVAL_SECS", "1")
        .env("HP_LOG", "warn")
        .args(["run", "--name", "quiet", "--hung-after", "3s", "--"])
        .args(["node", "-e", worker]);
    let child = quiet(&mut c).spawn().expect("spawn");
    let _fleet = Fleet(vec![child]);
    wait_health(&db, "quiet", Health::Running);
    // While the lines come, every read says running...
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(4500) {
        if let Some(r) = row(&db, "quiet") {
            assert_ne!(
                r.health(chrono::Utc::now()),
                Health::Hung,
                "progress lines count: {r:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // ...and once they stop, it turns hung.
    wait_health(&db, "quiet", Health::Hung);
}

#[test]
fn four_crashes_in_a_few_seconds_then_a_start_read_flapping_with_four_restarts() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("loop.db");
    let run = |script: &str| {
        let mut c = sidecar();
        c.env("HP_STORE", &db)
            .env("HP_HEARTBEAT_INTERVAL_SECS", "1")
            .env("HP_LOG", "warn")
            .args(["run", "--name", "looping", "--", "sh", "-c", script]);
        quiet(&mut c);
        c
    };
    for i in 0..4 {
        let out = run(&format!("echo 'Error: boom {i}' >&2; exit 1"))
            .output()
            .expect("run");
        assert_eq!(
            out.status.code(),
            Some(1),
            "the sidecar exits as its worker"
        );
    }
    let crashed = row(&db, "looping").expect("a row");
    assert_eq!(crashed.status.as_deref(), Some("crashed"));
    assert_eq!(crashed.restarts, Some(3), "four instances: three restarts");
    let child = run("exec sleep 60").spawn().expect("spawn");
    let _fleet = Fleet(vec![child]);

    let again = poll_until(Duration::from_secs(20), || {
        row(&db, "looping").filter(|r| r.status.as_deref() == Some("running"))
    })
    .expect("the fifth instance runs");
    assert_eq!(again.restarts, Some(4));
    assert_eq!(again.health(chrono::Utc::now()), Health::Flapping);
    assert_eq!(again.last_exit_status.as_deref(), Some("crashed"));
    assert_eq!(again.last_exit_code, Some(1));
    assert!(
        again
            .last_exit_error
            .as_deref()
            .is_some_and(|e| e.contains("Error: boom 3")),
        "the previous instance's error is kept: {again:?}"
    );
    let out = status(&db);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("RESTARTS") && text.contains("flapping"),
        "{text}"
    );
    assert!(
        text.contains("looping: restarted 4 times; the previous instance crashed"),
        "{text}"
    );
}

#[test]
fn events_lists_what_happened_and_the_sweep_adds_a_worker_gone_silent() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("events.db");
    let out = sidecar()
        .env("HP_STORE", &db)
        .env("HP_LOG", "warn")
        .args([
            "run",
            "--name",
            "flaky",
            "--",
            "sh",
            "-c",
            "echo 'Error: disk full' >&2; exit 3",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3));
    // A worker that beat and then went silent: its row made to say running,
    // ten minutes ago, as if it had been killed -9 then.
    let out = sidecar()
        .env("HP_STORE", &db)
        .env("HP_LOG", "warn")
        .args(["run", "--name", "silent", "--", "true"])
        .output()
        .expect("run");
    assert!(out.status.success());
    let conn = rusqlite::Connection::open(&db).expect("open");
    conn.execute(
        "update hp_worker_status set status = 'running', last_heartbeat = ?1 where worker_name = 'silent'",
        [(chrono::Utc::now() - chrono::Duration::minutes(10)).to_rfc3339()],
    )
    .expect("age it");

    let out = sidecar()
        .env("HP_STORE", &db)
        .args(["events", "--since", "1h"])
        .output()
        .expect("events");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (worker, kind) in [
        ("flaky", "started"),
        ("flaky", "crashed"),
        ("silent", "stale"),
    ] {
        assert!(
            text.lines().any(|l| l.contains(worker) && l.contains(kind)),
            "{worker} {kind} missing:\n{text}"
        );
    }
    assert!(
        text.contains("exit code 3") && text.contains("Error: disk full"),
        "{text}"
    );
    let json = sidecar()
        .env("HP_STORE", &db)
        .args(["events", "flaky", "--json"])
        .output()
        .expect("events --json");
    let events: Vec<serde_json::Value> = serde_json::from_slice(&json.stdout).expect("json");
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(kinds, ["started", "crashed"], "only flaky's, once each");
    // Another sweep records nothing new.
    let again = sidecar()
        .env("HP_STORE", &db)
        .args(["events", "silent", "--json"])
        .output()
        .expect("events");
    let events: Vec<serde_json::Value> = serde_json::from_slice(&again.stdout).expect("json");
    assert_eq!(
        events.iter().filter(|e| e["kind"] == "stale").count(),
        1,
        "{events:?}"
    );
}

#[test]
fn prune_removes_a_worker_gone_for_a_week_and_says_which_first() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("prune.db");
    for name in ["renamed-worker", "current-worker"] {
        let out = sidecar()
            .env("HP_STORE", &db)
            .env("HP_LOG", "warn")
            .args(["run", "--name", name, "--", "true"])
            .output()
            .expect("run");
        assert!(out.status.success());
    }
    let conn = rusqlite::Connection::open(&db).expect("open");
    conn.execute(
        "update hp_worker_status set last_heartbeat = ?1 where worker_name = 'renamed-worker'",
        [(chrono::Utc::now() - chrono::Duration::days(8)).to_rfc3339()],
    )
    .expect("age it");
    let prune = |args: &[&str]| {
        sidecar()
            .env("HP_STORE", &db)
            .arg("prune")
            .args(args)
            .output()
            .expect("prune")
    };
    let dry = prune(&["--gone-for", "7d", "--dry-run"]);
    let text = String::from_utf8_lossy(&dry.stdout);
    assert!(dry.status.success(), "{text}");
    assert!(
        text.contains("would remove 1 worker(s) not seen for 7days")
            && text.contains("renamed-worker"),
        "{text}"
    );
    assert!(
        row(&db, "renamed-worker").is_some(),
        "a dry run removes nothing"
    );
    let real = prune(&["--gone-for", "7d"]);
    let text = String::from_utf8_lossy(&real.stdout);
    assert!(
        real.status.success() && text.contains("removed 1 worker(s)"),
        "{text}"
    );
    assert!(row(&db, "renamed-worker").is_none());
    assert!(
        row(&db, "current-worker").is_some(),
        "a worker seen lately stays"
    );
    let events = sidecar()
        .env("HP_STORE", &db)
        .args(["events", "renamed-worker", "--json"])
        .output()
        .expect("events");
    let events: Vec<serde_json::Value> = serde_json::from_slice(&events.stdout).expect("json");
    assert_eq!(
        events.last().and_then(|e| e["kind"].as_str()),
        Some("pruned"),
        "{events:?}"
    );
    let short = prune(&["--gone-for", "10m"]);
    assert_eq!(short.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&short.stderr).contains("under an hour"),
        "{}",
        String::from_utf8_lossy(&short.stderr)
    );
}
