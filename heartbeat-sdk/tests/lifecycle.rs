//! Counting, the circuit breaker as rows show it, and running with or without a runtime.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use heartbeat_sdk::{Heartbeat, MemoryTransport, WorkerRow, WorkerStatus};
use hp_heartbeat_tests::eventually::{eventually, poll_until};

fn memory_heartbeat(name: &str, interval_secs: u64) -> (Heartbeat, MemoryTransport) {
    let store = MemoryTransport::new();
    let hb = Heartbeat::builder(name)
        .transport(store.clone())
        .interval(Duration::from_secs(interval_secs))
        .handle_signals(false)
        .start()
        .expect("starts");
    (hb, store)
}

fn wait_for_row(
    store: &MemoryTransport,
    timeout: Duration,
    want: impl Fn(&WorkerRow) -> bool,
) -> Option<WorkerRow> {
    poll_until(timeout, || store.rows().into_iter().find(|r| want(r)))
}

#[test]
fn totals_are_exact_after_8_threads_of_100_000_increments() {
    let (hb, store) = memory_heartbeat("counting", 30);
    let hb = Arc::new(hb);
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let hb = Arc::clone(&hb);
            std::thread::spawn(move || {
                for n in 0..100_000u32 {
                    // One thread in four fails every 1000th job.
                    if i % 4 == 0 && n % 1000 == 0 {
                        hb.job_failed("");
                    } else {
                        hb.job_succeeded();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    let hb = Arc::into_inner(hb).expect("the only handle");
    assert!(hb.shutdown());
    let last = store.rows().pop().expect("final row");
    assert_eq!(last.status, WorkerStatus::Stopped);
    assert_eq!(last.error_count, 2 * 100);
    assert_eq!(last.jobs_processed, 800_000 - 200);
}

#[test]
fn breaker_opens_at_the_threshold_and_rows_say_crashed_until_a_success() {
    let store = MemoryTransport::new();
    let hb = Heartbeat::builder("breaker")
        .transport(store.clone())
        .interval(Duration::from_secs(1))
        .circuit_breaker_threshold(3)
        .handle_signals(false)
        .start()
        .expect("starts");
    hb.job_failed("db timeout");
    hb.job_failed("db timeout");
    assert!(!hb.circuit_open());
    hb.job_failed("db timeout again");
    assert!(hb.circuit_open(), "open at exactly 3");
    let open = wait_for_row(&store, Duration::from_secs(3), |r| r.circuit_breaker_open)
        .expect("a row with the breaker open");
    assert_eq!(open.status, WorkerStatus::Crashed);
    assert_eq!(open.consecutive_errors, 3);
    assert_eq!(open.last_error.as_deref(), Some("db timeout again"));
    let seen = store.rows().len();
    hb.job_succeeded();
    assert!(!hb.circuit_open());
    let closed = wait_for_row(&store, Duration::from_secs(3), |r| r.jobs_processed == 1)
        .expect("a row after the success");
    assert!(store.rows().len() > seen);
    assert_eq!(closed.status, WorkerStatus::Running);
    assert!(!closed.circuit_breaker_open);
    assert_eq!(closed.error_count, 3, "totals stay");
    assert_eq!(
        closed.last_error.as_deref(),
        Some("db timeout again"),
        "last_error is kept for diagnosis"
    );
}

#[test]
fn reset_circuit_closes_the_breaker() {
    let store = MemoryTransport::new();
    let hb = Heartbeat::builder("reset")
        .transport(store.clone())
        .circuit_breaker_threshold(1)
        .handle_signals(false)
        .start()
        .expect("starts");
    hb.job_failed("");
    assert!(hb.circuit_open());
    hb.reset_circuit();
    assert!(!hb.circuit_open());
    hb.set_metadata("queue", "orders");
    assert!(hb.shutdown());
    let last = store.rows().pop().expect("final row");
    assert!(!last.circuit_breaker_open);
    assert_eq!(last.metadata["queue"], "orders");
}

/// Plain `fn main`: no runtime anywhere on this thread.
#[test]
fn works_from_plain_main_over_http() {
    let server_rt = tokio::runtime::Runtime::new().expect("runtime for the mock server only");
    let (server, recorder) = server_rt.block_on(accepting_server());
    let hb = Heartbeat::builder("plain-main")
        .url(server.uri())
        .key(SECRET_KEY)
        .handle_signals(false)
        .start()
        .expect("starts");
    hb.job_succeeded();
    eventually(Duration::from_secs(5), "a first beat", || {
        (!recorder.times().is_empty()).then_some(())
    });
    assert!(hb.shutdown());
    let got = server_rt.block_on(beats(&server));
    assert_eq!(body(got.last().expect("rows"))["status"], "stopped");
}

async fn beat_inside_runtime() {
    let (server, _) = accepting_server().await;
    let hb = Heartbeat::builder("in-runtime")
        .url(server.uri())
        .key(SECRET_KEY)
        .handle_signals(false)
        .start()
        .expect("starts");
    hb.job_succeeded();
    let got = wait_for_requests(&server, 1, Duration::from_secs(3)).await;
    assert_eq!(got.len(), 1);
    assert!(tokio::task::spawn_blocking(move || hb.shutdown())
        .await
        .expect("join"));
    let got = beats(&server).await;
    let last = body(got.last().expect("rows"));
    assert_eq!(last["status"], "stopped");
    assert_eq!(last["jobs_processed"], 1);
}

/// `#[tokio::main]`'s default flavour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_inside_a_multi_thread_runtime() {
    beat_inside_runtime().await;
}

/// A single-threaded runtime the worker keeps busy cannot stall the beat.
#[tokio::test(flavor = "current_thread")]
async fn works_inside_a_current_thread_runtime() {
    beat_inside_runtime().await;
}

#[test]
fn drop_sends_stopped_within_the_budget_even_when_the_server_hangs() {
    let server_rt = tokio::runtime::Runtime::new().expect("runtime");
    let server = server_rt.block_on(async {
        let server = wiremock::MockServer::start().await;
        wiremock::Mock::given(wiremock::matchers::method("POST"))
            .respond_with(wiremock::ResponseTemplate::new(201).set_delay(Duration::from_secs(10)))
            .mount(&server)
            .await;
        server
    });
    let hb = Heartbeat::builder("hanging")
        .url(server.uri())
        .key(SECRET_KEY)
        .shutdown_budget(Duration::from_millis(300))
        .handle_signals(false)
        .start()
        .expect("starts");
    // The first beat is on the wire, hanging.
    server_rt.block_on(wait_for_requests(&server, 1, Duration::from_secs(5)));
    let t0 = Instant::now();
    drop(hb);
    let took = t0.elapsed();
    assert!(
        took < Duration::from_millis(300 + 250),
        "drop took {took:?} with a 300 ms budget"
    );
}
