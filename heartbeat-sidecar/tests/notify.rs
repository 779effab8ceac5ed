//! systemd's notify protocol, against a datagram socket the test owns as
//! systemd would (`NOTIFY_SOCKET`, `WATCHDOG_USEC`): `READY=1` once the
//! worker runs, `WATCHDOG=1` only while the worker shows progress, the
//! worker's own message passed on, `STOPPING=1` on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use hp_heartbeat_tests::eventually::poll_until;

type Heard = Arc<Mutex<Vec<(Instant, String)>>>;

/// Every datagram that arrives, with when.
fn listen(socket: UnixDatagram) -> Heard {
    let heard: Heard = Arc::default();
    let into = Arc::clone(&heard);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = socket.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            into.lock().expect("lock").push((Instant::now(), text));
        }
    });
    heard
}

fn said(heard: &Heard, message: &str) -> Vec<Instant> {
    heard
        .lock()
        .expect("lock")
        .iter()
        .filter(|(_, m)| m.lines().any(|l| l == message))
        .map(|(t, _)| *t)
        .collect()
}

#[test]
fn ready_watchdog_only_with_progress_the_workers_own_message_and_stopping() {
    if std::process::Command::new("systemd-notify")
        .arg("--help")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        hp_heartbeat_tests::skip::or_require(
            "SYSTEMD",
            "systemd-notify is not installed (the systemd package): the notify test did not run",
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("notify.sock");
    let heard = listen(UnixDatagram::bind(&path).expect("bind"));
    let db = dir.path().join("n.db");
    // Says it is warming up (to its own NOTIFY_SOCKET, the sidecar's relay),
    // works for 1.5 s printing a line every 0.1 s, then hangs, alive.
    let worker = "systemd-notify --status='warming up'; i=0; while [ $i -lt 15 ]; do echo working; sleep 0.1; i=$((i+1)); done; echo quiet; exec sleep 60";
    let mut c = sidecar();
    c.env("HP_STORE", &db)
        .env("HP_LOG", "warn")
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "400000")
        .args(["run", "--name", "notified", "--", "sh", "-c", worker])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null());
    let mut child = c.spawn().expect("spawn");
    let pid = child.id() as i32;
    let stdout = child.stdout.take().expect("stdout");
    let quiet_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let mark = Arc::clone(&quiet_at);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line == "quiet" {
                *mark.lock().expect("lock") = Some(Instant::now());
            }
        }
    });
    let _fleet = Fleet(vec![child]);

    let ready = poll_until(Duration::from_secs(10), || {
        said(&heard, "READY=1").first().copied()
    })
    .expect("READY=1 once the worker runs");
    poll_until(Duration::from_secs(10), || {
        (!said(&heard, "STATUS=warming up").is_empty()).then_some(())
    })
    .expect("the worker's own message, passed on");
    let quiet = poll_until(Duration::from_secs(10), || *quiet_at.lock().expect("lock"))
        .expect("the worker went quiet");
    let pings = said(&heard, "WATCHDOG=1");
    assert!(
        pings.iter().any(|t| *t > ready && *t < quiet),
        "WATCHDOG=1 while the worker works: {:?}",
        heard.lock().expect("lock")
    );
    // Quiet for three watchdog periods: no ping later than one half period
    // (the last check that saw progress) plus a tick after it went quiet.
    let watch_until = quiet + Duration::from_millis(1200);
    while Instant::now() < watch_until {
        std::thread::sleep(Duration::from_millis(50));
    }
    let late: Vec<Duration> = said(&heard, "WATCHDOG=1")
        .into_iter()
        .filter(|t| *t > quiet + Duration::from_millis(500))
        .map(|t| t - quiet)
        .collect();
    assert!(
        late.is_empty(),
        "pings after the worker went quiet: {late:?}"
    );

    kill(pid, libc::SIGTERM);
    poll_until(Duration::from_secs(10), || {
        (!said(&heard, "STOPPING=1").is_empty()).then_some(())
    })
    .expect("STOPPING=1 on SIGTERM");
    assert_eq!(said(&heard, "READY=1").len(), 1, "READY once");
}
