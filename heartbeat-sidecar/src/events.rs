//! `heartbeat-sidecar events [NAME]`: what happened to the workers, from
//! `hp_worker_events`. The sweep runs first, so a worker that went silent
//! shows as stale or hung without a watcher. And `prune`: the ghosts.

use chrono::Utc;
use heartbeat_sdk::WorkerEvent;

use crate::cli::{EventsArgs, PruneArgs};
use crate::exit::{fail, Exit, USAGE};

/// Events older than this are dropped by the sweep.
pub const RETAIN_DAYS: i64 = 30;

pub async fn events(args: EventsArgs) -> Exit {
    let (_, operator) = match crate::fleet::open_or_usage(&args.store) {
        Ok(both) => both,
        Err(exit) => return exit,
    };
    if let Err(e) = operator.sweep(chrono::Duration::days(RETAIN_DAYS)).await {
        // Reading still works; only what no write says may be missing.
        eprintln!("heartbeat-sidecar: the sweep did not run ({e}): stale and hung workers since the last sweep are not listed");
    }
    let since = chrono::Duration::from_std(args.since)
        .ok()
        .and_then(|d| Utc::now().checked_sub_signed(d));
    let events = match operator.events(since, args.name.as_deref()).await {
        Ok(e) => e,
        Err(e) => {
            let fix = "apply sql/20261201000002_hp_events.sql on Supabase";
            return fail(USAGE, format!("cannot read the events: {e} ({fix})"));
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&events).unwrap_or_default()
        );
        return Exit::Code(0);
    }
    if events.is_empty() {
        println!("Nothing happened in that time.");
        return Exit::Code(0);
    }
    let width = events
        .iter()
        .map(|e| e.worker_name.chars().count())
        .max()
        .unwrap_or(6)
        .max(6);
    println!(
        "{:<19}  {:<width$}  {:<14}  DETAIL",
        "AT", "WORKER", "EVENT"
    );
    for e in &events {
        let line = format!(
            "{:<19}  {:<width$}  {:<14}  {}",
            e.at.with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M:%S"),
            e.worker_name,
            e.kind,
            detail(e)
        );
        println!("{}", line.trim_end());
    }
    Exit::Code(0)
}

/// "exit code 1: Error: boom", "24 beats not delivered", "running -> stale".
pub(crate) fn detail(e: &WorkerEvent) -> String {
    let d = &e.detail;
    let mut parts = Vec::new();
    if let (Some(from), Some(to)) = (&e.from_state, &e.to_state) {
        parts.push(format!("{from} -> {to}"));
    }
    // The sidecar's own words for an exit with no stderr, left out below:
    // they would only say the code or signal again.
    let mut said = Vec::new();
    if let Some(c) = d.get("exit_code").and_then(|v| v.as_i64()) {
        parts.push(format!("exit code {c}"));
        said.push(format!("exited with code {c}"));
    }
    if let Some(s) = d.get("exit_signal").and_then(|v| v.as_i64()) {
        let name = i32::try_from(s).map_or_else(|_| s.to_string(), crate::exit::signal_name);
        parts.push(format!("signal {name}"));
        said.push(format!("killed by signal {name}"));
    }
    if let Some(n) = d.get("missed_beats").and_then(|v| v.as_i64()) {
        parts.push(format!("{n} beats not delivered"));
    }
    if let Some(n) = d
        .get("restarts")
        .and_then(|v| v.as_i64())
        .filter(|&n| n > 0)
    {
        parts.push(format!("restart {n}"));
    }
    // The sweep's "since when", as spans up to the event.
    for (key, what) in [
        ("last_heartbeat", "no beat for"),
        ("last_progress_at", "no progress for"),
        ("run_started_at", "its run has gone on for"),
    ] {
        let since = d
            .get(key)
            .and_then(|v| v.as_str())
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        if let Some(t) = since {
            let span = (e.at - t.with_timezone(&chrono::Utc))
                .to_std()
                .unwrap_or_default();
            let whole = std::time::Duration::from_secs(span.as_secs());
            parts.push(format!("{what} {}", humantime::format_duration(whole)));
        }
    }
    if let Some(error) = d.get("error").and_then(|v| v.as_str()) {
        let last = error.lines().last().unwrap_or(error).trim();
        if !last.is_empty() && !said.iter().any(|s| s == last) {
            parts.push(last.to_owned());
        }
    }
    parts.join(", ")
}

/// `heartbeat-sidecar prune --gone-for 7d [--dry-run]`.
pub async fn prune(args: PruneArgs) -> Exit {
    let (_, operator) = match crate::fleet::open_or_usage(&args.store) {
        Ok(both) => both,
        Err(exit) => return exit,
    };
    let gone_for = chrono::Duration::from_std(args.gone_for).unwrap_or(chrono::Duration::MAX);
    let pruned = match operator.prune(gone_for, args.dry_run).await {
        Ok(p) => p,
        Err(e) => return fail(USAGE, e),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&pruned).unwrap_or_default()
        );
        return Exit::Code(0);
    }
    let gone = humantime::format_duration(args.gone_for);
    if pruned.is_empty() {
        println!("No worker has been gone for {gone}.");
        return Exit::Code(0);
    }
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    println!("{verb} {} worker(s) not seen for {gone}:", pruned.len());
    for p in &pruned {
        println!(
            "  {}  last seen {}  ({})",
            p.worker_name,
            p.last_seen
                .map(|t| t
                    .with_timezone(&chrono::Local)
                    .format("%Y-%m-%d %H:%M")
                    .to_string())
                .unwrap_or_else(|| "never".into()),
            p.status.as_deref().unwrap_or("unknown")
        );
    }
    Exit::Code(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(detail: serde_json::Value) -> WorkerEvent {
        serde_json::from_value(serde_json::json!({
            "id": 7, "at": "2026-12-01T12:00:00Z", "worker_name": "pnl-job",
            "kind": "crashed", "from_state": "running", "to_state": "crashed",
            "detail": detail,
        }))
        .expect("an event")
    }

    #[test]
    fn the_sidecars_own_words_for_a_silent_exit_are_not_said_twice() {
        let silent = event(serde_json::json!({"exit_code": 7, "error": "exited with code 7"}));
        assert_eq!(detail(&silent), "running -> crashed, exit code 7");
        let killed =
            event(serde_json::json!({"exit_signal": 9, "error": "killed by signal SIGKILL"}));
        assert_eq!(detail(&killed), "running -> crashed, signal SIGKILL");
        let told = event(serde_json::json!({"exit_code": 1, "error": "at main.js:3\nError: boom"}));
        assert_eq!(
            detail(&told),
            "running -> crashed, exit code 1, Error: boom"
        );
    }

    #[test]
    fn the_sweeps_since_when_reads_as_spans_up_to_the_event() {
        let mut stale =
            event(serde_json::json!({"last_heartbeat": "2026-12-01T11:49:57.250+00:00"}));
        stale.kind = "stale".into();
        stale.to_state = Some("stale".into());
        assert_eq!(detail(&stale), "running -> stale, no beat for 10m 2s");
        let hung = event(serde_json::json!({
            "last_progress_at": "2026-12-01T11:59:57Z", "run_started_at": "2026-12-01T11:48:00Z"
        }));
        assert_eq!(
            detail(&hung),
            "running -> crashed, no progress for 3s, its run has gone on for 12m"
        );
        let odd = event(serde_json::json!({"last_heartbeat": "yesterday"}));
        assert_eq!(
            detail(&odd),
            "running -> crashed",
            "a value it cannot read is left out"
        );
    }
}
