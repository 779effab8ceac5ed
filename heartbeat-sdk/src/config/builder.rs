//! The builder: every option, filled from the environment only where the
//! user left a field unset, validated once at start. Starting and checking
//! live with the handle (`handle.rs`), which this module does not know.

use std::fmt;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::beat::probe::ProcessProbe;
use crate::config::env;
use crate::config::target::StoreSettings;
use crate::model::error::ConfigError;
use crate::transport::{ControlSource, Transport};

/// Configures and starts a [`Heartbeat`](crate::Heartbeat).
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
    pub(crate) name: String,
    pub(crate) settings: StoreSettings,
    interval: Option<Duration>,
    breaker_threshold: Option<u32>,
    shutdown_budget: Option<Duration>,
    pub(crate) handle_signals: bool,
    metadata: Map<String, Value>,
    version: Option<String>,
    reporter: String,
    transport: Option<Box<dyn Transport>>,
    probe: Option<Box<dyn ProcessProbe>>,
    settle_beat: Option<Duration>,
    hold_first_beat: bool,
    systemd_watchdog: bool,
    pool: Option<String>,
    control_poll: Option<Duration>,
    max_run: Option<Duration>,
    watchdog: Option<Duration>,
    env_error: Option<ConfigError>,
}

impl fmt::Debug for HeartbeatBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeartbeatBuilder")
            .field("name", &self.name)
            .field("settings", &self.settings)
            .field("interval", &self.interval)
            .field("breaker_threshold", &self.breaker_threshold)
            .field("shutdown_budget", &self.shutdown_budget)
            .field("handle_signals", &self.handle_signals)
            .finish_non_exhaustive()
    }
}

/// Everything starting a reporter needs, checked.
pub(crate) struct Validated {
    pub name: String,
    pub interval: Duration,
    pub breaker_threshold: u32,
    pub shutdown_budget: Duration,
    pub transport: Box<dyn Transport>,
    pub probe: Option<Box<dyn ProcessProbe>>,
    pub metadata: Map<String, Value>,
    pub version: Option<String>,
    pub reporter: String,
    pub settle_beat: Option<Duration>,
    pub hold_first_beat: bool,
    /// `progress()` pings systemd's watchdog (off in the sidecar, which does it itself).
    pub systemd_watchdog: bool,
    pub pool: String,
    /// Where control rows are read; `None` for a transport given in code
    /// or a reporter that does not obey.
    pub control: Option<Box<dyn ControlSource>>,
    pub control_poll: Duration,
    pub max_run: Option<Duration>,
    pub watchdog: Option<Duration>,
}

impl HeartbeatBuilder {
    pub(crate) fn new(name: impl Into<String>) -> Self {
        HeartbeatBuilder {
            name: name.into(),
            settings: StoreSettings::default(),
            interval: None,
            breaker_threshold: None,
            shutdown_budget: None,
            handle_signals: true,
            metadata: Map::new(),
            version: None,
            reporter: concat!("heartbeat-sdk/", env!("CARGO_PKG_VERSION")).to_owned(),
            transport: None,
            probe: None,
            settle_beat: None,
            hold_first_beat: false,
            systemd_watchdog: true,
            pool: None,
            control_poll: None,
            max_run: None,
            watchdog: None,
            env_error: None,
        }
    }

    /// The Supabase project URL, e.g. `https://abcdefgh.supabase.co`.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.settings.url = Some(url.into());
        self
    }

    /// The API key: the secret (`sb_secret_...`) or legacy `service_role` key.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.settings = self.settings.key(key, "the key given in code");
        self
    }

    /// The schema holding `hp_worker_status` (default `public`).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.settings = self.settings.schema(schema);
        self
    }

    /// Reports to a local SQLite file instead of Supabase (with no
    /// `SUPABASE_URL`, the local store is the default anyway).
    pub fn local_store(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.settings = self.settings.local_store(path);
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
        self.settings = self.settings.allow_insecure_http(allow);
        self
    }

    /// TCP + TLS connect timeout (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings = self.settings.connect_timeout(timeout);
        self
    }

    /// Whole-request timeout (default 10 s); a beat also never outlives the interval.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.settings = self.settings.request_timeout(timeout);
        self
    }

    /// Replaces where rows go ([`StoreSettings`]) in one go.
    pub fn store_settings(mut self, settings: StoreSettings) -> Self {
        self.settings = settings;
        self
    }

    /// Sends rows through `transport` instead of Supabase (URL and key are then not needed).
    pub fn transport(mut self, transport: impl Transport) -> Self {
        self.transport = Some(Box::new(transport));
        self
    }

    /// Samples another process than this one (the sidecar samples its child).
    #[doc(hidden)]
    pub fn process_probe(mut self, probe: impl ProcessProbe) -> Self {
        self.probe = Some(Box::new(probe));
        self
    }

    /// Sends a second beat this soon after the first (the sidecar's child
    /// has loaded by then).
    #[doc(hidden)]
    pub fn settle_beat(mut self, after: Duration) -> Self {
        self.settle_beat = Some(after);
        self
    }

    /// Holds the first beat (after the first look at the control row) until
    /// the sidecar says its child is there, or has decided not to start one,
    /// so the first row has the child's pid; at most two seconds.
    #[doc(hidden)]
    pub fn hold_first_beat(mut self) -> Self {
        self.hold_first_beat = true;
        self
    }

    /// Leaves systemd's notify socket to the caller: `progress()` pings no
    /// watchdog (the sidecar speaks for its child itself).
    #[doc(hidden)]
    pub fn leave_systemd_to_caller(mut self) -> Self {
        self.systemd_watchdog = false;
        self
    }

    /// The worker's pool (default `default`; `HP_POOL`): availability
    /// budgets are per pool. 1 to 128 characters of `[A-Za-z0-9._:-]`.
    pub fn pool(mut self, pool: impl Into<String>) -> Self {
        self.pool = Some(pool.into());
        self
    }

    /// How often the worker's control row is polled (default 5 s;
    /// `HP_CONTROL_POLL_SECS`). Zero polls only at beats. An unchanged row
    /// costs one primary-key lookup with an empty answer.
    pub fn control_poll(mut self, every: Duration) -> Self {
        self.control_poll = Some(every);
        self
    }

    /// A run longer than this reads as hung (`HP_MAX_RUN_SECS`; none by default).
    pub fn max_run(mut self, limit: Duration) -> Self {
        self.max_run = Some(limit);
        self
    }

    /// No progress for this long reads as hung (`HP_WATCHDOG_SECS`; none by
    /// default). Progress is [`Heartbeat::progress`](crate::Heartbeat::progress)
    /// (the sidecar: its child's output, and `progress` lines on its socket).
    pub fn watchdog(mut self, period: Duration) -> Self {
        self.watchdog = Some(period);
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
    #[doc(hidden)]
    pub fn apply_env(mut self, get: impl Fn(&str) -> Option<String>) -> Self {
        let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        if let Some(name) = get(env::WORKER_NAME) {
            self.name = name;
        }
        self.settings = self.settings.apply_env(get);
        // Only fields the code left unset read the environment, so a
        // malformed variable that would not be used cannot fail the start.
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
        if self.interval.is_none() {
            self.interval = parse(
                env::INTERVAL,
                "a whole number of seconds, 1 to 86400 (default 30)",
            )
            .map(Duration::from_secs);
        }
        if self.breaker_threshold.is_none() {
            self.breaker_threshold = parse(
                env::BREAKER_THRESHOLD,
                "a whole number of errors, at least 1 (default 10)",
            )
            .map(|t| u32::try_from(t).unwrap_or(u32::MAX));
        }
        if self.shutdown_budget.is_none() {
            self.shutdown_budget = parse(
                env::SHUTDOWN_BUDGET,
                "a whole number of milliseconds, 1 to 60000 (default 1000)",
            )
            .map(Duration::from_millis);
        }
        if self.control_poll.is_none() {
            self.control_poll = parse(
                env::CONTROL_POLL,
                "a whole number of seconds, 0 to 3600 (0: only at beats; default 5)",
            )
            .map(Duration::from_secs);
        }
        if self.max_run.is_none() {
            self.max_run = parse(
                env::MAX_RUN,
                "a whole number of seconds, 1 to 604800 (a week)",
            )
            .map(Duration::from_secs);
        }
        if self.watchdog.is_none() {
            self.watchdog = parse(
                env::WATCHDOG,
                "a whole number of seconds, 1 to 604800 (a week)",
            )
            .map(Duration::from_secs);
        }
        if self.pool.is_none() {
            self.pool = get(env::POOL);
        }
        if self.env_error.is_none() {
            self.env_error = first_error;
        }
        self
    }

    /// Checks every setting without building or starting anything.
    ///
    /// # Errors
    /// The first [`ConfigError`] found.
    #[doc(hidden)]
    pub fn validate_config(&self) -> Result<(), ConfigError> {
        self.checked_numbers()?;
        if self.transport.is_none() {
            self.settings.resolve()?;
        }
        Ok(())
    }

    fn checked_numbers(&self) -> Result<(Duration, u32, Duration), ConfigError> {
        if let Some(e) = &self.env_error {
            return Err(e.clone());
        }
        validate_name(&self.name)?;
        let interval = self.interval.unwrap_or(env::DEFAULT_INTERVAL);
        if interval < Duration::from_secs(1) || interval > Duration::from_secs(86_400) {
            return Err(ConfigError::InvalidSetting {
                name: "interval",
                value: format!("{} s", interval.as_secs_f64()),
                expected: "between 1 and 86400 seconds (default 30)",
            });
        }
        let breaker_threshold = self
            .breaker_threshold
            .unwrap_or(env::DEFAULT_BREAKER_THRESHOLD);
        if breaker_threshold == 0 {
            return Err(ConfigError::InvalidSetting {
                name: "circuit_breaker_threshold",
                value: "0".into(),
                expected: "at least 1 (default 10)",
            });
        }
        let shutdown_budget = self.shutdown_budget.unwrap_or(env::DEFAULT_SHUTDOWN_BUDGET);
        if shutdown_budget.is_zero() || shutdown_budget > Duration::from_secs(60) {
            return Err(ConfigError::InvalidSetting {
                name: "shutdown_budget",
                value: format!("{} ms", shutdown_budget.as_millis()),
                expected: "between 1 and 60000 milliseconds (default 1000)",
            });
        }
        if let Some(pool) = &self.pool {
            validate_pool(pool)?;
        }
        let poll = self.control_poll.unwrap_or(env::DEFAULT_CONTROL_POLL);
        if poll > Duration::from_secs(3600) {
            return Err(ConfigError::InvalidSetting {
                name: "control_poll",
                value: format!("{} s", poll.as_secs_f64()),
                expected: "between 0 (only at beats) and 3600 seconds (default 5)",
            });
        }
        if let Some(limit) = self.max_run {
            if limit < Duration::from_secs(1) || limit > Duration::from_secs(604_800) {
                return Err(ConfigError::InvalidSetting {
                    name: "max_run",
                    value: format!("{} s", limit.as_secs_f64()),
                    expected: "between 1 and 604800 seconds (a week)",
                });
            }
        }
        if let Some(period) = self.watchdog {
            if period < Duration::from_secs(1) || period > Duration::from_secs(604_800) {
                return Err(ConfigError::InvalidSetting {
                    name: "watchdog",
                    value: format!("{} s", period.as_secs_f64()),
                    expected: "between 1 and 604800 seconds (a week)",
                });
            }
        }
        Ok((interval, breaker_threshold, shutdown_budget))
    }

    pub(crate) fn has_transport(&self) -> bool {
        self.transport.is_some()
    }

    pub(crate) fn reporter_name(&self) -> String {
        self.reporter.clone()
    }

    /// Checks everything and builds the transport, without starting anything.
    pub(crate) fn validate(mut self) -> Result<Validated, ConfigError> {
        let (interval, breaker_threshold, shutdown_budget) = self.checked_numbers()?;
        let (transport, control) = match self.transport.take() {
            Some(t) => (t, None),
            None => {
                let (t, c) = self
                    .settings
                    .resolve()?
                    .into_transport_and_control(&self.reporter)?;
                (t, Some(c))
            }
        };
        Ok(Validated {
            name: self.name,
            interval,
            breaker_threshold,
            shutdown_budget,
            transport,
            probe: self.probe,
            metadata: self.metadata,
            version: self.version,
            reporter: self.reporter,
            settle_beat: self.settle_beat,
            hold_first_beat: self.hold_first_beat,
            systemd_watchdog: self.systemd_watchdog,
            pool: self.pool.unwrap_or_else(|| env::DEFAULT_POOL.to_owned()),
            control,
            control_poll: self.control_poll.unwrap_or(env::DEFAULT_CONTROL_POLL),
            max_run: self.max_run,
            watchdog: self.watchdog,
        })
    }
}

/// A pool name follows the worker name's rule.
fn validate_pool(pool: &str) -> Result<(), ConfigError> {
    validate_name(pool).map_err(|e| match e {
        ConfigError::InvalidName { value, reason } => ConfigError::InvalidSetting {
            name: "pool",
            value: format!("{value:?} ({reason})"),
            expected: "1 to 128 characters of A-Z a-z 0-9 . _ : - (default `default`)",
        },
        other => other,
    })
}

/// 1 to 128 characters of `[A-Za-z0-9._:-]` (the SQL CHECK says the same).
pub(crate) fn validate_name(name: &str) -> Result<(), ConfigError> {
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
        match b.validate_config() {
            Ok(()) => "ok".into(),
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
        assert_eq!(b.settings.url.as_deref(), Some("https://code.example.com"));
        assert_eq!(
            b.settings.key.as_ref().map(|k| k.source.as_str()),
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
            b.settings.key.as_ref().map(|k| k.source.as_str()),
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
            HeartbeatBuilder::new("w").apply_env(env_of(&[("HP_HEARTBEAT_INTERVAL_SECS", "0")])),
        );
        assert!(e.contains("interval"), "{e}");
        let e = err_of(
            HeartbeatBuilder::new("w").apply_env(env_of(&[("HP_SHUTDOWN_BUDGET_MS", "-1")])),
        );
        assert!(e.contains("HP_SHUTDOWN_BUDGET_MS"), "{e}");
    }

    #[test]
    fn a_malformed_variable_for_a_field_set_in_code_is_not_read() {
        let b = HeartbeatBuilder::new("w")
            .interval(Duration::from_secs(5))
            .apply_env(env_of(&[("HP_HEARTBEAT_INTERVAL_SECS", "soon")]));
        assert_eq!(err_of(b), "ok");
    }

    #[test]
    fn with_nothing_configured_it_is_valid_for_the_local_store() {
        assert_eq!(
            err_of(HeartbeatBuilder::new("w").apply_env(env_of(&[]))),
            "ok"
        );
        let e = err_of(HeartbeatBuilder::new("w").apply_env(env_of(&[("HP_STORE", "supabase")])));
        assert!(e.contains("SUPABASE_URL"), "{e}");
    }

    #[test]
    fn builder_key_without_url_names_the_fix() {
        let e = err_of(HeartbeatBuilder::new("w").key("sb_secret_x"));
        assert!(e.contains("SUPABASE_URL"), "{e}");
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
    fn builder_debug_never_shows_the_key() {
        let b = HeartbeatBuilder::new("w").key("sb_secret_FAKE_never_printed");
        assert!(!format!("{b:?}").contains("FAKE"));
    }
}
