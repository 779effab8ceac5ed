//! Command-line interface. Every setting also reads an environment variable
//! (shown in `--help`); a flag wins over its variable. Names and defaults
//! come from the SDK, so the two never disagree.

use clap::{Args, Parser, Subcommand};
use heartbeat_sdk::sidecar::{env, StoreChoice};
use heartbeat_sdk::StoreSettings;

/// Report any worker process to hp_worker_status, with no change to its code.
///
/// With SUPABASE_URL and SUPABASE_SECRET_KEY set, rows go to Supabase;
/// otherwise to a local SQLite store (HP_STORE, default
/// ~/.local/state/hp-heartbeat/heartbeat.db). The key is read from the
/// environment only, never from a flag, so it never shows in `ps`.
#[derive(Debug, Parser)]
#[command(name = "heartbeat-sidecar", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

const KEY_HELP: &str = "The Supabase key is read from SUPABASE_SECRET_KEY, SUPABASE_SERVICE_ROLE_KEY or \
SUPABASE_SERVICE_KEY (first found), never from a flag, so it stays out of `ps`. With no SUPABASE_URL, rows go \
to the local store.";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a worker command and report for it until it exits.
    ///
    /// Example: heartbeat-sidecar run --name orders -- node scripts/orders.mjs
    #[command(after_help = KEY_HELP)]
    Run(RunArgs),
    /// Run a command once as a run, for cron and systemd timers; exit with its code.
    ///
    /// The run is recorded in the worker's row (started, succeeded or failed, how long,
    /// the stderr tail). When operators have paused (disabled) the worker, the run is
    /// skipped: one log line, exit 0.
    ///
    /// Example: heartbeat-sidecar once --name nightly-pnl --period 1d -- ./pnl.sh
    #[command(after_help = KEY_HELP)]
    Once(OnceArgs),
    /// Check the configuration: read the table, write a probe row and remove it; say what is wrong and how to fix it.
    ///
    /// No worker's row is touched. Exit codes: 0 all good, 1 the store refused, 2 configuration.
    #[command(after_help = KEY_HELP)]
    Check(CheckArgs),
    /// Show every worker's health; exit 1 if any is stale, crashed or has its breaker open.
    ///
    /// Exit codes: 0 all healthy, 1 a worker is stale, crashed or has its breaker open, 2 could not read.
    #[command(after_help = KEY_HELP)]
    Status(StatusArgs),
    /// Pause workers: they take no new work, finish the job in hand and stay up.
    #[command(after_help = STEER_HELP)]
    Pause(SteerArgs),
    /// Resume paused or drained workers.
    #[command(after_help = STEER_HELP)]
    Resume(SteerArgs),
    /// Drain workers: pause them and end their current work now.
    #[command(after_help = STEER_HELP)]
    Drain(SteerArgs),
    /// Restart workers: finish the current work and come back active.
    #[command(after_help = STEER_HELP)]
    Restart(SteerArgs),
    /// Start one run of each worker at once.
    #[command(name = "run-now", after_help = STEER_HELP)]
    RunNow(SteerArgs),
    /// Enable workers (the admin page's name for resume).
    #[command(after_help = STEER_HELP)]
    Enable(SteerArgs),
    /// Disable workers (the admin page's name for pause): scheduled jobs skip their runs.
    #[command(after_help = STEER_HELP)]
    Disable(SteerArgs),
    /// Pool budgets: how many workers may be down at once.
    #[command(subcommand)]
    Pool(PoolCommand),
    /// Rolling restarts: a pool a batch at a time, never more down than the batch.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// The audit log: who asked what, when, and how it ended.
    #[command(after_help = KEY_HELP)]
    Audit(AuditArgs),
    /// What happened to the workers: started, stopped, crashed, stale, hung,
    /// paused, reporting gaps... (hp_worker_events; the sweep runs first).
    #[command(after_help = KEY_HELP)]
    Events(EventsArgs),
    /// Remove the rows of workers not seen for a while (renamed, scaled
    /// down, their host gone), with their control rows; each is recorded as
    /// a `pruned` event, and one that comes back simply reappears.
    #[command(after_help = KEY_HELP)]
    Prune(PruneArgs),
    /// Post each new event of the kinds chosen to webhooks (JSON, or a
    /// Slack or Discord message): a small watcher that runs the sweep every
    /// 15 s, retries with backoff and keeps its place in the store, so an
    /// event is delivered once even across restarts or with two watchers.
    #[command(after_help = ALERTS_HELP)]
    Alerts(AlertsArgs),
}

const ALERTS_HELP: &str = "A webhook URL from Slack or Discord is a secret: pass it in HP_ALERT_WEBHOOKS \
(several separated by spaces) from a file only you can read, rather than --webhook, which any user can see in \
the process list. Slack and Discord URLs get their own message format by themselves. Each webhook keeps its \
place in the store (hp_alert_cursor: apply sql/20261201000003_hp_alerts.sql on Supabase), so a restart resumes \
where it stopped and a second watcher with the same webhooks waits to take over. Runs until SIGTERM or Ctrl-C; \
under systemd it says READY=1 and pings WatchdogSec= each round. See docs/alerts.md.\n\n\
Supabase: SUPABASE_URL and SUPABASE_SECRET_KEY; otherwise the local store.";

const STEER_HELP: &str = "Every request goes through hp_control() (or the same rule in the local store), which \
refuses what would leave a pool with more workers down than its budget allows. Before acting the command shows \
which workers and what each pool's availability becomes; on a terminal it asks to confirm, otherwise pass --yes \
(and --confirm POOL for a whole pool or a protected one). Exit codes: 0 accepted (and with --wait, applied), \
1 refused (the rule and the numbers are printed), 2 bad names or a store it cannot reach, 3 --wait timed out. \
With the secret key the actor is recorded as service_role plus $USER@host; HP_OPERATOR_JWT (a signed-in \
operator's token) lets the database take it from the token.";

#[derive(Debug, Args)]
pub struct SteerArgs {
    /// The workers (names as `heartbeat-sidecar status` lists them).
    #[arg(
        value_name = "NAME",
        required_unless_present = "pool",
        conflicts_with = "pool"
    )]
    pub names: Vec<String>,
    /// Every worker of this pool instead.
    #[arg(long, value_name = "POOL")]
    pub pool: Option<String>,
    /// Why, for the audit log (at most 500 bytes).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Do not ask: needed without a terminal.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// The pool's name, for a whole pool, a protected pool or --force.
    #[arg(long, value_name = "POOL")]
    pub confirm: Option<String>,
    /// Go over the pool's budget (needs --confirm POOL).
    #[arg(long)]
    pub force: bool,
    /// Follow the workers until each reports the new state.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait follows them.
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = parse_duration)]
    pub timeout: std::time::Duration,
    /// Print the answer as JSON (and no questions: needs --yes).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Every pool: its members, how many are available, its budget.
    #[command(after_help = KEY_HELP)]
    List(PoolListArgs),
    /// Set a pool's budget (what is not given stays).
    #[command(after_help = KEY_HELP)]
    Set(PoolSetArgs),
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Restart every available worker of a pool, a batch at a time, each back
    /// (a new instance, running) and settled before the next batch.
    ///
    /// The rollout lives in the store: Ctrl-C leaves it where it is, and
    /// `rollout resume ID` (or `rollout status`) picks it up from any host.
    /// Exit codes: 0 done, 1 refused or aborted, 2 bad input or store, 3 stuck
    /// (a worker did not come back: its name and why are printed), 130 Ctrl-C.
    #[command(after_help = KEY_HELP)]
    Restart(RolloutRestartArgs),
    /// A rollout's state and each worker's (the pool's latest, or ID's).
    #[command(after_help = KEY_HELP)]
    Status(RolloutStatusArgs),
    /// Follow a rollout again and move it on until it ends.
    #[command(after_help = KEY_HELP)]
    Resume(RolloutIdArgs),
    /// Stop a running or stuck rollout where it is.
    #[command(after_help = KEY_HELP)]
    Abort(RolloutAbortArgs),
}

#[derive(Debug, Args)]
pub struct RolloutRestartArgs {
    /// The pool to restart.
    #[arg(long, value_name = "POOL")]
    pub pool: String,
    /// Workers restarted at once (default the pool's max_unavailable; more needs --confirm POOL).
    #[arg(long, value_name = "N")]
    pub max_unavailable: Option<i64>,
    /// How long a restarted worker must stay running before the next batch.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub settle: std::time::Duration,
    /// How long a worker may take to come back before the rollout is stuck.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub timeout: std::time::Duration,
    /// Why, for the audit log.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// The pool's name, for a protected pool or a batch over its budget.
    #[arg(long, value_name = "POOL")]
    pub confirm: Option<String>,
    /// Do not ask: needed without a terminal.
    #[arg(long, short = 'y')]
    pub yes: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args)]
pub struct RolloutStatusArgs {
    /// The rollout (default: the pool's latest, or the latest of all).
    #[arg(value_name = "ID")]
    pub id: Option<i64>,
    /// The pool whose latest rollout to show.
    #[arg(long, value_name = "POOL")]
    pub pool: Option<String>,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args)]
pub struct RolloutIdArgs {
    /// The rollout.
    #[arg(value_name = "ID")]
    pub id: i64,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args)]
pub struct RolloutAbortArgs {
    /// The rollout.
    #[arg(value_name = "ID")]
    pub id: i64,
    /// Why, for the audit log.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args)]
pub struct PoolListArgs {
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args)]
pub struct PoolSetArgs {
    /// The pool.
    #[arg(value_name = "POOL")]
    pub pool: String,
    /// At most this many of its workers unavailable at once.
    #[arg(long, value_name = "N")]
    pub max_unavailable: Option<i64>,
    /// At least this many available.
    #[arg(long, value_name = "N")]
    pub min_available: Option<i64>,
    /// Whether lowering its availability needs its name typed.
    #[arg(long, value_name = "true|false", action = clap::ArgAction::Set)]
    pub protected: Option<bool>,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// How far back (e.g. 24h, 7d).
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    pub since: std::time::Duration,
    /// Only the rows about this worker.
    #[arg(long, value_name = "NAME")]
    pub worker: Option<String>,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only this worker's events.
    #[arg(value_name = "NAME")]
    pub name: Option<String>,
    /// How far back (e.g. 1h, 24h, 7d).
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    pub since: std::time::Duration,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Workers not seen for this long (at least 1h; e.g. 7d).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub gone_for: std::time::Duration,
    /// Only say which would be removed.
    #[arg(long)]
    pub dry_run: bool,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args)]
pub struct AlertsArgs {
    /// A webhook to post to (repeat for several; http or https). Without
    /// it, those in HP_ALERT_WEBHOOKS, separated by spaces or newlines
    #[arg(long = "webhook", value_name = "URL")]
    pub webhooks: Vec<String>,
    /// The kinds of event to send, comma-separated: any of started, stopped,
    /// crashed, vanished, stale, hung, recovered, breaker (opened),
    /// breaker_closed, paused, resumed, drained, restarted, reporting_gap,
    /// pruned; or all.
    #[arg(
        long = "on",
        value_name = "KINDS",
        default_value = "crashed,stale,hung,breaker",
        value_parser = parse_kinds
    )]
    pub kinds: AlertKinds,
    /// `json` (the event, as `events --json` prints it, plus a `text` line),
    /// `slack` (a Slack message), `discord` (a Discord message, mentions
    /// off), or `auto`: slack for hooks.slack.com, discord for discord.com,
    /// json for any other URL.
    #[arg(
        long,
        value_name = "auto|json|slack|discord",
        default_value = "auto",
        value_enum
    )]
    pub format: AlertFormat,
    /// How often the sweep runs (new events are looked for every 5 s, or this when shorter).
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = parse_duration)]
    pub every: std::time::Duration,
    /// Also remove workers not seen for this long, once an hour (at least 1h; e.g. 7d).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub prune_gone_for: Option<std::time::Duration>,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// How `alerts` writes each event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AlertFormat {
    Auto,
    Json,
    Slack,
    Discord,
}

/// The event kinds `alerts --on` names, in the store's words, sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertKinds(pub Vec<String>);

/// Every kind of event the store records.
pub const EVENT_KINDS: [&str; 15] = [
    "started",
    "stopped",
    "crashed",
    "vanished",
    "stale",
    "hung",
    "recovered",
    "breaker_opened",
    "breaker_closed",
    "paused",
    "resumed",
    "drained",
    "restarted",
    "reporting_gap",
    "pruned",
];

fn parse_kinds(text: &str) -> Result<AlertKinds, String> {
    let mut kinds = Vec::new();
    for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        match word {
            "all" => kinds.extend(EVENT_KINDS.iter().map(|k| (*k).to_owned())),
            "breaker" => kinds.push("breaker_opened".to_owned()),
            k if EVENT_KINDS.contains(&k) => kinds.push(k.to_owned()),
            other => {
                return Err(format!(
                    "no event kind `{other}`: use any of {}, breaker (= breaker_opened) or all",
                    EVENT_KINDS.join(", ")
                ))
            }
        }
    }
    if kinds.is_empty() {
        return Err("no kinds: name at least one, e.g. --on crashed,stale".into());
    }
    kinds.sort();
    kinds.dedup();
    Ok(AlertKinds(kinds))
}

/// Where rows are read and written. URL, store and schema are also read from
/// their variables by the SDK, so a flag given here always wins.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Supabase project URL, e.g. https://abcdefgh.supabase.co [env: SUPABASE_URL]
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Schema holding hp_worker_status [env: HP_SUPABASE_SCHEMA] [default: public]
    #[arg(long, value_name = "NAME")]
    pub schema: Option<String>,
    /// `supabase`, `local`, or the path of a local SQLite store [env: HP_STORE]
    #[arg(long, value_name = "supabase|local|PATH")]
    pub store: Option<String>,
    /// Allow plain http:// to a non-loopback host, which sends the key in clear
    /// [env: HP_ALLOW_INSECURE_HTTP=1]
    #[arg(long)]
    pub allow_insecure_http: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Worker name: 1 to 128 of A-Z a-z 0-9 . _ : -
    #[arg(long, env = env::WORKER_NAME, value_name = "NAME")]
    pub name: String,
    /// Append -$NODE_APP_INSTANCE to the name (PM2 with instances > 1).
    #[arg(long)]
    pub instance_suffix: bool,
    /// Seconds between beats, 1 to 86400.
    #[arg(
        long,
        env = env::INTERVAL,
        value_name = "SECS",
        default_value_t = env::DEFAULT_INTERVAL.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..=86_400)
    )]
    pub interval: u64,
    /// Milliseconds the final row may take after the worker exits, 1 to 60000.
    #[arg(
        long,
        env = env::SHUTDOWN_BUDGET,
        value_name = "MS",
        default_value_t = env::DEFAULT_SHUTDOWN_BUDGET.as_millis() as u64,
        value_parser = clap::value_parser!(u64).range(1..=60_000)
    )]
    pub shutdown_budget: u64,
    /// Errors in a row that open the circuit breaker.
    #[arg(
        long,
        env = env::BREAKER_THRESHOLD,
        value_name = "N",
        default_value_t = env::DEFAULT_BREAKER_THRESHOLD,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub circuit_breaker_threshold: u32,
    /// Count a job for each output line matching REGEX (repeatable).
    #[arg(long = "job-pattern", value_name = "REGEX")]
    pub job_patterns: Vec<String>,
    /// Count an error for each output line matching REGEX (repeatable); the line becomes last_error.
    #[arg(long = "error-pattern", value_name = "REGEX")]
    pub error_patterns: Vec<String>,
    /// Add key=value to the row's metadata (repeatable; value parsed as JSON if it can be).
    #[arg(long = "metadata", value_name = "KEY=VALUE")]
    pub metadata: Vec<String>,
    /// The worker's version, shown in the row.
    #[arg(long = "worker-version", env = env::WORKER_VERSION, value_name = "VERSION")]
    pub worker_version: Option<String>,
    /// The worker's pool, written in its row: availability budgets are per pool.
    #[arg(long, env = env::POOL, value_name = "POOL", default_value = env::DEFAULT_POOL)]
    pub pool: String,
    /// Stop the worker gracefully when its whole process tree uses more than
    /// SIZE (e.g. 500M, 2G; K, M, G are powers of 1024), reported as such, and
    /// exit 1 so PM2 or systemd restart it: PM2's `max_memory_restart` sees
    /// only the sidecar's own few MiB.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_memory: Option<u64>,
    /// How long a worker the sidecar stops (for a restart, drain, pause or
    /// --max-memory) has to exit after --stop-signal before SIGKILL.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub stop_timeout: std::time::Duration,
    /// The signal that asks the worker to stop gracefully (TERM, INT, HUP, QUIT, USR1, USR2 or a number).
    #[arg(long, value_name = "SIG", default_value = "TERM", value_parser = parse_signal)]
    pub stop_signal: i32,
    /// Pause the worker in place with this signal instead of stopping it
    /// (STOP freezes it, TSTP or USR1 ask a worker that handles them); needs --resume-signal.
    #[arg(long, value_name = "SIG", value_parser = parse_signal, requires = "resume_signal")]
    pub pause_signal: Option<i32>,
    /// The signal that resumes a worker paused with --pause-signal (e.g. CONT, USR2).
    #[arg(long, value_name = "SIG", value_parser = parse_signal, requires = "pause_signal")]
    pub resume_signal: Option<i32>,
    /// Start the command once per DURATION (e.g. 60s, 5m) instead of keeping
    /// it running; each start is a run (exit 0 succeeded, else failed). Never
    /// two at once; paused, runs are skipped; run-now starts one at once.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub every: Option<std::time::Duration>,
    /// A run longer than this reads as hung (e.g. 10m) [env: HP_MAX_RUN_SECS]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub max_run: Option<std::time::Duration>,
    /// No output and no socket line for this long reads as hung (e.g. 2m):
    /// the worker beats but does nothing [env: HP_WATCHDOG_SECS]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub hung_after: Option<std::time::Duration>,
    /// Forward the signals the sidecar gets (TERM, INT, HUP, ...) to the
    /// worker's whole process group, not only to the worker: `docker stop`
    /// then reaches what a shell script started (tini's -g).
    #[arg(long)]
    pub signal_group: bool,
    /// Refuse to start the worker when reporting is misconfigured (exit 2).
    /// By default the worker runs anyway and the error is logged.
    #[arg(long)]
    pub strict: bool,
    #[command(flatten)]
    pub store: StoreArgs,
    /// The worker command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct OnceArgs {
    /// How often the job is expected to run (e.g. 1h, 1d): a missed run makes
    /// the row stale after the usual grace (2.5 periods), as a healthchecks.io
    /// check does. Up to 1 day.
    #[arg(long, value_name = "DURATION", value_parser = parse_period)]
    pub period: Option<std::time::Duration>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Also show this worker's row, if it has one (it is only read).
    #[arg(long, env = env::WORKER_NAME, value_name = "NAME")]
    pub name: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the rows as JSON (for scripts).
    #[arg(long, conflicts_with = "watch")]
    pub json: bool,
    /// A live view, refreshed every 2 s (q to quit). Needs a terminal.
    #[arg(long)]
    pub watch: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

impl StoreArgs {
    /// The SDK's settings: these flags, then the environment for the rest.
    ///
    /// # Errors
    /// When two flags disagree about where rows go.
    pub fn settings(&self) -> Result<StoreSettings, String> {
        let given = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
        let mut settings = StoreSettings::default();
        if let Some(url) = given(&self.url) {
            // A URL given on the command line means Supabase, whatever HP_STORE says.
            match given(&self.store).map(|s| StoreChoice::parse(&s)) {
                Some(StoreChoice::Local(_)) => return Err(
                    "--url and --store local/PATH disagree about where rows go: pass one of them"
                        .into(),
                ),
                _ => settings = settings.url(url).store(StoreChoice::Supabase),
            }
        } else if let Some(store) = given(&self.store) {
            settings = settings.store(StoreChoice::parse(&store));
        }
        if let Some(schema) = given(&self.schema) {
            settings = settings.schema(schema);
        }
        if self.allow_insecure_http {
            settings = settings.allow_insecure_http(true);
        }
        Ok(settings.from_env())
    }
}

/// "30s", "5m", "1h 30m", or a plain number of seconds.
pub fn parse_duration(value: &str) -> Result<std::time::Duration, String> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Ok(std::time::Duration::from_secs(secs));
    }
    humantime::parse_duration(value)
        .map_err(|e| format!("{e}: use a duration such as 30s, 5m or 1h"))
}

fn parse_period(value: &str) -> Result<std::time::Duration, String> {
    let period = parse_duration(value)?;
    if period < std::time::Duration::from_secs(1) || period > std::time::Duration::from_secs(86_400)
    {
        return Err(format!(
            "{value:?} is out of range: a period is 1s to 1d (86400 seconds)"
        ));
    }
    Ok(period)
}

/// "TERM", "SIGTERM", "15": a signal a worker can be asked to handle.
pub fn parse_signal(value: &str) -> Result<i32, String> {
    let value = value.trim();
    if let Ok(n) = value.parse::<i32>() {
        if (1..=64).contains(&n) && n != libc::SIGKILL {
            return Ok(n);
        }
        return Err(format!(
            "{n} is not a signal to ask a worker with: use 1 to 64, not 9 (KILL)"
        ));
    }
    let upper = value.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    Ok(match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "TSTP" => libc::SIGTSTP,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "WINCH" => libc::SIGWINCH,
        _ => {
            return Err(format!(
                "{value:?} is not a signal name: use TERM, INT, HUP, QUIT, USR1, USR2, TSTP, STOP, CONT, WINCH or a number"
            ))
        }
    })
}

/// "500M", "2G", "1.5GiB", "800000000": K, M, G (and KiB, MiB, GiB) are
/// powers of 1024, as PM2's `max_memory_restart` reads them.
pub fn parse_size(value: &str) -> Result<u64, String> {
    let value = value.trim();
    let split = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{value:?} is not a size: use e.g. 500M or 2G"))?;
    let scale: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {value:?}: use K, M or G"
            ))
        }
    };
    let bytes = number * scale as f64;
    if bytes < 1.0 {
        return Err(format!("{value:?} is too small"));
    }
    Ok(bytes as u64)
}

/// Parses the command line; usage errors exit 2 with clap's message, plus
/// the fix for the most common one (the worker's command without `--`).
pub fn parse() -> Cli {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            let is_run = args.get(1).is_some_and(|a| a == "run");
            let has_separator = args.iter().any(|a| a == "--");
            let usage_kind = matches!(
                e.kind(),
                clap::error::ErrorKind::UnknownArgument
                    | clap::error::ErrorKind::MissingRequiredArgument
            );
            if is_run && !has_separator && usage_kind {
                eprintln!(
                    "error: put `--` before the worker's command, e.g.\n  heartbeat-sidecar run --name orders -- node scripts/orders.mjs\n"
                );
                std::process::exit(crate::exit::USAGE);
            }
            e.exit()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_in_the_words_users_type() {
        assert_eq!(parse_size("500M"), Ok(500 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5T").is_err_and(|e| e.contains("K, M or G")));
        assert_eq!(
            parse_duration("30s"),
            Ok(std::time::Duration::from_secs(30))
        );
        assert_eq!(parse_duration("45"), Ok(std::time::Duration::from_secs(45)));
        assert_eq!(
            parse_duration("2m"),
            Ok(std::time::Duration::from_secs(120))
        );
        assert!(parse_duration("soon").is_err_and(|e| e.contains("30s")));
    }

    #[test]
    fn a_url_flag_wins_over_hp_store_and_two_flags_that_disagree_are_an_error() {
        let args = |url: Option<&str>, store: Option<&str>| StoreArgs {
            url: url.map(str::to_owned),
            schema: None,
            store: store.map(str::to_owned),
            allow_insecure_http: false,
        };
        let e = args(Some("https://x.supabase.co"), Some("/tmp/x.db"))
            .settings()
            .err()
            .unwrap_or_default();
        assert!(e.contains("--url") && e.contains("--store"), "{e}");
        assert!(args(Some("https://x.supabase.co"), Some("supabase"))
            .settings()
            .is_ok());
    }
}
