//! `heartbeat-sidecar status`: every worker's health, as a table or JSON.

use std::fmt::Write as _;
use std::io::IsTerminal;

use chrono::{DateTime, Utc};
use heartbeat_sdk::postgrest::PostgrestReader;
use heartbeat_sdk::{Health, SqliteStore, StatusRow, Target};
use serde_json::{json, Value};

use crate::cli::StatusArgs;

/// Exit codes: 0 all healthy, 1 something needs attention, 2 could not read.
pub const EXIT_UNHEALTHY: i32 = 1;
/// Could not read the store.
pub const EXIT_UNREADABLE: i32 = 2;

/// The rows and the clock to judge them by (the server's, when it says).
pub struct Snapshot {
    pub rows: Vec<StatusRow>,
    pub now: DateTime<Utc>,
}

/// Where rows are read from, opened once (the HTTP client is reused by
/// every `--watch` refresh).
pub enum Source {
    /// A local SQLite store.
    Local(SqliteStore),
    /// Supabase's REST API.
    Supabase(PostgrestReader),
}

impl Source {
    pub fn open(target: &Target) -> Result<Source, heartbeat_sdk::SendError> {
        Ok(match target {
            Target::Local(path) => Source::Local(SqliteStore::new(path)),
            Target::Supabase(config) => Source::Supabase(PostgrestReader::new(config)?),
        })
    }

    /// Reads every row.
    pub async fn fetch(&self) -> Result<Snapshot, heartbeat_sdk::SendError> {
        match self {
            Source::Local(store) => {
                let store = store.clone();
                let rows = tokio::task::spawn_blocking(move || store.read_all())
                    .await
                    .map_err(|e| heartbeat_sdk::SendError::Store(e.to_string()))??;
                Ok(Snapshot {
                    rows,
                    now: Utc::now(),
                })
            }
            Source::Supabase(reader) => {
                let (rows, server_now) = reader.fetch_rows().await?;
                Ok(Snapshot {
                    rows,
                    now: server_now.unwrap_or_else(Utc::now),
                })
            }
        }
    }
}

pub async fn status(args: StatusArgs) -> i32 {
    let target = match args.store.settings().resolve() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("heartbeat-sidecar: {e}");
            return EXIT_UNREADABLE;
        }
    };
    let source = match Source::open(&target) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("heartbeat-sidecar: cannot read {}: {e}", target.describe());
            return EXIT_UNREADABLE;
        }
    };
    if args.watch {
        return crate::watch::watch(&source, target.describe()).await;
    }
    let snapshot = match source.fetch().await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("heartbeat-sidecar: cannot read {}: {e}", target.describe());
            return EXIT_UNREADABLE;
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&to_json(&snapshot)).unwrap_or_default()
        );
    } else {
        let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        print!("{}", render_table(&snapshot, color));
    }
    exit_code(&snapshot)
}

/// 0 when no worker is stale, crashed or has its breaker open; 1 otherwise.
pub fn exit_code(snapshot: &Snapshot) -> i32 {
    if snapshot
        .rows
        .iter()
        .any(|r| r.needs_attention(snapshot.now))
    {
        EXIT_UNHEALTHY
    } else {
        0
    }
}

/// The rows as JSON: every column, plus `health` and `seconds_since_heartbeat`.
pub fn to_json(snapshot: &Snapshot) -> Value {
    let rows: Vec<Value> = snapshot
        .rows
        .iter()
        .map(|r| {
            let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
            if let Some(obj) = v.as_object_mut() {
                obj.insert("health".into(), json!(r.health(snapshot.now).as_str()));
                obj.insert(
                    "seconds_since_heartbeat".into(),
                    json!(seconds_since(r, snapshot.now)),
                );
            }
            v
        })
        .collect();
    Value::Array(rows)
}

fn seconds_since(row: &StatusRow, now: DateTime<Utc>) -> Option<f64> {
    row.last_heartbeat
        .map(|t| (now - t).num_milliseconds() as f64 / 1000.0)
}

/// `Worker Status  4/5 running`, then one line per worker.
pub fn render_table(snapshot: &Snapshot, color: bool) -> String {
    let now = snapshot.now;
    let running = snapshot
        .rows
        .iter()
        .filter(|r| r.health(now) == Health::Running)
        .count();
    let mut out = format!("Worker Status  {running}/{} running\n", snapshot.rows.len());
    if snapshot.rows.is_empty() {
        out.push_str("\nNo worker has reported yet.\n");
        return out;
    }
    let header = COLUMNS;
    let cells: Vec<[String; 10]> = snapshot.rows.iter().map(|r| row_cells(r, now)).collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    out.push('\n');
    let line = |cells: &[String], color_health: Option<Health>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            let padded = format!("{cell:<w$}");
            match (i, color_health) {
                (1, Some(h)) if color => {
                    let _ = write!(s, "{}{padded}\x1b[0m", ansi(h));
                }
                _ => s.push_str(&padded),
            }
            s.push_str(if i + 1 < cells.len() { "  " } else { "" });
        }
        s.trim_end().to_owned() + "\n"
    };
    out.push_str(&line(&header.map(str::to_owned), None));
    for (r, c) in snapshot.rows.iter().zip(&cells) {
        out.push_str(&line(c, Some(r.health(now))));
    }
    out
}

fn ansi(h: Health) -> &'static str {
    match h {
        Health::Running => "\x1b[32m",
        Health::Stale => "\x1b[33m",
        Health::Crashed => "\x1b[31m",
        Health::Stopped => "\x1b[2m",
        Health::Unknown => "\x1b[90m",
    }
}

/// The columns of the table and the live view, in [`row_cells`]' order.
pub const COLUMNS: [&str; 10] = [
    "WORKER",
    "HEALTH",
    "LAST SEEN",
    "JOBS",
    "ERRORS",
    "BREAKER",
    "PID",
    "HOST",
    "MEMORY",
    "UPTIME",
];

/// The cells of one worker's line.
pub fn row_cells(r: &StatusRow, now: DateTime<Utc>) -> [String; 10] {
    let dash = || "-".to_owned();
    [
        r.worker_name.clone(),
        r.health(now).as_str().to_owned(),
        r.last_heartbeat
            .map(|t| ago(now, t))
            .unwrap_or_else(|| "never".into()),
        r.jobs_processed.map(|n| n.to_string()).unwrap_or_else(dash),
        r.error_count.map(|n| n.to_string()).unwrap_or_else(dash),
        if r.circuit_breaker_open == Some(true) {
            "OPEN".into()
        } else {
            dash()
        },
        r.pid.map(|n| n.to_string()).unwrap_or_else(dash),
        r.hostname.clone().unwrap_or_else(dash),
        r.memory_rss_bytes.map(bytes).unwrap_or_else(dash),
        r.uptime_seconds.map(duration).unwrap_or_else(dash),
    ]
}

/// "12 s ago", "4 min ago", "3 h ago", "2 d ago".
pub fn ago(now: DateTime<Utc>, then: DateTime<Utc>) -> String {
    let secs = (now - then).num_seconds();
    if secs < 0 {
        return "just now".into();
    }
    format!("{} ago", duration(secs))
}

/// "45 s", "4 min", "2 h 5 min", "3 d 4 h".
pub fn duration(secs: i64) -> String {
    match secs {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min", s / 60),
        s if s < 86_400 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        s => format!("{} d {} h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// "48.2 MiB".
pub fn bytes(n: i64) -> String {
    let n = n.max(0) as f64;
    if n >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} GiB", n / (1024.0 * 1024.0 * 1024.0))
    } else if n >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", n / (1024.0 * 1024.0))
    } else {
        format!("{:.0} KiB", n / 1024.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, status: &str, secs_ago: i64, now: DateTime<Utc>) -> StatusRow {
        serde_json::from_value(json!({
            "worker_name": name, "status": status, "jobs_processed": 12, "error_count": 1,
            "last_heartbeat": now - chrono::Duration::seconds(secs_ago), "heartbeat_interval_seconds": 30,
            "memory_rss_bytes": 50_593_792, "uptime_seconds": 7500, "pid": 42, "hostname": "vps-1",
            "circuit_breaker_open": false
        }))
        .expect("row")
    }

    #[test]
    fn table_has_the_header_and_one_line_per_worker() {
        let now = Utc::now();
        let snap = Snapshot {
            rows: vec![
                row("a", "running", 12, now),
                row("b", "running", 600, now),
                row("c", "stopped", 5, now),
            ],
            now,
        };
        let t = render_table(&snap, false);
        assert!(t.starts_with("Worker Status  1/3 running\n"), "{t}");
        assert!(t.contains("a       running  12 s ago"), "{t}");
        assert!(t.contains("stale"), "{t}");
        assert!(t.contains("48.2 MiB") && t.contains("2 h 5 min"), "{t}");
        assert_eq!(exit_code(&snap), EXIT_UNHEALTHY);
    }

    #[test]
    fn healthy_fleet_exits_zero_and_breaker_exits_one() {
        let now = Utc::now();
        let mut snap = Snapshot {
            rows: vec![row("a", "running", 1, now), row("b", "stopped", 999, now)],
            now,
        };
        assert_eq!(exit_code(&snap), 0);
        snap.rows[0].circuit_breaker_open = Some(true);
        assert_eq!(exit_code(&snap), EXIT_UNHEALTHY);
    }

    #[test]
    fn colors_only_when_asked() {
        let now = Utc::now();
        let snap = Snapshot {
            rows: vec![row("a", "crashed", 1, now)],
            now,
        };
        assert!(render_table(&snap, true).contains("\x1b[31mcrashed"));
        assert!(!render_table(&snap, false).contains('\x1b'));
    }
}
