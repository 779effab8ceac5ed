//! `status --watch` driven in a real terminal (tmux): rows, the detail pane,
//! selection, sorting, quitting.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use hp_heartbeat_tests::eventually::{eventually, poll_until};

static NEXT_SERVER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

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
            // One server per test: tests run at once, and a Drop kills its server.
            socket: format!(
                "hp-test-{}-{}",
                std::process::id(),
                NEXT_SERVER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ),
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

/// Each line of the screen that contains `needle`.
fn lines_with<'a>(screen: &'a str, needle: &str) -> Vec<&'a str> {
    screen.lines().filter(|l| l.contains(needle)).collect()
}

#[test]
fn watch_pauses_two_marked_workers_then_refuses_to_pause_the_rest_of_the_pool() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("steer.db");
    let _fleet = Fleet(
        ["web-1", "web-2", "web-3", "web-4"]
            .iter()
            .map(|name| worker(&db, name, "web"))
            .collect(),
    );
    for name in ["web-1", "web-2", "web-3", "web-4"] {
        wait_local_row(&db, name);
    }
    let set = sidecar()
        .env("HP_STORE", &db)
        .args(["pool", "set", "web", "--max-unavailable", "2"])
        .output()
        .expect("pool set");
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    let command = format!(
        "HP_STORE={} USER=alice {} status --watch",
        db.display(),
        env!("CARGO_BIN_EXE_heartbeat-sidecar")
    );
    let Some(tmux) = Tmux::start(&command) else {
        return;
    };
    tmux.wait_for("Worker Status  4/4 running");

    // Space marks the worker under the cursor and moves on.
    tmux.keys("Space");
    tmux.keys("Space");
    tmux.wait_for("· 2 marked");
    tmux.keys("P");
    let dialog = tmux.wait_for("pause 2 workers");
    assert!(dialog.contains("pause web-1, web-2"), "{dialog}");
    assert!(
        dialog.contains(
            "pool web: 4 workers, available 4 -> 2 (budget: at most 2 down, at least 1 up)"
        ),
        "the dialog shows the CLI's impact:\n{dialog}"
    );
    tmux.keys("y");
    tmux.wait_for("accepted (audit #");
    // Each row shows the request until the worker's row says it is done.
    let screen = match poll_until(Duration::from_secs(20), || {
        let screen = tmux.screen();
        (lines_with(&screen, "pause applied").len() == 2).then_some(screen)
    }) {
        Some(screen) => screen,
        None => panic!(
            "the two pauses were never shown applied:\n{}",
            tmux.screen()
        ),
    };
    for line in lines_with(&screen, "pause applied") {
        assert!(
            line.contains("web-1") || line.contains("web-2"),
            "only the marked workers pause:\n{screen}"
        );
    }
    for name in ["web-1", "web-2"] {
        let row = wait_local_row(&db, name);
        assert_eq!(row.extra["state"], "paused", "{name} in the store");
    }

    // The cursor is on web-3: mark it and web-4, and try to pause them too.
    tmux.keys("Space");
    tmux.keys("Space");
    tmux.wait_for("· 2 marked");
    tmux.keys("P");
    let dialog = tmux.wait_for("pause web-3, web-4");
    assert!(dialog.contains("available 2 -> 0"), "{dialog}");
    tmux.keys("y");
    let refusal = tmux.wait_for("any key closes this");
    assert!(refusal.contains("refused ("), "{refusal}");
    for name in ["web-3", "web-4"] {
        let row = wait_local_row(&db, name);
        assert_eq!(
            row.extra["state"], "active",
            "{name} was refused, so it runs"
        );
    }

    // Any key closes the refusal (not Escape here: Escape and `l` sent
    // together read as Alt-l); `l` shows the audit pane with both requests.
    tmux.keys("Enter");
    tmux.keys("l");
    let audit = tmux.wait_for("audit log, newest first");
    let refused = lines_with(&audit, "refused");
    let accepted = lines_with(&audit, "accepted");
    assert!(
        refused.iter().any(|l| l.contains("web-3,web-4"))
            && refused.iter().any(|l| l.contains("alice@")),
        "the refusal in the audit pane:\n{audit}"
    );
    assert!(
        accepted.iter().any(|l| l.contains("web-1,web-2")),
        "the pause in the audit pane:\n{audit}"
    );

    tmux.keys("q");
    eventually(Duration::from_secs(5), "q quits the view", || {
        (!tmux.alive()).then_some(())
    });
}
