//! Configuration: a builder, filled from the environment only where the user
//! left a field unset, validated once at start.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use serde_json::{Map, Value};

use crate::error::ConfigError;
use crate::heartbeat::{FinalState, Heartbeat, Inner};
use crate::key::ApiKey;
use crate::postgrest::{PostgrestConfig, PostgrestTransport};
use crate::probe::{OwnProcess, ProcessProbe};
use crate::reporter::{BeatLoop, Identity};
use crate::row::WorkerStatus;
use crate::state::Counters;
use crate::transport::Transport;

/// Default beat interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// Default number of errors in a row that opens the circuit breaker.
pub const DEFAULT_BREAKER_THRESHOLD: u32 = 10;
/// Default time the final row may take: below PM2's 1.6 s kill timeout.
pub const DEFAULT_SHUTDOWN_BUDGET: Duration = Duration::from_secs(1);
/// Default TCP + TLS connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default whole-request timeout.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The environment variables read by [`HeartbeatBuilder::from_env`].
pub mod env {
    /// Project URL.
    pub const URL: &str = "SUPABASE_URL";
    /// API keys, first found wins.
    pub const KEYS: [&str; 3] = [
        "SUPABASE_SECRET_KEY",
        "SUPABASE_SERVICE_ROLE_KEY",
        "SUPABASE_SERVICE_KEY",
    ];
    /// Overrides the worker name given in code.
    pub const WORKER_NAME: &str = "HP_WORKER_NAME";
    /// Beat interval in whole seconds (at least 1).
    pub const INTERVAL: &str = "HP_HEARTBEAT_INTERVAL_SECS";
    /// Errors in a row that open the breaker.
    pub const BREAKER_THRESHOLD: &str = "HP_CIRCUIT_BREAKER_THRESHOLD";
    /// Final-row budget in milliseconds.
    pub const SHUTDOWN_BUDGET: &str = "HP_SHUTDOWN_BUDGET_MS";
    /// Schema of the table.
    pub const SCHEMA: &str = "HP_SUPABASE_SCHEMA";
    /// `1` allows plain http to a non-loopback host.
    pub const ALLOW_INSECURE_HTTP: &str = "HP_ALLOW_INSECURE_HTTP";
}

/// Configures and starts a [`Heartbeat`].
///
/// ```no_run
/// use std::time::Duration;
/// let hb = heartbeat_sdk::Heartbeat::builder("pnl-job")
///     .url("https://abcdefgh.supabase.co")
///     .key(std::env::var("SUPABASE_SECRET_KEY").unwrap_or_default())
///     .interval(Duration::from_secs(15))
///     .metadata("region", "eu-west")
///     .start()?;
/// hb.job_succeeded();
/// # Ok::<(), heartbeat_sdk::ConfigError>(())
/// ```
pub struct HeartbeatBuilder {
    name: String,
    url: Option<String>,
    key: Option<(ApiKey, String)>,
    schema: Option<String>,
    interval: Option<Duration>,
    breaker_threshold: Option<u32>,
    shutdown_budget: Option<Duration>,
    allow_insecure_http: Option<bool>,
    handle_signals: bool,
    connect_timeout: Duration,
    request_timeout: Duration,
    metadata: Map<String, Value>,
    version: Option<String>,
    reporter: String,
    transport: Option<Box<dyn Transport>>,
    probe: Option<Box<dyn ProcessProbe>>,
    env_error: Option<ConfigError>,
}

impl fmt::Debug for HeartbeatBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeartbeatBuilder")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("key", &self.key.as_ref().map(|(k, _)| k))
            .field("schema", &self.schema)
            .field("interval", &self.interval)
            .field("breaker_threshold", &self.breaker_threshold)
            .field("shutdown_budget", &self.shutdown_budget)
            .field("handle_signals", &self.handle_signals)
            .finish_non_exhaustive()
    }
}

/// Everything [`HeartbeatBuilder::start`] needs, checked.
pub(crate) struct Validated {
    pub name: String,
    pub interval: Duration,
    pub breaker_threshold: u32,
    pub shutdown_budget: Duration,
    pub transport: Box<dyn Transport>,
}

impl HeartbeatBuilder {
    pub(crate) fn new(name: impl Into<String>) -> Self {
        HeartbeatBuilder {
            name: name.into(),
            url: None,
            key: None,
            schema: None,
            interval: None,
            breaker_threshold: None,
            shutdown_budget: None,
            allow_insecure_http: None,
            handle_signals: true,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            metadata: Map::new(),
            version: None,
            reporter: concat!("heartbeat-sdk/", env!("CARGO_PKG_VERSION")).to_owned(),
            transport: None,
            probe: None,
            env_error: None,
        }
    }

    /// The Supabase project URL, e.g. `https://abcdefgh.supabase.co`.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// The API key: the secret (`sb_secret_...`) or legacy `service_role` key.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some((ApiKey::new(key), "builder .key()".into()));
        self
    }

    /// The schema holding `hp_worker_status` (default `public`).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// Time between beats (default 30 s, at least 1 s), jittered by ±10%.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = Some(interval);
        self
    }

    /// Errors in a row that open the circuit breaker (default 10).
    pub fn circuit_breaker_threshold(mut self, errors: u32) -> Self {
        self.breaker_threshold = Some(errors);
        self
    }

    /// Adds a key to the row's `metadata` object.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// The worker's own version, sent as `version`.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// How long the final row may take on shutdown (default 1 s).
    pub fn shutdown_budget(mut self, budget: Duration) -> Self {
        self.shutdown_budget = Some(budget);
        self
    }

    /// Whether SIGTERM/SIGINT send the final row and then end the process as
    /// the signal would have (default on). Turn off when the worker handles
    /// signals itself and calls [`Heartbeat::shutdown`].
    pub fn handle_signals(mut self, on: bool) -> Self {
        self.handle_signals = on;
        self
    }

    /// Allows `http://` to a non-loopback host (the key then crosses the network in clear).
    pub fn allow_insecure_http(mut self, allow: bool) -> Self {
        self.allow_insecure_http = Some(allow);
        self
    }

    /// TCP + TLS connect timeout (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Whole-request timeout (default 10 s); a beat also never outlives the interval.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sends rows through `transport` instead of Supabase (URL and key are then not needed).
    pub fn transport(mut self, transport: impl Transport) -> Self {
        self.transport = Some(Box::new(transport));
        self
    }

    /// Samples another process than this one (the sidecar samples its child).
    pub fn process_probe(mut self, probe: impl ProcessProbe) -> Self {
        self.probe = Some(Box::new(probe));
        self
    }

    /// Names what reports, sent as `reporter` (default `heartbeat-sdk/<version>`).
    #[doc(hidden)]
    pub fn reporter(mut self, reporter: impl Into<String>) -> Self {
        self.reporter = reporter.into();
        self
    }

    /// Fills unset fields from the environment (see [`env`]); `HP_WORKER_NAME`
    /// replaces the name. A malformed value is reported by [`start`](Self::start).
    pub fn from_env(self) -> Self {
        self.apply_env(|name| std::env::var(name).ok())
    }

    /// [`from_env`](Self::from_env) with the lookup passed in, for tests and
    /// for callers (like the sidecar's flags) that layer their own sources.
    pub fn apply_env(mut self, get: impl Fn(&str) -> Option<String>) -> Self {
        let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        if let Some(name) = get(env::WORKER_NAME) {
            self.name = name;
        }
        if self.url.is_none() {
            self.url = get(env::URL);
        }
        if self.key.is_none() {
            self.key = env::KEYS
                .iter()
                .find_map(|var| get(var).map(|k| (ApiKey::new(k), (*var).to_owned())));
        }
        if self.schema.is_none() {
            self.schema = get(env::SCHEMA);
        }
        let mut first_error = None;
        let mut parse = |var: &'static str, expected: &'static str| -> Option<u64> {
            let raw = get(var)?;
            match raw.trim().parse::<u64>() {
                Ok(v) => Some(v),
                Err(_) => {
                    first_error.get_or_insert(ConfigError::InvalidSetting {
                        name: var,
                        value: raw,
                        expected,
                    });
                    None
                }
            }
        };
        let interval = parse(
            env::INTERVAL,
            "a whole number of seconds, at least 1 (default 30)",
        );
        let threshold = parse(
            env::BREAKER_THRESHOLD,
            "a whole number of errors, at least 1 (default 10)",
        );
        let budget = parse(
            env::SHUTDOWN_BUDGET,
            "a whole number of milliseconds, 1 to 60000 (default 1000)",
        );
        let insecure = get(env::ALLOW_INSECURE_HTTP);
        if self.interval.is_none() {
            self.interval = interval.map(Duration::from_secs);
        }
        if self.breaker_threshold.is_none() {
            self.breaker_threshold = threshold.map(|t| u32::try_from(t).unwrap_or(u32::MAX));
        }
        if self.shutdown_budget.is_none() {
            self.shutdown_budget = budget.map(Duration::from_millis);
        }
        if self.allow_insecure_http.is_none() {
            self.allow_insecure_http = insecure.map(|v| matches!(v.trim(), "1" | "true" | "yes"));
        }
        if self.env_error.is_none() {
            self.env_error = first_error;
        }
        self
    }

    /// Checks everything and builds the transport, without starting anything.
    pub(crate) fn validate(&mut self) -> Result<Validated, ConfigError> {
        if let Some(e) = self.env_error.take() {
            return Err(e);
        }
        validate_name(&self.name)?;
        let interval = self.interval.unwrap_or(DEFAULT_INTERVAL);
        if interval < Duration::from_secs(1) || interval > Duration::from_secs(86_400) {
            return Err(ConfigError::InvalidSetting {
                name: "interval",
                value: format!("{interval:?}"),
                expected: "between 1 s and 1 day (default 30 s)",
            });
        }
        let breaker_threshold = self.breaker_threshold.unwrap_or(DEFAULT_BREAKER_THRESHOLD);
        if breaker_threshold == 0 {
            return Err(ConfigError::InvalidSetting {
                name: "circuit_breaker_threshold",
                value: "0".into(),
                expected: "at least 1 (default 10)",
            });
        }
        let shutdown_budget = self.shutdown_budget.unwrap_or(DEFAULT_SHUTDOWN_BUDGET);
        if shutdown_budget.is_zero() || shutdown_budget > Duration::from_secs(60) {
            return Err(ConfigError::InvalidSetting {
                name: "shutdown_budget",
                value: format!("{shutdown_budget:?}"),
                expected: "between 1 ms and 60 s (default 1 s)",
            });
        }
        let transport = match self.transport.take() {
            Some(t) => t,
            None => Box::new(self.postgrest_transport()?),
        };
        Ok(Validated {
            name: self.name.clone(),
            interval,
            breaker_threshold,
            shutdown_budget,
            transport,
        })
    }

    /// The checked Supabase settings.
    pub fn postgrest_config(&self) -> Result<PostgrestConfig, ConfigError> {
        let raw_url = self.url.as_deref().ok_or(ConfigError::MissingUrl)?;
        let url = parse_url(raw_url, self.allow_insecure_http.unwrap_or(false))?;
        let (key, source_name) = self.key.clone().ok_or(ConfigError::MissingKey)?;
        if !key.is_header_safe() {
            return Err(ConfigError::MalformedKey { source_name });
        }
        if key.is_publishable() {
            return Err(ConfigError::PublishableKey { source_name });
        }
        let schema = self.schema.clone().unwrap_or_else(|| "public".into());
        let ident = !schema.is_empty()
            && schema.len() <= 63
            && !schema.starts_with(|c: char| c.is_ascii_digit())
            && schema
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ident {
            return Err(ConfigError::InvalidSchema { value: schema });
        }
        Ok(PostgrestConfig {
            url,
            key,
            schema,
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
        })
    }

    fn postgrest_transport(&self) -> Result<PostgrestTransport, ConfigError> {
        let config = self.postgrest_config()?;
        PostgrestTransport::new(&config, &self.reporter).map_err(|e| ConfigError::InvalidUrl {
            value: config.url.to_string(),
            reason: e.to_string(),
        })
    }

    /// Validates the configuration and starts beating: the first beat goes
    /// out at once, on a background thread.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the bad or missing setting and the fix.
    pub fn start(self) -> Result<Heartbeat, ConfigError> {
        let handle_signals = self.handle_signals;
        let (beat_loop, name) = self.prepare()?;
        let inner = Arc::clone(&beat_loop.inner);
        std::thread::Builder::new()
            .name("hp-heartbeat".into())
            .spawn(move || beat_loop.run_blocking())?;
        if handle_signals {
            crate::signals::watch(&inner)?;
        }
        Ok(Heartbeat {
            inner,
            worker_name: name,
        })
    }

    /// Sends one row with status `unknown` and reports what went wrong, in
    /// words a user can act on. Starts nothing; for setup checks.
    ///
    /// The row is the worker's own (same name): a worker already running
    /// restores its status and totals with its next beat.
    ///
    /// # Errors
    /// [`CheckError::Config`] for a bad setting, [`CheckError::Send`] for
    /// what the server answered.
    pub async fn check(self) -> Result<(), CheckError> {
        let (mut beat_loop, _) = self.prepare()?;
        let unknown = FinalState {
            status: WorkerStatus::Unknown,
            ..FinalState::default()
        };
        let row = beat_loop.build_row(Some(&unknown));
        beat_loop.transport.send(&row).await?;
        Ok(())
    }

    fn prepare(mut self) -> Result<(BeatLoop, String), ConfigError> {
        let valid = self.validate()?;
        let inner = Arc::new(Inner::new(
            Counters::new(valid.breaker_threshold, std::mem::take(&mut self.metadata)),
            valid.shutdown_budget,
        ));
        let identity = Identity {
            worker_name: valid.name.clone(),
            hostname: sysinfo::System::host_name(),
            started_at: crate::reporter::now_micros(),
            started: std::time::Instant::now(),
            instance_id: uuid::Uuid::new_v4().to_string(),
            version: self.version.take(),
            reporter: self.reporter.clone(),
            interval: valid.interval,
        };
        let probe = self
            .probe
            .take()
            .unwrap_or_else(|| Box::new(OwnProcess::new()));
        Ok((
            BeatLoop::new(inner, identity, valid.transport, probe),
            valid.name,
        ))
    }
}

/// Why [`HeartbeatBuilder::check`] failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// A setting is missing or malformed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The server refused the row or could not be reached.
    #[error(transparent)]
    Send(#[from] crate::error::SendError),
}

/// 1 to 128 characters of `[A-Za-z0-9._:-]` (the SQL CHECK says the same).
pub fn validate_name(name: &str) -> Result<(), ConfigError> {
    let reason = if name.is_empty() {
        Some("it is empty".to_owned())
    } else if name.chars().count() > 128 {
        Some(format!("it is {} characters long", name.chars().count()))
    } else {
        name.chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
            .map(|c| format!("it contains {c:?}"))
    };
    match reason {
        Some(reason) => Err(ConfigError::InvalidName {
            value: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

fn parse_url(raw: &str, allow_insecure_http: bool) -> Result<Url, ConfigError> {
    let invalid = |reason: &str| ConfigError::InvalidUrl {
        value: raw.to_owned(),
        reason: reason.to_owned(),
    };
    let mut url = Url::parse(raw.trim()).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(
            "the scheme must be https (or http for a local server)",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("it must not have a query or fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("it must not contain credentials"));
    }
    let loopback = match url.host() {
        None => return Err(invalid("it has no host")),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
    };
    if url.scheme() == "http" && !loopback && !allow_insecure_http {
        return Err(ConfigError::InsecureUrl {
            value: raw.to_owned(),
        });
    }
    // Users paste the REST endpoint as often as the project URL.
    let path = url.path().trim_end_matches('/');
    let path = path.strip_suffix("/rest/v1").unwrap_or(path).to_owned();
    url.set_path(&path);
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn err_of(b: HeartbeatBuilder) -> String {
        let mut b = b;
        match b.validate() {
            Ok(_) => "ok".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn env_fills_only_unset_fields_and_name_overrides() {
        let b = HeartbeatBuilder::new("in-code")
            .url("https://code.example.com")
            .apply_env(env_of(&[
                ("HP_WORKER_NAME", "from-env"),
                ("SUPABASE_URL", "https://env.example.com"),
                ("SUPABASE_SERVICE_ROLE_KEY", "sb_secret_second"),
                ("SUPABASE_SERVICE_KEY", "sb_secret_third"),
                ("HP_HEARTBEAT_INTERVAL_SECS", "5"),
            ]));
        assert_eq!(b.name, "from-env");
        assert_eq!(b.url.as_deref(), Some("https://code.example.com"));
        assert_eq!(
            b.key.as_ref().map(|(_, s)| s.as_str()),
            Some("SUPABASE_SERVICE_ROLE_KEY")
        );
        assert_eq!(b.interval, Some(Duration::from_secs(5)));
    }

    #[test]
    fn first_key_variable_wins() {
        let b = HeartbeatBuilder::new("w").apply_env(env_of(&[
            ("SUPABASE_SECRET_KEY", "sb_secret_first"),
            ("SUPABASE_SERVICE_ROLE_KEY", "sb_secret_second"),
        ]));
        assert_eq!(
            b.key.as_ref().map(|(_, s)| s.as_str()),
            Some("SUPABASE_SECRET_KEY")
        );
    }

    #[test]
    fn malformed_env_values_name_the_variable() {
        let e = err_of(
            HeartbeatBuilder::new("w").apply_env(env_of(&[("HP_HEARTBEAT_INTERVAL_SECS", "30s")])),
        );
        assert!(
            e.contains("HP_HEARTBEAT_INTERVAL_SECS") && e.contains("\"30s\""),
            "{e}"
        );
        let e = err_of(
            HeartbeatBuilder::new("w")
                .apply_env(env_of(&[("HP_HEARTBEAT_INTERVAL_SECS", "0")]))
                .url("https://x.supabase.co")
                .key("sb_secret_x"),
        );
        assert!(e.contains("interval"), "{e}");
    }

    #[test]
    fn missing_url_and_key_say_the_fix() {
        let e = err_of(HeartbeatBuilder::new("w"));
        assert!(e.contains("SUPABASE_URL is not set"), "{e}");
        let e = err_of(HeartbeatBuilder::new("w").url("https://x.supabase.co"));
        assert!(e.contains("SUPABASE_SECRET_KEY"), "{e}");
    }

    #[test]
    fn plain_http_only_to_loopback_unless_allowed() {
        let ok = |url: &str| parse_url(url, false).is_ok();
        assert!(ok("http://127.0.0.1:54321"));
        assert!(ok("http://localhost:54321"));
        assert!(ok("http://[::1]:54321"));
        assert!(ok("https://abcdefgh.supabase.co"));
        assert!(!ok("http://abcdefgh.supabase.co"));
        assert!(!ok("http://10.0.0.5:8000"));
        assert!(parse_url("http://10.0.0.5:8000", true).is_ok());
        let e = err_of(
            HeartbeatBuilder::new("w")
                .url("http://db.internal")
                .key("sb_secret_x"),
        );
        assert!(e.contains("HP_ALLOW_INSECURE_HTTP"), "{e}");
    }

    #[test]
    fn url_forms() {
        let u = parse_url("https://x.supabase.co/rest/v1/", false).map(|u| u.to_string());
        assert_eq!(u.ok().as_deref(), Some("https://x.supabase.co/"));
        assert!(parse_url("x.supabase.co", false).is_err());
        assert!(parse_url("ftp://x.supabase.co", false).is_err());
        assert!(parse_url("https://user:pw@x.supabase.co", false).is_err());
    }

    #[test]
    fn names() {
        assert!(validate_name("mission-worker").is_ok());
        assert!(validate_name("a.b_c:d-1").is_ok());
        assert!(validate_name(&"x".repeat(128)).is_ok());
        assert!(validate_name(&"x".repeat(129)).is_err());
        assert!(validate_name("").is_err());
        let e = validate_name("my worker")
            .map_err(|e| e.to_string())
            .err()
            .unwrap_or_default();
        assert!(e.contains("' '") && e.contains("A-Z"), "{e}");
        assert!(validate_name("wörker").is_err());
    }

    #[test]
    fn keys_are_checked_and_never_shown() {
        let e = err_of(
            HeartbeatBuilder::new("w")
                .url("https://x.supabase.co")
                .key("sb_secret_FAKE with space"),
        );
        assert!(e.contains("whitespace") && !e.contains("FAKE"), "{e}");
        let e = err_of(
            HeartbeatBuilder::new("w")
                .url("https://x.supabase.co")
                .key("sb_publishable_FAKE"),
        );
        assert!(e.contains("publishable") && !e.contains("FAKE"), "{e}");
        let b = HeartbeatBuilder::new("w").key("sb_secret_FAKE_never_printed");
        assert!(!format!("{b:?}").contains("FAKE"));
    }

    #[test]
    fn schema_must_be_an_identifier() {
        let e = err_of(
            HeartbeatBuilder::new("w")
                .url("https://x.supabase.co")
                .key("sb_secret_x")
                .schema("public; drop"),
        );
        assert!(e.contains("schema"), "{e}");
    }
}
