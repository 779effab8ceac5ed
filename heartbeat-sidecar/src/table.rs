//! How a worker's row is shown: the columns and cells shared by the
//! `status` table and the `--watch` view, and the small formats they use.

use chrono::{DateTime, Utc};
use heartbeat_sdk::read::Snapshot;
use heartbeat_sdk::StatusRow;

/// `Worker Status  4/5 running`: the first line of the table and of the live view.
pub fn headline(snapshot: &Snapshot) -> String {
    format!(
        "Worker Status  {}/{} running",
        snapshot.running(),
        snapshot.rows.len()
    )
}

/// Some worker needs attention.
pub const EXIT_UNHEALTHY: i32 = 1;

/// `status` and the live view end with this: 1 when a worker needs
/// attention (stale, crashed, breaker open), else 0.
pub fn exit_code(snapshot: &Snapshot) -> i32 {
    if snapshot.needs_attention() {
        EXIT_UNHEALTHY
    } else {
        0
    }
}

/// What the table says when there are no rows.
pub const NO_WORKERS: &str = "No worker has reported yet.";

/// The columns of the table and the live view, in [`row_cells`]' order.
pub const COLUMNS: [&str; 12] = [
    "WORKER",
    "HEALTH",
    "RESTARTS",
    "LAST SEEN",
    "JOBS",
    "ERRORS",
    "BREAKER",
    "PID",
    "HOST",
    "MEMORY",
    "CPU",
    "UPTIME",
];

/// The cells of one worker's line.
pub fn row_cells(r: &StatusRow, now: DateTime<Utc>) -> [String; 12] {
    let dash = || "-".to_owned();
    [
        r.worker_name.clone(),
        r.health(now).as_str().to_owned(),
        r.restarts.unwrap_or(0).to_string(),
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
        r.cpu_percent
            .map(|c| format!("{c:.1}%"))
            .unwrap_or_else(dash),
        r.uptime_seconds.map(duration).unwrap_or_else(dash),
    ]
}

/// How long a note about a past gap or exit stays under the table.
const NOTE_FOR: chrono::Duration = chrono::Duration::hours(1);

/// What the table's numbers do not say: a recent reporting gap (the worker
/// lived, its reports did not get through), a previous instance that
/// crashed or vanished. One line each, worst first.
pub fn notes(r: &StatusRow, now: DateTime<Utc>) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(at) = r.last_exit_at.filter(|&at| now - at < NOTE_FOR) {
        let how = r.last_exit_status.as_deref().unwrap_or("ended");
        if how != "stopped" {
            let code = match (r.last_exit_code, r.last_exit_signal) {
                (Some(c), _) => format!(" (exit code {c})"),
                (None, Some(s)) => format!(" (signal {s})"),
                _ => String::new(),
            };
            let error = r
                .last_exit_error
                .as_deref()
                .map(|e| format!(": {}", e.lines().last().unwrap_or(e)))
                .unwrap_or_default();
            notes.push(format!(
                "{}: restarted {} time{}; the previous instance {how} {}{code}{error}",
                r.worker_name,
                r.restarts.unwrap_or(0),
                if r.restarts == Some(1) { "" } else { "s" },
                ago(now, at)
            ));
        }
    }
    if let Some((began, ended, missed)) = r.reporting_gap().filter(|g| now - g.1 < NOTE_FOR) {
        notes.push(format!(
            "{}: reporting gap {} ({missed} beat{} not delivered), recovered {}",
            r.worker_name,
            duration((ended - began).num_seconds().max(0)),
            if missed == 1 { "" } else { "s" },
            ago(now, ended)
        ));
    }
    notes
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

    #[test]
    fn formats() {
        assert_eq!(duration(45), "45 s");
        assert_eq!(duration(7500), "2 h 5 min");
        assert_eq!(duration(3 * 86_400 + 4 * 3600), "3 d 4 h");
        assert_eq!(bytes(50_593_792), "48.2 MiB");
        assert_eq!(bytes(300 * 1024), "300 KiB");
        let now = Utc::now();
        assert_eq!(ago(now, now + chrono::Duration::seconds(5)), "just now");
    }
}
