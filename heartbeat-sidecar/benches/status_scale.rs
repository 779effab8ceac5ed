//! `heartbeat-sidecar status --json` over 10,000 workers: on the local store,
//! and over a mocked PostgREST that answers 1,000 rows a page as Supabase
//! does. Runs the built binary five times each and prints the median wall
//! time and the pages read. Figures: docs/performance.md.
//!
//!     cargo bench -p heartbeat-sidecar --bench status_scale
//!     HP_BENCH_WORKERS=2000 cargo bench -p heartbeat-sidecar --bench status_scale

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use heartbeat_sdk::sidecar::SqliteStore;
use heartbeat_sdk::{Heartbeat, MemoryTransport, WorkerRow};
use serde_json::Value;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const SIDECAR: &str = env!("CARGO_BIN_EXE_heartbeat-sidecar");
const ROUNDS: usize = 5;

/// One real row, as a worker writes it, to copy under many names.
fn template() -> WorkerRow {
    let mem = MemoryTransport::new();
    let hb = Heartbeat::builder("template")
        .transport(mem.clone())
        .handle_signals(false)
        .start()
        .expect("start");
    let deadline = Instant::now() + Duration::from_secs(10);
    while mem.rows().is_empty() {
        assert!(Instant::now() < deadline, "no row from the template worker");
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(hb);
    mem.rows().remove(0)
}

fn names(workers: usize) -> Vec<String> {
    (0..workers).map(|i| format!("worker-{i:05}")).collect()
}

/// The median of `ROUNDS` runs of `status --json`, and the rows it printed.
fn time_status(setup: impl Fn(&mut Command)) -> (Duration, usize) {
    let mut times = Vec::new();
    let mut rows = 0;
    for _ in 0..ROUNDS {
        let mut c = Command::new(SIDECAR);
        c.args(["status", "--json"]);
        for var in ["SUPABASE_URL", "SUPABASE_SECRET_KEY", "HP_STORE"] {
            c.env_remove(var);
        }
        setup(&mut c);
        let started = Instant::now();
        let out = c.output().expect("status");
        times.push(started.elapsed());
        let parsed: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "status --json: {e}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        rows = parsed.len();
    }
    times.sort();
    (times[ROUNDS / 2], rows)
}

/// `hp_worker_status` as PostgREST serves it with `db-max-rows = 1000`.
struct Paged {
    rows: Arc<Vec<Value>>,
    pages: Arc<AtomicU64>,
}

impl Respond for Paged {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        self.pages.fetch_add(1, Ordering::Relaxed);
        let q = |k: &str| {
            req.url
                .query_pairs()
                .find(|(key, _)| key == k)
                .and_then(|(_, v)| v.parse::<usize>().ok())
        };
        let limit = q("limit").unwrap_or(usize::MAX).min(1000);
        // `worker_name=gt.<last>`: the rows are in name order.
        let after = req
            .url
            .query_pairs()
            .find(|(k, _)| k == "worker_name")
            .map(|(_, v)| v.trim_start_matches("gt.").to_owned());
        let from = after.map_or(0, |last| {
            self.rows.partition_point(|r| {
                r["worker_name"]
                    .as_str()
                    .is_some_and(|n| n <= last.as_str())
            })
        });
        let page: Vec<&Value> = self.rows[from..].iter().take(limit).collect();
        ResponseTemplate::new(200).set_body_json(page)
    }
}

/// Rounds of End then Home, spread over several 2 s refreshes.
const KEY_ROUNDS: usize = 20;
const KEY_PACE: Duration = Duration::from_millis(150);

/// `status --watch` on the local store in a tmux of its own: how long from
/// a key (End, Home) to the screen that shows its effect, median and
/// slowest. `None` without tmux.
fn keys_in_the_live_view(db: &std::path::Path, workers: usize) -> Option<(Duration, Duration)> {
    let socket = format!("hp-bench-{}", std::process::id());
    let tmux = |args: &[&str]| -> Option<String> {
        let out = Command::new("tmux")
            .args(["-L", &socket])
            .args(args)
            .output()
            .ok()?;
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    tmux(&["-V"])?;
    let command = format!("HP_STORE={} {SIDECAR} status --watch", db.display());
    tmux(&[
        "new-session",
        "-d",
        "-s",
        "w",
        "-x",
        "150",
        "-y",
        "40",
        &command,
    ])?;
    let wait_for = |needle: &str| -> Option<Duration> {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if tmux(&["capture-pane", "-p", "-t", "w"])?.contains(needle) {
                return Some(started.elapsed());
            }
        }
        None
    };
    let result = (|| {
        wait_for(&format!("{workers} of {workers} shown"))?;
        let (first, last) = (names(workers).remove(0), names(workers).pop()?);
        let mut times = Vec::new();
        for _ in 0..KEY_ROUNDS {
            // Paced, so some keys land while a refresh is sorted.
            std::thread::sleep(KEY_PACE);
            tmux(&["send-keys", "-t", "w", "End"])?;
            times.push(wait_for(&format!("┌ {last}"))?);
            std::thread::sleep(KEY_PACE);
            tmux(&["send-keys", "-t", "w", "Home"])?;
            times.push(wait_for(&format!("┌ {first}"))?);
        }
        times.sort();
        Some((times[times.len() / 2], times[times.len() - 1]))
    })();
    let _ = tmux(&["kill-server"]);
    result
}

fn main() {
    let workers = std::env::var("HP_BENCH_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let template = template();
    let names = names(workers);

    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("bench.db");
    let store = SqliteStore::new(&db);
    for name in &names {
        let mut row = template.clone();
        row.worker_name = name.clone();
        store.write(&row).expect("write");
    }
    let (local, local_rows) = time_status(|c| {
        c.env("HP_STORE", &db);
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let rows: Vec<Value> = names
        .iter()
        .map(|name| {
            let mut row = serde_json::to_value(&template).expect("json");
            row["worker_name"] = Value::from(name.clone());
            row["last_heartbeat"] = Value::from(chrono::Utc::now().to_rfc3339());
            row
        })
        .collect();
    let pages = Arc::new(AtomicU64::new(0));
    let server = runtime.block_on(async {
        let server = MockServer::start().await;
        Mock::given(wiremock::matchers::method("GET"))
            .and(wiremock::matchers::path("/rest/v1/hp_worker_status"))
            .respond_with(Paged {
                rows: Arc::new(rows),
                pages: Arc::clone(&pages),
            })
            .mount(&server)
            .await;
        server
    });
    let uri = server.uri();
    let (remote, remote_rows) = time_status(|c| {
        c.env("SUPABASE_URL", &uri)
            .env("SUPABASE_SECRET_KEY", "sb_secret_FAKE_bench_key");
    });
    let per_run = pages.load(Ordering::Relaxed) / ROUNDS as u64;

    println!("heartbeat-sidecar status --json over {workers} workers, median of {ROUNDS} runs");
    println!();
    println!("| store | rows printed | median | pages per run |");
    println!("|---|---|---|---|");
    println!(
        "| local store | {local_rows} | {:.0} ms | — |",
        local.as_secs_f64() * 1000.0
    );
    println!(
        "| mocked PostgREST (1,000 rows a page) | {remote_rows} | {:.0} ms | {per_run} |",
        remote.as_secs_f64() * 1000.0
    );
    match keys_in_the_live_view(&db, workers) {
        Some((median, worst)) => {
            println!();
            println!(
                "status --watch over {workers} workers in tmux (150x40), End then Home {KEY_ROUNDS} times over {:.0} s of refreshes: key to screen median {:.0} ms, slowest {:.0} ms",
                (KEY_PACE * 2 * KEY_ROUNDS as u32).as_secs_f64(),
                median.as_secs_f64() * 1000.0,
                worst.as_secs_f64() * 1000.0
            );
        }
        None => println!("tmux is not installed: the live view was not measured"),
    }
    if local_rows != workers || remote_rows != workers {
        println!("not every row was read");
        std::process::exit(1);
    }
}
