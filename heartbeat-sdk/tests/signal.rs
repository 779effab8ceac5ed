//! SIGTERM and SIGINT in a real child process: the final `stopped` row goes
//! out within the budget, then the process ends as the signal would have.
//!
//! The child is this same test binary, re-run with `--ignored --exact` on the
//! `child_*` entry point below.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use hp_heartbeat_tests::eventually::{poll_until, poll_until_async};
use wiremock::matchers::{body_string_contains, method};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// Run only as a child: a worker using the seed API until a signal ends it.
#[test]
#[ignore = "child process for the signal tests"]
fn child_worker_until_signalled() {
    let _hb = heartbeat_sdk::start_heartbeat("signal-child").expect("start in child");
    for _ in 0..3 {
        heartbeat_sdk::increment_job();
    }
    loop {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Run only as a child: a polling worker that returns from its loop as soon
/// as it is asked to exit, while a second reporter, kept by a thread of its
/// own, still has its final row to send (the server holds that one 300 ms).
#[test]
#[ignore = "child process for the signal tests"]
fn child_worker_that_returns_when_asked_to_exit() {
    let hb = heartbeat_sdk::start_heartbeat("signal-child").expect("start in child");
    let slow = heartbeat_sdk::Heartbeat::builder("signal-child-slow")
        .from_env()
        .start()
        .expect("second reporter");
    std::thread::spawn(move || {
        let _slow = slow;
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    heartbeat_sdk::increment_job();
    while hb.wait_for_next_run(Duration::from_millis(50)) {}
}

fn spawn_child(server: &MockServer) -> Child {
    spawn_named_child(server, "child_worker_until_signalled")
}

fn spawn_named_child(server: &MockServer, entry: &str) -> Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args(["--ignored", "--exact", entry, "--nocapture"])
        .env("SUPABASE_URL", server.uri())
        .env("SUPABASE_SECRET_KEY", SECRET_KEY)
        .env_remove("HP_WORKER_NAME")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child")
}

/// Kills the child if the test ends early (a failed assertion), so no
/// orphan keeps the test's output pipe open.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill(2) with a pid this test spawned; a no-op once it is reaped.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

fn guard(child: &Child) -> KillOnDrop {
    KillOnDrop(i32::try_from(child.id()).expect("pid"))
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let status = poll_until(timeout, || child.try_wait().ok().flatten());
    if status.is_none() {
        let _ = child.kill();
    }
    status
}

/// The child's exit status, waited for off the runtime (at most 5 s).
async fn ended(mut child: Child) -> std::process::ExitStatus {
    tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(5)))
        .await
        .expect("join")
        .expect("the child ended")
}

fn signal(child: &Child, sig: i32) {
    let pid = i32::try_from(child.id()).expect("pid");
    // SAFETY: kill(2) with a pid we spawned and a valid signal number.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill failed");
}

async fn final_row_on(sig: i32) {
    let (server, recorder) = accepting_server().await;
    let child = spawn_child(&server);
    let _guard = guard(&child);
    let got = wait_for_requests(&server, 1, Duration::from_secs(10)).await;
    assert_eq!(body(&got[0])["status"], "running");
    let t0 = Instant::now();
    signal(&child, sig);
    let status = ended(child).await;
    let exited_after = t0.elapsed();
    assert_eq!(
        status.signal(),
        Some(sig),
        "ended by the signal itself: {status:?}"
    );
    let got = beats(&server).await;
    let last = body(got.last().expect("rows"));
    assert_eq!(last["status"], "stopped");
    assert_eq!(last["jobs_processed"], 3);
    let arrived = *recorder.times().last().expect("time");
    assert!(
        arrived > t0 && arrived - t0 < Duration::from_secs(1),
        "final row after {:?}",
        arrived - t0
    );
    assert!(
        exited_after < Duration::from_millis(1500),
        "exited after {exited_after:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_sends_stopped_then_ends_by_sigterm() {
    final_row_on(libc::SIGTERM).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_sends_stopped_then_ends_by_sigint() {
    final_row_on(libc::SIGINT).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_server_cannot_hold_the_shutdown_past_the_budget() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201).set_delay(Duration::from_secs(30)))
        .mount(&server)
        .await;
    let child = spawn_child(&server);
    let _guard = guard(&child);
    wait_for_requests(&server, 1, Duration::from_secs(10)).await;
    let t0 = Instant::now();
    signal(&child, libc::SIGTERM);
    let status = ended(child).await;
    let took = t0.elapsed();
    assert_eq!(status.signal(), Some(libc::SIGTERM));
    // Budget 1 s; PM2 kills at 1.6 s.
    assert!(took < Duration::from_millis(1500), "took {took:?}");
}

/// A worker that sees `should_exit` and returns from `main` at once still
/// ends by the signal, and only once every reporter's final row is sent:
/// returning must not race the signal thread into an exit 0 that cuts the
/// slower reporter's row.
#[tokio::test(flavor = "multi_thread")]
async fn returning_from_main_when_asked_to_exit_still_ends_by_the_signal() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(body_string_contains("signal-child-slow"))
        .and(body_string_contains("\"stopped\""))
        .respond_with(ResponseTemplate::new(201).set_delay(Duration::from_millis(300)))
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201))
        .mount(&server)
        .await;
    let child = spawn_named_child(&server, "child_worker_that_returns_when_asked_to_exit");
    let _guard = guard(&child);
    let running = |name: &'static str| {
        let server = &server;
        async move {
            beats(server).await.iter().any(|r| {
                let b = body(r);
                b["worker_name"] == name && b["status"] == "running"
            })
        }
    };
    let both = poll_until_async(Duration::from_secs(10), || async {
        (running("signal-child").await && running("signal-child-slow").await).then_some(())
    })
    .await;
    assert!(
        both.is_some(),
        "both reporters beat: {:?}",
        beats(&server).await.iter().map(body).collect::<Vec<_>>()
    );
    signal(&child, libc::SIGTERM);
    let status = ended(child).await;
    assert_eq!(
        status.signal(),
        Some(libc::SIGTERM),
        "ended by the signal itself: {status:?}"
    );
    let stopped: Vec<String> = beats(&server)
        .await
        .iter()
        .map(body)
        .filter(|b| b["status"] == "stopped")
        .map(|b| b["worker_name"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        stopped.iter().any(|n| n == "signal-child")
            && stopped.iter().any(|n| n == "signal-child-slow"),
        "both final rows sent: {stopped:?}"
    );
}
