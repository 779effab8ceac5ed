//! The sidecar around real child processes, with real signals.

mod common;

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use hp_heartbeat_tests::eventually::eventually;

#[tokio::test(flavor = "multi_thread")]
async fn exit_0_is_stopped_and_the_sidecar_exits_0() {
    let server = postgrest().await;
    let child = quiet(&mut sidecar_to(&server))
        .args([
            "run",
            "--name",
            "exit-zero",
            "--",
            "sh",
            "-c",
            "sleep 0.3; exit 0",
        ])
        .spawn()
        .expect("spawn");
    let (status, _) = wait_exit(child, Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0));
    let rows = rows(&server, "exit-zero").await;
    assert_eq!(
        rows.first().map(|r| r["status"].clone()),
        Some("running".into()),
        "a first beat at start"
    );
    let last = rows.last().expect("final row");
    assert_eq!(last["status"], "stopped");
    assert_eq!(last["exit_code"], 0);
    assert_eq!(
        last["reporter"]
            .as_str()
            .map(|r| r.starts_with("heartbeat-sidecar/")),
        Some(true)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_3_is_crashed_with_code_and_stderr_and_the_sidecar_exits_3() {
    let server = postgrest().await;
    let child = quiet(&mut sidecar_to(&server))
        .args([
            "run",
            "--name",
            "exit-three",
            "--",
            "sh",
            "-c",
            "echo 'Error: connection refused' >&2; exit 3",
        ])
        .spawn()
        .expect("spawn");
    let (status, child) = wait_exit(child, Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(3));
    let last = last_row(&server, "exit-three").await;
    assert_eq!(last["status"], "crashed");
    assert_eq!(last["exit_code"], 3);
    assert_eq!(last["last_error"], "Error: connection refused");
    let out = child.wait_with_output().expect("output");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Error: connection refused"),
        "stderr passes through"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn child_killed_by_sigkill_is_crashed_and_the_sidecar_ends_by_sigkill() {
    let server = postgrest().await;
    let child = quiet(&mut sidecar_to(&server))
        .args(["run", "--name", "sigkilled", "--", "sh", "-c", "kill -9 $$"])
        .spawn()
        .expect("spawn");
    let (status, _) = wait_exit(child, Duration::from_secs(10)).await;
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    let last = last_row(&server, "sigkilled").await;
    assert_eq!(last["status"], "crashed");
    assert_eq!(last["exit_signal"], 9);
    assert_eq!(last["last_error"], "killed by signal SIGKILL");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_to_the_sidecar_reaches_the_child_which_stops_and_reports_its_own_pid() {
    let server = postgrest().await;
    let child = quiet(&mut sidecar_to(&server))
        .args(["run", "--name", "termed", "--", "sh", "-c", "exec sleep 30"])
        .spawn()
        .expect("spawn");
    let sidecar_pid = child.id() as i32;
    let running = wait_row(&server, "termed", Duration::from_secs(10), |r| {
        r["status"] == "running"
    })
    .await
    .expect("running");
    let child_pid = running["pid"].as_i64().expect("pid") as i32;
    assert_ne!(
        child_pid, sidecar_pid,
        "the row's pid is the worker's, not the sidecar's"
    );
    assert_eq!(running["metadata"]["sidecar_pid"], sidecar_pid);
    assert!(
        std::fs::read_to_string(format!("/proc/{child_pid}/cmdline"))
            .unwrap_or_default()
            .starts_with("sleep")
    );
    let t0 = Instant::now();
    kill(sidecar_pid, libc::SIGTERM);
    let (status, _) = wait_exit(child, Duration::from_secs(5)).await;
    assert!(
        t0.elapsed() < Duration::from_millis(1600),
        "within PM2's kill timeout: {:?}",
        t0.elapsed()
    );
    assert_eq!(
        status.signal(),
        Some(libc::SIGTERM),
        "ends as the worker ended"
    );
    let last = last_row(&server, "termed").await;
    assert_eq!(last["status"], "stopped");
    assert_eq!(last["exit_signal"], 15);
    assert!(!alive(child_pid));
}

/// systemd's control-group kill signals the sidecar and the worker at once.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_to_the_whole_process_group_is_stopped_not_crashed() {
    let server = postgrest().await;
    let child = quiet(&mut sidecar_to(&server))
        .args([
            "run",
            "--name",
            "group-termed",
            "--",
            "sh",
            "-c",
            "exec sleep 30",
        ])
        .process_group(0)
        .spawn()
        .expect("spawn");
    let group = child.id() as i32;
    wait_row(&server, "group-termed", Duration::from_secs(10), |r| {
        r["status"] == "running"
    })
    .await
    .expect("running");
    kill(-group, libc::SIGTERM);
    let (status, _) = wait_exit(child, Duration::from_secs(5)).await;
    assert_eq!(status.signal(), Some(libc::SIGTERM));
    assert_eq!(last_row(&server, "group-termed").await["status"], "stopped");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_that_handles_sigterm_and_exits_0_is_stopped() {
    let server = postgrest().await;
    let script = "trap 'echo bye; exit 0' TERM; echo ready; while :; do sleep 0.05; done";
    let child = quiet(&mut sidecar_to(&server))
        .args(["run", "--name", "graceful", "--", "sh", "-c", script])
        .spawn()
        .expect("spawn");
    wait_row(&server, "graceful", Duration::from_secs(10), |r| {
        r["status"] == "running"
    })
    .await
    .expect("running");
    kill(child.id() as i32, libc::SIGTERM);
    let (status, child) = wait_exit(child, Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0));
    assert_eq!(last_row(&server, "graceful").await["status"], "stopped");
    let out = child.wait_with_output().expect("out");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ready\nbye\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_of_the_sidecar_takes_the_worker_down_too() {
    let server = postgrest().await;
    let child = quiet(&mut sidecar_to(&server))
        .args(["run", "--name", "orphan", "--", "sh", "-c", "exec sleep 30"])
        .spawn()
        .expect("spawn");
    let running = wait_row(&server, "orphan", Duration::from_secs(10), |r| {
        r["status"] == "running"
    })
    .await
    .expect("running");
    let child_pid = running["pid"].as_i64().expect("pid") as i32;
    kill(child.id() as i32, libc::SIGKILL);
    let _ = wait_exit(child, Duration::from_secs(5)).await;
    eventually(
        Duration::from_secs(5),
        "the worker dies with its sidecar",
        || (!alive(child_pid)).then_some(()),
    );
}

/// The exact output of `script` run directly by sh.
fn direct_output(script: &str) -> (Vec<u8>, Vec<u8>) {
    let out = std::process::Command::new("sh")
        .args(["-c", script])
        .stdin(Stdio::null())
        .output()
        .expect("sh");
    (out.stdout, out.stderr)
}

#[tokio::test(flavor = "multi_thread")]
async fn patterns_count_exactly_on_100_000_lines_and_output_is_byte_identical() {
    let server = postgrest().await;
    let script = r#"awk 'BEGIN { for (i = 1; i <= 100000; i++) { if (i % 10 == 0) print "ERROR job " i " failed" > "/dev/stderr"; else if (i % 3 == 0) print "job " i " done"; else print "progress " i } }'"#;
    let mut cmd = sidecar_to(&server);
    // The sidecar's own lines share stderr; keep them out of the comparison.
    // (With errors on stderr and jobs on stdout, two pipes, the sidecar may
    // see a long error streak and warn about the breaker: it cannot know how
    // the two streams interleaved.)
    cmd.env("HP_LOG", "error");
    cmd.args([
        "run",
        "--name",
        "counted",
        "--job-pattern",
        "^job .* done$",
        "--error-pattern",
        "^ERROR",
        "--error-pattern",
        "^FATAL",
        "--",
        "sh",
        "-c",
        script,
    ]);
    let out = output_within(cmd, Duration::from_secs(60)).await;
    assert_eq!(out.status.code(), Some(0));
    let (stdout, stderr) = direct_output(script);
    assert!(
        out.stdout == stdout,
        "stdout differs ({} vs {} bytes)",
        out.stdout.len(),
        stdout.len()
    );
    assert!(
        out.stderr == stderr,
        "stderr differs ({} vs {} bytes): {:?}",
        out.stderr.len(),
        stderr.len(),
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| !l.starts_with("ERROR job"))
            .collect::<Vec<_>>()
    );
    let last = last_row(&server, "counted").await;
    // i % 10 != 0 and i % 3 == 0: 33,333 multiples of 3, minus the 3,333 multiples of 30.
    assert_eq!(last["jobs_processed"], 30_000);
    assert_eq!(last["error_count"], 10_000);
    assert_eq!(last["last_error"], "ERROR job 100000 failed");
}

#[tokio::test(flavor = "multi_thread")]
async fn output_passes_through_with_invalid_utf8_and_no_trailing_newline() {
    let server = postgrest().await;
    let script =
        r"printf 'first\nbad \377\376 bytes done\n\303\050 done'; printf 'err \377 no newline' >&2";
    let child = quiet(&mut sidecar_to(&server))
        .env("HP_LOG", "warn")
        .args([
            "run",
            "--name",
            "bytes",
            "--job-pattern",
            "done",
            "--",
            "sh",
            "-c",
            script,
        ])
        .spawn()
        .expect("spawn");
    let (status, child) = wait_exit(child, Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0));
    let out = child.wait_with_output().expect("output");
    let (stdout, stderr) = direct_output(script);
    assert_eq!(out.stdout, stdout);
    assert_eq!(out.stderr, stderr);
    assert_eq!(
        last_row(&server, "bytes").await["jobs_processed"],
        2,
        "the last line without a newline counts"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_socket_protocol_counts_and_malformed_lines_are_ignored_with_a_warning() {
    if !node_available() {
        return;
    }
    let server = postgrest().await;
    let worker = r#"
const net = require('net');
const hb = net.createConnection(process.env.HP_SIDECAR_SOCKET, () => {
  hb.write('job\njob\nerror disk full\nmeta queue "orders"\nbogus line\nmeta broken {\n\n');
  hb.write('j'); hb.write('ob\n');
  hb.end(() => setTimeout(() => process.exit(0), 200));
});
"#;
    let child = quiet(&mut sidecar_to(&server))
        .args(["run", "--name", "socketed", "--", "node", "-e", worker])
        .spawn()
        .expect("spawn");
    let (status, child) = wait_exit(child, Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0));
    let last = last_row(&server, "socketed").await;
    assert_eq!(last["jobs_processed"], 3);
    assert_eq!(last["error_count"], 1);
    assert_eq!(last["last_error"], "disk full");
    assert_eq!(last["metadata"]["queue"], "orders");
    let err = String::from_utf8_lossy(&child.wait_with_output().expect("out").stderr).into_owned();
    assert!(
        err.contains("ignored line") && err.contains("bogus line"),
        "{err}"
    );
    assert!(err.contains("ignored `meta` line"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grandchilds_memory_is_counted() {
    if !node_available() {
        return;
    }
    let server = postgrest().await;
    // sh (tiny) starts node, which holds 150 MB, and waits for it.
    let script =
        "node -e 'const b = Buffer.alloc(150e6, 1); setTimeout(() => b.length, 4000)' & wait";
    let child = quiet(&mut sidecar_to(&server))
        .args(["run", "--name", "tree", "--", "sh", "-c", script])
        .spawn()
        .expect("spawn");
    let row = wait_row(&server, "tree", Duration::from_secs(10), |r| {
        r["memory_rss_bytes"].as_u64().unwrap_or(0) > 150_000_000
    })
    .await;
    let _ = wait_exit(child, Duration::from_secs(15)).await;
    assert!(
        row.is_some(),
        "the tree's memory never passed 150 MB: {:?}",
        rows(&server, "tree")
            .await
            .iter()
            .map(|r| r["memory_rss_bytes"].clone())
            .collect::<Vec<_>>()
    );
}

/// A reporting mistake never keeps the work from running: under PM2's
/// autorestart or systemd's Restart= an exit 2 would be a restart loop. The
/// worker runs, its exit code passes through, and the error is said loudly;
/// `--strict` refuses to start instead.
#[tokio::test(flavor = "multi_thread")]
async fn a_reporting_mistake_is_logged_and_the_worker_runs_anyway_unless_strict() {
    let dir = tempfile::tempdir().expect("tmp");
    let marker = dir.path().join("ran");
    let script = format!("touch {}; exit 7", marker.display());
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec!["--name", "bad name"],
            vec![],
            "worker name \"bad name\" is invalid",
        ),
        (
            vec!["--name", "ok", "--job-pattern", "("],
            vec![],
            "--job-pattern \"(\"",
        ),
        (
            vec!["--name", "ok", "--metadata", "novalue"],
            vec![],
            "KEY=VALUE",
        ),
        (
            vec!["--name", "ok", "--instance-suffix"],
            vec![],
            "NODE_APP_INSTANCE",
        ),
        (
            vec!["--name", "ok"],
            vec![("SUPABASE_URL", "ftp://example.invalid")],
            "is not a valid URL",
        ),
        (
            vec!["--name", "ok"],
            vec![("SUPABASE_SECRET_KEY", SECRET_KEY)],
            "SUPABASE_URL is not",
        ),
    ];
    for (flags, env, says) in cases {
        for strict in [false, true] {
            let _ = std::fs::remove_file(&marker);
            let mut cmd = sidecar();
            cmd.env("HP_STORE", dir.path().join("s.db"))
                .arg("run")
                .args(&flags)
                .args(strict.then_some("--strict"))
                .args(["--", "sh", "-c", &script]);
            for (k, v) in &env {
                cmd.env(k, v);
            }
            if env
                .iter()
                .any(|(k, _)| *k == "SUPABASE_URL" || *k == "SUPABASE_SECRET_KEY")
            {
                cmd.env_remove("HP_STORE");
            }
            let out = cmd.output().expect("run");
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(err.contains(says), "{flags:?} {env:?}: {err}");
            assert!(!err.contains("FAKE"), "the key never appears: {err}");
            if strict {
                assert_eq!(out.status.code(), Some(2), "{flags:?} --strict: {err}");
                assert!(!marker.exists(), "--strict, yet the worker ran: {flags:?}");
            } else {
                assert_eq!(
                    out.status.code(),
                    Some(7),
                    "the worker's own code: {flags:?} {err}"
                );
                assert!(marker.exists(), "the worker did not run: {flags:?}");
                assert!(err.contains("NOT REPORTING"), "{err}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_that_cannot_start_is_a_crashed_row_and_exit_127() {
    let server = postgrest().await;
    let out = quiet(&mut sidecar_to(&server))
        .args(["run", "--name", "missing", "--", "/no/such/program"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(127));
    let last = last_row(&server, "missing").await;
    assert_eq!(last["status"], "crashed");
    assert!(
        last["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("cannot start"),
        "{last}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn instance_suffix_names_each_pm2_instance() {
    let server = postgrest().await;
    let out = quiet(&mut sidecar_to(&server))
        .env("NODE_APP_INSTANCE", "2")
        .args([
            "run",
            "--name",
            "clustered",
            "--instance-suffix",
            "--",
            "true",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(last_row(&server, "clustered-2").await["status"], "stopped");
}

#[tokio::test(flavor = "multi_thread")]
async fn stdin_env_and_working_directory_pass_through() {
    let server = postgrest().await;
    let dir = tempfile::tempdir().expect("tmp");
    let mut child = quiet(&mut sidecar_to(&server))
        .current_dir(dir.path())
        .env("MY_SETTING", "forty-two")
        .args([
            "run",
            "--name",
            "passthrough",
            "--",
            "sh",
            "-c",
            "read line; echo \"$line $MY_SETTING $(pwd) ${HP_SIDECAR_SOCKET:+socket}\"",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"hello\n")
        .expect("write");
    let (status, child) = wait_exit(child, Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0));
    let out = String::from_utf8_lossy(&child.wait_with_output().expect("out").stdout).into_owned();
    let cwd = dir.path().canonicalize().expect("canon");
    assert_eq!(out, format!("hello forty-two {} socket\n", cwd.display()));
}

/// The first beat goes out at once, before the child has loaded: it says the
/// pid and no memory rather than a misleading 16 KiB; a second beat two
/// seconds later carries the real figure, long before the 30 s interval.
#[tokio::test(flavor = "multi_thread")]
async fn the_first_beat_has_no_memory_yet_and_a_settle_beat_brings_it() {
    if !node_available() {
        return;
    }
    let server = postgrest().await;
    let child = quiet(&mut sidecar_to(&server))
        .env("HP_HEARTBEAT_INTERVAL_SECS", "30")
        .args([
            "run",
            "--name",
            "settling",
            "--",
            "node",
            "-e",
            "setTimeout(() => {}, 30000)",
        ])
        .spawn()
        .expect("spawn");
    let sidecar_pid = child.id() as i32;
    let settled = wait_row(&server, "settling", Duration::from_secs(10), |r| {
        r["memory_rss_bytes"].as_u64().unwrap_or(0) > 10 << 20
    })
    .await;
    let first = rows(&server, "settling").await.remove(0);
    kill(sidecar_pid, libc::SIGTERM);
    let _ = wait_exit(child, Duration::from_secs(5)).await;
    assert!(first["pid"].is_number(), "{first}");
    assert!(first["memory_rss_bytes"].is_null(), "{first}");
    assert!(
        settled.is_some(),
        "no row with node's real memory within 10 s"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_final_row_says_no_pid_memory_or_cpu_for_a_process_that_is_gone() {
    let server = postgrest().await;
    let out = quiet(&mut sidecar_to(&server))
        .args(["run", "--name", "gone", "--", "sh", "-c", "exit 4"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(4));
    let last = last_row(&server, "gone").await;
    assert_eq!(last["status"], "crashed");
    assert_eq!(last["exit_code"], 4);
    for key in ["pid", "memory_rss_bytes", "cpu_percent"] {
        assert!(last[key].is_null(), "{key} in {last}");
    }
}

/// Two reporters under one name overwrite each other's row: the second says so.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_live_reporter_under_the_same_name_is_warned() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("dup.db");
    let mut first = sidecar();
    first
        .env("HP_STORE", &db)
        .args(["run", "--name", "twin", "--", "sleep", "30"]);
    let first = quiet(&mut first).spawn().expect("first");
    wait_local_row(&db, "twin");
    let mut second = sidecar();
    second
        .env("HP_STORE", &db)
        .args(["run", "--name", "twin", "--", "true"]);
    let out = output_within(second, Duration::from_secs(10)).await;
    kill(first.id() as i32, libc::SIGTERM);
    let _ = wait_exit(first, Duration::from_secs(5)).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another instance already reports as \"twin\"")
            && err.contains("--instance-suffix"),
        "{err}"
    );
}

/// A worker killed before its final row left a `running` row behind: its
/// restart is the same worker coming back, not a duplicate.
#[tokio::test(flavor = "multi_thread")]
async fn a_restart_after_a_hard_kill_is_not_taken_for_a_duplicate() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("restart.db");
    let mut first = sidecar();
    first
        .env("HP_STORE", &db)
        .args(["run", "--name", "phoenix", "--", "sleep", "30"]);
    let first = quiet(&mut first).spawn().expect("first");
    let row = wait_local_row(&db, "phoenix");
    let child_pid = row.pid.expect("pid") as i32;
    kill(first.id() as i32, libc::SIGKILL);
    let _ = wait_exit(first, Duration::from_secs(5)).await;
    eventually(
        Duration::from_secs(5),
        "the worker dies with its sidecar",
        || (!alive(child_pid)).then_some(()),
    );
    let mut again = sidecar();
    again
        .env("HP_STORE", &db)
        .args(["run", "--name", "phoenix", "--", "true"]);
    let out = output_within(again, Duration::from_secs(10)).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("another instance"), "{err}");
}

/// Under systemd with `StateDirectory=hp-heartbeat`, the store is
/// `$STATE_DIRECTORY/heartbeat.db`, and `status` there finds it.
#[tokio::test(flavor = "multi_thread")]
async fn under_systemd_the_store_is_in_the_state_directory() {
    let state = tempfile::tempdir().expect("tmp");
    let home = tempfile::tempdir().expect("tmp");
    let mut cmd = sidecar();
    cmd.env("STATE_DIRECTORY", state.path())
        .env("HOME", home.path())
        .env_remove("XDG_STATE_HOME")
        .args(["run", "--name", "unit-worker", "--", "true"]);
    let out = output_within(cmd, Duration::from_secs(10)).await;
    assert_eq!(out.status.code(), Some(0));
    let db = state.path().join("heartbeat.db");
    assert!(db.exists(), "no store in $STATE_DIRECTORY");
    assert_eq!(
        wait_local_row(&db, "unit-worker").status.as_deref(),
        Some("stopped")
    );
    let mut status = sidecar();
    status
        .env("STATE_DIRECTORY", state.path())
        .env("HOME", home.path())
        .env_remove("XDG_STATE_HOME")
        .args(["status", "--json"]);
    let out = output_within(status, Duration::from_secs(10)).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("unit-worker"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An explicit --url wins over HP_STORE from the environment.
#[tokio::test(flavor = "multi_thread")]
async fn a_url_flag_wins_over_hp_store_in_the_environment() {
    let server = postgrest().await;
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("not-here.db");
    let out = quiet(&mut sidecar())
        .env("HP_STORE", &db)
        .env("SUPABASE_SECRET_KEY", SECRET_KEY)
        .args([
            "run",
            "--name",
            "flagged",
            "--url",
            &server.uri(),
            "--",
            "true",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(last_row(&server, "flagged").await["status"], "stopped");
    assert!(!db.exists(), "HP_STORE was used despite --url");
}

/// PM2's `max_memory_restart` sees only the sidecar; `--max-memory` watches
/// the worker's whole tree, stops it gracefully, says why, and exits 1 so the
/// supervisor restarts it.
#[tokio::test(flavor = "multi_thread")]
async fn max_memory_stops_the_worker_gracefully_and_says_why() {
    if !node_available() {
        return;
    }
    let server = postgrest().await;
    let worker = "const b = Buffer.alloc(120e6, 1); process.on('SIGTERM', () => { console.log('bye', b.length); process.exit(0); }); setInterval(() => {}, 1000);";
    let mut cmd = sidecar_to(&server);
    cmd.args([
        "run",
        "--name",
        "hungry",
        "--max-memory",
        "60M",
        "--",
        "node",
        "-e",
        worker,
    ]);
    let out = output_within(cmd, Duration::from_secs(30)).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("bye"),
        "stopped gracefully, with SIGTERM"
    );
    let last = last_row(&server, "hungry").await;
    assert_eq!(last["status"], "crashed");
    let why = last["last_error"].as_str().unwrap_or_default();
    assert!(why.contains("--max-memory 60.0 MiB"), "{why}");
}

/// The pids of `pid`'s children (every thread's).
fn children_of(pid: i32) -> Vec<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// What the worker started (a helper, what `sh -c` or `npm run` spawns)
/// goes too when the sidecar is SIGKILLed: no orphan keeps running unreported.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_of_the_sidecar_ends_the_workers_whole_process_group() {
    let server = postgrest().await;
    let child = quiet(&mut sidecar_to(&server))
        .args([
            "run",
            "--name",
            "grandparent",
            "--",
            "sh",
            "-c",
            "sleep 300 & sleep 300 & wait",
        ])
        .spawn()
        .expect("spawn");
    let running = wait_row(&server, "grandparent", Duration::from_secs(10), |r| {
        r["status"] == "running"
    })
    .await
    .expect("running");
    let worker = running["pid"].as_i64().expect("pid") as i32;
    let grandchildren = eventually(Duration::from_secs(5), "the worker's two sleeps", || {
        let c = children_of(worker);
        (c.len() == 2).then_some(c)
    });
    kill(child.id() as i32, libc::SIGKILL);
    let _ = wait_exit(child, Duration::from_secs(5)).await;
    for pid in grandchildren.iter().chain([&worker]) {
        eventually(Duration::from_secs(5), &format!("{pid} ends"), || {
            (!alive(*pid)).then_some(())
        });
    }
}

/// At a normal end too, what the worker left running is ended.
#[tokio::test(flavor = "multi_thread")]
async fn what_a_worker_leaves_running_ends_with_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let pidfile = dir.path().join("left.pid");
    let script = format!("sleep 300 & echo $! > {}; exit 0", pidfile.display());
    let server = postgrest().await;
    let out = quiet(&mut sidecar_to(&server))
        .args(["run", "--name", "leaver", "--", "sh", "-c", &script])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0));
    let left: i32 = std::fs::read_to_string(&pidfile)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    eventually(Duration::from_secs(5), "the leftover sleep ends", || {
        (!alive(left)).then_some(())
    });
}

fn threads_of(pid: i32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Another process holding the local store's lock: beats wait one at a time
/// (no thread parked per beat) and the warning says it is a lock.
#[tokio::test(flavor = "multi_thread")]
async fn a_locked_local_store_parks_no_thread_per_beat() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("locked.db");
    let mut cmd = sidecar();
    cmd.env("HP_STORE", &db)
        .env("HP_HEARTBEAT_INTERVAL_SECS", "1")
        .args(["run", "--name", "patient", "--", "sleep", "30"]);
    let child = quiet(&mut cmd).spawn().expect("spawn");
    let pid = child.id() as i32;
    wait_local_row(&db, "patient");
    let before = threads_of(pid);
    let holder = {
        let db = db.clone();
        std::thread::spawn(move || {
            let conn = rusqlite::Connection::open(&db).expect("open");
            conn.execute_batch("begin exclusive").expect("lock");
            std::thread::sleep(Duration::from_secs(8));
            conn.execute_batch("commit").expect("unlock");
        })
    };
    let mut most = before;
    for _ in 0..16 {
        std::thread::sleep(Duration::from_millis(500));
        most = most.max(threads_of(pid));
    }
    holder.join().expect("holder");
    kill(pid, libc::SIGTERM);
    let (_, child) = wait_exit(child, Duration::from_secs(10)).await;
    let err = String::from_utf8_lossy(&child.wait_with_output().expect("out").stderr).into_owned();
    assert!(
        most <= before + 1,
        "threads grew from {before} to {most} while the store was locked"
    );
    assert!(err.contains("locked by another process"), "{err}");
    assert!(
        !err.contains("network path"),
        "a lock is not a network problem: {err}"
    );
    assert_eq!(
        wait_local_row(&db, "patient").status.as_deref(),
        Some("stopped"),
        "the final row once the lock was gone"
    );
}

/// A key whose role may not write the table is said at start, as `check`
/// says it, not only when someone runs `check`.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_of_another_role_is_warned_about_at_start() {
    let server = postgrest().await;
    // {"alg":"HS256","typ":"JWT"}.{"role":"authenticated"}, signature obviously fake.
    let key =
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJyb2xlIjoiYXV0aGVudGljYXRlZCJ9.FAKE_signature";
    let mut cmd = sidecar_to(&server);
    cmd.env("SUPABASE_SECRET_KEY", key)
        .args(["run", "--name", "odd-key", "--", "true"]);
    let out = output_within(cmd, Duration::from_secs(10)).await;
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("the API key's role is \"authenticated\""),
        "{said}"
    );
    assert!(
        !said.contains("FAKE_signature"),
        "the key never shows: {said}"
    );
    assert_eq!(out.status.code(), Some(0), "the worker ran: {said}");
}

/// A worker (`sh`) that starts a helper in its group, then, on SIGTERM,
/// waits for the helper to say how its own SIGTERM found the worker: alive
/// (the signal reached the whole group at once) or gone (it came after the
/// worker ended). `$MARK.ready` once the helper traps, `$MARK.worker` (the
/// worker's pid) once the worker got its SIGTERM, `$MARK.helper` the answer.
const GROUP_SCRIPT: &str = r#"w=$$
( trap 'if kill -0 "$w" 2>/dev/null; then s=alive; else s=gone; fi; echo "$s" > "$MARK.tmp"; mv "$MARK.tmp" "$MARK.helper"; exit 0' TERM
  : > "$MARK.ready"
  while :; do sleep 0.05; done ) &
trap 'echo "$w" > "$MARK.worker"; while [ ! -e "$MARK.helper" ]; do sleep 0.05; done; exit 0' TERM
while :; do sleep 0.05; done"#;

fn group_worker(
    dir: &std::path::Path,
    extra: &[&str],
) -> (std::process::Child, std::path::PathBuf) {
    let mark = dir.join("mark");
    let mut cmd = sidecar();
    cmd.env("HP_STORE", dir.join("group.db"))
        .env("HP_LOG", "warn")
        .env("MARK", &mark)
        .args(["run", "--name", "group"])
        .args(extra)
        .args(["--", "sh", "-c", GROUP_SCRIPT]);
    let child = quiet(&mut cmd).spawn().expect("spawn");
    let ready = mark.with_extension("ready");
    eventually(Duration::from_secs(10), "the helper traps SIGTERM", || {
        ready.exists().then_some(())
    });
    (child, mark)
}

fn read_mark(mark: &std::path::Path, ext: &str) -> Option<String> {
    std::fs::read_to_string(mark.with_extension(ext))
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// `--signal-group` (`docker stop` as tini's -g): the SIGTERM the sidecar
/// gets reaches what the worker started while the worker still runs.
#[test]
fn with_signal_group_sigterm_reaches_the_workers_whole_group_at_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let (child, mark) = group_worker(dir.path(), &["--signal-group"]);
    // Killed if the test fails; its guard then ends the worker's group.
    let mut fleet = Fleet(vec![child]);
    let child = &mut fleet.0[0];
    kill(child.id() as i32, libc::SIGTERM);
    // Without the group the worker would wait for the helper forever.
    let said = eventually(Duration::from_secs(20), "the helper answers", || {
        read_mark(&mark, "helper")
    });
    assert_eq!(said, "alive", "the helper got SIGTERM while the worker ran");
    let status = eventually(Duration::from_secs(20), "the sidecar ends", || {
        child.try_wait().ok().flatten()
    });
    assert_eq!(status.code(), Some(0), "{status:?}");
}

/// Without it only the worker gets the SIGTERM: its helper is ended by the
/// sidecar once the worker is gone (here killed, as `docker stop` does
/// after its timeout), not before.
#[test]
fn without_signal_group_sigterm_reaches_only_the_worker() {
    let dir = tempfile::tempdir().expect("tmp");
    let (child, mark) = group_worker(dir.path(), &[]);
    let mut fleet = Fleet(vec![child]);
    let child = &mut fleet.0[0];
    kill(child.id() as i32, libc::SIGTERM);
    let worker: i32 = eventually(Duration::from_secs(20), "the worker gets SIGTERM", || {
        read_mark(&mark, "worker").and_then(|p| p.parse().ok())
    });
    assert_eq!(
        read_mark(&mark, "helper"),
        None,
        "the helper got nothing yet"
    );
    kill(worker, libc::SIGKILL);
    let said = eventually(Duration::from_secs(20), "the helper answers", || {
        read_mark(&mark, "helper")
    });
    assert_eq!(said, "gone", "the helper's SIGTERM came after the worker");
    eventually(Duration::from_secs(20), "the sidecar ends", || {
        child.try_wait().ok().flatten()
    });
}
