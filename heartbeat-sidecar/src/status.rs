//! `heartbeat-sidecar status`: every worker's health, as a table or JSON.

use std::fmt::Write as _;
use std::io::IsTerminal;

use heartbeat_sdk::read::{Reader, Snapshot};
use heartbeat_sdk::{Health, StatusRow};
use serde_json::{json, Value};

use crate::cli::StatusArgs;
use crate::exit::{Exit, USAGE};
use crate::table::{exit_code, headline, row_cells, COLUMNS, NO_WORKERS};

pub async fn status(args: StatusArgs) -> Exit {
    if args.watch {
        // The live view steers too: it opens the store as the operator
        // commands do (a signed-in operator's token included).
        return match crate::fleet::open(&args.store) {
            Ok((reader, operator)) => crate::watch::watch(reader, operator),
            Err(e) => usage_error(&e),
        };
    }
    let settings = match args.store.settings() {
        Ok(s) => s,
        Err(e) => return usage_error(&e),
    };
    let reader = match Reader::open(&settings) {
        Ok(r) => r,
        Err(e) => return usage_error(&e),
    };
    let snapshot = match reader.fetch().await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("heartbeat-sidecar: cannot read {}: {e}", reader.describe());
            return Exit::Code(USAGE);
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
    Exit::Code(exit_code(&snapshot))
}

fn usage_error(e: &dyn std::fmt::Display) -> Exit {
    eprintln!("heartbeat-sidecar: {e}");
    Exit::Code(USAGE)
}

/// 0 when no worker needs attention; 1 otherwise.
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
                    json!(seconds_since(r, snapshot)),
                );
            }
            v
        })
        .collect();
    Value::Array(rows)
}

fn seconds_since(row: &StatusRow, snapshot: &Snapshot) -> Option<f64> {
    row.last_heartbeat
        .map(|t| (snapshot.now - t).num_milliseconds() as f64 / 1000.0)
}

/// The headline, then one line per worker.
pub fn render_table(snapshot: &Snapshot, color: bool) -> String {
    let now = snapshot.now;
    let mut out = headline(snapshot) + "\n";
    if snapshot.rows.is_empty() {
        let _ = writeln!(out, "\n{NO_WORKERS}");
        return out;
    }
    let cells: Vec<[String; COLUMNS.len()]> =
        snapshot.rows.iter().map(|r| row_cells(r, now)).collect();
    let mut widths = COLUMNS.map(str::len);
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
    out.push_str(&line(&COLUMNS.map(str::to_owned), None));
    for (r, c) in snapshot.rows.iter().zip(&cells) {
        out.push_str(&line(c, Some(r.health(now))));
    }
    let notes: Vec<String> = snapshot
        .rows
        .iter()
        .flat_map(|r| crate::table::notes(r, now))
        .collect();
    if !notes.is_empty() {
        out.push('\n');
        for note in notes {
            let _ = writeln!(out, "{note}");
        }
    }
    out
}

fn ansi(h: Health) -> &'static str {
    match h {
        Health::Running => "\x1b[32m",
        Health::Stale => "\x1b[33m",
        Health::Crashed | Health::Flapping => "\x1b[31m",
        Health::Hung => "\x1b[35m",
        Health::Stopped => "\x1b[2m",
        Health::Unknown => "\x1b[90m",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::EXIT_UNHEALTHY;
    use chrono::{DateTime, Utc};

    fn row(name: &str, status: &str, secs_ago: i64, now: DateTime<Utc>) -> StatusRow {
        serde_json::from_value(json!({
            "worker_name": name, "status": status, "jobs_processed": 12, "error_count": 1,
            "last_heartbeat": now - chrono::Duration::seconds(secs_ago), "heartbeat_interval_seconds": 30,
            "memory_rss_bytes": 50_593_792, "uptime_seconds": 7500, "pid": 42, "hostname": "vps-1",
            "circuit_breaker_open": false, "cpu_percent": 1.25
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
        assert!(t.contains("a       running  0         12 s ago"), "{t}");
        assert!(t.contains("stale"), "{t}");
        assert!(t.contains("48.2 MiB") && t.contains("2 h 5 min"), "{t}");
        assert!(t.contains("CPU") && t.contains("1.2%"), "{t}");
        assert_eq!(exit_code(&snap), EXIT_UNHEALTHY);
    }

    #[test]
    fn a_crash_loop_and_a_reporting_gap_are_said_under_the_table() {
        let now = Utc::now();
        let mut looping = row("loop", "running", 1, now);
        looping.restarts = Some(4);
        looping.recent_crashes = Some(vec![
            now - chrono::Duration::seconds(9),
            now - chrono::Duration::seconds(6),
            now - chrono::Duration::seconds(3),
        ]);
        looping.last_exit_at = Some(now - chrono::Duration::seconds(3));
        looping.last_exit_status = Some("crashed".into());
        looping.last_exit_code = Some(1);
        looping.last_exit_error = Some("at main.js:3\nError: ECONNREFUSED".into());
        let mut gap = row("orders", "running", 1, now);
        // The worker's clock is 5 s behind the store's.
        gap.client_heartbeat = Some(now - chrono::Duration::seconds(6));
        gap.missed_beats = Some(24);
        gap.gap_started_at = Some(now - chrono::Duration::seconds(5 + 15 * 60));
        gap.gap_ended_at = Some(now - chrono::Duration::seconds(5 + 3 * 60));
        let snap = Snapshot {
            rows: vec![looping, gap],
            now,
        };
        let t = render_table(&snap, false);
        assert!(t.contains("loop    flapping  4 "), "{t}");
        assert!(
            t.contains("loop: restarted 4 times; the previous instance crashed 3 s ago (exit code 1): Error: ECONNREFUSED"),
            "{t}"
        );
        assert!(
            t.contains(
                "orders: reporting gap 12 min (24 beats not delivered), recovered 3 min ago"
            ),
            "{t}"
        );
        assert_eq!(exit_code(&snap), EXIT_UNHEALTHY, "flapping needs attention");
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
