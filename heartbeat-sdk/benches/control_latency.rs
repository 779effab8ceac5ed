//! How long a control request takes to reach a worker's row, with the
//! default poll (every 5 s, beats every 30 s): 50 SDK workers in one
//! process, each paused once at a random moment, first on the local store,
//! then over a mocked PostgREST that answers the poll as the control
//! migration does. Prints p50, p95 and the worst latency per store, and the
//! poll's cost per worker in requests per minute over a quiet minute (about
//! two minutes in all). Figures: docs/performance.md.
//!
//!     cargo bench -p heartbeat-sdk --bench control_latency
//!     HP_BENCH_WORKERS=20 HP_BENCH_SEED=7 cargo bench -p heartbeat-sdk --bench control_latency
//!
//! Exits 1 when a p95 is over 6 s (the target).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use heartbeat_sdk::sidecar::{ControlRequest, SqliteStore};
use heartbeat_sdk::Heartbeat;
use serde_json::Value;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// Requests are spread over this window after every worker is up.
const SPREAD: Duration = Duration::from_secs(10);
/// A request not seen in a row by then counts as lost.
const GIVE_UP: Duration = Duration::from_secs(30);
const TARGET_P95: Duration = Duration::from_secs(6);
/// The quiet stretch over which the poll's cost is counted.
const QUIET: Duration = Duration::from_secs(60);

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// When each worker is asked, from the start of the window; the
/// randomness comes from a seed so a run can be repeated.
fn schedule(workers: usize, seed: u64) -> Vec<Duration> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..workers).map(|_| SPREAD.mul_f64(rng.f64())).collect()
}

/// p50, p95, max of `latencies` (sorted in place).
fn summary(latencies: &mut [Duration]) -> (Duration, Duration, Duration) {
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1)];
    (at(0.5), at(0.95), latencies[latencies.len() - 1])
}

/// Waits until `seen(worker)` says when each worker's row showed the pause.
fn measure(
    names: &[String],
    asked_at: &[Instant],
    seen: impl Fn(&str) -> Option<Instant>,
) -> (Vec<Duration>, usize) {
    let deadline = Instant::now() + SPREAD + GIVE_UP;
    loop {
        let found: Vec<Option<Instant>> = names.iter().map(|n| seen(n)).collect();
        if found.iter().all(Option::is_some) || Instant::now() > deadline {
            let lost = found.iter().filter(|f| f.is_none()).count();
            let latencies = found
                .iter()
                .zip(asked_at)
                .filter_map(|(f, asked)| f.map(|at| at.saturating_duration_since(*asked)))
                .collect();
            return (latencies, lost);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asks each worker to pause at its moment in the schedule; returns when
/// each was asked.
fn ask_on_schedule(names: &[String], at: &[Duration], mut ask: impl FnMut(&str)) -> Vec<Instant> {
    let start = Instant::now();
    let mut order: Vec<usize> = (0..names.len()).collect();
    order.sort_by_key(|&i| at[i]);
    let mut asked = vec![start; names.len()];
    for i in order {
        let due = start + at[i];
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        ask(&names[i]);
        asked[i] = Instant::now();
    }
    asked
}

fn local_store(names: &[String], at: &[Duration]) -> (Vec<Duration>, usize) {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("bench.db");
    let store = SqliteStore::new(&path);
    let workers = start_workers(names, |b| b.local_store(&path));
    wait_until("every worker's first row", || {
        store.read_all().is_ok_and(|rows| rows.len() == names.len())
    });
    store
        .pool_set("default", Some(10_000), Some(0), None, Some("bench"))
        .expect("pool set");
    // A row seen paused is recorded by a reader polling as an operator's
    // `status --watch` would, every 20 ms.
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = std::thread::spawn({
        let (seen, stop, store) = (
            Arc::clone(&seen),
            Arc::clone(&stop),
            SqliteStore::new(&path),
        );
        move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for row in store.read_all().unwrap_or_default() {
                    if row.extra.get("state").and_then(Value::as_str) == Some("paused") {
                        seen.lock()
                            .expect("seen")
                            .entry(row.worker_name)
                            .or_insert_with(Instant::now);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    });
    let asked = ask_on_schedule(names, at, |name| {
        let mut request = ControlRequest::workers("pause", vec![name.to_owned()]);
        request.force = true;
        request.confirm = Some("default".into());
        let answer = store.control(&request).expect("control");
        assert!(answer.accepted(), "{answer:?}");
    });
    let result = measure(names, &asked, |n| {
        seen.lock().expect("seen").get(n).copied()
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    watcher.join().expect("watcher");
    drop(workers);
    result
}

/// The control table as PostgREST serves it: `generation=gt.N` gets `[]`
/// until the worker is asked. Counts the polls.
#[derive(Clone, Default)]
struct ControlTable {
    paused: Arc<Mutex<HashMap<String, i64>>>,
    polls: Arc<std::sync::atomic::AtomicU64>,
}

fn query(req: &Request, key: &str) -> Option<String> {
    req.url
        .query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

impl Respond for ControlTable {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        self.polls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let worker = query(req, "worker_name").unwrap_or_default();
        let worker = worker.trim_start_matches("eq.");
        let above: i64 = query(req, "generation")
            .and_then(|g| g.trim_start_matches("gt.").parse().ok())
            .unwrap_or(-1);
        let generation = self.paused.lock().expect("table").get(worker).copied();
        let rows = match generation {
            Some(g) if g > above => serde_json::json!([
                {"desired": "paused", "generation": g, "restart_seq": 0, "run_now_seq": 0, "drain_seq": 0}
            ]),
            _ => serde_json::json!([]),
        };
        ResponseTemplate::new(200).set_body_json(rows)
    }
}

/// Upserts, recording when each worker's row first says `paused`.
#[derive(Clone, Default)]
struct StatusTable {
    paused_at: Arc<Mutex<HashMap<String, Instant>>>,
    writes: Arc<std::sync::atomic::AtomicU64>,
}

impl Respond for StatusTable {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(row) = serde_json::from_slice::<Value>(&req.body) {
            if row["state"] == "paused" {
                if let Some(name) = row["worker_name"].as_str() {
                    self.paused_at
                        .lock()
                        .expect("rows")
                        .entry(name.to_owned())
                        .or_insert_with(Instant::now);
                }
            }
        }
        ResponseTemplate::new(201)
    }
}

fn mocked_postgrest(names: &[String], at: &[Duration]) -> ((Vec<Duration>, usize), f64) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let control = ControlTable::default();
    let status = StatusTable::default();
    let server = runtime.block_on(async {
        let server = MockServer::start().await;
        Mock::given(wiremock::matchers::method("GET"))
            .and(wiremock::matchers::path("/rest/v1/hp_worker_control"))
            .respond_with(control.clone())
            .with_priority(1)
            .mount(&server)
            .await;
        Mock::given(wiremock::matchers::method("GET"))
            .respond_with(ResponseTemplate::new(200).set_body_string("[]"))
            .with_priority(5)
            .mount(&server)
            .await;
        Mock::given(wiremock::matchers::method("POST"))
            .respond_with(status.clone())
            .mount(&server)
            .await;
        server
    });
    let workers = start_workers(names, |b| {
        b.url(server.uri()).key("sb_secret_FAKE_bench_key")
    });
    wait_until("every worker's first beat", || {
        status.writes.load(std::sync::atomic::Ordering::Relaxed) >= names.len() as u64
    });
    // The poll's cost while nothing changes: a quiet minute, counted.
    let polls_before = control.polls.load(std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    std::thread::sleep(QUIET);
    let polls = control.polls.load(std::sync::atomic::Ordering::Relaxed) - polls_before;
    let per_minute = polls as f64 / names.len() as f64 / (started.elapsed().as_secs_f64() / 60.0);
    let mut generation = 0;
    let asked = ask_on_schedule(names, at, |name| {
        generation += 1;
        control
            .paused
            .lock()
            .expect("table")
            .insert(name.to_owned(), generation);
    });
    let result = measure(names, &asked, |n| {
        status.paused_at.lock().expect("rows").get(n).copied()
    });
    drop(workers);
    drop(server);
    (result, per_minute)
}

/// One worker per name, each configured by `store`; each one's code checks
/// for a pause (the row reports a pause only for such a worker, docs/sdk.md).
fn start_workers(
    names: &[String],
    store: impl Fn(heartbeat_sdk::HeartbeatBuilder) -> heartbeat_sdk::HeartbeatBuilder,
) -> Vec<Heartbeat> {
    names
        .iter()
        .map(|n| {
            let hb = store(Heartbeat::builder(n.clone()))
                .handle_signals(false)
                .start()
                .expect("start");
            let _ = hb.should_pause();
            hb
        })
        .collect()
}

fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn report(store: &str, (mut latencies, lost): (Vec<Duration>, usize), workers: usize) -> bool {
    if latencies.is_empty() {
        println!("| {store} | {workers} | — | — | — | {lost} |");
        return false;
    }
    let (p50, p95, max) = summary(&mut latencies);
    println!(
        "| {store} | {workers} | {:.2} s | {:.2} s | {:.2} s | {lost} |",
        p50.as_secs_f64(),
        p95.as_secs_f64(),
        max.as_secs_f64()
    );
    lost == 0 && p95 <= TARGET_P95
}

fn main() {
    // `cargo bench` passes --bench; there is nothing to filter.
    let workers = env_or("HP_BENCH_WORKERS", 50) as usize;
    let seed = env_or("HP_BENCH_SEED", 1);
    let names: Vec<String> = (1..=workers).map(|i| format!("bench-{i:03}")).collect();
    let at = schedule(workers, seed);
    println!("control request -> the worker's row says paused (default poll 5 s, beats 30 s, seed {seed})");
    println!();
    println!("| store | workers | p50 | p95 | worst | lost |");
    println!("|---|---|---|---|---|---|");
    let local_ok = report("local store", local_store(&names, &at), workers);
    let (remote, polls_per_minute) = mocked_postgrest(&names, &at);
    let remote_ok = report("mocked PostgREST", remote, workers);
    println!();
    println!("control reads per worker while nothing changes, over {QUIET:?}: {polls_per_minute:.1} requests per minute (a poll every 5 s and one after each beat: 14 expected)");
    if !(local_ok && remote_ok) {
        println!("a p95 is over {TARGET_P95:?}, or a request was lost");
        std::process::exit(1);
    }
}
