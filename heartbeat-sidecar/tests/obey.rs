//! The sidecar obeys operators: real children, real signals, requests made
//! through the local store's `hp_control()` (the rule the SQL function has).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use common::*;
use heartbeat_sdk::sidecar::{ControlRequest, SqliteStore};
use heartbeat_sdk::StatusRow;
use hp_heartbeat_tests::eventually::eventually;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(15);

/// A sidecar on the store at `db`, beating every second and reading its
/// control row after each beat.
fn sidecar_on(db: &Path, name: &str, flags: &[&str], command: &[&str]) -> Command {
    let mut c = sidecar();
    c.env("HP_STORE", db)
        .env("HP_CONTROL_POLL_SECS", "0")
        .env("HP_HEARTBEAT_INTERVAL_SECS", "1")
        .env("HP_LOG", "warn")
        .args(["run", "--name", name])
        .args(flags)
        .arg("--")
        .args(command);
    quiet(&mut c);
    c
}

/// Ends the sidecar (SIGTERM) and waits for it, whatever the test did.
struct Running(Child);

impl Running {
    fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    fn still_running(&mut self) -> bool {
        self.0.try_wait().ok().flatten().is_none()
    }

    fn stop(mut self) -> std::process::Output {
        kill(self.pid(), libc::SIGTERM);
        let child = std::mem::replace(&mut self.0, Command::new("true").spawn().expect("true"));
        std::mem::forget(self);
        let out = std::thread::spawn(move || child.wait_with_output().expect("output"));
        let started = std::time::Instant::now();
        while !out.is_finished() {
            assert!(
                started.elapsed() < WAIT,
                "the sidecar did not end on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        out.join().expect("join")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A temp dir, the store in it, and that store opened with budgets wide open.
fn fixture() -> (tempfile::TempDir, PathBuf, SqliteStore) {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("s.db");
    let store = store(&db);
    (dir, db, store)
}

/// [`sidecar_on`], started.
fn run_sidecar(db: &Path, name: &str, flags: &[&str], command: &[&str]) -> Running {
    Running(sidecar_on(db, name, flags, command).spawn().expect("spawn"))
}

fn store(db: &Path) -> SqliteStore {
    let s = SqliteStore::new(db);
    // Budgets wide open: these tests are about obeying, not refusing.
    s.pool_set("default", Some(10), Some(0), None, Some("test"))
        .expect("pool set");
    s
}

fn ask(store: &SqliteStore, action: &str, name: &str) {
    let mut request = ControlRequest::workers(action, vec![name.to_owned()]);
    request.force = true;
    request.confirm = Some("default".to_owned());
    let answer = store.control(&request).expect("control");
    assert!(answer.accepted(), "{action} refused: {answer:?}");
}

fn row(store: &SqliteStore, name: &str) -> Option<StatusRow> {
    store.read_one(name).ok().flatten()
}

fn field(row: &StatusRow, key: &str) -> Value {
    serde_json::to_value(row).expect("json")[key].clone()
}

/// Waits until the row satisfies `want`, and returns it.
fn wait_for(
    store: &SqliteStore,
    name: &str,
    what: &str,
    want: impl Fn(&StatusRow) -> bool,
) -> StatusRow {
    eventually(WAIT, what, || row(store, name).filter(|r| want(r)))
}

fn state_is(state: &str) -> impl Fn(&StatusRow) -> bool + '_ {
    move |r| field(r, "state") == state
}

/// The child's pid in the row (`None` while there is no child).
fn child_pid(r: &StatusRow) -> Option<i64> {
    field(r, "pid").as_i64()
}

const TRAPS_TERM: &str = "trap 'echo got TERM; exit 0' TERM; while :; do sleep 0.05; done";

#[test]
fn restart_pause_resume_and_drain_a_long_running_child_in_place() {
    let (_dir, db, store) = fixture();
    let mut sidecar = run_sidecar(
        &db,
        "steered",
        &["--stop-timeout", "10s"],
        &["sh", "-c", TRAPS_TERM],
    );
    let first = wait_for(&store, "steered", "the first child in the row", |r| {
        child_pid(r).is_some() && field(r, "state") == "active"
    });
    let first_pid = child_pid(&first).expect("pid");
    assert_eq!(
        field(&first, "controls")["restart"],
        "by restarting the worker in place"
    );

    ask(&store, "restart", "steered");
    let restarted = wait_for(&store, "steered", "a new child after the restart", |r| {
        child_pid(r).is_some_and(|p| p != first_pid) && field(r, "state") == "active"
    });
    assert!(!alive(first_pid as i32), "the first child is gone");
    assert_ne!(
        restarted.instance_id, first.instance_id,
        "a new process of the worker is a new instance (a rollout waits for one)"
    );
    assert_eq!(field(&restarted, "metadata")["restarts_in_place"], 1);
    assert!(
        sidecar.still_running(),
        "the sidecar stays: PM2 and systemd see no restart"
    );
    let second_pid = child_pid(&restarted).expect("pid");

    ask(&store, "pause", "steered");
    let paused = wait_for(&store, "steered", "paused with no child", |r| {
        field(r, "state") == "paused" && child_pid(r).is_none()
    });
    assert_eq!(
        paused.status.as_deref(),
        Some("running"),
        "paused is alive, not stopped"
    );
    assert!(!alive(second_pid as i32));

    ask(&store, "resume", "steered");
    let resumed = wait_for(&store, "steered", "a child again after resume", |r| {
        field(r, "state") == "active" && child_pid(r).is_some_and(|p| p != second_pid)
    });
    let third_pid = child_pid(&resumed).expect("pid");

    ask(&store, "drain", "steered");
    wait_for(&store, "steered", "drained: paused, no child", |r| {
        field(r, "state") == "paused" && child_pid(r).is_none()
    });
    assert!(!alive(third_pid as i32));
    assert!(sidecar.still_running(), "a drained sidecar stays up");

    let out = sidecar.stop();
    assert_eq!(out.status.code(), Some(0), "a clean stop with no child");
    let last = row(&store, "steered").expect("row");
    assert_eq!(last.status.as_deref(), Some("stopped"));
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        said.matches("got TERM").count(),
        3,
        "each child stopped gracefully: {said}"
    );
    assert!(
        field(&last, "control_generation").as_i64() >= Some(4),
        "{last:?}"
    );
}

#[test]
fn a_child_that_ignores_the_stop_signal_is_killed_after_the_stop_timeout() {
    let (_dir, db, store) = fixture();
    let sidecar = run_sidecar(
        &db,
        "stubborn",
        &["--stop-timeout", "1s"],
        &["sh", "-c", "trap '' TERM; while :; do sleep 0.05; done"],
    );
    let first = wait_for(&store, "stubborn", "the first child", |r| {
        child_pid(r).is_some()
    });
    let first_pid = child_pid(&first).expect("pid");
    ask(&store, "restart", "stubborn");
    wait_for(&store, "stubborn", "a new child after SIGKILL", |r| {
        child_pid(r).is_some_and(|p| p != first_pid)
    });
    assert!(!alive(first_pid as i32));
    drop(sidecar);
}

#[test]
fn a_pause_signal_pauses_the_child_where_it_is() {
    let (_dir, db, store) = fixture();
    let sidecar = run_sidecar(
        &db,
        "frozen",
        &["--pause-signal", "STOP", "--resume-signal", "CONT"],
        &["sh", "-c", TRAPS_TERM],
    );
    let first = wait_for(&store, "frozen", "the first child", |r| {
        child_pid(r).is_some()
    });
    let pid = child_pid(&first).expect("pid") as i32;
    assert_eq!(
        field(&first, "controls")["pause"],
        "by sending the worker SIGSTOP (SIGCONT resumes it)"
    );
    ask(&store, "pause", "frozen");
    wait_for(&store, "frozen", "paused in place", state_is("paused"));
    eventually(WAIT, "the child stopped (T)", || {
        process_state(pid).filter(|s| *s == 'T')
    });
    ask(&store, "resume", "frozen");
    wait_for(&store, "frozen", "active again", state_is("active"));
    eventually(WAIT, "the same child running again", || {
        process_state(pid).filter(|s| *s != 'T')
    });
    // SIGTERM reaches a paused child too (it is woken first).
    ask(&store, "pause", "frozen");
    eventually(WAIT, "stopped again", || {
        process_state(pid).filter(|s| *s == 'T')
    });
    let out = sidecar.stop();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("got TERM"));
}

/// The one-letter state in /proc (R, S, T, Z ...).
fn process_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

#[test]
fn every_runs_on_schedule_skips_while_paused_and_run_now_runs_one() {
    let (dir, db, store) = fixture();
    let runs_file = dir.path().join("runs");
    let script = format!("echo run >> {}", runs_file.display());
    let sidecar = run_sidecar(&db, "periodic", &["--every", "1s"], &["sh", "-c", &script]);
    let counted = || {
        std::fs::read_to_string(&runs_file)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    let r = wait_for(&store, "periodic", "three runs recorded", |r| {
        field(r, "runs_total").as_u64() >= Some(3)
    });
    assert_eq!(field(&r, "run_state"), "succeeded");
    assert_eq!(field(&r, "runs_failed"), 0);
    assert_eq!(
        field(&r, "controls")["run_now"],
        "by starting a run at once"
    );

    ask(&store, "pause", "periodic");
    let paused = wait_for(&store, "periodic", "paused", |r| {
        field(r, "state") == "paused" && field(r, "run_state") != "running"
    });
    let at_pause = counted();
    let total_at_pause = field(&paused, "runs_total").as_u64().expect("runs_total");
    // Three scheduled runs would have started by now: none did.
    let later = eventually(WAIT, "three more beats while paused", || {
        row(&store, "periodic").filter(|r| {
            r.last_heartbeat > paused.last_heartbeat
                && r.uptime_seconds.unwrap_or(0) >= paused.uptime_seconds.unwrap_or(0) + 3
        })
    });
    assert_eq!(counted(), at_pause, "no run while paused");
    assert_eq!(field(&later, "runs_total").as_u64(), Some(total_at_pause));

    ask(&store, "run_now", "periodic");
    wait_for(&store, "periodic", "exactly one run for run-now", |r| {
        field(r, "runs_total").as_u64() == Some(total_at_pause + 1)
    });
    assert_eq!(counted(), at_pause + 1);
    let after = eventually(WAIT, "two more beats, still paused", || {
        row(&store, "periodic")
            .filter(|r| r.uptime_seconds.unwrap_or(0) >= later.uptime_seconds.unwrap_or(0) + 2)
    });
    assert_eq!(
        field(&after, "runs_total").as_u64(),
        Some(total_at_pause + 1),
        "one, not a schedule"
    );
    drop(sidecar);
}

#[test]
fn a_failed_run_records_its_exit_code_and_stderr() {
    let (_dir, db, store) = fixture();
    let sidecar = run_sidecar(
        &db,
        "flaky",
        &["--every", "1s"],
        &["sh", "-c", "echo 'upstream said 502' >&2; exit 3"],
    );
    let r = wait_for(&store, "flaky", "a failed run", |r| {
        field(r, "run_state") == "failed"
    });
    assert_eq!(
        field(&r, "last_run_summary"),
        "exit code 3: upstream said 502"
    );
    assert!(field(&r, "runs_failed").as_u64() >= Some(1));
    assert_eq!(
        r.status.as_deref(),
        Some("running"),
        "a failed run is not a crashed sidecar"
    );
    drop(sidecar);
}

fn once(db: &Path, name: &str, command: &[&str]) -> Command {
    let mut c = sidecar();
    c.env("HP_STORE", db)
        .env("HP_LOG", "info")
        .args(["once", "--name", name, "--period", "1h", "--"])
        .args(command);
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn once_records_a_run_passes_its_exit_code_and_is_skipped_while_paused() {
    let (dir, db, store) = fixture();

    let out = output_within(once(&db, "nightly", &["sh", "-c", "echo did it"]), WAIT).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "did it\n");
    let r = row(&store, "nightly").expect("row");
    assert_eq!(
        (field(&r, "run_state"), r.status.as_deref()),
        ("succeeded".into(), Some("stopped"))
    );
    assert_eq!(
        r.heartbeat_interval_seconds,
        Some(3600),
        "--period is the row's interval"
    );

    let out = output_within(
        once(&db, "nightly", &["sh", "-c", "echo boom >&2; exit 4"]),
        WAIT,
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(4),
        "the command's code is passed through"
    );
    let r = row(&store, "nightly").expect("row");
    assert_eq!(field(&r, "run_state"), "failed");
    assert_eq!(field(&r, "last_run_summary"), "exit code 4: boom");
    assert_eq!(r.status.as_deref(), Some("crashed"));

    ask(&store, "disable", "nightly");
    let marker = dir.path().join("ran");
    let script = format!("touch {}", marker.display());
    let out = output_within(once(&db, "nightly", &["sh", "-c", &script]), WAIT).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(!marker.exists(), "a disabled job does not run");
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(said.matches("skipped").count(), 1, "{said}");

    ask(&store, "enable", "nightly");
    let out = output_within(once(&db, "nightly", &["sh", "-c", &script]), WAIT).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(marker.exists(), "enabled again, it runs");
}

/// A child may ask: the socket answers `state` with what operators want now.
#[test]
fn the_socket_answers_state_so_a_child_can_pause_itself() {
    if std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_err()
    {
        hp_heartbeat_tests::skip::or_require(
            "PYTHON",
            "python3 is not installed: the socket state test did not run",
        );
        return;
    }
    let (_dir, db, store) = fixture();
    let asks = r#"
import os, socket, time
while True:
    s = socket.socket(socket.AF_UNIX)
    s.connect(os.environ["HP_SIDECAR_SOCKET"])
    s.sendall(b"progress\nstate\n")
    state = s.makefile().readline().strip()
    s.close()
    print(state, flush=True)
    if state == "paused":
        break
    time.sleep(0.1)
"#;
    // --every: a pause lets the run in flight finish; this one finishes
    // when it reads that it is paused.
    let sidecar = run_sidecar(&db, "asker", &["--every", "1h"], &["python3", "-c", asks]);
    wait_for(&store, "asker", "the run in flight", |r| {
        field(r, "run_state") == "running"
    });
    ask(&store, "pause", "asker");
    wait_for(
        &store,
        "asker",
        "the child saw paused and ended its run",
        |r| field(r, "run_state") == "succeeded",
    );
    let out = sidecar.stop();
    let said = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = said.lines().collect();
    assert!(
        lines.first() == Some(&"active") && lines.last() == Some(&"paused"),
        "{said}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("ignored line"),
        "progress is a known line"
    );
}

/// A sidecar started again while its worker is paused (a deploy, a reboot,
/// PM2 bringing it back after a drain) starts no child and runs no job
/// until resumed: a restart of the sidecar never undoes a pause.
#[test]
fn a_sidecar_started_while_paused_starts_nothing_until_resumed() {
    let (dir, db, store) = fixture();
    let marker = dir.path().join("started");
    let script = format!("echo x >> {}; {TRAPS_TERM}", marker.display());
    let every_marker = dir.path().join("ran");
    let every_script = format!("echo x >> {}", every_marker.display());
    for name in ["kept", "scheduled"] {
        // A row first: control needs to know the worker's pool.
        let once = run_sidecar(&db, name, &["--every", "1h"], &["true"]);
        wait_for(&store, name, "a first row", |r| {
            child_pid(r).is_some() || field(r, "runs_total").as_u64() >= Some(1)
        });
        drop(once.stop());
        ask(&store, "pause", name);
    }
    let kept = run_sidecar(&db, "kept", &[], &["sh", "-c", &script]);
    let scheduled = run_sidecar(
        &db,
        "scheduled",
        &["--every", "1s"],
        &["sh", "-c", &every_script],
    );
    let first = wait_for(&store, "kept", "the restarted sidecar's first row", |r| {
        field(r, "state") == "paused"
            && r.uptime_seconds.is_some()
            && r.status.as_deref() == Some("running")
    });
    assert_eq!(child_pid(&first), None, "no child while paused: {first:?}");
    let later = eventually(
        WAIT,
        "three beats of the scheduled one while paused",
        || {
            row(&store, "scheduled")
                .filter(|r| field(r, "state") == "paused" && r.uptime_seconds.unwrap_or(0) >= 3)
        },
    );
    assert!(
        !marker.exists() && !every_marker.exists(),
        "nothing ran while paused"
    );
    assert_eq!(
        field(&later, "run_state"),
        "succeeded",
        "only the run from before: {later:?}"
    );

    ask(&store, "resume", "kept");
    ask(&store, "resume", "scheduled");
    wait_for(&store, "kept", "a child once resumed", |r| {
        child_pid(r).is_some()
    });
    eventually(WAIT, "a run once resumed", || {
        every_marker.exists().then_some(())
    });
    assert!(marker.exists());
    drop((kept.stop(), scheduled.stop()));
}

/// A worker that crashes while the sidecar stops it for a restart: the
/// crash is kept in the row (an error, with its stderr), and the worker is
/// started again as asked.
#[test]
fn a_crash_during_a_stop_for_a_restart_is_kept() {
    let (_dir, db, store) = fixture();
    let crashes_on_term = "trap 'echo boom on stop >&2; exit 3' TERM; while :; do sleep 0.05; done";
    let sidecar = run_sidecar(&db, "brittle", &[], &["sh", "-c", crashes_on_term]);
    let first = wait_for(&store, "brittle", "the first child", |r| {
        child_pid(r).is_some()
    });
    let first_pid = child_pid(&first);
    ask(&store, "restart", "brittle");
    let after = wait_for(&store, "brittle", "started again, the crash kept", |r| {
        child_pid(r).is_some() && child_pid(r) != first_pid && r.error_count >= Some(1)
    });
    // The stderr tail may hold the shell's own "Terminated" for its sleep.
    let said = after.last_error.as_deref().unwrap_or("");
    assert!(
        said.starts_with("exit code 3 while stopping: ") && said.ends_with("boom on stop"),
        "{after:?}"
    );
    drop(sidecar);
}
