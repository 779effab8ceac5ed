//! Every command shown in README.md and docs/ runs, as written, the way a
//! user would run it: each ```sh block, line by line, in a sandbox (a fresh
//! HOME, no Supabase settings, this build's `heartbeat-sidecar` first on
//! PATH, the repository root as working directory). The local store is kept
//! in the sandbox with `STATE_DIRECTORY`, as systemd sets it: run as root,
//! the commands would otherwise share the machine's system store.
//!
//! A comment line right before a block says how it runs when not plainly:
//!
//! - `<!-- docs-test: background -->`: a worker; it is started, must still be
//!   running a moment later (its row `running`; for the alerts watcher, its
//!   webhook's cursor held), and must end cleanly on SIGTERM when the page's
//!   blocks are done.
//! - `<!-- docs-test: tty -->`: a terminal view; run in tmux, quit with `q`.
//! - `<!-- docs-test: crontab -->`: crontab lines; their commands are run.
//! - `<!-- docs-test: database -->`: with `DATABASE_URL` set to a PostgreSQL
//!   database that has Supabase's roles (the tests' cluster).
//! - `<!-- docs-test: ci: why -->`: `.ci/run` runs it (said here, checked there).
//! - `<!-- docs-test: skip: why -->`: not run, and why (printed, loudly).
//!
//! A page's workers and PM2 apps are all ended when its blocks are done.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hp_heartbeat_tests::eventually::{eventually, poll_until};
use hp_heartbeat_tests::skip;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo")
        .to_path_buf()
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    Run,
    Background,
    Tty,
    Crontab,
    Database,
    Ci(String),
    Skip(String),
}

#[derive(Debug)]
struct Block {
    file: String,
    line: usize,
    mode: Mode,
    commands: Vec<String>,
}

/// The ```sh blocks of a page, with their modes and their commands (lines
/// joined at a trailing backslash; blank lines and comment lines dropped).
fn blocks(file: &str, text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() != "```sh" {
            i += 1;
            continue;
        }
        let mode = i
            .checked_sub(1)
            .map(|j| lines[j].trim())
            .and_then(|l| l.strip_prefix("<!-- docs-test:"))
            .and_then(|l| l.strip_suffix("-->"))
            .map(str::trim)
            .map_or(Mode::Run, |m| match m {
                "background" => Mode::Background,
                "tty" => Mode::Tty,
                "crontab" => Mode::Crontab,
                "database" => Mode::Database,
                m if m.starts_with("ci:") => Mode::Ci(m[3..].trim().to_owned()),
                m if m.starts_with("skip:") => Mode::Skip(m[5..].trim().to_owned()),
                other => panic!("{file}:{i}: unknown docs-test mode {other:?}"),
            });
        let start = i + 1;
        let mut commands = Vec::new();
        let mut current = String::new();
        i += 1;
        while i < lines.len() && lines[i].trim() != "```" {
            let line = lines[i];
            match line.strip_suffix('\\') {
                Some(head) => current.push_str(head),
                None => {
                    current.push_str(line);
                    let command = std::mem::take(&mut current);
                    let trimmed = command.trim();
                    if !trimmed.is_empty() && !trimmed.starts_with('#') {
                        commands.push(command);
                    }
                }
            }
            i += 1;
        }
        out.push(Block {
            file: file.to_owned(),
            line: start,
            mode,
            commands,
        });
        i += 1;
    }
    out
}

/// The pages: README.md and every page of docs/.
fn pages() -> Vec<(String, String)> {
    let mut files = vec![repo().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .expect("docs")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
        .into_iter()
        .map(|p| {
            let name = p.strip_prefix(repo()).unwrap_or(&p).display().to_string();
            (name, std::fs::read_to_string(&p).expect("page"))
        })
        .collect()
}

/// Where a page's commands run.
struct Sandbox {
    home: tempfile::TempDir,
    path: String,
    background: Vec<(String, Child)>,
    database_url: Option<String>,
}

impl Sandbox {
    fn new() -> Sandbox {
        let sidecar = Path::new(env!("CARGO_BIN_EXE_heartbeat-sidecar"));
        let mut path = vec![sidecar.parent().expect("bin dir").to_path_buf()];
        if let Some(pm2) = pm2_bin_dir() {
            path.push(pm2);
        }
        let path = std::env::join_paths(path.into_iter().chain(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        )))
        .expect("PATH")
        .to_string_lossy()
        .into_owned();
        let home = tempfile::tempdir().expect("home");
        std::fs::create_dir(home.path().join("state")).expect("state directory");
        Sandbox {
            home,
            path,
            background: Vec::new(),
            database_url: None,
        }
    }

    fn command(&self, line: &str) -> Command {
        let mut c = Command::new("bash");
        c.args(["-c", line])
            .current_dir(repo())
            .env("HOME", self.home.path())
            .env("PATH", &self.path)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        for (var, _) in std::env::vars() {
            if var.starts_with("SUPABASE_")
                || (var.starts_with("HP_") && !var.starts_with("HP_REQUIRE_"))
                || matches!(
                    var.as_str(),
                    "XDG_STATE_HOME" | "STATE_DIRECTORY" | "PM2_HOME" | "DATABASE_URL" | "TMUX"
                )
            {
                c.env_remove(var);
            }
        }
        if let Some(url) = &self.database_url {
            c.env("DATABASE_URL", url);
        }
        c.env("STATE_DIRECTORY", self.state_directory());
        c
    }

    fn state_directory(&self) -> PathBuf {
        self.home.path().join("state")
    }

    fn run(&self, where_: &str, line: &str) {
        let mut c = self.command(line);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = c.spawn().expect("bash");
        let pid = child.id() as i32;
        let waiter = std::thread::spawn(move || child.wait_with_output());
        let finished = poll_until(Duration::from_secs(180), || {
            waiter.is_finished().then_some(())
        });
        if finished.is_none() {
            common::kill(-pid, libc::SIGKILL);
            panic!("{where_}: `{line}` did not end within 3 minutes");
        }
        let out = waiter.join().expect("join").expect("output");
        assert!(
            out.status.success(),
            "{where_}: `{line}` exited {:?}\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn start(&mut self, where_: &str, line: &str) {
        use std::os::unix::process::CommandExt;
        let mut c = self.command(line);
        c.stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = c.spawn().expect("bash");
        // A worker that fails at once (a wrong path, a bad flag) ends; one
        // that works is still running once it has reported.
        let name = line
            .split_whitespace()
            .skip_while(|w| *w != "--name")
            .nth(1)
            .unwrap_or("")
            .to_owned();
        let store = self.state_directory().join("heartbeat.db");
        let watcher = line.split_whitespace().any(|w| w == "alerts");
        let reported = poll_until(Duration::from_secs(20), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{where_}: `{line}` ended at once: {status}");
            }
            if watcher {
                // The alerts watcher has no row: it is up once it holds its
                // webhook's cursor.
                let conn = rusqlite::Connection::open(&store).ok()?;
                return conn
                    .query_row(
                        "select holder from hp_alert_cursor where holder is not null",
                        [],
                        |r| r.get::<_, String>(0),
                    )
                    .ok()
                    .map(|_| ());
            }
            heartbeat_sdk::sidecar::SqliteStore::new(&store)
                .read_all()
                .ok()?
                .into_iter()
                .find(|r| r.worker_name == name && r.status.as_deref() == Some("running"))
                .map(|_| ())
        });
        if reported.is_none() {
            // Not left running after the test: its whole group goes.
            // SAFETY: kill(2) on the group this test made; no memory involved.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            panic!("{where_}: `{line}` never reported as {name:?} running");
        }
        self.background.push((format!("{where_}: `{line}`"), child));
    }

    fn tty(&self, where_: &str, line: &str) {
        let socket = format!("hp-docs-{}", std::process::id());
        let tmux = |args: &[&str]| {
            Command::new("tmux")
                .args(["-L", &socket])
                .args(args)
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
                .expect("tmux")
        };
        let env: Vec<String> = [
            ("HOME", self.home.path().display().to_string()),
            ("PATH", self.path.clone()),
            (
                "STATE_DIRECTORY",
                self.state_directory().display().to_string(),
            ),
        ]
        .iter()
        .map(|(k, v)| format!("{k}='{v}'"))
        .collect();
        let command = format!("cd '{}' && env {} {line}", repo().display(), env.join(" "));
        tmux(&[
            "new-session",
            "-d",
            "-s",
            "docs",
            "-x",
            "150",
            "-y",
            "40",
            &command,
        ]);
        let screen = eventually(
            Duration::from_secs(20),
            &format!("{where_}: `{line}` shows the fleet"),
            || {
                let out = tmux(&["capture-pane", "-p", "-t", "docs"]);
                let screen = String::from_utf8_lossy(&out.stdout).into_owned();
                screen.contains("Worker Status").then_some(screen)
            },
        );
        assert!(!screen.contains("error:"), "{where_}: {screen}");
        tmux(&["send-keys", "-t", "docs", "q"]);
        eventually(
            Duration::from_secs(10),
            &format!("{where_}: q quits"),
            || (!tmux(&["has-session", "-t", "docs"]).status.success()).then_some(()),
        );
        let _ = tmux(&["kill-server"]);
    }

    /// Ends the page's workers, each of which must end cleanly; then PM2.
    fn finish(&mut self) {
        for (what, child) in &mut self.background {
            common::kill(-(child.id() as i32), libc::SIGTERM);
            let status = poll_until(Duration::from_secs(10), || child.try_wait().ok().flatten())
                .unwrap_or_else(|| panic!("{what} did not end on SIGTERM"));
            let clean = status.success()
                || std::os::unix::process::ExitStatusExt::signal(&status) == Some(libc::SIGTERM)
                || status.code() == Some(143);
            assert!(clean, "{what} ended badly on SIGTERM: {status}");
        }
        self.background.clear();
        if pm2_bin_dir().is_some() {
            let _ = self.command("pm2 kill").output();
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for (_, child) in &mut self.background {
            common::kill(-(child.id() as i32), libc::SIGKILL);
            let _ = child.wait();
        }
        if pm2_bin_dir().is_some() {
            let _ = self.command("pm2 kill").output();
        }
    }
}

fn pm2_bin_dir() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from)?;
    [
        std::env::var_os("HP_PM2_DIR").map(|d| PathBuf::from(d).join("node_modules/.bin")),
        Some(home.join(".cache/hp-heartbeat/pm2/node_modules/.bin")),
    ]
    .into_iter()
    .flatten()
    .find(|d| d.join("pm2").exists())
}

/// What a page needs that may be missing here; `None` when all is there.
fn missing(block: &Block) -> Option<String> {
    let text = block.commands.join("\n");
    if text.contains("pm2 ") && pm2_bin_dir().is_none() {
        return Some("PM2 (HP_REQUIRE_PM2)".into());
    }
    if text.contains("node ") && Command::new("node").arg("--version").output().is_err() {
        return Some("node (HP_REQUIRE_NODE)".into());
    }
    if block.mode == Mode::Tty && Command::new("tmux").arg("-V").output().is_err() {
        return Some("tmux (HP_REQUIRE_TMUX)".into());
    }
    None
}

#[test]
fn every_command_in_the_docs_runs_as_written() {
    let pages = pages();
    let mut ran = 0;
    let mut not_run = Vec::new();
    for (file, text) in &pages {
        let blocks = blocks(file, text);
        let mut sandbox = Sandbox::new();
        let mut database = None;
        for block in &blocks {
            let at = format!("{}:{}", block.file, block.line);
            if let Some(what) = missing(block) {
                let require = what
                    .split_once("(HP_REQUIRE_")
                    .map(|(_, v)| v.trim_end_matches(')').to_owned())
                    .unwrap_or_default();
                skip::or_require(&require, &format!("{at} needs {what}"));
                continue;
            }
            match &block.mode {
                Mode::Skip(why) | Mode::Ci(why) => {
                    not_run.push(format!("{at}: {why}"));
                    continue;
                }
                Mode::Database if sandbox.database_url.is_none() => {
                    let Some(server) = hp_heartbeat_tests::pg::server() else {
                        continue;
                    };
                    let db = server.fresh_database("docs_commands");
                    sandbox.database_url = Some(db.url());
                    database = Some(db);
                }
                _ => {}
            }
            for line in &block.commands {
                match block.mode {
                    Mode::Background => sandbox.start(&at, line),
                    Mode::Tty => sandbox.tty(&at, line),
                    Mode::Crontab => {
                        let command: String = line
                            .split_whitespace()
                            .skip(5)
                            .collect::<Vec<_>>()
                            .join(" ");
                        sandbox.run(&at, &command);
                    }
                    _ => sandbox.run(&at, line),
                }
                ran += 1;
            }
        }
        sandbox.finish();
        drop(database);
    }
    skip::loudly(&format!(
        "docs commands not run by this test ({}):\n  {}",
        not_run.len(),
        not_run.join("\n  ")
    ));
    assert!(ran >= 10, "only {ran} commands ran");
}

#[test]
fn the_parser_reads_modes_continuations_and_comments() {
    let page = "text\n<!-- docs-test: background -->\n```sh\n# a comment\nheartbeat-sidecar run \\\n  --name x -- true\n\n```\n```sh\na\nb\n```\n<!-- docs-test: skip: needs a project -->\n```sh\nsupabase db push\n```\n";
    let b = blocks("page.md", page);
    assert_eq!(b.len(), 3);
    assert_eq!(b[0].mode, Mode::Background);
    assert_eq!(
        b[0].commands,
        vec!["heartbeat-sidecar run   --name x -- true"]
    );
    assert_eq!(b[1].commands, vec!["a", "b"]);
    assert_eq!(b[2].mode, Mode::Skip("needs a project".into()));
}
