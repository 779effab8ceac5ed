//! The PM2 story, end to end with real PM2: `pm2 start` the sidecar wrapping
//! the Node example worker, see `running`; `pm2 stop`, see `stopped` before
//! PM2's kill timeout; `pm2 delete`.
//!
//! PM2 comes from `$HP_PM2_DIR/node_modules/.bin/pm2` (what `.ci/run`
//! installs), else it is installed from the npm registry into a temp dir.
//! Skipped loudly without node or npm; failed instead when `HP_REQUIRE_PM2=1`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use heartbeat_sdk::sidecar::SqliteStore;
use heartbeat_sdk::StatusRow;

fn skip(why: &str) -> Option<PathBuf> {
    if std::env::var("HP_REQUIRE_PM2").as_deref() == Ok("1") {
        panic!("HP_REQUIRE_PM2=1 but {why}");
    }
    eprintln!("\n##### SKIPPED: PM2 test: {why} #####\n");
    None
}

fn pm2_binary(scratch: &Path) -> Option<PathBuf> {
    if Command::new("node").arg("--version").output().is_err() {
        return skip("node is not installed");
    }
    if let Some(dir) = std::env::var_os("HP_PM2_DIR") {
        let bin = PathBuf::from(dir).join("node_modules/.bin/pm2");
        if bin.exists() {
            return Some(bin);
        }
    }
    let status = Command::new("npm")
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
            "--prefix",
        ])
        .arg(scratch)
        .arg("pm2@7")
        .status();
    match status {
        Ok(s) if s.success() => Some(scratch.join("node_modules/.bin/pm2")),
        Ok(s) => skip(&format!("npm install pm2 failed ({s})")),
        Err(e) => skip(&format!("npm is not available ({e})")),
    }
}

/// A PM2 daemon of our own (PM2_HOME in a temp dir), killed on drop.
struct Pm2 {
    bin: PathBuf,
    home: PathBuf,
}

impl Pm2 {
    fn run(&self, args: &[&str]) -> std::process::Output {
        let out = Command::new(&self.bin)
            .args(args)
            .env("PM2_HOME", &self.home)
            .output()
            .expect("pm2");
        assert!(
            out.status.success(),
            "pm2 {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

impl Drop for Pm2 {
    fn drop(&mut self) {
        let _ = Command::new(&self.bin)
            .arg("kill")
            .env("PM2_HOME", &self.home)
            .output();
    }
}

fn row(db: &Path, name: &str) -> Option<StatusRow> {
    SqliteStore::new(db)
        .read_all()
        .ok()?
        .into_iter()
        .find(|r| r.worker_name == name)
}

fn wait_row(
    db: &Path,
    name: &str,
    timeout: Duration,
    want: impl Fn(&StatusRow) -> bool,
) -> Option<StatusRow> {
    let deadline = Instant::now() + timeout;
    loop {
        match row(db, name) {
            Some(r) if want(&r) => return Some(r),
            _ if Instant::now() > deadline => return row(db, name),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

#[test]
fn pm2_start_then_stop_reports_running_then_stopped_within_the_kill_timeout() {
    let scratch = tempfile::tempdir().expect("tmp");
    let Some(bin) = pm2_binary(scratch.path()) else {
        return;
    };
    let pm2 = Pm2 {
        bin,
        home: scratch.path().join("pm2-home"),
    };
    let db = scratch.path().join("store.db");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo")
        .to_path_buf();
    let ecosystem = scratch.path().join("ecosystem.config.js");
    std::fs::write(
        &ecosystem,
        format!(
            r#"module.exports = {{ apps: [{{
  name: "pm2-worker", script: {sidecar:?}, interpreter: "none", cwd: {repo:?},
  args: ["run", "--name", "pm2-worker", "--job-pattern", "done$", "--error-pattern", "^ERROR", "--", "node", "examples/node/worker.mjs"],
  autorestart: false, kill_timeout: 1600,
  env: {{ HP_STORE: {db:?}, HP_HEARTBEAT_INTERVAL_SECS: "1" }}
}}] }};"#,
            sidecar = env!("CARGO_BIN_EXE_heartbeat-sidecar"),
            repo = repo.display().to_string(),
            db = db.display().to_string(),
        ),
    )
    .expect("ecosystem");

    pm2.run(&["start", ecosystem.to_str().expect("utf8 path")]);
    let running = wait_row(&db, "pm2-worker", Duration::from_secs(20), |r| {
        r.status.as_deref() == Some("running") && r.jobs_processed.unwrap_or(0) > 0
    })
    .expect("a row");
    assert_eq!(running.status.as_deref(), Some("running"), "{running:?}");
    let pid = running.pid.expect("pid");
    assert!(
        std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .unwrap_or_default()
            .starts_with("node"),
        "the row's pid is the Node worker"
    );

    let t0 = chrono::Utc::now();
    let started = Instant::now();
    pm2.run(&["stop", "pm2-worker"]);
    let took = started.elapsed();
    let stopped = wait_row(&db, "pm2-worker", Duration::from_secs(3), |r| {
        r.status.as_deref() != Some("running")
    })
    .expect("a row");
    assert_eq!(stopped.status.as_deref(), Some("stopped"), "{stopped:?}");
    let written = stopped.last_heartbeat.expect("time") - t0;
    assert!(
        written < chrono::Duration::milliseconds(1600),
        "final row {written:?} after pm2 stop: past PM2's kill timeout"
    );
    assert!(
        took < Duration::from_millis(1600) + Duration::from_secs(1),
        "pm2 stop took {took:?}"
    );
    assert!(stopped.jobs_processed.unwrap_or(0) >= running.jobs_processed.unwrap_or(0));
    assert!(!common::alive(pid as i32), "the worker is gone");

    pm2.run(&["delete", "pm2-worker"]);
    let list = pm2.run(&["jlist"]);
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains("pm2-worker"),
        "deleted"
    );
}
