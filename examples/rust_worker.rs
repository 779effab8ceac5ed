//! A polling worker that reports and obeys: a run of ten fake jobs (200 ms
//! each, about one in ten fails) every 2 s; paused, it takes no new run;
//! drained or restarted, it finishes the job in hand and exits (0, or 75 for
//! a restart so systemd restarts it); run-now starts a run at once; SIGTERM
//! or Ctrl-C mark its row `stopped`.
//!
//!     cargo run --example rust_worker            # name: example-rust-worker
//!     HP_WORKER_NAME=orders cargo run --example rust_worker
//!
//! Under systemd: examples/systemd/rust-worker.service (`WatchdogSec=30`).
//!
//! With `HP_EXAMPLE_TIMINGS=1` it prints how long each job's bookkeeping
//! kept the worker's thread, as `job N took NS ns` on stdout:
//! `scripts/soak.sh` checks that reporting never makes the worker wait.

use std::process::ExitCode;
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let hb = match heartbeat_sdk::start_heartbeat("example-rust-worker") {
        Ok(hb) => hb,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let timings = std::env::var("HP_EXAMPLE_TIMINGS").as_deref() == Ok("1");
    let mut job: u64 = 0;
    while hb.wait_for_next_run(Duration::from_secs(2)) {
        let run = hb.start_run();
        let (mut done, mut failed) = (0, 0);
        while done < 10 && !hb.should_exit() {
            job += 1;
            done += 1;
            std::thread::sleep(Duration::from_millis(200));
            let started = Instant::now();
            if fastrand::u8(..10) == 0 {
                failed += 1;
                heartbeat_sdk::increment_error();
            } else {
                heartbeat_sdk::increment_job();
            }
            // Not stuck: under systemd's WatchdogSec= this is what pings it
            // (waiting for the next run or a resume keeps it alive too).
            hb.progress();
            if timings {
                println!("job {job} took {} ns", started.elapsed().as_nanos());
            }
        }
        run.succeeded(format!("{done} jobs, {failed} failed"));
    }
    tracing::info!("asked to exit: the job in hand is done");
    hb.exit_code()
}
