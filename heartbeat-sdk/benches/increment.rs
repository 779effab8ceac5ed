//! What `increment_job` costs the worker, against a `Mutex<u64>` baseline
//! measured in the same run. Figures: docs/performance.md.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, Criterion};

fn start_global() -> heartbeat_sdk::Heartbeat {
    // A port nothing listens on and a long interval: beats fail quietly on the
    // beat thread, so only the worker-side cost is measured.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(9);
    std::env::set_var("SUPABASE_URL", format!("http://127.0.0.1:{port}"));
    std::env::set_var("SUPABASE_SECRET_KEY", "sb_secret_FAKE_bench");
    std::env::set_var("HP_HEARTBEAT_INTERVAL_SECS", "3600");
    heartbeat_sdk::start_heartbeat("bench").expect("start")
}

/// Runs `op` `iters` times on each of two threads at once; returns the wall time.
fn contended(iters: u64, op: impl Fn() + Sync) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                for _ in 0..iters {
                    op();
                }
            });
        }
    });
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let _hb = start_global();
    let mutex = Mutex::new(0u64);

    let mut single = c.benchmark_group("increment/1-thread");
    single.bench_function("increment_job", |b| b.iter(heartbeat_sdk::increment_job));
    single.bench_function("mutex_u64", |b| {
        b.iter(|| {
            if let Ok(mut n) = mutex.lock() {
                *n += 1;
            }
        })
    });
    single.finish();

    let mut two = c.benchmark_group("increment/2-threads");
    two.bench_function("increment_job", |b| {
        b.iter_custom(|iters| contended(iters, heartbeat_sdk::increment_job))
    });
    two.bench_function("mutex_u64", |b| {
        b.iter_custom(|iters| {
            contended(iters, || {
                if let Ok(mut n) = mutex.lock() {
                    *n += black_box(1);
                }
            })
        })
    });
    two.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
