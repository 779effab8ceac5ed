//! The embedded SQLite store: same row and rules, shared by processes, and
//! never a reason for a worker to stop.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use heartbeat_sdk::sidecar::{FinalState, SqliteStore};
use heartbeat_sdk::{Heartbeat, SendError, WorkerRow, WorkerStatus};
use hp_heartbeat_tests::eventually::poll_until;

/// A real row as the SDK builds it (final, so every field is set).
fn template_row(state: FinalState) -> WorkerRow {
    let mem = heartbeat_sdk::MemoryTransport::new();
    let hb = Heartbeat::builder("template")
        .transport(mem.clone())
        .handle_signals(false)
        .start()
        .expect("start");
    heartbeat_sdk::sidecar::finish(&hb, state);
    mem.rows().pop().expect("a row")
}

fn wait_rows(
    store: &SqliteStore,
    want: impl Fn(&[heartbeat_sdk::StatusRow]) -> bool,
) -> Vec<heartbeat_sdk::StatusRow> {
    poll_until(Duration::from_secs(5), || {
        let rows = store.read_all().unwrap_or_default();
        want(&rows).then_some(rows)
    })
    .unwrap_or_else(|| store.read_all().unwrap_or_default())
}

#[test]
fn round_trip_running_then_stopped() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("hb.db");
    let hb = Heartbeat::builder("local-worker")
        .local_store(&path)
        .handle_signals(false)
        .metadata("queue", "orders")
        .start()
        .expect("start with no Supabase at all");
    hb.job_succeeded();
    hb.job_failed("timeout talking to the exchange");
    let store = SqliteStore::new(&path);
    let rows = wait_rows(&store, |r| !r.is_empty());
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.worker_name, "local-worker");
    assert_eq!(row.status.as_deref(), Some("running"));
    assert!(row.last_heartbeat.is_some());
    assert_eq!(row.pid, Some(i64::from(std::process::id())));
    assert!(hb.shutdown());
    let row = store.read_all().expect("read").remove(0);
    assert_eq!(row.status.as_deref(), Some("stopped"));
    assert_eq!((row.jobs_processed, row.error_count), (Some(1), Some(1)));
    assert_eq!(
        row.last_error.as_deref(),
        Some("timeout talking to the exchange")
    );
    assert_eq!(
        row.metadata
            .as_ref()
            .and_then(|m| m.get("queue"))
            .and_then(|v| v.as_str()),
        Some("orders")
    );
    assert_eq!(row.circuit_breaker_open, Some(false));
}

/// Same contract as the SQL: every key the SDK sends is a column.
#[test]
fn every_row_key_is_a_column_of_the_local_table() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("hb.db");
    let row = template_row(
        FinalState::new(WorkerStatus::Crashed)
            .exit_code(1)
            .exit_signal(9)
            .last_error("x"),
    );
    SqliteStore::new(&path).write(&row).expect("written");
    let out = Command::new("sqlite3")
        .arg(&path)
        .arg("select name from pragma_table_info('hp_worker_status');")
        .output();
    let columns: BTreeSet<String> = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::to_owned)
            .collect(),
        // No sqlite3 CLI: read the columns back through the store instead.
        _ => SqliteStore::new(&path)
            .read_all()
            .map(|r| serde_json::to_value(&r[0]).ok())
            .ok()
            .flatten()
            .and_then(|v| v.as_object().map(|o| o.keys().cloned().collect()))
            .unwrap_or_default(),
    };
    let keys = serde_json::to_value(&row).expect("json");
    for key in keys.as_object().expect("object").keys() {
        assert!(
            columns.contains(key),
            "the SDK sends `{key}`, which the local table lacks"
        );
    }
    let back = SqliteStore::new(&path).read_all().expect("read").remove(0);
    assert_eq!(
        (back.exit_code, back.exit_signal, back.status.as_deref()),
        (Some(1), Some(9), Some("crashed"))
    );
}

/// Run only as a child: writes rows for its own workers as fast as it can.
#[test]
#[ignore = "child process for the concurrency test"]
fn child_writer() {
    let path = std::env::var("HP_TEST_STORE").expect("store path");
    let tag = std::env::var("HP_TEST_TAG").expect("tag");
    let template = template_row(FinalState::default());
    let store = SqliteStore::new(path);
    for i in 0..400u64 {
        let mut row = template.clone();
        row.worker_name = format!("{tag}-{}", i % 20);
        row.jobs_processed = i;
        store
            .write(&row)
            .expect("no write may fail under contention");
    }
}

#[test]
fn two_processes_share_one_store_without_errors_or_lost_rows() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("shared.db");
    let exe = std::env::current_exe().expect("exe");
    let children: Vec<_> = ["a", "b"]
        .iter()
        .map(|tag| {
            Command::new(&exe)
                .args(["--ignored", "--exact", "child_writer", "--quiet"])
                .env("HP_TEST_STORE", &path)
                .env("HP_TEST_TAG", tag)
                // The child's own test report stays out of ours.
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "a writer failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rows = SqliteStore::new(&path).read_all().expect("read");
    assert_eq!(rows.len(), 40, "20 workers per process");
    // The last write of worker k is i = 380 + k.
    for row in rows {
        let k: u64 = row
            .worker_name
            .rsplit('-')
            .next()
            .and_then(|s| s.parse().ok())
            .expect("k");
        assert_eq!(
            row.jobs_processed,
            Some(380 + k as i64),
            "{}",
            row.worker_name
        );
    }
}

fn keeps_running_with(path: &std::path::Path, expect_in_error: &str) {
    let store = SqliteStore::new(path);
    let template = template_row(FinalState::default());
    let err = store.write(&template).expect_err("the write fails");
    let SendError::Store(msg) = &err else {
        panic!("{err:?}")
    };
    assert!(
        msg.contains(expect_in_error) && msg.contains("HP_STORE"),
        "{msg}"
    );
    // A worker with this store starts, counts and stops without a panic.
    let hb = Heartbeat::builder("still-working")
        .local_store(path)
        .handle_signals(false)
        .start()
        .expect("starts anyway");
    hb.job_succeeded();
    assert!(
        !hb.shutdown(),
        "the final row cannot be stored, and that is all"
    );
}

#[test]
fn a_corrupt_store_is_a_clear_error_and_the_worker_keeps_running() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("corrupt.db");
    std::fs::write(&path, vec![0x42u8; 8192]).expect("garbage");
    keeps_running_with(&path, "not a valid SQLite database");
}

#[test]
fn a_missing_directory_is_a_clear_error_and_the_worker_keeps_running() {
    let dir = tempfile::tempdir().expect("tmp");
    keeps_running_with(&dir.path().join("no/such/dir/hb.db"), "does not exist");
}

#[test]
fn a_read_only_store_is_a_clear_error_and_the_worker_keeps_running() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("ro.db");
    SqliteStore::new(&path)
        .write(&template_row(FinalState::default()))
        .expect("a valid store first");
    // Root ignores file modes; the immutable attribute binds root too.
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false);
    let made_read_only = if root {
        Command::new("chattr")
            .arg("+i")
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new("chattr")
                .arg("+i")
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success())
    } else {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).is_ok()
            && std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o555)).is_ok()
    };
    if !made_read_only {
        hp_heartbeat_tests::skip::loudly("cannot make a file read-only here (no chattr as root)");
        return;
    }
    let undo = || {
        let _ = Command::new("chattr").arg("-i").arg(dir.path()).status();
        let _ = Command::new("chattr").arg("-i").arg(&path).status();
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755));
    };
    let result = std::panic::catch_unwind(|| keeps_running_with(&path, "read-only"));
    undo();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// The same hostile input as the PostgreSQL test, through the local store:
/// the final crashed row is stored, fitted.
#[test]
fn a_nul_byte_and_huge_metadata_never_cost_the_row() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("hostile.db");
    let hb = Heartbeat::builder("hostile-worker")
        .local_store(&path)
        .handle_signals(false)
        .start()
        .expect("start");
    hb.set_metadata("blob", "x".repeat(500_000));
    hb.job_failed("disk\0full");
    assert!(heartbeat_sdk::sidecar::finish(
        &hb,
        FinalState::new(WorkerStatus::Crashed).last_error("boom\0")
    ));
    let row = SqliteStore::new(&path).read_all().expect("read").remove(0);
    assert_eq!(row.status.as_deref(), Some("crashed"));
    assert_eq!(row.last_error.as_deref(), Some("boom\u{FFFD}"));
    let meta = row.metadata.unwrap_or_default();
    assert_eq!(meta["hp_dropped_keys"], serde_json::json!(["blob"]));
}
