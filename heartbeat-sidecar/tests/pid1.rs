//! The sidecar as a container's entrypoint: PID 1 of a new PID namespace
//! (`unshare --pid --fork --mount-proc`, as root). It reaps the orphans its
//! worker leaves, as tini does, and with `--signal-group` a `docker stop`
//! (SIGTERM to PID 1) reaches the whole group and ends with `stopped`.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use heartbeat_sdk::sidecar::SqliteStore;
use hp_heartbeat_tests::eventually::poll_until;

/// (pid, ppid, state, comm) of every process, from /proc.
fn processes() -> Vec<(i32, i32, char, String)> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) S ppid ...": comm may hold spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_owned();
        let rest: Vec<&str> = stat[close + 2..].split(' ').collect();
        let (Some(state), Some(ppid)) = (
            rest.first().and_then(|s| s.chars().next()),
            rest.get(1).and_then(|p| p.parse().ok()),
        ) else {
            continue;
        };
        all.push((pid, ppid, state, comm));
    }
    all
}

fn children_of(pid: i32) -> Vec<(i32, i32, char, String)> {
    processes().into_iter().filter(|p| p.1 == pid).collect()
}

fn unshare_works() -> bool {
    let ok = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        hp_heartbeat_tests::skip::or_require(
            "UNSHARE",
            "unshare --pid --fork --mount-proc does not work here (needs root): the PID 1 test did not run",
        );
    }
    ok
}

fn row_status(db: &Path, name: &str) -> Option<String> {
    SqliteStore::new(db)
        .read_all()
        .ok()?
        .into_iter()
        .find(|r| r.worker_name == name)?
        .status
}

/// The line docs/sidecar.md shows.
const DOCUMENTED: &str = "unshare --pid --fork --mount-proc heartbeat-sidecar run --name init --signal-group -- sh -c 'for i in 1 2 3 4 5; do (sleep 1 &); done; exec sleep 60'";

/// Words of a line with single-quoted parts (enough for the one above).
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut rest = line;
    while let Some(start) = rest.find(|c: char| c != ' ') {
        rest = &rest[start..];
        if let Some(quoted) = rest.strip_prefix('\'') {
            let end = quoted.find('\'').expect("closing quote");
            words.push(quoted[..end].to_owned());
            rest = &quoted[end + 1..];
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            words.push(rest[..end].to_owned());
            rest = &rest[end..];
        }
    }
    words
}

#[test]
fn the_documented_pid_1_line_is_the_one_this_test_runs() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/sidecar.md"))
        .expect("docs/sidecar.md");
    assert!(
        doc.lines().any(|l| l == DOCUMENTED),
        "docs/sidecar.md no longer shows:\n{DOCUMENTED}"
    );
}

#[test]
fn as_pid_1_it_reaps_orphans_and_docker_stop_ends_with_stopped() {
    if !unshare_works() {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("pid1.db");
    // docs/sidecar.md's line. Five orphans: each subshell starts a sleep and
    // exits at once, so the sleep's parent becomes PID 1, the sidecar. They
    // end after a second.
    let words = shell_words(DOCUMENTED);
    assert_eq!(words[4], "heartbeat-sidecar");
    let mut unshare = Command::new(&words[0]);
    unshare
        .args(&words[1..4])
        .arg(env!("CARGO_BIN_EXE_heartbeat-sidecar"))
        .args(&words[5..])
        .env("HP_STORE", &db)
        .env("HP_HEARTBEAT_INTERVAL_SECS", "1")
        .env("HP_LOG", "warn");
    let unshare = quiet(&mut unshare).spawn().expect("unshare");
    let _fleet = Fleet(vec![unshare]);
    let unshare_pid = _fleet.0[0].id() as i32;
    // The sidecar is unshare's child; inside the namespace it is PID 1.
    let sidecar = poll_until(Duration::from_secs(10), || {
        children_of(unshare_pid).first().map(|p| p.0)
    })
    .expect("the sidecar under unshare");
    let orphans = poll_until(Duration::from_secs(10), || {
        // `sleep 1`, not the worker itself (`sleep 60`).
        let sleeping: Vec<i32> = children_of(sidecar)
            .into_iter()
            .filter(|p| {
                std::fs::read(format!("/proc/{}/cmdline", p.0))
                    .is_ok_and(|c| c == b"sleep\x001\x00")
            })
            .map(|p| p.0)
            .collect();
        (sleeping.len() >= 5).then_some(sleeping)
    })
    .expect("the orphans, now the sidecar's children");
    // Once they have exited, none is left a zombie.
    let left = poll_until(Duration::from_secs(5), || {
        let alive: Vec<_> = children_of(sidecar)
            .into_iter()
            .filter(|p| orphans.contains(&p.0))
            .collect();
        alive.is_empty().then_some(())
    });
    assert!(left.is_some(), "orphans left: {:?}", children_of(sidecar));
    assert!(
        !children_of(sidecar).iter().any(|p| p.2 == 'Z'),
        "no zombie: {:?}",
        children_of(sidecar)
    );
    assert_eq!(row_status(&db, "init").as_deref(), Some("running"));

    // `docker stop`: SIGTERM to PID 1.
    kill(sidecar, libc::SIGTERM);
    let status = poll_until(Duration::from_secs(10), || {
        row_status(&db, "init").filter(|s| s != "running")
    });
    assert_eq!(status.as_deref(), Some("stopped"), "ends with stopped");
}
