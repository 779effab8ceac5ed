//! What the store itself records about a worker's lives: restarts, the last
//! crashes, how the previous instance ended. The same rule is the trigger
//! `hp_worker_status_liveness` in `sql/20261201000001_hp_liveness.sql`; the
//! local store applies this one, and a test feeds both the same writes.

use chrono::{DateTime, Duration, Utc};

/// Crashes kept: enough to tell three within ten minutes.
pub(crate) const CRASHES_KEPT: usize = 3;
/// Three crashes within this long is a crash loop...
pub(crate) const FLAP_WINDOW_MINUTES: i64 = 10;
/// ...until this long without one.
pub(crate) const FLAP_CLEAN_MINUTES: i64 = 10;

/// What the store holds before a write (the old row).
#[derive(Debug, Clone, Default)]
pub(crate) struct Previous {
    pub instance_id: Option<String>,
    pub status: Option<String>,
    pub state: Option<String>,
    pub updated_at: Option<DateTime<Utc>>,
    pub last_heartbeat: Option<DateTime<Utc>>,
    pub exit_code: Option<i64>,
    pub exit_signal: Option<i64>,
    pub last_error: Option<String>,
    pub restarts: i64,
    pub recent_crashes: Vec<DateTime<Utc>>,
    pub ended: Ended,
    pub breaker_open: bool,
    pub gap_ended_at: Option<DateTime<Utc>>,
}

/// What a write says of the worker, for [`events`].
#[derive(Debug, Clone, Default)]
pub(crate) struct Incoming<'a> {
    pub instance_id: &'a str,
    pub status: &'a str,
    pub breaker_open: bool,
    /// `None`: not sent (the row keeps its state).
    pub state: Option<&'a str>,
    pub pid: Option<u32>,
    pub exit_code: Option<i32>,
    pub exit_signal: Option<i32>,
    pub last_error: Option<&'a str>,
    pub consecutive_errors: u64,
    /// The reporting gap the write carries, if any.
    pub gap: Option<crate::model::row::GapReport>,
}

/// One entry of `hp_worker_events`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Event {
    pub kind: &'static str,
    pub from: Option<String>,
    pub to: Option<String>,
    pub detail: serde_json::Value,
}

/// How the previous instance ended, as the row keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Ended {
    pub at: Option<DateTime<Utc>>,
    /// `stopped`, `crashed`, or `vanished` (no final row).
    pub status: Option<String>,
    pub code: Option<i64>,
    pub signal: Option<i64>,
    pub error: Option<String>,
}

/// The store's columns after the write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Carried {
    pub restarts: i64,
    pub recent_crashes: Vec<DateTime<Utc>>,
    pub ended: Ended,
}

/// What a write of `instance_id` with `status` (and the breaker) makes of
/// the store's columns, at the store's clock `now`.
pub(crate) fn carry(
    old: Option<&Previous>,
    instance_id: &str,
    status: &str,
    breaker_open: bool,
    now: DateTime<Utc>,
) -> Carried {
    // An open breaker also says crashed, but the worker lives.
    let final_crash = status == "crashed" && !breaker_open;
    let Some(old) = old else {
        return Carried {
            restarts: 0,
            recent_crashes: if final_crash { vec![now] } else { Vec::new() },
            ended: Ended::default(),
        };
    };
    let mut crashes = old.recent_crashes.clone();
    let mut carried = Carried {
        restarts: old.restarts,
        recent_crashes: Vec::new(),
        ended: old.ended.clone(),
    };
    let new_instance = old
        .instance_id
        .as_deref()
        .is_some_and(|id| id != instance_id);
    if new_instance {
        let ended = matches!(old.status.as_deref(), Some("stopped" | "crashed"));
        carried.restarts += 1;
        carried.ended = Ended {
            at: if ended {
                old.updated_at
            } else {
                old.last_heartbeat
            },
            status: Some(if ended {
                old.status.clone().unwrap_or_default()
            } else {
                "vanished".to_owned()
            }),
            code: old.exit_code.filter(|_| ended),
            signal: old.exit_signal.filter(|_| ended),
            error: match old.status.as_deref() {
                Some("crashed") => old.last_error.clone(),
                Some("stopped") => None,
                _ => Some(VANISHED.to_owned()),
            },
        };
        // Vanished while it worked: a crash. Paused, draining or restarting: on purpose.
        if !ended && old.state.as_deref().unwrap_or("active") == "active" {
            if let Some(at) = old.last_heartbeat {
                crashes.push(at);
            }
        }
        // It ended crashed with its breaker open (its final row kept the
        // breaker): a crash the final row could not say.
        if old.status.as_deref() == Some("crashed") && old.breaker_open {
            if let Some(at) = old.updated_at {
                crashes.push(at);
            }
        }
    }
    if final_crash && (old.status.as_deref() != Some("crashed") || new_instance) {
        crashes.push(now);
    }
    let from = crashes.len().saturating_sub(CRASHES_KEPT);
    carried.recent_crashes = crashes.split_off(from);
    carried
}

/// What a write records in `hp_worker_events`: the status trigger
/// `hp_worker_status_events` in `sql/20261201000002_hp_events.sql`, the
/// same rule. `restarts` is the count after the write.
pub(crate) fn events(old: Option<&Previous>, new: &Incoming, restarts: i64) -> Vec<Event> {
    use serde_json::json;
    let mut out = Vec::new();
    let mut push = |kind, from: Option<&str>, to: Option<&str>, detail| {
        out.push(Event {
            kind,
            from: from.map(str::to_owned),
            to: to.map(str::to_owned),
            detail,
        })
    };
    let new_instance = old.is_none_or(|o| o.instance_id.as_deref() != Some(new.instance_id));
    let old_status = old.and_then(|o| o.status.as_deref());
    if let Some(o) = old.filter(|_| new_instance) {
        if old_status == Some("running") && o.state.as_deref().unwrap_or("active") == "active" {
            push(
                "vanished",
                Some("running"),
                None,
                json!({"instance_id": o.instance_id, "last_heartbeat": o.last_heartbeat}),
            );
        }
    }
    if new_instance && new.status != "unknown" {
        push(
            "started",
            old_status,
            Some(new.status),
            json!({"instance_id": new.instance_id, "pid": new.pid, "restarts": restarts}),
        );
    }
    let ended = matches!(new.status, "stopped" | "crashed");
    let breaker_crash = new.status == "crashed" && new.breaker_open;
    if ended && (old_status != Some(new.status) || new_instance) && !breaker_crash {
        let mut detail = serde_json::Map::new();
        if let Some(c) = new.exit_code {
            detail.insert("exit_code".into(), json!(c));
        }
        if let Some(s) = new.exit_signal {
            detail.insert("exit_signal".into(), json!(s));
        }
        if let Some(e) = new.last_error {
            detail.insert("error".into(), json!(e));
        }
        let kind = if new.status == "crashed" {
            "crashed"
        } else {
            "stopped"
        };
        push(kind, old_status, Some(new.status), detail.into());
    }
    let was_open = old.is_some_and(|o| o.breaker_open);
    if new.breaker_open != was_open {
        let mut detail = serde_json::Map::new();
        detail.insert("consecutive_errors".into(), json!(new.consecutive_errors));
        if let Some(e) = new.last_error {
            detail.insert("error".into(), json!(e));
        }
        let kind = if new.breaker_open {
            "breaker_opened"
        } else {
            "breaker_closed"
        };
        push(kind, None, None, detail.into());
    }
    if let (Some(o), Some(to)) = (old, new.state) {
        let from = o.state.as_deref();
        if from != Some(to) {
            let kind = match (from, to) {
                (_, "paused") => Some("paused"),
                (_, "draining") => Some("drained"),
                (_, "restarting") => Some("restarted"),
                (Some("paused"), "active") => Some("resumed"),
                _ => None,
            };
            if let Some(kind) = kind {
                push(kind, from, Some(to), json!({}));
            }
        }
    }
    if let (Some(o), Some(gap)) = (old, new.gap) {
        let (missed, began, ended_at) = (gap.missed_beats, gap.gap_started_at, gap.gap_ended_at);
        if missed > 0 && ended_at.is_some() && ended_at != o.gap_ended_at {
            push(
                "reporting_gap",
                None,
                None,
                json!({"missed_beats": missed, "gap_started_at": began, "gap_ended_at": ended_at}),
            );
        }
    }
    out
}

/// What `last_exit_error` says of an instance that ended without a final row.
pub(crate) const VANISHED: &str =
    "ended without a final row (killed by SIGKILL or the OOM killer, or its host went down)";

/// Three crashes within ten minutes, the last less than ten minutes ago.
/// `recent` is oldest first.
pub(crate) fn flapping(recent: &[DateTime<Utc>], now: DateTime<Utc>) -> bool {
    let n = recent.len();
    n >= 3
        && recent[n - 1] - recent[n - 3] <= Duration::minutes(FLAP_WINDOW_MINUTES)
        && now - recent[n - 1] < Duration::minutes(FLAP_CLEAN_MINUTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).expect("time")
    }

    fn previous(instance: &str, status: &str, carried: &Carried) -> Previous {
        Previous {
            instance_id: Some(instance.into()),
            status: Some(status.into()),
            updated_at: Some(at(0)),
            last_heartbeat: Some(at(0)),
            exit_code: Some(1),
            last_error: Some("boom".into()),
            restarts: carried.restarts,
            recent_crashes: carried.recent_crashes.clone(),
            ended: carried.ended.clone(),
            ..Previous::default()
        }
    }

    #[test]
    fn a_crash_loop_counts_restarts_and_keeps_the_last_three_crashes() {
        let mut c = carry(None, "i0", "running", false, at(0));
        for i in 1..=4 {
            let crashed = carry(
                Some(&previous(&format!("i{}", i - 1), "running", &c)),
                &format!("i{}", i - 1),
                "crashed",
                false,
                at(i * 2),
            );
            assert_eq!(crashed.recent_crashes.last(), Some(&at(i * 2)));
            c = carry(
                Some(&previous(&format!("i{}", i - 1), "crashed", &crashed)),
                &format!("i{i}"),
                "running",
                false,
                at(i * 2 + 1),
            );
            assert_eq!(c.ended.status.as_deref(), Some("crashed"));
            assert_eq!(c.ended.code, Some(1));
            assert_eq!(c.ended.error.as_deref(), Some("boom"));
        }
        assert_eq!(c.restarts, 4);
        assert_eq!(c.recent_crashes, vec![at(4), at(6), at(8)]);
        assert!(flapping(&c.recent_crashes, at(10)));
        assert!(
            !flapping(&c.recent_crashes, at(8 + 600)),
            "ten minutes clean"
        );
    }

    #[test]
    fn an_open_breaker_or_the_same_crashed_row_again_is_no_new_crash() {
        let start = carry(None, "i0", "running", false, at(0));
        let breaker = carry(
            Some(&previous("i0", "running", &start)),
            "i0",
            "crashed",
            true,
            at(1),
        );
        assert!(breaker.recent_crashes.is_empty());
        let crashed = carry(
            Some(&previous("i0", "running", &start)),
            "i0",
            "crashed",
            false,
            at(2),
        );
        let again = carry(
            Some(&previous("i0", "crashed", &crashed)),
            "i0",
            "crashed",
            false,
            at(3),
        );
        assert_eq!(again.recent_crashes, vec![at(2)]);
        assert_eq!(again.restarts, 0);
    }

    #[test]
    fn a_vanished_instance_is_a_crash_unless_it_was_paused() {
        let start = carry(None, "i0", "running", false, at(0));
        let next = carry(
            Some(&previous("i0", "running", &start)),
            "i1",
            "running",
            false,
            at(5),
        );
        assert_eq!(next.restarts, 1);
        assert_eq!(next.ended.status.as_deref(), Some("vanished"));
        assert_eq!(next.ended.error.as_deref(), Some(VANISHED));
        assert_eq!(next.recent_crashes, vec![at(0)]);
        let mut paused = previous("i1", "running", &next);
        paused.state = Some("paused".into());
        let resumed = carry(Some(&paused), "i2", "running", false, at(9));
        assert_eq!(resumed.restarts, 2);
        assert_eq!(resumed.recent_crashes, vec![at(0)], "a resume is no crash");
    }

    #[test]
    fn a_reporting_gap_is_one_event_and_the_same_gap_again_none() {
        let start = carry(None, "i0", "running", false, at(0));
        let mut old = previous("i0", "running", &start);
        let gap = crate::model::row::GapReport {
            missed_beats: 20,
            gap_started_at: Some(at(10)),
            gap_ended_at: Some(at(30)),
        };
        let beat = |gap| Incoming {
            instance_id: "i0",
            status: "running",
            gap,
            ..Incoming::default()
        };
        let kinds = |e: Vec<Event>| e.into_iter().map(|e| e.kind).collect::<Vec<_>>();
        assert_eq!(
            kinds(events(Some(&old), &beat(Some(gap)), 0)),
            ["reporting_gap"]
        );
        old.gap_ended_at = gap.gap_ended_at;
        assert!(
            events(Some(&old), &beat(Some(gap)), 0).is_empty(),
            "the same gap"
        );
        assert!(
            events(Some(&old), &beat(None), 0).is_empty(),
            "a beat after it"
        );
        let cleared = crate::model::row::GapReport {
            missed_beats: 0,
            gap_started_at: None,
            gap_ended_at: None,
        };
        assert!(
            events(Some(&old), &beat(Some(cleared)), 0).is_empty(),
            "a cleared gap"
        );
    }

    #[test]
    fn three_crashes_spread_over_more_than_ten_minutes_are_no_loop() {
        let spread = [at(0), at(300), at(601)];
        assert!(!flapping(&spread, at(610)));
        assert!(
            flapping(&[at(0), at(300), at(600)], at(610)),
            "at the boundary: a loop"
        );
        assert!(!flapping(&[at(0), at(1)], at(2)), "two are not three");
    }
}
