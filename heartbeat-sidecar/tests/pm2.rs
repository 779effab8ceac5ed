//! The PM2 story with real PM2 and the shipped
//! `examples/node/ecosystem.config.js`, started unchanged the way its first
//! lines say: `pm2 start examples/node/ecosystem.config.js` from the
//! repository root. The test's sidecar is first on PATH (the file finds the
//! binary there) and `HP_STORE` names a temp store: PM2 hands the CLI's
//! environment to the app, so the rows landing there prove that too.
//!
//! PM2 is `$HP_PM2_DIR/node_modules/.bin/pm2` (default
//! `~/.cache/hp-heartbeat/pm2`, where docs/development.md's setup line and
//! `.ci/run` put it), else `pm2` on PATH. Without it every test here is
//! skipped loudly, or fails when `HP_REQUIRE_PM2=1`.

mod common;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use heartbeat_sdk::sidecar::SqliteStore;
use heartbeat_sdk::StatusRow;
use hp_heartbeat_tests::eventually::{eventually, poll_until};
use serde_json::Value;

const SIDECAR: &str = env!("CARGO_BIN_EXE_heartbeat-sidecar");
const APP: &str = "roundtable-worker";
/// PM2's `kill_timeout` in the shipped file.
const KILL_TIMEOUT: Duration = Duration::from_millis(1600);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo")
        .to_path_buf()
}

fn ecosystem_file() -> PathBuf {
    repo().join("examples/node/ecosystem.config.js")
}

/// The one place PM2 is looked for; `None` after a loud skip.
fn pm2_binary() -> Option<PathBuf> {
    let found = std::env::var_os("HP_PM2_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/hp-heartbeat/pm2")))
        .map(|dir| dir.join("node_modules/.bin/pm2"))
        .filter(|bin| bin.is_file())
        .or_else(|| which("pm2"));
    if found.is_none() {
        let why = "PM2 is not installed: run the setup line in docs/development.md";
        if std::env::var("HP_REQUIRE_PM2").as_deref() == Ok("1") {
            panic!("HP_REQUIRE_PM2=1 but {why}");
        }
        loud_skip(&format!("PM2 test: {why}"));
    }
    found
}

fn which(command: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(command))
        .find(|file| file.is_file())
}

/// A PM2 daemon of our own (`PM2_HOME` in a temp dir), killed on drop. Every
/// command runs from the repository root, as the ecosystem file says.
struct Pm2 {
    bin: PathBuf,
    scratch: tempfile::TempDir,
    path: OsString,
    // One PM2 at a time: a daemon starting, or the cluster test's restart
    // loop, must not eat the stop test's 1.6 s.
    _one_at_a_time: MutexGuard<'static, ()>,
}

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

impl Pm2 {
    /// PM2 with the test's sidecar first on PATH.
    fn start() -> Option<Pm2> {
        let bin = pm2_binary()?;
        let sidecar_dir = Path::new(SIDECAR).parent().expect("bin dir").to_path_buf();
        let rest = std::env::var_os("PATH").unwrap_or_default();
        let path =
            std::env::join_paths(std::iter::once(sidecar_dir).chain(std::env::split_paths(&rest)))
                .expect("PATH");
        Some(Self::with_path(bin, path))
    }

    fn with_path(bin: PathBuf, path: OsString) -> Pm2 {
        Pm2 {
            bin,
            scratch: tempfile::tempdir().expect("tmp"),
            path,
            // A test that failed holding it has already said so.
            _one_at_a_time: ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    fn store(&self) -> PathBuf {
        self.scratch.path().join("store.db")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args)
            .current_dir(repo())
            .env("PM2_HOME", self.scratch.path().join("pm2-home"))
            .env("PATH", &self.path)
            .env("HP_STORE", self.store())
            .env("HP_HEARTBEAT_INTERVAL_SECS", "1")
            .env("NO_COLOR", "1");
        // The app gets this environment: nothing from the developer's shell
        // may send its rows elsewhere or rename it.
        for var in [
            "SUPABASE_URL",
            "SUPABASE_SECRET_KEY",
            "SUPABASE_SERVICE_ROLE_KEY",
            "SUPABASE_SERVICE_KEY",
            "HP_WORKER_NAME",
            "HP_SUPABASE_SCHEMA",
            "HP_SHUTDOWN_BUDGET_MS",
            "NODE_APP_INSTANCE",
            "STATE_DIRECTORY",
            "HP_ALERT_WEBHOOKS",
        ] {
            c.env_remove(var);
        }
        c
    }

    fn output(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run pm2")
    }

    /// Runs pm2 and insists it succeeded; its banners stay in the capture.
    fn run(&self, args: &[&str]) -> Output {
        let out = self.output(args);
        assert!(out.status.success(), "pm2 {args:?} failed:\n{}", both(&out));
        out
    }

    /// `pm2 jlist`: one JSON object per process.
    fn processes(&self) -> Vec<Value> {
        let out = self.run(&["jlist"]);
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("pm2 jlist is not JSON ({e}):\n{}", both(&out)))
    }

    fn row(&self, name: &str) -> Option<StatusRow> {
        SqliteStore::new(self.store())
            .read_all()
            .ok()?
            .into_iter()
            .find(|r| r.worker_name == name)
    }

    fn wait_row(
        &self,
        name: &str,
        within: Duration,
        want: impl Fn(&StatusRow) -> bool,
    ) -> StatusRow {
        poll_until(within, || self.row(name).filter(|r| want(r))).unwrap_or_else(|| {
            panic!(
                "within {within:?}, no fitting row for {name}; last: {:?}\npm2 logs:\n{}",
                self.row(name),
                self.logs()
            )
        })
    }

    /// What PM2 logged for the apps, for failure messages.
    fn logs(&self) -> String {
        let dir = self.scratch.path().join("pm2-home/logs");
        let mut all = String::new();
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            all.push_str(&format!("== {}\n{text}", entry.path().display()));
        }
        all
    }
}

impl Drop for Pm2 {
    fn drop(&mut self) {
        let _ = self.output(&["kill"]);
    }
}

fn both(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn running_with_jobs(r: &StatusRow) -> bool {
    r.status.as_deref() == Some("running") && r.jobs_processed.unwrap_or(0) > 0
}

fn cmdline(pid: i64) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// A copy of the shipped example (config and worker) with `edits` applied,
/// each `(from, to)` found exactly once: what a user does to the file.
fn edited_copy(dir: &Path, edits: &[(&str, &str)]) -> PathBuf {
    let mut text = std::fs::read_to_string(ecosystem_file()).expect("ecosystem file");
    for (from, to) in edits {
        assert_eq!(
            text.matches(from).count(),
            1,
            "{from:?} once in the shipped file"
        );
        text = text.replace(from, to);
    }
    let copy = dir.join("ecosystem.config.js");
    std::fs::write(&copy, text).expect("write copy");
    std::fs::copy(
        repo().join("examples/node/worker.mjs"),
        dir.join("worker.mjs"),
    )
    .expect("worker");
    copy
}

#[test]
fn the_shipped_ecosystem_file_reports_running_then_stopped_within_the_kill_timeout() {
    let Some(pm2) = Pm2::start() else {
        return;
    };
    pm2.run(&["start", "examples/node/ecosystem.config.js"]);

    let running = pm2.wait_row(APP, Duration::from_secs(20), running_with_jobs);
    let worker_pid = running.pid.expect("the worker's pid");
    assert!(
        cmdline(worker_pid).ends_with("examples/node/worker.mjs "),
        "the row's pid is the Node example worker: {}",
        cmdline(worker_pid)
    );
    // PM2 runs our binary (found on PATH by the file, not the crate's
    // folder), and watches the sidecar's pid, not the worker's: its memory
    // column and max_memory_restart see the sidecar only.
    let sidecar_pid = running
        .metadata
        .as_ref()
        .and_then(|m| m["sidecar_pid"].as_i64());
    let processes = pm2.processes();
    let [app] = processes.as_slice() else {
        panic!("one PM2 process, got {processes:?}");
    };
    assert_eq!(app["pm2_env"]["pm_exec_path"].as_str(), Some(SIDECAR));
    assert_eq!(app["pm2_env"]["status"].as_str(), Some("online"));
    assert_eq!(
        app["pid"].as_i64(),
        sidecar_pid,
        "PM2's pid is the sidecar's"
    );
    assert_ne!(sidecar_pid, Some(worker_pid));

    // docs/sidecar.md: a running app keeps its environment; `pm2 restart
    // --update-env` hands it the CLI's current one.
    let out = pm2
        .command(&["restart", APP, "--update-env"])
        .env("HP_WORKER_VERSION", "2.0.0")
        .output()
        .expect("pm2 restart");
    assert!(
        out.status.success(),
        "pm2 restart --update-env:\n{}",
        both(&out)
    );
    let running = pm2.wait_row(APP, Duration::from_secs(20), |r| {
        running_with_jobs(r) && r.version.as_deref() == Some("2.0.0") && r.pid != Some(worker_pid)
    });
    let worker_pid = running.pid.expect("the new worker's pid");

    let t0 = chrono::Utc::now();
    let started = Instant::now();
    pm2.run(&["stop", APP]);
    let took = started.elapsed();
    let stopped = pm2.wait_row(APP, Duration::from_secs(3), |r| {
        r.status.as_deref() != Some("running")
    });
    assert_eq!(stopped.status.as_deref(), Some("stopped"), "{stopped:?}");
    let written = stopped.last_heartbeat.expect("time") - t0;
    assert!(
        written.to_std().unwrap_or_default() < KILL_TIMEOUT,
        "final row {written:?} after pm2 stop: past PM2's kill timeout"
    );
    assert!(
        took < KILL_TIMEOUT + Duration::from_secs(1),
        "pm2 stop took {took:?}"
    );
    assert!(stopped.jobs_processed >= running.jobs_processed);
    assert!(!common::alive(worker_pid as i32), "the worker is gone");

    pm2.run(&["delete", APP]);
    assert!(pm2.processes().is_empty(), "deleted");
}

/// Operators steer a PM2 app through the sidecar: a restart is done in
/// place (PM2 counts no restart and keeps the sidecar's pid), a drained
/// app stays `online` with its row paused, and resume brings the worker back.
#[test]
fn a_restart_request_restarts_the_worker_in_place_and_pm2_sees_no_restart() {
    let Some(pm2) = Pm2::start() else {
        return;
    };
    pm2.run(&["start", "examples/node/ecosystem.config.js"]);
    let first = pm2.wait_row(APP, Duration::from_secs(20), running_with_jobs);
    let first_pid = first.pid.expect("the worker's pid");
    let store = SqliteStore::new(pm2.store());
    store
        .pool_set("default", Some(5), Some(0), None, Some("test"))
        .expect("pool set");
    let ask = |action: &str| {
        let mut request =
            heartbeat_sdk::sidecar::ControlRequest::workers(action, vec![APP.to_owned()]);
        request.force = true;
        request.confirm = Some("default".to_owned());
        let answer = store.control(&request).expect("control");
        assert!(answer.accepted(), "{action}: {answer:?}");
    };
    let pm2_view = || {
        let processes = pm2.processes();
        let [app] = processes.as_slice() else {
            panic!("one PM2 process, got {processes:?}");
        };
        (
            app["pid"].as_i64(),
            app["pm2_env"]["restart_time"].as_i64(),
            app["pm2_env"]["status"].as_str().map(str::to_owned),
        )
    };
    let before = pm2_view();

    ask("restart");
    let restarted = pm2.wait_row(APP, Duration::from_secs(20), |r| {
        running_with_jobs(r) && r.pid.is_some_and(|p| p != first_pid)
    });
    assert!(!common::alive(first_pid as i32), "the first worker is gone");
    assert_ne!(restarted.instance_id, first.instance_id);
    assert_eq!(
        pm2_view(),
        before,
        "PM2 saw no restart: same pid, same restart count, online"
    );

    ask("drain");
    let drained = pm2.wait_row(APP, Duration::from_secs(20), |r| {
        r.pid.is_none() && r.extra.get("state").and_then(Value::as_str) == Some("paused")
    });
    assert_eq!(
        drained.status.as_deref(),
        Some("running"),
        "alive and paused, not stopped"
    );
    assert_eq!(pm2_view(), before, "PM2 keeps it online");

    ask("resume");
    pm2.wait_row(APP, Duration::from_secs(20), |r| {
        running_with_jobs(r)
            && r.pid.is_some()
            && r.extra.get("state").and_then(Value::as_str) == Some("active")
    });
    assert_eq!(pm2_view(), before);
    pm2.run(&["delete", APP]);
}

#[test]
fn without_the_sidecar_on_path_pm2_start_fails_saying_so() {
    let Some(bin) = pm2_binary() else {
        return;
    };
    // Only node on PATH (pm2 is a node script): no heartbeat-sidecar, even
    // one installed next to node in /usr/bin.
    let only_node = tempfile::tempdir().expect("tmp");
    let node = which("node").expect("node on PATH");
    std::os::unix::fs::symlink(node, only_node.path().join("node")).expect("symlink");
    let pm2 = Pm2::with_path(bin, only_node.path().as_os_str().to_owned());

    let out = pm2.output(&["start", "examples/node/ecosystem.config.js"]);
    assert!(
        !out.status.success(),
        "pm2 start succeeded:\n{}",
        both(&out)
    );
    assert!(
        both(&out).contains("heartbeat-sidecar is not on PATH"),
        "{}",
        both(&out)
    );
    assert!(pm2.processes().is_empty(), "nothing started");
}

/// What a user meets in cluster mode without the file's guard: PM2 loads
/// the script into Node with require(), a native binary is a syntax error
/// there, and PM2 restarts it in a loop with empty logs. The sidecar never
/// runs: its worker (which would run even with a broken store) leaves no trace.
#[test]
fn in_cluster_mode_pm2_never_runs_the_binary() {
    let Some(pm2) = Pm2::start() else {
        return;
    };
    let marker = pm2.scratch.path().join("the-worker-ran");
    let config = pm2.scratch.path().join("cluster.config.js");
    let app = serde_json::json!({
        "name": "clustered", "script": SIDECAR, "interpreter": "none", "exec_mode": "cluster",
        "args": ["run", "--name", "clustered", "--", "touch", marker],
    });
    std::fs::write(&config, format!("module.exports = {{ apps: [{app}] }};")).expect("config");
    pm2.run(&["start", config.to_str().expect("utf8")]);

    let restarts = eventually(Duration::from_secs(30), "PM2 restarting the app", || {
        let p = pm2.processes().pop()?;
        let n = p["pm2_env"]["restart_time"].as_u64()?;
        (n >= 3).then_some(n)
    });
    assert_eq!(
        pm2.processes()[0]["pm2_env"]["exec_mode"].as_str(),
        Some("cluster_mode")
    );
    assert!(!marker.exists(), "the worker ran after {restarts} restarts");
    assert!(pm2.row("clustered").is_none(), "a row was written");
    assert!(
        !pm2.logs().contains("heartbeat-sidecar"),
        "the sidecar logged:\n{}",
        pm2.logs()
    );
}

#[test]
fn the_shipped_file_set_to_cluster_mode_refuses_with_a_clear_error() {
    let Some(pm2) = Pm2::start() else {
        return;
    };
    let copy = edited_copy(
        pm2.scratch.path(),
        &[("exec_mode: 'fork'", "exec_mode: 'cluster'")],
    );
    let out = pm2.output(&["start", copy.to_str().expect("utf8")]);
    assert!(
        !out.status.success(),
        "pm2 start succeeded:\n{}",
        both(&out)
    );
    let said = both(&out);
    assert!(
        said.contains("exec_mode 'cluster' cannot run heartbeat-sidecar")
            && said.contains("use exec_mode 'fork' with instances: N and '--instance-suffix'"),
        "{said}"
    );
    assert!(pm2.processes().is_empty(), "nothing started");
}

/// The file's comment: add `instances: N` and '--instance-suffix' after 'run'.
#[test]
fn instances_in_fork_mode_with_the_instance_suffix_report_one_row_each() {
    let Some(pm2) = Pm2::start() else {
        return;
    };
    let copy = edited_copy(
        pm2.scratch.path(),
        &[
            ("exec_mode: 'fork',", "exec_mode: 'fork', instances: 2,"),
            ("'run', '--name'", "'run', '--instance-suffix', '--name'"),
        ],
    );
    pm2.run(&["start", copy.to_str().expect("utf8")]);

    let first = pm2.wait_row(
        "roundtable-worker-0",
        Duration::from_secs(20),
        running_with_jobs,
    );
    let second = pm2.wait_row(
        "roundtable-worker-1",
        Duration::from_secs(20),
        running_with_jobs,
    );
    assert_ne!(first.pid, second.pid);
    let modes: Vec<_> = pm2
        .processes()
        .iter()
        .map(|p| {
            p["pm2_env"]["exec_mode"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(modes, ["fork_mode", "fork_mode"]);
    assert!(pm2.row(APP).is_none(), "no unsuffixed row");

    pm2.run(&["delete", APP]);
    for name in ["roundtable-worker-0", "roundtable-worker-1"] {
        let last = pm2.wait_row(name, Duration::from_secs(3), |r| {
            r.status.as_deref() != Some("running")
        });
        assert_eq!(last.status.as_deref(), Some("stopped"), "{last:?}");
    }
}

/// The complaint this answers: a worker that exits 1 every 1.5 s under PM2
/// read `running` in every poll, because PM2 restarts it within a second and
/// the new instance's row overwrote the crash. Now the store counts the
/// restarts and the row reads flapping, and `status` exits 1.
#[test]
fn a_crash_loop_under_pm2_autorestart_reads_flapping_with_the_stores_restart_count() {
    let Some(pm2) = Pm2::start() else {
        return;
    };
    let copy = edited_copy(
        pm2.scratch.path(),
        &[(
            "'--', 'node', path.join(__dirname, 'worker.mjs'),",
            "'--', 'sh', '-c', 'sleep 1.5; echo \"ERROR: lost the database\" >&2; exit 1',",
        )],
    );
    pm2.run(&["start", copy.to_str().expect("utf8")]);
    let looping = pm2.wait_row(APP, Duration::from_secs(40), |r| {
        r.restarts.unwrap_or(0) >= 4 && r.status.as_deref() == Some("running")
    });
    assert_eq!(
        looping.health(chrono::Utc::now()),
        heartbeat_sdk::Health::Flapping,
        "{looping:?}"
    );
    assert_eq!(looping.last_exit_status.as_deref(), Some("crashed"));
    assert_eq!(looping.last_exit_code, Some(1));
    assert!(
        looping
            .last_exit_error
            .as_deref()
            .is_some_and(|e| e.contains("ERROR: lost the database")),
        "{looping:?}"
    );
    let pm2_restarts = pm2.processes()[0]["pm2_env"]["restart_time"]
        .as_i64()
        .unwrap_or(0);
    assert!(pm2_restarts >= 4, "PM2 restarted it too: {pm2_restarts}");
    let out = common::sidecar()
        .env("HP_STORE", pm2.store())
        .args(["status"])
        .output()
        .expect("status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("flapping"), "{text}");
    pm2.run(&["delete", APP]);
}

/// With `HP_ALERT_WEBHOOKS` set the shipped file also runs the alerts
/// watcher: a worker killed with SIGKILL reaches a real receiver as a crash,
/// and `pm2 stop` (SIGINT) ends the watcher letting go of its webhook.
#[test]
fn with_a_webhook_set_the_shipped_file_also_runs_the_alerts_watcher() {
    let Some(pm2) = Pm2::start() else {
        return;
    };
    let receiver = hp_heartbeat_tests::receiver::Receiver::start();
    let out = pm2
        .command(&["start", "examples/node/ecosystem.config.js"])
        .env(
            "HP_ALERT_WEBHOOKS",
            receiver.url("/hooks/not-a-real-secret"),
        )
        .output()
        .expect("pm2 start");
    assert!(out.status.success(), "{}", both(&out));
    let names: Vec<String> = pm2
        .processes()
        .iter()
        .map(|p| p["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(names, [APP, "hp-alerts"], "{}", pm2.logs());
    let holder = || {
        let conn = rusqlite::Connection::open(pm2.store()).ok()?;
        conn.query_row(
            "select holder from hp_alert_cursor where holder is not null",
            [],
            |r| r.get::<_, String>(0),
        )
        .ok()
    };
    poll_until(Duration::from_secs(30), holder)
        .unwrap_or_else(|| panic!("the watcher never held its webhook:\n{}", pm2.logs()));

    let running = pm2.wait_row(APP, Duration::from_secs(30), running_with_jobs);
    let worker = running.pid.expect("worker pid");
    // PM2 gave the secret to every app of the file; the sidecar keeps it
    // from its worker.
    let environ = std::fs::read(format!("/proc/{worker}/environ")).expect("environ");
    assert!(
        !String::from_utf8_lossy(&environ).contains("HP_ALERT_WEBHOOKS"),
        "the worker got the webhook URLs"
    );
    common::kill(worker as i32, libc::SIGKILL);
    let crash = poll_until(Duration::from_secs(30), || {
        receiver
            .received()
            .into_iter()
            .find(|r| r.json()["kind"] == "crashed")
    })
    .unwrap_or_else(|| panic!("no crash reached the webhook:\n{}", pm2.logs()));
    let body = crash.json();
    assert_eq!(body["worker_name"], APP, "{body}");
    assert_eq!(body["detail"]["exit_signal"], libc::SIGKILL, "{body}");

    pm2.run(&["stop", "hp-alerts"]);
    poll_until(Duration::from_secs(10), || holder().is_none().then_some(())).unwrap_or_else(|| {
        panic!(
            "the watcher kept its webhook after pm2 stop:\n{}",
            pm2.logs()
        )
    });
    assert!(!pm2.logs().contains("not-a-real-secret"), "{}", pm2.logs());
    pm2.run(&["delete", "all"]);
}

/// docs/development.md's PM2 setup line is the one `.ci/run` runs, so the
/// place this test looks for PM2 is where both put it.
#[test]
fn the_documented_pm2_setup_line_is_the_one_ci_runs() {
    let docs = std::fs::read_to_string(repo().join("docs/development.md")).expect("docs");
    let ci = std::fs::read_to_string(repo().join(".ci/run")).expect(".ci/run");
    let line = docs
        .lines()
        .find(|l| l.starts_with("npm install") && l.contains("pm2@"))
        .expect("a PM2 setup line in docs/development.md");
    assert!(
        ci.lines().any(|l| l.trim_start().ends_with(line)),
        ".ci/run does not run {line:?}"
    );
    assert!(line.contains("~/.cache/hp-heartbeat/pm2 "), "{line}");
}

/// Says a test was skipped on the real stderr: `eprintln!` inside a test is
/// captured by the harness and shown only when the test fails, so a skip
/// would pass in silence.
fn loud_skip(what: &str) {
    hp_heartbeat_tests::skip::loudly(what);
}
