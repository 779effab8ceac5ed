//! The worker's side of control: what operators want of one worker (its
//! `hp_worker_control` row) and what the worker is doing about it (the
//! `state` column). Pure rules; the beat loop reads rows, the handle obeys.

use serde::{Deserialize, Serialize};

/// One worker's `hp_worker_control` row, the columns a worker reads.
/// No row is the same as the default: active, every counter at zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DesiredControl {
    /// `active` or `paused` (anything else reads as active).
    #[serde(default, deserialize_with = "paused_from_text", rename = "desired")]
    pub paused: bool,
    /// Grows on every change of the row.
    #[serde(default)]
    pub generation: i64,
    /// One-shot requests: each increase is one request.
    #[serde(default)]
    pub restart_seq: i64,
    #[serde(default)]
    pub run_now_seq: i64,
    #[serde(default)]
    pub drain_seq: i64,
}

/// The columns of a control poll, in the order PostgREST is asked for them.
pub(crate) const CONTROL_COLUMNS: &str = "desired,generation,restart_seq,run_now_seq,drain_seq";

fn paused_from_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<String>::deserialize(d)?.as_deref() == Some("paused"))
}

/// What a worker is doing about control (the `state` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkerState {
    /// Taking work.
    Active,
    /// Taking no new work, staying up.
    Paused,
    /// Finishing its work to exit (a drain: it comes back paused).
    Draining,
    /// Finishing its work to exit and come back active.
    Restarting,
}

impl WorkerState {
    /// The `state` column's word.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Active => "active",
            WorkerState::Paused => "paused",
            WorkerState::Draining => "draining",
            WorkerState::Restarting => "restarting",
        }
    }

    /// Draining and restarting end the process: nothing undoes them.
    pub fn is_exiting(self) -> bool {
        matches!(self, WorkerState::Draining | WorkerState::Restarting)
    }
}

/// What one control row asks of a worker that had applied `before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Asked {
    pub state: WorkerState,
    /// A run-now request arrived (several since the last read are one run).
    pub run_now: bool,
}

/// The rule: counters found at start count as served (`before` is `None`);
/// after that, a restart or a drain ends the process (restart wins, it
/// brings the worker back active), otherwise `desired` says paused or active.
/// An exit already under way is never undone.
pub(crate) fn asked(
    before: Option<&DesiredControl>,
    now: &DesiredControl,
    current: WorkerState,
) -> Asked {
    let state_from_desired = if now.paused {
        WorkerState::Paused
    } else {
        WorkerState::Active
    };
    let Some(before) = before else {
        return Asked {
            state: state_from_desired,
            run_now: false,
        };
    };
    let state = if current.is_exiting() {
        current
    } else if now.restart_seq > before.restart_seq {
        WorkerState::Restarting
    } else if now.drain_seq > before.drain_seq {
        WorkerState::Draining
    } else {
        state_from_desired
    };
    Asked {
        state,
        run_now: now.run_now_seq > before.run_now_seq,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A control row, for this file's tests and control_state's.
    pub(crate) fn row(
        paused: bool,
        generation: i64,
        restart: i64,
        run_now: i64,
        drain: i64,
    ) -> DesiredControl {
        DesiredControl {
            paused,
            generation,
            restart_seq: restart,
            run_now_seq: run_now,
            drain_seq: drain,
        }
    }

    #[test]
    fn counters_found_at_start_are_served() {
        let found = row(false, 9, 3, 4, 2);
        let a = asked(None, &found, WorkerState::Active);
        assert_eq!(
            a,
            Asked {
                state: WorkerState::Active,
                run_now: false
            }
        );
        let a = asked(None, &row(true, 9, 3, 4, 2), WorkerState::Active);
        assert_eq!(
            a.state,
            WorkerState::Paused,
            "a drained worker comes back paused"
        );
    }

    #[test]
    fn each_request_is_read_from_its_counter() {
        let before = row(false, 1, 0, 0, 0);
        let cases = [
            (row(true, 2, 0, 0, 0), WorkerState::Paused, false),
            (row(false, 2, 1, 0, 0), WorkerState::Restarting, false),
            (row(true, 2, 0, 0, 1), WorkerState::Draining, false),
            (row(false, 2, 0, 2, 0), WorkerState::Active, true),
            (row(true, 2, 1, 0, 1), WorkerState::Restarting, false),
        ];
        for (now, state, run_now) in cases {
            assert_eq!(
                asked(Some(&before), &now, WorkerState::Active),
                Asked { state, run_now },
                "{now:?}"
            );
        }
    }

    #[test]
    fn an_exit_under_way_is_never_undone() {
        let before = row(false, 1, 1, 0, 0);
        let resumed = row(false, 2, 1, 0, 0);
        assert_eq!(
            asked(Some(&before), &resumed, WorkerState::Restarting).state,
            WorkerState::Restarting
        );
        assert_eq!(
            asked(Some(&before), &resumed, WorkerState::Draining).state,
            WorkerState::Draining
        );
    }

    #[test]
    fn reads_postgrest_rows() {
        let rows: Vec<DesiredControl> = serde_json::from_str(
            r#"[{"desired":"paused","generation":7,"restart_seq":1,"run_now_seq":2,"drain_seq":0}]"#,
        )
        .expect("rows");
        assert_eq!(rows, vec![row(true, 7, 1, 2, 0)]);
        let odd: DesiredControl = serde_json::from_str(r#"{"desired":null}"#).expect("row");
        assert_eq!(odd, DesiredControl::default());
    }
}
