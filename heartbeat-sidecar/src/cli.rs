//! Command-line interface. Every setting also reads an environment variable
//! (shown in `--help`); a flag wins over its variable.

use clap::{Args, Parser, Subcommand};

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
    /// Check the configuration by writing one row; say what is wrong and how to fix it.
    #[command(after_help = KEY_HELP)]
    Check(CheckArgs),
    /// Show every worker's health; exit 1 if any is stale, crashed or has its breaker open.
    ///
    /// Exit codes: 0 all healthy, 1 a worker is stale, crashed or has its breaker open, 2 could not read.
    #[command(after_help = KEY_HELP)]
    Status(StatusArgs),
}

/// Where rows are read and written. The key comes from SUPABASE_SECRET_KEY,
/// SUPABASE_SERVICE_ROLE_KEY or SUPABASE_SERVICE_KEY (first found).
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Supabase project URL, e.g. https://abcdefgh.supabase.co.
    #[arg(long, env = "SUPABASE_URL", value_name = "URL")]
    pub url: Option<String>,
    /// Schema holding hp_worker_status.
    #[arg(long, env = "HP_SUPABASE_SCHEMA", value_name = "NAME")]
    pub schema: Option<String>,
    /// `supabase`, `local`, or the path of a local SQLite store.
    #[arg(long, env = "HP_STORE", value_name = "supabase|local|PATH")]
    pub store: Option<String>,
    /// Allow plain http:// to a non-loopback host (sends the key in clear).
    #[arg(long, env = "HP_ALLOW_INSECURE_HTTP", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false)]
    pub allow_insecure_http: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Worker name: 1 to 128 of A-Z a-z 0-9 . _ : -
    #[arg(long, env = "HP_WORKER_NAME", value_name = "NAME")]
    pub name: String,
    /// Append -$NODE_APP_INSTANCE to the name (PM2 with instances > 1).
    #[arg(long)]
    pub instance_suffix: bool,
    /// Seconds between beats.
    #[arg(
        long,
        env = "HP_HEARTBEAT_INTERVAL_SECS",
        value_name = "SECS",
        default_value_t = 30
    )]
    pub interval: u64,
    /// Milliseconds the final row may take after the worker exits.
    #[arg(
        long,
        env = "HP_SHUTDOWN_BUDGET_MS",
        value_name = "MS",
        default_value_t = 1000
    )]
    pub shutdown_budget: u64,
    /// Errors in a row that open the circuit breaker.
    #[arg(
        long,
        env = "HP_CIRCUIT_BREAKER_THRESHOLD",
        value_name = "N",
        default_value_t = 10
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
    #[arg(
        long = "worker-version",
        env = "HP_WORKER_VERSION",
        value_name = "VERSION"
    )]
    pub worker_version: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
    /// The worker command and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Worker name to write the test row under (use the real worker's name).
    #[arg(
        long,
        env = "HP_WORKER_NAME",
        value_name = "NAME",
        default_value = "heartbeat-check"
    )]
    pub name: String,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the rows as JSON (for scripts).
    #[arg(long, conflicts_with = "watch")]
    pub json: bool,
    /// A live view, refreshed every 2 s (q to quit).
    #[arg(long)]
    pub watch: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

impl StoreArgs {
    /// The SDK's settings: these flags, then the environment for the rest (the key).
    pub fn settings(&self) -> heartbeat_sdk::StoreSettings {
        let store = self.store.as_deref().map(heartbeat_sdk::StoreChoice::parse);
        heartbeat_sdk::StoreSettings {
            url: self.url.clone().filter(|u| !u.trim().is_empty()),
            schema: self.schema.clone().filter(|s| !s.trim().is_empty()),
            store,
            allow_insecure_http: Some(self.allow_insecure_http),
            ..Default::default()
        }
        .from_env()
    }
}
