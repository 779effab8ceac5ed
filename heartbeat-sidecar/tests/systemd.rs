//! The shipped unit, `examples/systemd/roundtable-worker.service`, checked
//! with systemd's own tools, and its `ExecStart=` line run the way systemd
//! would run it.
//!
//! Proven here:
//! - systemd's loader accepts the unit (`systemd-analyze verify`, in a temp
//!   root holding the host's units and the sidecar where `ExecStart=` says);
//! - it rates at most 4.0 (`systemd-analyze security --offline=yes
//!   --threshold=40`), and the figure its comment gives is the one measured;
//! - its `ExecStart=`, split, unquoted and expanded as systemd does, starts
//!   the real sidecar (the one substitution: the test's binary for
//!   `/usr/bin/heartbeat-sidecar`) and the Node example worker, in systemd's
//!   environment for a service (a fixed PATH, `$STATE_DIRECTORY`, no
//!   `HP_STORE`, the optional `EnvironmentFile=` absent, `UMask=`); the row
//!   lands in `$STATE_DIRECTORY/heartbeat.db` (mode 0600) where `status`
//!   finds it; SIGTERM to both processes at once (`KillMode=control-group`)
//!   ends in `stopped`, well within `TimeoutStopSec=`;
//! - under strace, every system call of the sidecar and the worker is one
//!   `SystemCallFilter=` allows, every socket family one
//!   `RestrictAddressFamilies=` allows, and every file opened for writing is
//!   in `$STATE_DIRECTORY` or the private `/tmp` (`ProtectSystem=strict`).
//!
//! Not proven, for there is no systemd as PID 1 here: `User=worker` itself
//! (as root the test runs the command as `nobody`, owner of the state
//! directory as systemd makes it; otherwise as the user running the test),
//! `WorkingDirectory=` (a temp dir stands in for /srv/roundtable), and the
//! sandbox being applied (namespaces, read-only mounts, seccomp): the trace
//! shows the processes stay inside it, not that the kernel enforces it.
//!
//! Needs `systemd-analyze` and `strace` (`.ci/run` installs the `systemd` and
//! `strace` packages) and node: skipped loudly without them, failed instead
//! when `HP_REQUIRE_SYSTEMD=1` (and `HP_REQUIRE_NODE=1` for node).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use heartbeat_sdk::sidecar::SqliteStore;
use hp_heartbeat_tests::eventually::{eventually, poll_until};
use regex::Regex;

const SIDECAR: &str = env!("CARGO_BIN_EXE_heartbeat-sidecar");
const UNIT_NAME: &str = "roundtable-worker.service";
/// Every unit shipped in examples/systemd.
const UNITS: [&str; 3] = [UNIT_NAME, ALERTS_UNIT, RUST_UNIT];
const ALERTS_UNIT: &str = "hp-alerts.service";
/// examples/rust_worker.rs, reporting with the SDK (no sidecar).
const RUST_UNIT: &str = "rust-worker.service";
/// systemd's PATH for services (DEFAULT_PATH of Debian's systemd 252).
const SERVICE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo")
        .to_path_buf()
}

fn unit_file(name: &str) -> PathBuf {
    repo().join("examples/systemd").join(name)
}

fn unit_text(name: &str) -> String {
    std::fs::read_to_string(unit_file(name)).expect("the shipped unit")
}

#[test]
fn every_unit_in_examples_systemd_is_tested_here() {
    let mut shipped: Vec<String> = std::fs::read_dir(repo().join("examples/systemd"))
        .expect("examples/systemd")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    shipped.sort();
    let mut known: Vec<String> = UNITS.iter().map(|u| (*u).to_owned()).collect();
    known.sort();
    assert_eq!(shipped, known, "a unit this test does not know");
}

/// Whether `tool` runs; if not, a loud skip or, when required, a failure.
fn have(tool: &str, package: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let why = format!("{tool} is not installed (Debian package {package})");
        if std::env::var("HP_REQUIRE_SYSTEMD").as_deref() == Ok("1") {
            panic!("HP_REQUIRE_SYSTEMD=1 but {why}");
        }
        loud_skip(&format!("systemd test: {why}"));
    }
    ok
}

fn systemd_analyze(args: &[&str]) -> Output {
    Command::new("systemd-analyze")
        .args(args)
        .env("SYSTEMD_COLORS", "0")
        .env("SYSTEMD_PAGER", "")
        .output()
        .expect("systemd-analyze")
}

fn both(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---- reading the unit as systemd does --------------------------------------

/// `(key, value)` of the `[Service]` section, continuation lines joined.
fn service_settings(text: &str) -> Vec<(String, String)> {
    let mut settings = Vec::new();
    let mut section = String::new();
    let mut pending = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if pending.is_empty() && (trimmed.starts_with('#') || trimmed.starts_with(';')) {
            continue;
        }
        // A trailing backslash continues the line; systemd keeps a space.
        if let Some(head) = trimmed.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        let full = std::mem::take(&mut pending) + trimmed;
        if full.starts_with('[') {
            section = full;
        } else if let Some((key, value)) = full.split_once('=') {
            if section == "[Service]" {
                settings.push((key.trim().to_owned(), value.trim().to_owned()));
            }
        }
    }
    settings
}

fn values<'a>(settings: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    settings
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

fn only<'a>(settings: &'a [(String, String)], key: &str) -> &'a str {
    match values(settings, key).as_slice() {
        [one] => one,
        other => panic!("{key}= should be set once in the unit, found {other:?}"),
    }
}

/// Splits a command line into words as systemd does (whitespace between
/// words; '...' and "..." quote; backslash escapes), then resolves `%%`.
/// Anything this unit does not use (other specifiers, other escapes)
/// panics, so a change to the unit cannot slip past a half-parsed line.
fn split_command(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return words;
        }
        let mut word = String::new();
        let mut quote = None;
        while let Some(c) = chars.next() {
            match (quote, c) {
                (None, c) if c.is_whitespace() => break,
                (None, '\'' | '"') => quote = Some(c),
                (Some(q), c) if c == q => quote = None,
                (_, '\\') => match chars.next() {
                    Some(e @ ('\\' | '\'' | '"')) => word.push(e),
                    other => panic!("escape \\{other:?} in {line:?}: not handled by this test"),
                },
                (_, '%') => match chars.next() {
                    Some('%') => word.push('%'),
                    other => panic!("specifier %{other:?} in {line:?}: not handled by this test"),
                },
                (_, c) => word.push(c),
            }
        }
        assert!(quote.is_none(), "unterminated quote in {line:?}");
        words.push(word);
    }
}

/// systemd's variable expansion: a word that is `$NAME` becomes the words of
/// its value, `${NAME}` inside a word its value, `$$` a `$`; any other `$`
/// (as in the pattern `done$`) stays.
fn expand(words: Vec<String>, env: &BTreeMap<String, String>) -> Vec<String> {
    let whole = Regex::new(r"^\$([A-Za-z_][A-Za-z0-9_]*)$").expect("regex");
    let braced = Regex::new(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$\$").expect("regex");
    let mut out = Vec::new();
    for word in words {
        if let Some(name) = whole.captures(&word).map(|c| c[1].to_owned()) {
            let value = env.get(&name).map(String::as_str).unwrap_or_default();
            out.extend(value.split_whitespace().map(str::to_owned));
            continue;
        }
        let replaced = braced.replace_all(&word, |c: &regex::Captures| match c.get(1) {
            Some(name) => env.get(name.as_str()).cloned().unwrap_or_default(),
            None => "$".to_owned(),
        });
        out.push(replaced.into_owned());
    }
    out
}

#[test]
fn the_command_line_splits_as_systemd_splits_it() {
    let words = split_command(r#"a 'b c' "d'e" f\"g 'done$' 100%% x"y z"w"#);
    assert_eq!(words, ["a", "b c", "d'e", "f\"g", "done$", "100%", "xy zw"]);
    let env = BTreeMap::from([("ARGS".to_owned(), "-v  -x".to_owned())]);
    let words = expand(split_command("run $ARGS ${ARGS}! $$HOME done$"), &env);
    assert_eq!(words, ["run", "-v", "-x", "-v  -x!", "$HOME", "done$"]);
}

// ---- systemd's own tools ----------------------------------------------------

/// A file system root holding the host's units, the shipped unit where an
/// admin puts it, and the sidecar where `ExecStart=` looks for it.
fn fake_root(exec_path: &str) -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("tmp");
    let units = root.path().join("usr/lib/systemd");
    std::fs::create_dir_all(&units).expect("mkdir");
    let copied = Command::new("cp")
        .args(["-a", "/usr/lib/systemd/system"])
        .arg(&units)
        .status()
        .expect("cp");
    assert!(copied.success(), "copying the host's units");
    let etc = root.path().join("etc/systemd/system");
    std::fs::create_dir_all(&etc).expect("mkdir");
    for unit in UNITS {
        std::fs::copy(unit_file(unit), etc.join(unit)).expect("unit");
    }
    let bin = root.path().join(exec_path.trim_start_matches('/'));
    std::fs::create_dir_all(bin.parent().expect("dir")).expect("mkdir");
    std::fs::hard_link(SIDECAR, &bin)
        .or_else(|_| std::fs::copy(SIDECAR, &bin).map(drop))
        .expect("sidecar into the root");
    root
}

#[test]
fn systemd_accepts_the_units() {
    if !have("systemd-analyze", "systemd") {
        return;
    }
    for unit in UNITS {
        let settings = service_settings(&unit_text(unit));
        let exec_path = split_command(only(&settings, "ExecStart")).remove(0);
        let root = fake_root(&exec_path);
        let root_arg = format!("--root={}", root.path().display());

        let out = systemd_analyze(&["verify", "--man=no", &root_arg, unit]);
        assert!(
            out.status.success(),
            "systemd-analyze verify {unit}:\n{}",
            both(&out)
        );
        assert_eq!(both(&out).trim(), "", "verify warned on {unit}");

        // The check is real: without the binary the same call fails.
        std::fs::remove_file(root.path().join(exec_path.trim_start_matches('/'))).expect("rm");
        let out = systemd_analyze(&["verify", "--man=no", &root_arg, unit]);
        assert!(
            !out.status.success(),
            "verify passed {unit} without the sidecar"
        );
        assert!(both(&out).contains(&exec_path), "{}", both(&out));
    }
}

#[test]
fn the_units_rate_at_most_4_0_and_say_so() {
    if !have("systemd-analyze", "systemd") {
        return;
    }
    for unit in UNITS {
        let file = unit_file(unit);
        let out = systemd_analyze(&[
            "security",
            "--offline=yes",
            "--threshold=40",
            file.to_str().expect("utf8"),
        ]);
        let report = both(&out);
        assert!(out.status.success(), "{unit}: exposure over 4.0:\n{report}");
        let level = Regex::new(&format!(
            r"Overall exposure level for {}: (\d+\.\d) (\w+)",
            regex::escape(unit)
        ))
        .expect("regex");
        let caps = level
            .captures(&report)
            .unwrap_or_else(|| panic!("no overall level:\n{report}"));
        let score: f64 = caps[1].parse().expect("score");
        assert!(score <= 4.0, "{report}");
        let claim = format!("rates it {} {}", &caps[1], &caps[2]);
        assert!(
            unit_text(unit).contains(&claim),
            "{unit}'s comment should say `{claim}` (measured):\n{report}"
        );
    }
}

/// `WatchdogSec=` in each: the sidecar (`Type=notify`) says READY=1, pings
/// with progress and says STOPPING=1, the watcher the same each round, the
/// SDK pings from `progress()` (each run below).
#[test]
fn the_units_are_notify_services_with_a_watchdog() {
    for unit in UNITS {
        let settings = service_settings(&unit_text(unit));
        // The SDK sends no READY=1 (the worker's code knows when it is ready).
        let kind = if unit == RUST_UNIT {
            "simple"
        } else {
            "notify"
        };
        assert_eq!(only(&settings, "Type"), kind, "{unit}");
        assert_eq!(only(&settings, "NotifyAccess"), "main", "{unit}");
        let watchdog: u64 = only(&settings, "WatchdogSec").parse().expect("seconds");
        assert!(watchdog >= 30, "{unit}: WatchdogSec={watchdog}");
    }
}

// ---- ExecStart= run as systemd would -----------------------------------------

/// Every system call in each group `systemd-analyze syscall-filter` knows,
/// nested groups expanded.
fn syscall_groups() -> BTreeMap<String, BTreeSet<String>> {
    let out = systemd_analyze(&["syscall-filter"]);
    assert!(out.status.success(), "{}", both(&out));
    let mut direct: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut group = String::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if line.starts_with('@') {
            group = line.trim().to_owned();
        } else if let Some(entry) = line.strip_prefix("    ") {
            if !entry.starts_with('#') && !group.is_empty() {
                direct
                    .entry(group.clone())
                    .or_default()
                    .push(entry.trim().to_owned());
            }
        } else if line.trim().is_empty() {
            group.clear();
        }
    }
    fn flatten(name: &str, direct: &BTreeMap<String, Vec<String>>, into: &mut BTreeSet<String>) {
        for entry in direct.get(name).into_iter().flatten() {
            if entry.starts_with('@') {
                flatten(entry, direct, into);
            } else {
                into.insert(entry.clone());
            }
        }
    }
    direct
        .keys()
        .map(|name| {
            let mut all = BTreeSet::new();
            flatten(name, &direct, &mut all);
            (name.clone(), all)
        })
        .collect()
}

/// The system calls the unit's `SystemCallFilter=` lines allow.
fn allowed_syscalls(settings: &[(String, String)]) -> BTreeSet<String> {
    let groups = syscall_groups();
    let names = |list: &str| -> BTreeSet<String> {
        list.split_whitespace()
            .flat_map(|item| match groups.get(item) {
                Some(all) => all.iter().cloned().collect::<Vec<_>>(),
                None if item.starts_with('@') => panic!("unknown group {item}"),
                None => vec![item.to_owned()],
            })
            .collect()
    };
    let mut allowed: Option<BTreeSet<String>> = None;
    for filter in values(settings, "SystemCallFilter") {
        match filter.strip_prefix('~') {
            Some(deny) => {
                let deny = names(deny);
                allowed = allowed.map(|a| a.difference(&deny).cloned().collect());
            }
            None => {
                let more = names(filter);
                allowed = Some(allowed.unwrap_or_default().union(&more).cloned().collect());
            }
        }
    }
    allowed.expect("the unit sets an allow list (SystemCallFilter=)")
}

/// What strace saw: system call names, socket families, paths opened for writing.
#[derive(Default, Debug)]
struct Trace {
    syscalls: BTreeSet<String>,
    families: BTreeSet<String>,
    written: BTreeSet<PathBuf>,
    /// A mapping asked writable and executable at once.
    write_exec: bool,
}

fn read_trace(path: &Path, cwd: &Path) -> Trace {
    let text = std::fs::read_to_string(path).expect("strace output");
    let call = Regex::new(r"^\d+\s+(?:<\.\.\. )?([a-z0-9_]+)(?:\(| resumed>)").expect("regex");
    let socket = Regex::new(r"\bsocket\((AF_[A-Z0-9]+)").expect("regex");
    let path_call = Regex::new(
        r#"\b(open|openat|creat|mkdir|mkdirat|bind|rename|renameat2|unlink|unlinkat)\((?:AT_FDCWD, |\d+, )?(?:\{sa_family=AF_UNIX, sun_path=)?"([^"]+)"(.*)"#,
    )
    .expect("regex");
    let mut trace = Trace::default();
    for line in text.lines() {
        if (line.contains("mmap(") || line.contains("mprotect("))
            && line.contains("PROT_WRITE")
            && line.contains("PROT_EXEC")
        {
            trace.write_exec = true;
        }
        if let Some(c) = call.captures(line) {
            trace.syscalls.insert(c[1].to_owned());
        }
        if let Some(c) = socket.captures(line) {
            trace.families.insert(c[1].to_owned());
        }
        if let Some(c) = path_call.captures(line) {
            let rest = &c[3];
            let opens = c[1].starts_with("open");
            let writes = !opens
                || ["O_WRONLY", "O_RDWR", "O_CREAT"]
                    .iter()
                    .any(|f| rest.contains(f));
            if writes && !rest.contains("= -1 ") {
                trace.written.insert(cwd.join(&c[2]));
            }
        }
    }
    trace
}

#[test]
fn the_units_exec_start_runs_as_systemd_would_and_stays_in_its_sandbox() {
    if !have("systemd-analyze", "systemd") || !have("strace", "strace") || !common::node_available()
    {
        return;
    }
    let settings = service_settings(&unit_text(UNIT_NAME));

    // The places systemd would provide, in a temp dir outside /tmp (the
    // trace tells the private /tmp from the rest).
    let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tmp");
    let working_dir = root.path().join("srv-roundtable");
    std::fs::create_dir_all(working_dir.join("scripts")).expect("mkdir");
    std::fs::copy(
        repo().join("examples/node/worker.mjs"),
        working_dir.join("scripts/roundtable-worker.mjs"),
    )
    .expect("worker");
    let (state_dir, home, as_user) = service_dirs(root.path(), &settings);

    // EnvironmentFile=- is optional: absent here, so nothing is added.
    let env_file = only(&settings, "EnvironmentFile");
    assert!(
        env_file.starts_with('-'),
        "EnvironmentFile= should be optional (-): {env_file}"
    );
    assert!(
        !Path::new(&env_file[1..]).exists(),
        "{env_file} exists on this host"
    );
    let systemd = NotifyListener::bind(root.path());
    let mut env = service_env(&state_dir, &home);
    env.extend(systemd.env(&settings));

    let mut argv = exec_start(&settings, &env, "/usr/bin/heartbeat-sidecar", SIDECAR);
    let node = argv
        .iter()
        .position(|a| a == "/usr/bin/node")
        .expect("/usr/bin/node in ExecStart");
    if !Path::new("/usr/bin/node").exists() {
        let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|d| d.join("node"))
            .find(|f| f.is_file())
            .expect("node");
        eprintln!(
            "note: /usr/bin/node is absent; running {} instead",
            found.display()
        );
        argv[node] = found.display().to_string();
    }
    let trace_file = root.path().join("strace.out");
    let mut child = spawn_traced(
        &settings,
        &argv,
        &env,
        &working_dir,
        as_user.as_ref(),
        &trace_file,
    );

    let db = state_dir.join("heartbeat.db");
    let row = |want: &dyn Fn(&heartbeat_sdk::StatusRow) -> bool| {
        SqliteStore::new(&db)
            .read_all()
            .ok()?
            .into_iter()
            .find(|r| r.worker_name == "roundtable-worker" && want(r))
    };
    // The first beat goes out at once; the job pattern shows in the next.
    let Some(running) = poll_until(Duration::from_secs(90), || {
        row(&|r| r.status.as_deref() == Some("running") && r.jobs_processed.unwrap_or(0) > 0)
    }) else {
        let _ = child.kill();
        let out = child.wait_with_output().expect("wait");
        panic!(
            "no running row with jobs in {}:\n{}",
            db.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    assert_eq!(
        std::fs::metadata(&db).expect("store").permissions().mode() & 0o777,
        0o600,
        "UMask={}: the store is its user's only",
        only(&settings, "UMask")
    );

    // WatchdogSec=: the first ping comes within half of it, as the worker logs.
    let mut heard = Vec::new();
    let watchdog: u64 = only(&settings, "WatchdogSec").parse().expect("seconds");
    systemd.until_heard(
        &mut heard,
        "WATCHDOG=1",
        Duration::from_secs(watchdog),
        &mut child,
    );

    // KillMode=control-group: SIGTERM to every process of the unit at once.
    let worker = running.pid.expect("worker pid") as i32;
    let sidecar = running
        .metadata
        .as_ref()
        .and_then(|m| m["sidecar_pid"].as_i64())
        .expect("sidecar pid") as i32;
    let stop_started = Instant::now();
    common::kill(sidecar, libc::SIGTERM);
    common::kill(worker, libc::SIGTERM);
    let timeout: u64 = only(&settings, "TimeoutStopSec").parse().expect("seconds");
    let status = eventually(
        Duration::from_secs(timeout),
        "the unit's processes end",
        || child.try_wait().ok().flatten(),
    );
    let took = stop_started.elapsed();
    let stderr = child.wait_with_output().expect("output").stderr;
    assert!(
        status.success() || status.signal() == Some(libc::SIGTERM),
        "ended {status:?}, which systemd counts as a failure:\n{}",
        String::from_utf8_lossy(&stderr)
    );
    assert!(took < Duration::from_secs(5), "stop took {took:?}");
    let stopped = row(&|_| true).expect("row");
    assert_eq!(stopped.status.as_deref(), Some("stopped"), "{stopped:?}");

    // `status` run where systemd puts the state directory finds the worker.
    let out = common::sidecar()
        .args(["status", "--json"])
        .env("STATE_DIRECTORY", &state_dir)
        .env("HOME", &home)
        .output()
        .expect("status");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"roundtable-worker\""),
        "status did not find the row:\n{}",
        both(&out)
    );
    assert!(
        !home.exists(),
        "something wrote into HOME (ProtectHome=yes)"
    );

    // Type=notify, WatchdogSec=: ready once the worker ran, pinged while it
    // logged its jobs, stopping as it stopped.
    heard.extend(systemd.heard());
    assert_eq!(
        heard.first().map(String::as_str),
        Some("READY=1"),
        "{heard:?}"
    );
    assert!(heard.iter().any(|m| m == "WATCHDOG=1"), "{heard:?}");
    assert_eq!(
        heard.last().map(String::as_str),
        Some("STOPPING=1"),
        "{heard:?}"
    );
    assert_eq!(
        heard.iter().filter(|m| *m == "STOPPING=1").count(),
        1,
        "{heard:?}"
    );

    assert_stayed_in_sandbox(
        &settings,
        &read_trace(&trace_file, &working_dir),
        &state_dir,
    );
}

/// The alerts unit's `ExecStart=`, run as systemd would with its
/// environment file's webhook pointing at a real receiver: READY=1 after
/// its first round, a worker's crash delivered, WATCHDOG=1 each round,
/// SIGTERM ends it with 0 (STOPPING=1, its webhook let go), and the trace
/// stays inside the sandbox, `MemoryDenyWriteExecute=` included.
#[test]
fn the_alerts_units_exec_start_delivers_a_crash_and_stays_in_its_sandbox() {
    if !have("systemd-analyze", "systemd") || !have("strace", "strace") {
        return;
    }
    let settings = service_settings(&unit_text(ALERTS_UNIT));
    let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tmp");
    let (state_dir, home, as_user) = service_dirs(root.path(), &settings);
    // EnvironmentFile= is required: the test stands in for it.
    let env_file = only(&settings, "EnvironmentFile");
    assert!(
        !env_file.starts_with('-'),
        "without a webhook it only exits 2: {env_file}"
    );
    let receiver = hp_heartbeat_tests::receiver::Receiver::start();
    let systemd = NotifyListener::bind(root.path());
    let mut env = service_env(&state_dir, &home);
    env.insert(
        "HP_ALERT_WEBHOOKS".to_owned(),
        receiver.url("/services/T0FAKE/B0FAKE/not-a-real-secret"),
    );
    env.extend(systemd.env(&settings));
    let argv = exec_start(&settings, &env, "/usr/bin/heartbeat-sidecar", SIDECAR);
    let trace_file = root.path().join("strace.out");
    let mut child = spawn_traced(
        &settings,
        &argv,
        &env,
        root.path(),
        as_user.as_ref(),
        &trace_file,
    );

    let mut heard = Vec::new();
    systemd.until_heard(&mut heard, "READY=1", Duration::from_secs(30), &mut child);
    let db = state_dir.join("heartbeat.db");
    let holder = || -> Option<String> {
        rusqlite::Connection::open(&db)
            .ok()?
            .query_row(
                "select holder from hp_alert_cursor where holder is not null",
                [],
                |r| r.get(0),
            )
            .ok()
    };
    let held = eventually(
        Duration::from_secs(30),
        "the watcher holds its webhook",
        holder,
    );

    // A worker of the same user crashes into the same store.
    let mut worker = common::sidecar();
    worker
        .env("STATE_DIRECTORY", &state_dir)
        .env("HP_LOG", "warn")
        .args(["run", "--name", "nightly-pnl", "--", "sh", "-c", "exit 1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some((_, uid, gid)) = &as_user {
        worker.uid(*uid).gid(*gid);
    }
    assert_eq!(worker.status().expect("worker").code(), Some(1));
    let crash = eventually(
        Duration::from_secs(40),
        "the crash reaches the webhook",
        || receiver.received().into_iter().next(),
    );
    let text = crash.json()["text"].as_str().unwrap_or_default().to_owned();
    assert!(text.starts_with("nightly-pnl crashed"), "{text}");
    systemd.until_heard(
        &mut heard,
        "WATCHDOG=1",
        Duration::from_secs(60),
        &mut child,
    );

    let pid: i32 = held
        .split(" pid ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|p| p.parse().ok())
        .expect("pid in holder");
    common::kill(pid, libc::SIGTERM);
    let timeout: u64 = only(&settings, "TimeoutStopSec").parse().expect("seconds");
    let status = eventually(Duration::from_secs(timeout), "the watcher ends", || {
        child.try_wait().ok().flatten()
    });
    let stderr = child.wait_with_output().expect("output").stderr;
    let stderr = String::from_utf8_lossy(&stderr);
    assert!(status.success(), "{status:?}:\n{stderr}");
    assert!(!stderr.contains("not-a-real-secret"), "{stderr}");
    heard.extend(systemd.heard());
    assert_eq!(
        heard.last().map(String::as_str),
        Some("STOPPING=1"),
        "{heard:?}"
    );
    assert_eq!(holder(), None, "it let go of its webhook");

    assert_stayed_in_sandbox(&settings, &read_trace(&trace_file, root.path()), &state_dir);
}

/// examples/rust_worker.rs, as `cargo test --workspace` builds it (next to
/// this test's own binary); `None`, said loudly, when it was not built.
fn rust_worker_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let found = exe.parent()?.parent()?.join("examples/rust_worker");
    if found.is_file() {
        return Some(found);
    }
    let why = format!(
        "{} not built (cargo test --workspace builds it)",
        found.display()
    );
    if std::env::var("HP_REQUIRE_SYSTEMD").as_deref() == Ok("1") {
        panic!("HP_REQUIRE_SYSTEMD=1 but {why}");
    }
    loud_skip(&format!("systemd test of {RUST_UNIT}: {why}"));
    None
}

/// The SDK worker's unit, its `ExecStart=` run as systemd would: the row in
/// `$STATE_DIRECTORY`, WATCHDOG=1 from `hb.progress()` as it works, and
/// still while it is paused (waiting for a resume is not hung); SIGTERM
/// ends it `stopped`, by SIGTERM; the trace stays inside the sandbox.
#[test]
fn the_rust_workers_unit_pings_while_it_works_and_while_paused() {
    if !have("systemd-analyze", "systemd") || !have("strace", "strace") {
        return;
    }
    let Some(binary) = rust_worker_binary() else {
        return;
    };
    let settings = service_settings(&unit_text(RUST_UNIT));
    let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tmp");
    let (state_dir, home, as_user) = service_dirs(root.path(), &settings);
    let env_file = only(&settings, "EnvironmentFile");
    assert!(env_file.starts_with('-'), "optional: {env_file}");
    let systemd = NotifyListener::bind(root.path());
    let mut env = service_env(&state_dir, &home);
    for line in values(&settings, "Environment") {
        let (k, v) = line.split_once('=').expect("Environment=K=V");
        env.insert(k.to_owned(), v.to_owned());
    }
    // The control poll as often as a beat, so the pause lands soon.
    env.insert("HP_CONTROL_POLL_SECS".to_owned(), "1".to_owned());
    env.extend(systemd.env(&settings));
    // /usr/local/bin/rust-worker: where the unit's comment installs it.
    let argv = exec_start(
        &settings,
        &env,
        "/usr/local/bin/rust-worker",
        &binary.display().to_string(),
    );
    let trace_file = root.path().join("strace.out");
    let mut child = spawn_traced(
        &settings,
        &argv,
        &env,
        root.path(),
        as_user.as_ref(),
        &trace_file,
    );

    let name = env["HP_WORKER_NAME"].clone();
    let db = state_dir.join("heartbeat.db");
    let row = |want: &dyn Fn(&heartbeat_sdk::StatusRow) -> bool| {
        SqliteStore::new(&db)
            .read_all()
            .ok()?
            .into_iter()
            .find(|r| r.worker_name == name && want(r))
    };
    let watchdog: u64 = only(&settings, "WatchdogSec").parse().expect("seconds");
    let mut heard = Vec::new();
    let Some(running) = poll_until(Duration::from_secs(60), || {
        row(&|r| r.status.as_deref() == Some("running") && r.jobs_processed.unwrap_or(0) > 0)
    }) else {
        let _ = child.kill();
        let out = child.wait_with_output().expect("wait");
        panic!("no running row:\n{}", String::from_utf8_lossy(&out.stderr));
    };
    systemd.until_heard(
        &mut heard,
        "WATCHDOG=1",
        Duration::from_secs(watchdog),
        &mut child,
    );

    // Paused, it does no job and makes no progress, and is not hung: the
    // pings go on.
    let out = common::sidecar()
        .env("STATE_DIRECTORY", &state_dir)
        .args([
            "pause",
            &name,
            "--yes",
            "--force",
            "--confirm",
            "default",
            "--wait",
            "--timeout",
            "60s",
        ])
        .output()
        .expect("pause");
    assert!(out.status.success(), "{}", both(&out));
    // The run in hand ends first; then it waits, paused, making no progress.
    let idle = eventually(Duration::from_secs(30), "the run in hand ended", || {
        row(&|r| r.run_state.as_deref() != Some("running"))
    });
    heard.clear();
    let _ = systemd.heard();
    systemd.until_heard(
        &mut heard,
        "WATCHDOG=1",
        Duration::from_secs(watchdog),
        &mut child,
    );
    let after = row(&|_| true).expect("row");
    assert_eq!(
        after.jobs_processed, idle.jobs_processed,
        "no job while paused"
    );
    assert_eq!(
        after.last_progress_at, idle.last_progress_at,
        "no progress while paused"
    );

    common::kill(running.pid.expect("pid") as i32, libc::SIGTERM);
    let timeout: u64 = only(&settings, "TimeoutStopSec").parse().expect("seconds");
    let status = eventually(Duration::from_secs(timeout), "the worker ends", || {
        child.try_wait().ok().flatten()
    });
    let stderr = child.wait_with_output().expect("output").stderr;
    // Ended as SIGTERM would end it, which systemd counts as clean
    // (`SuccessExitStatus=` has SIGTERM by default): `Restart=on-failure`
    // leaves it down.
    assert_eq!(
        status.signal(),
        Some(libc::SIGTERM),
        "{status:?}:\n{}",
        String::from_utf8_lossy(&stderr)
    );
    let stopped = row(&|_| true).expect("row");
    assert_eq!(stopped.status.as_deref(), Some("stopped"), "{stopped:?}");

    assert_stayed_in_sandbox(&settings, &read_trace(&trace_file, root.path()), &state_dir);
}

/// The places systemd makes for a service under `root` (a temp dir outside
/// /tmp, so the trace tells the private /tmp from the rest): its
/// `StateDirectory=` (given to `User=`: as root, run as nobody, the rest
/// staying root's and read-only to it) and a HOME that must stay untouched
/// (`ProtectHome=yes`). Returns them and the user to run as.
fn service_dirs(
    root: &Path,
    settings: &[(String, String)],
) -> (PathBuf, PathBuf, Option<(String, u32, u32)>) {
    assert_eq!(only(settings, "StateDirectory"), "hp-heartbeat");
    let state_dir = root.join("var/lib/hp-heartbeat");
    std::fs::create_dir_all(&state_dir).expect("mkdir");
    let as_user = unprivileged_user();
    if let Some((_, uid, gid)) = &as_user {
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::os::unix::fs::chown(&state_dir, Some(*uid), Some(*gid)).expect("chown");
    }
    (state_dir, root.join("home-of-worker"), as_user)
}

/// systemd's environment for a service of `User=worker`.
fn service_env(state_dir: &Path, home: &Path) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("PATH".to_owned(), SERVICE_PATH.to_owned()),
        ("HOME".to_owned(), home.display().to_string()),
        ("USER".to_owned(), "worker".to_owned()),
        ("LOGNAME".to_owned(), "worker".to_owned()),
        ("SHELL".to_owned(), "/bin/sh".to_owned()),
        (
            "INVOCATION_ID".to_owned(),
            format!("{:032x}", fastrand_u128()),
        ),
        (
            "STATE_DIRECTORY".to_owned(),
            state_dir.display().to_string(),
        ),
    ])
}

/// systemd's side of `NOTIFY_SOCKET`: a datagram socket the test owns.
struct NotifyListener {
    socket: std::os::unix::net::UnixDatagram,
    path: PathBuf,
}

impl NotifyListener {
    fn bind(dir: &Path) -> NotifyListener {
        let path = dir.join("notify.sock");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("bind notify socket");
        socket.set_nonblocking(true).expect("nonblocking");
        // The service's user sends to it, as to systemd's.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        NotifyListener { socket, path }
    }

    /// What systemd gives a notify service with `WatchdogSec=`.
    fn env(&self, settings: &[(String, String)]) -> BTreeMap<String, String> {
        let seconds: u64 = only(settings, "WatchdogSec")
            .parse()
            .expect("WatchdogSec= in seconds");
        BTreeMap::from([
            ("NOTIFY_SOCKET".to_owned(), self.path.display().to_string()),
            (
                "WATCHDOG_USEC".to_owned(),
                (seconds * 1_000_000).to_string(),
            ),
        ])
    }

    /// Adds what arrives to `heard` until `want` is among it; if it never
    /// comes, kills `service` and fails with what it printed.
    fn until_heard(
        &self,
        heard: &mut Vec<String>,
        want: &str,
        within: Duration,
        service: &mut std::process::Child,
    ) {
        let found = poll_until(within, || {
            heard.extend(self.heard());
            heard.iter().any(|m| m == want).then_some(())
        });
        if found.is_none() {
            let _ = service.kill();
            let mut stderr = String::new();
            if let Some(mut pipe) = service.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
            }
            let status = service.wait();
            panic!("within {within:?}, systemd never heard {want} (heard {heard:?}); the service ended {status:?}:\n{stderr}");
        }
    }

    /// Every message received so far, one line each.
    fn heard(&self) -> Vec<String> {
        let mut buf = [0u8; 4096];
        let mut all = Vec::new();
        while let Ok(n) = self.socket.recv(&mut buf) {
            all.extend(
                String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .map(str::to_owned),
            );
        }
        all
    }
}

/// The unit's `ExecStart=` as systemd runs it: expanded in `env`, its
/// program (checked to be at `installed`) replaced by the one built here.
fn exec_start(
    settings: &[(String, String)],
    env: &BTreeMap<String, String>,
    installed: &str,
    built: &str,
) -> Vec<String> {
    let line = only(settings, "ExecStart");
    assert!(
        !line.starts_with(['-', '@', ':', '+', '!']),
        "ExecStart= prefixes are not handled by this test: {line}"
    );
    let mut argv = expand(split_command(line), env);
    assert_eq!(argv[0], installed, "where the unit expects it installed");
    argv[0] = built.to_owned();
    argv
}

/// `argv` under strace (as `as_user` when root), in systemd's environment
/// `env` for the service, with the unit's `UMask=`.
fn spawn_traced(
    settings: &[(String, String)],
    argv: &[String],
    env: &BTreeMap<String, String>,
    working_dir: &Path,
    as_user: Option<&(String, u32, u32)>,
    trace_file: &Path,
) -> std::process::Child {
    let umask = u32::from_str_radix(only(settings, "UMask"), 8).expect("UMask= in octal");
    let mut command = Command::new("strace");
    command
        .args(["-f", "-qq", "-s", "256", "-o"])
        .arg(trace_file);
    if let Some((name, _, _)) = as_user {
        command.args(["-u", name]);
    }
    command
        .arg("--")
        .args(argv)
        .current_dir(working_dir)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: umask(2) is async-signal-safe and cannot fail.
    unsafe {
        command.pre_exec(move || {
            libc::umask(umask as libc::mode_t);
            Ok(())
        });
    }
    command.spawn().expect("strace")
}

/// What the trace shows the unit's processes did, against its sandbox.
fn assert_stayed_in_sandbox(settings: &[(String, String)], trace: &Trace, state_dir: &Path) {
    let allowed = allowed_syscalls(settings);
    let denied: Vec<_> = trace.syscalls.difference(&allowed).collect();
    assert!(denied.is_empty(), "SystemCallFilter= would deny {denied:?}");
    let families: BTreeSet<String> = only(settings, "RestrictAddressFamilies")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let refused: Vec<_> = trace.families.difference(&families).collect();
    assert!(
        refused.is_empty(),
        "RestrictAddressFamilies= would refuse {refused:?}"
    );
    assert_eq!(only(settings, "ProtectSystem"), "strict");
    assert_eq!(only(settings, "PrivateTmp"), "yes");
    let outside: Vec<_> = trace
        .written
        .iter()
        .filter(|p| {
            !(p.starts_with(state_dir)
                || p.starts_with("/tmp")
                || p.starts_with("/dev")
                || p.starts_with("/proc"))
        })
        .collect();
    assert!(
        outside.is_empty(),
        "ProtectSystem=strict would refuse writing {outside:?}"
    );
    assert!(
        trace.written.iter().any(|p| p.starts_with(state_dir)),
        "the trace saw no write to the store: {trace:?}"
    );
    if values(settings, "MemoryDenyWriteExecute") == ["yes"] {
        assert!(
            !trace.write_exec,
            "MemoryDenyWriteExecute=yes would refuse a writable and executable mapping"
        );
    }
}

/// `nobody` (name, uid, gid) when the test runs as root; `None` when it
/// already runs unprivileged.
fn unprivileged_user() -> Option<(String, u32, u32)> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "nobody"])
            .output()
            .expect("id");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("id nobody")
    };
    Some(("nobody".to_owned(), id("-u"), id("-g")))
}

fn fastrand_u128() -> u128 {
    u128::from(fastrand::u64(..)) << 64 | u128::from(fastrand::u64(..))
}

/// Says a test was skipped on the real stderr: `eprintln!` inside a test is
/// captured by the harness and shown only when the test fails, so a skip
/// would pass in silence.
fn loud_skip(what: &str) {
    hp_heartbeat_tests::skip::loudly(what);
}
