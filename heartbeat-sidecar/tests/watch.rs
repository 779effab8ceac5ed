//! `status --watch` driven in a real terminal (tmux): rows, the detail pane,
//! selection, sorting, quitting.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use hp_heartbeat_tests::eventually::{eventually, poll_until};

/// A tmux server of the test's own (a private socket, so the user's tmux is
/// never touched), killed on drop, quiet on stderr.
struct Tmux {
    socket: String,
    session: String,
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.tmux().arg("kill-server").status();
    }
}

impl Tmux {
    fn tmux(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket])
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c
    }

    fn start(command: &str) -> Option<Tmux> {
        if Command::new("tmux").arg("-V").output().is_err() {
            hp_heartbeat_tests::skip::or_require(
                "TMUX",
                "tmux is not installed, so the --watch view was not tested",
            );
            return None;
        }
        let tmux = Tmux {
            socket: format!("hp-test-{}", std::process::id()),
            session: "watch".into(),
        };
        let ok = tmux
            .tmux()
            .args([
                "new-session",
                "-d",
                "-s",
                &tmux.session,
                "-x",
                "150",
                "-y",
                "40",
                command,
            ])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "tmux new-session failed");
        Some(tmux)
    }

    fn screen(&self) -> String {
        let out = self
            .tmux()
            .args(["capture-pane", "-p", "-t", &self.session])
            .output()
            .expect("capture");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &str) {
        self.tmux()
            .args(["send-keys", "-t", &self.session, keys])
            .status()
            .expect("send-keys");
    }

    /// Waits until the screen shows `needle`.
    fn wait_for(&self, needle: &str) -> String {
        match poll_until(Duration::from_secs(10), || {
            let screen = self.screen();
            screen.contains(needle).then_some(screen)
        }) {
            Some(screen) => screen,
            None => panic!("{needle:?} never appeared:\n{}", self.screen()),
        }
    }

    fn alive(&self) -> bool {
        self.tmux()
            .args(["has-session", "-t", &self.session])
            .status()
            .is_ok_and(|s| s.success())
    }
}

#[test]
fn watch_shows_rows_the_detail_pane_sorting_and_quits_on_q() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("watch.db");
    store_with_every_state(&db);
    let command = format!(
        "HP_STORE={} {} status --watch",
        db.display(),
        env!("CARGO_BIN_EXE_heartbeat-sidecar")
    );
    let Some(tmux) = Tmux::start(&command) else {
        return;
    };

    let screen = tmux.wait_for("Worker Status  1/6 running");
    for name in [
        "breaker-worker",
        "crashed-worker",
        "fresh-worker",
        "stale-worker",
        "stopped-worker",
        "unknown-worker",
    ] {
        assert!(screen.contains(name), "{name} missing:\n{screen}");
    }
    assert!(screen.contains("sorted by name"));
    // Sorted by name, the first row is selected and its detail is shown.
    assert!(screen.contains("┌ breaker-worker"), "{screen}");
    assert!(
        screen.contains("10 in a row"),
        "the breaker worker's streak:\n{screen}"
    );

    tmux.keys("Down");
    let screen = tmux.wait_for("┌ crashed-worker");
    assert!(
        screen.contains("Error: ECONNREFUSED 127.0.0.1:5432"),
        "last error in the detail pane:\n{screen}"
    );
    assert!(screen.contains("code 1"), "{screen}");

    tmux.keys("s");
    tmux.wait_for("sorted by health");
    // The selection follows the worker, not the line.
    assert!(tmux.screen().contains("┌ crashed-worker"));

    tmux.keys("q");
    eventually(Duration::from_secs(5), "q quits the view", || {
        (!tmux.alive()).then_some(())
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_without_a_terminal_is_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("watch.db");
    store_with_every_state(&db);
    let mut cmd = sidecar();
    cmd.env("HP_STORE", &db).args(["status", "--watch"]);
    let out = output_within(cmd, Duration::from_secs(10)).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("needs a terminal") && err.contains("--json"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
