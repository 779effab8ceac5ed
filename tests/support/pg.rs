//! A real PostgreSQL for the tests.
//!
//! `HP_TEST_DATABASE_URL` when set; otherwise a private throwaway cluster in a
//! temp directory (initdb + pg_ctl, as the `postgres` user when run as root),
//! listening on a Unix socket only and removed when the test process ends.
//! When neither is possible the tests say so loudly and skip, or fail when
//! `HP_REQUIRE_DB=1`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// Where the tests' PostgreSQL is.
#[derive(Debug)]
pub struct Postgres {
    /// psql arguments that reach the admin database.
    admin_args: Vec<String>,
    /// Serialises cluster-wide changes (roles) between tests of one process.
    roles_lock: Mutex<()>,
}

static SERVER: OnceLock<Result<Postgres, String>> = OnceLock::new();
static NEXT_DB: AtomicUsize = AtomicUsize::new(0);

/// The server, or `None` after printing why the database tests are skipped.
///
/// # Panics
/// When no server can be had and `HP_REQUIRE_DB=1`.
pub fn server() -> Option<&'static Postgres> {
    match SERVER.get_or_init(start) {
        Ok(pg) => Some(pg),
        Err(why) => {
            crate::skip::or_require(
                "DB",
                &format!("no PostgreSQL for the database tests ({why}): install PostgreSQL (apt-get install postgresql) or set HP_TEST_DATABASE_URL"),
            );
            None
        }
    }
}

fn start() -> Result<Postgres, String> {
    if let Ok(url) = std::env::var("HP_TEST_DATABASE_URL") {
        if !url.trim().is_empty() {
            return Ok(Postgres {
                admin_args: vec!["-d".into(), url],
                roles_lock: Mutex::new(()),
            });
        }
    }
    which("psql").ok_or("psql is not installed")?;
    let bin =
        server_bin_dir().ok_or("initdb/pg_ctl not found (PATH or /usr/lib/postgresql/*/bin)")?;
    let as_root = unsafe_geteuid() == 0;
    if as_root
        && !Command::new("id")
            .arg("postgres")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    {
        return Err("running as root and there is no `postgres` user to run the server as".into());
    }
    let dir = tempfile::Builder::new()
        .prefix("hp-heartbeat-pg-")
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?
        .keep();
    let data = dir.join("data");
    let run_as_server = |program: &Path| -> Command {
        if as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    };
    if as_root {
        sh(Command::new("chown").arg("postgres:").arg(&dir))?;
    }
    sh(run_as_server(&bin.join("initdb"))
        .arg("-D")
        .arg(&data)
        .args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]))?;
    let mut options = format!(
        "-c listen_addresses='' -k {} -p 5432 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=50",
        dir.display()
    );
    // pg_cron only when installed (postgresql-15-cron): it must be preloaded
    // at start, and keeps its jobs in one database, made below.
    let cron = pg_cron_installed(&bin);
    if cron {
        options.push_str(&format!(
            " -c shared_preload_libraries=pg_cron -c cron.database_name={CRON_DATABASE} -c cron.use_background_workers=on"
        ));
    }
    sh(run_as_server(&bin.join("pg_ctl"))
        .arg("-D")
        .arg(&data)
        .args(["-o", &options, "-l"])
        .arg(dir.join("server.log"))
        .args(["-w", "start"]))?;
    watch_and_clean_up(&bin, &dir, &data, as_root)?;
    let pg = Postgres {
        admin_args: vec![
            "-h".into(),
            dir.display().to_string(),
            "-p".into(),
            "5432".into(),
            "-U".into(),
            "postgres".into(),
            "-d".into(),
            "postgres".into(),
        ],
        roles_lock: Mutex::new(()),
    };
    if cron {
        pg.run(None, &format!("create database \"{CRON_DATABASE}\";"))?;
    }
    Ok(pg)
}

/// The database pg_cron keeps its jobs in, on the tests' own cluster.
const CRON_DATABASE: &str = "hp_cron";

fn pg_cron_installed(bin: &Path) -> bool {
    bin.parent()
        .is_some_and(|v| v.join("lib").join("pg_cron.so").is_file())
}

/// A detached shell that stops the cluster and removes its directory once
/// this test process is gone, however it ends.
fn watch_and_clean_up(bin: &Path, dir: &Path, data: &Path, as_root: bool) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let runas = if as_root {
        "runuser -u postgres -- "
    } else {
        ""
    };
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {runas}'{pg_ctl}' -D '{data}' -m immediate stop >/dev/null 2>&1; rm -rf '{dir}'",
        pid = std::process::id(),
        pg_ctl = bin.join("pg_ctl").display(),
        data = data.display(),
        dir = dir.display(),
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map(|_| ())
        .map_err(|e| format!("watchdog: {e}"))
}

fn sh(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

fn server_bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions
        .into_iter()
        .rev()
        .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
        .or_else(|| {
            which("initdb").and_then(|p| p.canonicalize().ok()?.parent().map(Path::to_path_buf))
        })
}

fn unsafe_geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The outcome of one psql script: its output, or the error text with SQLSTATE.
pub type SqlResult = Result<String, String>;

impl Postgres {
    /// A new, empty database with Supabase's roles and `auth` helpers.
    pub fn fresh_database(&self, label: &str) -> Database<'_> {
        let name = format!(
            "hp_{}_{}_{}",
            label,
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed)
        );
        self.run(None, &format!("create database \"{name}\";"))
            .expect("create database");
        let db = Database { server: self, name };
        let _roles = self.roles_lock.lock().unwrap_or_else(|e| e.into_inner());
        db.apply_file(&repo_root().join("sql/test/supabase_roles.sql"))
            .expect("Supabase roles fixture");
        db
    }

    /// The database where pg_cron runs (its `cron.database_name`), with
    /// Supabase's roles, or why there is none: pg_cron is not preloaded.
    pub fn cron_database(&self) -> Result<Database<'_>, String> {
        let name = self
            .run(None, "select current_setting('cron.database_name', true);")?
            .trim()
            .to_owned();
        if name.is_empty() {
            return Err("pg_cron is not loaded (install postgresql-15-cron; the tests' cluster preloads it when present)".into());
        }
        let db = Database { server: self, name };
        let _roles = self.roles_lock.lock().unwrap_or_else(|e| e.into_inner());
        db.apply_file(&repo_root().join("sql/test/supabase_roles.sql"))?;
        Ok(db)
    }

    fn psql(&self) -> Command {
        let mut cmd = Command::new("psql");
        cmd.args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            "VERBOSITY=verbose",
        ])
        .args(&self.admin_args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        cmd
    }

    fn run_capturing(&self, db: Option<&str>, sql: &str) -> Result<PsqlOutput, String> {
        let mut child = self.psql().spawn().map_err(|e| format!("psql: {e}"))?;
        let mut script = String::new();
        if let Some(db) = db {
            script.push_str(&format!("\\connect {db}\n"));
        }
        script.push_str(sql);
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(script.as_bytes())
                .map_err(|e| format!("psql stdin: {e}"))?;
        }
        let out = child.wait_with_output().map_err(|e| format!("psql: {e}"))?;
        Ok(PsqlOutput {
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            success: out.status.success(),
        })
    }

    fn run(&self, db: Option<&str>, sql: &str) -> SqlResult {
        let out = self.run_capturing(db, sql)?;
        if out.success {
            Ok(out.stdout.trim().to_owned())
        } else {
            Err(out.stderr.trim().to_owned())
        }
    }
}

/// What one psql run printed, whether or not it failed.
#[derive(Debug, Clone)]
pub struct PsqlOutput {
    /// Query results (`-A -t`: unaligned, tuples only).
    pub stdout: String,
    /// Errors and notices (`VERBOSITY=verbose`: `ERROR:  <SQLSTATE>: ...`).
    pub stderr: String,
    /// psql's exit status was 0.
    pub success: bool,
}

/// A psql process held open on one database, fed SQL as the test goes (to
/// hold a lock while other sessions queue behind it). Ends when finished or
/// dropped; its session's locks go with it.
#[derive(Debug)]
pub struct Session {
    child: Option<std::process::Child>,
}

impl Session {
    /// Sends SQL; it runs as soon as psql reads it.
    ///
    /// # Errors
    /// When psql has gone.
    pub fn send(&mut self, sql: &str) -> Result<(), String> {
        let stdin = self
            .child
            .as_mut()
            .and_then(|c| c.stdin.as_mut())
            .ok_or("psql session closed")?;
        stdin
            .write_all(sql.as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("psql session: {e}"))
    }

    /// Ends the session (end of input) and returns what it printed.
    ///
    /// # Errors
    /// When psql cannot be waited for.
    pub fn finish(mut self) -> Result<PsqlOutput, String> {
        let mut child = self.child.take().ok_or("psql session closed")?;
        drop(child.stdin.take());
        let out = child.wait_with_output().map_err(|e| format!("psql: {e}"))?;
        Ok(PsqlOutput {
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            success: out.status.success(),
        })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One test's database.
#[derive(Debug)]
pub struct Database<'a> {
    server: &'a Postgres,
    name: String,
}

impl Database<'_> {
    /// Runs a script as the admin user; stops at the first error.
    pub fn sql(&self, sql: &str) -> SqlResult {
        self.server.run(Some(&self.name), sql)
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A connection URL for this database (what a user puts in `DATABASE_URL`).
    pub fn url(&self) -> String {
        let arg = |flag: &str| {
            self.server
                .admin_args
                .iter()
                .position(|a| a == flag)
                .and_then(|i| self.server.admin_args.get(i + 1))
                .cloned()
        };
        match (arg("-h"), arg("-d")) {
            (Some(host), _) => format!(
                "postgresql:///{}?host={host}&port={}&user={}",
                self.name,
                arg("-p").unwrap_or_else(|| "5432".into()),
                arg("-U").unwrap_or_else(|| "postgres".into())
            ),
            // HP_TEST_DATABASE_URL: the same server, this database.
            (None, Some(url)) => match url.rsplit_once('/') {
                Some((server, rest)) => {
                    let query = rest
                        .split_once('?')
                        .map(|(_, q)| format!("?{q}"))
                        .unwrap_or_default();
                    format!("{server}/{}{query}", self.name)
                }
                None => url,
            },
            (None, None) => String::new(),
        }
    }

    /// Runs a script as the admin user and returns everything psql printed,
    /// also when a statement failed (the script decides with
    /// `\\set ON_ERROR_STOP`).
    ///
    /// # Errors
    /// When psql cannot be run.
    pub fn sql_output(&self, sql: &str) -> Result<PsqlOutput, String> {
        self.server.run_capturing(Some(&self.name), sql)
    }

    /// Opens a psql session on this database as the admin user.
    ///
    /// # Errors
    /// When psql cannot be started.
    pub fn session(&self) -> Result<Session, String> {
        let child = self
            .server
            .psql()
            .spawn()
            .map_err(|e| format!("psql: {e}"))?;
        let mut session = Session { child: Some(child) };
        session.send(&format!("\\connect {}\n", self.name))?;
        Ok(session)
    }

    /// Runs a script as the admin user; returns what it printed as NOTICEs
    /// and WARNINGs.
    pub fn sql_with_notices(&self, sql: &str) -> SqlResult {
        let out = self.server.run_capturing(Some(&self.name), sql)?;
        if out.success {
            Ok(out.stderr.trim().to_owned())
        } else {
            Err(out.stderr.trim().to_owned())
        }
    }

    /// Runs a file as the admin user.
    pub fn apply_file(&self, path: &Path) -> SqlResult {
        let sql = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        self.sql(&sql)
    }

    /// Applies the migrations: `sql/*.sql` in order, then `sql/optional/*.sql` if asked.
    pub fn migrate(&self, with_optional: bool) -> SqlResult {
        let mut out = String::new();
        for file in migration_files(with_optional) {
            out.push_str(&self.apply_file(&file)?);
        }
        Ok(out)
    }

    /// Runs `sql` in one transaction as PostgREST would for a request whose
    /// JWT has these claims: logged in as `authenticator`, then switched to
    /// the claims' role with `set_config(..., true)`.
    pub fn as_request(&self, claims: &serde_json::Value, sql: &str) -> SqlResult {
        let role = claims["role"].as_str().unwrap_or("anon");
        let claims = claims.to_string().replace('\'', "''");
        self.sql(&format!(
            "begin;\nset local role authenticator;\n\
             select set_config('role', '{role}', true), set_config('request.jwt.claims', '{claims}', true) \\g /dev/null\n\
             {sql};\ncommit;\n"
        ))
    }
}

/// A fresh database named after `label` with every migration applied
/// (optional ones too); `None`, said loudly, without a server.
///
/// # Panics
/// When a migration fails.
pub fn migrated(label: &str) -> Option<Database<'static>> {
    let db = server()?.fresh_database(label);
    db.migrate(true).expect("migrations apply");
    Some(db)
}

/// The repository's root (this crate is `tests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The migration files in the order they apply.
pub fn migration_files(with_optional: bool) -> Vec<PathBuf> {
    let list = |dir: PathBuf| -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "sql"))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
    };
    let mut files = list(repo_root().join("sql"));
    if with_optional {
        files.extend(list(repo_root().join("sql/optional")));
    }
    files
}
