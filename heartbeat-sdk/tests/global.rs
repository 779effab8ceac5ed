//! The seed API: start_heartbeat, increment_job, increment_error. One test in
//! this binary, because the global reporter is once per process.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn seed_api_reads_the_env_counts_and_refuses_a_second_start() {
    heartbeat_sdk::increment_job(); // before start: a no-op, not a panic
    let (server, _) = accepting_server().await;
    // The only test in this process, so nothing else reads the environment.
    std::env::set_var("SUPABASE_URL", server.uri());
    std::env::set_var("SUPABASE_SECRET_KEY", SECRET_KEY);
    std::env::set_var("HP_WORKER_NAME", "seed-from-env");
    let hb = heartbeat_sdk::start_heartbeat("seed-in-code").expect("starts from env");
    assert_eq!(
        hb.worker_name(),
        "seed-from-env",
        "HP_WORKER_NAME overrides"
    );
    let again = heartbeat_sdk::start_heartbeat("other").expect_err("second start");
    assert!(
        matches!(again, heartbeat_sdk::ConfigError::AlreadyStarted),
        "{again}"
    );
    for _ in 0..5 {
        heartbeat_sdk::increment_job();
    }
    heartbeat_sdk::increment_error();
    drop(hb);
    let got = beats(&server).await;
    let last = body(got.last().expect("rows"));
    assert_eq!(last["worker_name"], "seed-from-env");
    assert_eq!(last["status"], "stopped");
    assert_eq!(
        last["jobs_processed"], 5,
        "the increment before start was not counted"
    );
    assert_eq!(last["error_count"], 1);
}
