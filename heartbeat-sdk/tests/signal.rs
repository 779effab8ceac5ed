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
use hp_heartbeat_tests::eventually::poll_until;
use wiremock::matchers::method;
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

fn spawn_child(server: &MockServer) -> Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--ignored",
            "--exact",
            "child_worker_until_signalled",
            "--nocapture",
        ])
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

fn signal(child: &Child, sig: i32) {
    let pid = i32::try_from(child.id()).expect("pid");
    // SAFETY: kill(2) with a pid we spawned and a valid signal number.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill failed");
}

async fn final_row_on(sig: i32) {
    let (server, recorder) = accepting_server().await;
    let mut child = spawn_child(&server);
    let _guard = guard(&child);
    let got = wait_for_requests(&server, 1, Duration::from_secs(10)).await;
    assert_eq!(body(&got[0])["status"], "running");
    let t0 = Instant::now();
    signal(&child, sig);
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(5)))
        .await
        .expect("join")
        .expect("the child ended");
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
    let mut child = spawn_child(&server);
    let _guard = guard(&child);
    wait_for_requests(&server, 1, Duration::from_secs(10)).await;
    let t0 = Instant::now();
    signal(&child, libc::SIGTERM);
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(5)))
        .await
        .expect("join")
        .expect("the child ended");
    let took = t0.elapsed();
    assert_eq!(status.signal(), Some(libc::SIGTERM));
    // Budget 1 s; PM2 kills at 1.6 s.
    assert!(took < Duration::from_millis(1500), "took {took:?}");
}
