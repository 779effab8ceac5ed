//! A small worker that reports through the seed API.
//!
//!     cargo run --example rust_worker            # name: example-rust-worker
//!     HP_WORKER_NAME=orders cargo run --example rust_worker
//!
//! It processes a fake job every 200 ms, fails about one in ten, and runs
//! until SIGTERM or Ctrl-C, which mark its row `stopped`.
//!
//! With `HP_EXAMPLE_TIMINGS=1` it prints how long each job's bookkeeping
//! (the `increment_*` call and its log line) kept the worker's thread, as
//! `job N took NS ns` on stdout: `scripts/soak.sh` checks that reporting
//! never makes the worker wait.

use std::time::Duration;

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let _heartbeat = match heartbeat_sdk::start_heartbeat("example-rust-worker") {
        Ok(hb) => hb,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };

    let timings = std::env::var("HP_EXAMPLE_TIMINGS").as_deref() == Ok("1");
    let mut job: u64 = 0;
    loop {
        job += 1;
        std::thread::sleep(Duration::from_millis(200));
        let started = std::time::Instant::now();
        if fastrand::u8(..10) == 0 {
            tracing::warn!(job, "job failed");
            heartbeat_sdk::increment_error();
        } else {
            heartbeat_sdk::increment_job();
        }
        if timings {
            println!("job {job} took {} ns", started.elapsed().as_nanos());
        }
    }
}
