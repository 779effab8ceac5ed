//! Errors: configuration mistakes the user can fix, send failures the loop
//! classifies, and read failures a reader reports.

use std::time::Duration;

/// Why a heartbeat could not start. Each message names the bad value and the fix.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Supabase was asked for but no URL was given.
    #[error("SUPABASE_URL is not set: set it to your project URL, e.g. https://abcdefgh.supabase.co (Project Settings > API), or unset HP_STORE to report to the local store")]
    MissingUrl,
    /// A key is set but the URL is not: a half-done Supabase setup.
    #[error("{source_name} is set but SUPABASE_URL is not: set SUPABASE_URL to your project URL (e.g. https://abcdefgh.supabase.co), or HP_STORE=local to report to the local store on purpose")]
    KeyWithoutUrl {
        /// The variable holding the key.
        source_name: String,
    },
    /// The URL does not parse or is not http(s).
    #[error("SUPABASE_URL {value:?} is not a valid URL ({reason}): use the project URL, e.g. https://abcdefgh.supabase.co")]
    InvalidUrl {
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Plain `http://` to a host other than loopback would send the key in clear.
    #[error("SUPABASE_URL {value:?} uses plain http to a non-local host, which would send the API key in clear: use https://, or set HP_ALLOW_INSECURE_HTTP=1 if the network is trusted")]
    InsecureUrl {
        /// The value given.
        value: String,
    },
    /// No API key was given.
    #[error("no Supabase API key: set SUPABASE_SECRET_KEY (or SUPABASE_SERVICE_ROLE_KEY / SUPABASE_SERVICE_KEY) to the project's secret or service_role key")]
    MissingKey,
    /// The key cannot be sent as an HTTP header.
    #[error("the API key from {source_name} contains spaces, line breaks or non-ASCII characters: copy the key again without surrounding whitespace")]
    MalformedKey {
        /// Where the key came from (an env variable name or "builder").
        source_name: String,
    },
    /// A publishable (anon) key cannot write the table.
    #[error("the API key from {source_name} is a publishable (anon) key, which the migration does not allow to write hp_worker_status: use the secret key (sb_secret_...) or the service_role key")]
    PublishableKey {
        /// Where the key came from.
        source_name: String,
    },
    /// A legacy JWT key whose role is `anon`: the publishable key under its old name.
    #[error("the API key from {source_name} is the legacy anon key (its role claim is anon), which the migration does not allow to write hp_worker_status: use the secret key (sb_secret_...) or the service_role key")]
    AnonKey {
        /// Where the key came from.
        source_name: String,
    },
    /// The worker name breaks the naming rule.
    #[error("worker name {value:?} is invalid: {reason}; use 1 to 128 characters of A-Z a-z 0-9 . _ : -")]
    InvalidName {
        /// The name given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A numeric setting is out of range or does not parse.
    #[error("{name} = {value:?} is invalid: {expected}")]
    InvalidSetting {
        /// The env variable or builder method.
        name: &'static str,
        /// The value given.
        value: String,
        /// What is accepted.
        expected: &'static str,
    },
    /// The schema name is not a plain identifier.
    #[error("schema {value:?} is invalid: use a plain identifier such as public")]
    InvalidSchema {
        /// The value given.
        value: String,
    },
    /// `start_heartbeat` was called twice in one process.
    #[error("start_heartbeat was already called in this process: keep the first Heartbeat, or use Heartbeat::builder(..).start() for a second, independent reporter")]
    AlreadyStarted,
    /// The background thread could not be started.
    #[error("could not start the heartbeat thread: {0}")]
    Thread(String),
    /// The HTTP client could not be built (the TLS backend failed to start).
    #[error("could not set up the HTTP client: {0}")]
    HttpClient(String),
}

/// Why one beat was not stored. Never returned to the worker's code path: the
/// loop classifies, counts and logs it (at a bounded rate); `check` returns it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// 401: the key is wrong, expired, or not accepted as given.
    #[error("HTTP {status} {code}: {message} (the API key is wrong or expired: copy the secret or service_role key from Project Settings > API)")]
    Unauthorized {
        /// HTTP status.
        status: u16,
        /// PostgREST or gateway code (may be empty).
        code: String,
        /// The server's message.
        message: String,
    },
    /// 42501: row level security or a missing GRANT.
    #[error("HTTP {status} {code}: {message} (permission denied by row level security or a missing GRANT: give workers the secret/service_role key, and apply the migration in sql/ which grants service_role)")]
    PermissionDenied {
        /// HTTP status.
        status: u16,
        /// Usually 42501.
        code: String,
        /// The server's message.
        message: String,
    },
    /// 404 PGRST205 / 42P01: the table is not there.
    #[error("HTTP {status} {code}: {message} (table hp_worker_status is missing: apply the migration in sql/ to this project and schema)")]
    TableMissing {
        /// HTTP status.
        status: u16,
        /// PGRST205 or 42P01.
        code: String,
        /// The server's message.
        message: String,
    },
    /// 400 PGRST204: the table lacks a column the SDK sends.
    #[error("HTTP {status} {code}: {message} (the table lacks a column this SDK sends: the migration is older than the SDK, apply the newer files in sql/)")]
    UnknownColumn {
        /// HTTP status.
        status: u16,
        /// PGRST204.
        code: String,
        /// The server's message.
        message: String,
    },
    /// 503 PGRST002: PostgREST is reloading its schema cache; retried.
    #[error("HTTP {status} {code}: {message} (PostgREST is reloading its schema cache: a reporter retries this)")]
    SchemaReloading {
        /// HTTP status.
        status: u16,
        /// PGRST002.
        code: String,
        /// The server's message.
        message: String,
        /// How long the server asked us to wait (`Retry-After`).
        retry_after: Option<Duration>,
    },
    /// Any other 4xx: the row was refused (e.g. a CHECK constraint).
    #[error("HTTP {status} {code}: {message} (the row was refused; {hint})")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// PostgREST or Postgres code.
        code: String,
        /// The server's message.
        message: String,
        /// The server's hint, or ours.
        hint: String,
    },
    /// 5xx or 429: a server-side failure; retried.
    #[error("HTTP {status} {code}: {message} (the server failed or is rate limiting: a reporter retries this{})", retry_after.map(|d| format!(" after the {} s it asked for", d.as_secs())).unwrap_or_default())]
    Server {
        /// HTTP status.
        status: u16,
        /// Code, if any.
        code: String,
        /// The server's message.
        message: String,
        /// How long the server asked us to wait (`Retry-After`).
        retry_after: Option<Duration>,
    },
    /// No answer in time (the request timeout, or the next beat came first).
    #[error("no answer within {0:?} (check the network path to SUPABASE_URL)")]
    Timeout(Duration),
    /// Could not connect or the connection broke; retried.
    #[error("could not reach the server: {0} (check SUPABASE_URL and the network)")]
    Connect(String),
    /// The local store cannot be opened or written; the message says why and the fix.
    #[error("{0}")]
    Store(String),
}

impl SendError {
    /// Whether trying again within the same beat can help.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            SendError::SchemaReloading { .. }
                | SendError::Server { .. }
                | SendError::Timeout(_)
                | SendError::Connect(_)
        )
    }

    /// How long the server asked to be left alone (429/503 `Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SendError::Server { retry_after, .. }
            | SendError::SchemaReloading { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A short stable key, so the same failure is logged once per period.
    pub(crate) fn log_key(&self) -> String {
        match self {
            SendError::Unauthorized { status, code, .. }
            | SendError::PermissionDenied { status, code, .. }
            | SendError::TableMissing { status, code, .. }
            | SendError::UnknownColumn { status, code, .. }
            | SendError::SchemaReloading { status, code, .. }
            | SendError::Rejected { status, code, .. }
            | SendError::Server { status, code, .. } => format!("{status}:{code}"),
            SendError::Timeout(_) => "timeout".into(),
            SendError::Connect(_) => "connect".into(),
            SendError::Store(m) => format!("store:{m}"),
        }
    }
}

/// Why the rows could not be read (`heartbeat-sidecar status`, the read side's `Reader`).
/// Reads are not retried: the message says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// 401: the key is wrong, expired, or not accepted as given.
    #[error("HTTP {status} {code}: {message} (the API key is wrong or expired: copy the secret or service_role key from Project Settings > API)")]
    Unauthorized {
        /// HTTP status.
        status: u16,
        /// PostgREST or gateway code (may be empty).
        code: String,
        /// The server's message.
        message: String,
    },
    /// 42501: row level security or a missing GRANT.
    #[error("HTTP {status} {code}: {message} (this key may not read hp_worker_status: use the secret/service_role key, or a signed-in user, and apply the migration in sql/)")]
    PermissionDenied {
        /// HTTP status.
        status: u16,
        /// Usually 42501.
        code: String,
        /// The server's message.
        message: String,
    },
    /// 404 PGRST205 / 42P01: the table is not there.
    #[error("HTTP {status} {code}: {message} (table hp_worker_status is missing: apply the migration in sql/ to this project and schema)")]
    TableMissing {
        /// HTTP status.
        status: u16,
        /// PGRST205 or 42P01.
        code: String,
        /// The server's message.
        message: String,
    },
    /// Any other answer that is not a success.
    #[error("HTTP {status} {code}: {message} ({hint})")]
    Refused {
        /// HTTP status.
        status: u16,
        /// PostgREST or Postgres code.
        code: String,
        /// The server's message.
        message: String,
        /// The server's hint, or ours.
        hint: String,
    },
    /// The answer was not the rows we asked for.
    #[error("the answer did not parse as rows of hp_worker_status: {0}")]
    Unparsable(String),
    /// No answer within the request timeout.
    #[error("no answer within {0:?} (check the network path to SUPABASE_URL)")]
    Timeout(Duration),
    /// Could not connect or the connection broke.
    #[error("could not reach the server: {0} (check SUPABASE_URL and the network)")]
    Connect(String),
    /// The local store is missing or cannot be read; the message says why and the fix.
    #[error("{0}")]
    Store(String),
}
