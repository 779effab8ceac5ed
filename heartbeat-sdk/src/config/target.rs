//! Where rows go: Supabase (URL, key, schema) or the local SQLite store.
//! Shared by the reporters and by readers such as `heartbeat-sidecar status`,
//! so both resolve the target by the same rules.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::Url;

use crate::config::env;
use crate::model::error::ConfigError;
use crate::model::key::ApiKey;
use crate::transport::postgrest::{PostgrestClient, PostgrestConfig};
use crate::transport::sqlite::SqliteStore;
use crate::transport::{ControlSource, Store, Transport};

/// `HP_STORE`: which store to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChoice {
    /// `HP_STORE=supabase`: Supabase, and an error when it is not configured.
    Supabase,
    /// `HP_STORE=local` (default path) or `HP_STORE=<path>`.
    Local(Option<PathBuf>),
}

impl StoreChoice {
    /// Reads an `HP_STORE` value: `supabase`, `local`, or a path.
    pub fn parse(value: &str) -> StoreChoice {
        match value.trim() {
            "supabase" => StoreChoice::Supabase,
            "local" => StoreChoice::Local(None),
            path => StoreChoice::Local(Some(PathBuf::from(path))),
        }
    }
}

/// The resolved destination.
#[derive(Debug, Clone)]
pub enum Target {
    /// Supabase's REST API.
    Supabase(PostgrestConfig),
    /// A local SQLite file.
    Local(PathBuf),
}

/// Where rows go, and where the same store's control rows are read.
pub(crate) type TransportAndControl = (Box<dyn Transport>, Box<dyn ControlSource>);

impl Target {
    /// Where rows go, for the one log line at start and for messages.
    pub fn describe(&self) -> String {
        match self {
            Target::Supabase(c) => crate::transport::postgrest::describe(&c.url),
            Target::Local(p) => crate::transport::sqlite::describe(p),
        }
    }

    /// The store, to read from or steer through; `agent` names the client.
    pub(crate) fn into_store(self, agent: &str) -> Result<Store, ConfigError> {
        Ok(match self {
            Target::Local(path) => Store::Local(SqliteStore::new(path)),
            Target::Supabase(config) => {
                Store::Supabase(Box::new(PostgrestClient::new(&config, agent)?))
            }
        })
    }

    /// The transport, and the same store as the source of control rows.
    pub(crate) fn into_transport_and_control(
        self,
        reporter: &str,
    ) -> Result<TransportAndControl, ConfigError> {
        Ok(match self {
            Target::Supabase(config) => {
                if let Some(warning) = config.key_warning() {
                    // Said at start, as `check` says it: the beats may all be refused.
                    tracing::warn!("heartbeat: {warning}");
                }
                let client = PostgrestClient::new(&config, reporter)?;
                (Box::new(client.clone()), Box::new(client))
            }
            // The default path's directory is ours to create; a path the
            // user chose must already have one.
            Target::Local(path) => {
                let store = if path == default_local_path() {
                    SqliteStore::at_default_path(path)
                } else {
                    SqliteStore::new(path)
                };
                (Box::new(store.clone()), Box::new(store))
            }
        })
    }
}

/// An API key and where it came from (an environment variable's name, or the builder).
#[derive(Clone)]
pub(crate) struct KeySetting {
    pub key: ApiKey,
    pub source: String,
}

/// Where rows go and how to reach it: the Supabase URL, key and schema, or
/// the local store. Set what you know; [`from_env`](Self::from_env) fills the rest.
///
/// ```
/// let settings = heartbeat_sdk::StoreSettings::default()
///     .local_store("/tmp/hp-example.db")
///     .from_env();
/// assert!(settings.describe().contains("hp-example.db"));
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct StoreSettings {
    pub(crate) url: Option<String>,
    pub(crate) key: Option<KeySetting>,
    pub(crate) schema: Option<String>,
    pub(crate) store: Option<StoreChoice>,
    pub(crate) allow_insecure_http: Option<bool>,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    /// A signed-in operator's token, sent as the bearer with the key.
    pub(crate) operator_token: Option<ApiKey>,
    /// The first malformed environment value seen, reported by `resolve`.
    pub(crate) env_error: Option<ConfigError>,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            url: None,
            key: None,
            schema: None,
            store: None,
            allow_insecure_http: None,
            connect_timeout: env::DEFAULT_CONNECT_TIMEOUT,
            request_timeout: env::DEFAULT_REQUEST_TIMEOUT,
            operator_token: None,
            env_error: None,
        }
    }
}

impl fmt::Debug for StoreSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreSettings")
            .field("url", &self.url)
            .field("key", &self.key.as_ref().map(|k| (&k.key, &k.source)))
            .field("schema", &self.schema)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl StoreSettings {
    /// The Supabase project URL, e.g. `https://abcdefgh.supabase.co`.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// The API key, and where it came from (named in error messages).
    pub fn key(mut self, key: impl Into<String>, source: impl Into<String>) -> Self {
        self.key = Some(KeySetting {
            key: ApiKey::new(key),
            source: source.into(),
        });
        self
    }

    /// A signed-in operator's token (`HP_OPERATOR_JWT`), sent as
    /// `Authorization: Bearer` on every request with the (publishable) key,
    /// so the database knows the operator. Never printed.
    pub fn operator_token(mut self, token: impl Into<String>) -> Self {
        let token = token.into();
        self.operator_token = (!token.trim().is_empty()).then(|| ApiKey::new(token));
        self
    }

    /// The schema holding `hp_worker_status` (default `public`).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// Where rows go, as `HP_STORE` says it (for the sidecar's `--store`).
    #[doc(hidden)]
    pub fn store(mut self, choice: StoreChoice) -> Self {
        self.store = Some(choice);
        self
    }

    /// The local SQLite store at `path`, whatever else is set.
    pub fn local_store(mut self, path: impl Into<PathBuf>) -> Self {
        self.store = Some(StoreChoice::Local(Some(path.into())));
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

    /// Whole-request timeout (default 10 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Fills unset fields from the process environment.
    pub fn from_env(self) -> Self {
        self.apply_env(|name| std::env::var(name).ok())
    }

    /// Fills unset fields from `get` (empty values count as unset).
    #[doc(hidden)]
    pub fn apply_env(mut self, get: impl Fn(&str) -> Option<String>) -> Self {
        let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        if self.url.is_none() {
            self.url = get(env::URL);
        }
        if self.key.is_none() {
            self.key = env::KEYS.iter().find_map(|var| {
                get(var).map(|k| KeySetting {
                    key: ApiKey::new(k.trim()),
                    source: (*var).to_owned(),
                })
            });
        }
        if self.schema.is_none() {
            self.schema = get(env::SCHEMA);
        }
        if self.store.is_none() {
            self.store = get(env::STORE).map(|v| StoreChoice::parse(&v));
        }
        if self.allow_insecure_http.is_none() {
            if let Some(raw) = get(env::ALLOW_INSECURE_HTTP) {
                match env::parse_bool(&raw) {
                    Some(b) => self.allow_insecure_http = Some(b),
                    None => {
                        self.env_error.get_or_insert(ConfigError::InvalidSetting {
                            name: env::ALLOW_INSECURE_HTTP,
                            value: raw,
                            expected: env::BOOL_VALUES,
                        });
                    }
                }
            }
        }
        self
    }

    /// Where rows would go, in words (or what is wrong with the settings).
    pub fn describe(&self) -> String {
        match self.resolve() {
            Ok(target) => target.describe(),
            Err(e) => format!("nowhere yet: {e}"),
        }
    }

    /// Picks the store: `HP_STORE` when set; else Supabase when `SUPABASE_URL`
    /// is set; else the local store at its default path.
    pub(crate) fn resolve(&self) -> Result<Target, ConfigError> {
        if let Some(e) = &self.env_error {
            return Err(e.clone());
        }
        match &self.store {
            Some(StoreChoice::Local(path)) => Ok(Target::Local(
                path.clone().unwrap_or_else(default_local_path),
            )),
            Some(StoreChoice::Supabase) => self.postgrest_config().map(Target::Supabase),
            None if self.url.is_some() => self.postgrest_config().map(Target::Supabase),
            // A key with no URL is a half-done Supabase setup, not a wish for the local store.
            None => match &self.key {
                Some(k) => Err(ConfigError::KeyWithoutUrl {
                    source_name: k.source.clone(),
                }),
                None => Ok(Target::Local(default_local_path())),
            },
        }
    }

    /// [`resolve`](Self::resolve) for a reader: when the local store is not
    /// named, the first of [`local_read_candidates`] that exists (an admin's
    /// `status` finds the services' store; a service reads its own), with
    /// the list looked at.
    pub(crate) fn resolve_for_reading(&self) -> Result<(Target, Vec<PathBuf>), ConfigError> {
        let target = self.resolve()?;
        let defaulted = match &self.store {
            Some(StoreChoice::Local(None)) => true,
            None => matches!(target, Target::Local(_)),
            _ => false,
        };
        if !defaulted {
            return Ok((target, Vec::new()));
        }
        let candidates = local_read_candidates();
        let found = candidates.iter().find(|p| p.exists()).cloned();
        Ok((
            Target::Local(found.unwrap_or_else(default_local_path)),
            candidates,
        ))
    }

    /// Where the key came from, and its kind (never the key), for `check`.
    pub(crate) fn key_description(&self) -> Option<String> {
        self.key
            .as_ref()
            .map(|k| format!("{:?} from {}", k.key, k.source))
    }

    fn postgrest_config(&self) -> Result<PostgrestConfig, ConfigError> {
        let raw_url = self.url.as_deref().ok_or(ConfigError::MissingUrl)?;
        let url = parse_url(raw_url, self.allow_insecure_http.unwrap_or(false))?;
        let KeySetting { key, source } = self.key.clone().ok_or(ConfigError::MissingKey)?;
        if !key.is_header_safe() {
            return Err(ConfigError::MalformedKey {
                source_name: source,
            });
        }
        // A signed-in operator's token speaks for the request: then the
        // publishable (or legacy anon) key is the right one to send with it.
        let operator = self.operator_token.is_some();
        if key.is_publishable() && !operator {
            return Err(ConfigError::PublishableKey {
                source_name: source,
            });
        }
        if !operator && key.jwt_claims().and_then(|c| c.role).as_deref() == Some("anon") {
            return Err(ConfigError::AnonKey {
                source_name: source,
            });
        }
        let schema = self
            .schema
            .clone()
            .unwrap_or_else(|| env::DEFAULT_SCHEMA.into());
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
            bearer: self.operator_token.clone(),
            schema,
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
        })
    }
}

/// The store of services: systemd's `StateDirectory=hp-heartbeat`, and where
/// root and system users write when systemd does not say.
pub(crate) const SYSTEM_STORE: &str = "/var/lib/hp-heartbeat/heartbeat.db";
const STORE_FILE: &str = "heartbeat.db";

/// Where a reporter writes when `HP_STORE` does not say:
/// `$STATE_DIRECTORY/heartbeat.db` under systemd's `StateDirectory=`; else, for
/// root and system users (uid below 1000), [`SYSTEM_STORE`] when its
/// directory exists or can be made; else the user's own
/// `$XDG_STATE_HOME/hp-heartbeat/heartbeat.db` (`~/.local/state/...`).
pub(crate) fn default_local_path() -> PathBuf {
    // SAFETY: getuid has no preconditions and cannot fail.
    let system_user = unsafe { libc::getuid() } < 1000;
    choose_write_path(
        state_directory(),
        system_user,
        system_store_usable,
        user_store_path(),
    )
}

fn choose_write_path(
    state_directory: Option<PathBuf>,
    system_user: bool,
    system_store_usable: impl FnOnce() -> bool,
    user_store: PathBuf,
) -> PathBuf {
    match state_directory {
        Some(dir) => dir.join(STORE_FILE),
        None if system_user && system_store_usable() => PathBuf::from(SYSTEM_STORE),
        None => user_store,
    }
}

/// Where a reader looks when `HP_STORE` does not say: in a systemd service
/// its `$STATE_DIRECTORY` store alone; elsewhere, in order, the user's and
/// the system store, the first that exists read. An admin's `status` so
/// finds the services' store.
pub(crate) fn local_read_candidates() -> Vec<PathBuf> {
    read_candidates(state_directory(), user_store_path())
}

fn read_candidates(state_directory: Option<PathBuf>, user_store: PathBuf) -> Vec<PathBuf> {
    // A service's own StateDirectory= is its store, even before its first
    // write: the alerts watcher keeps its cursor there, and must not fall
    // through to another user's read-only store.
    if let Some(dir) = state_directory {
        return vec![dir.join(STORE_FILE)];
    }
    let mut candidates = vec![user_store];
    let system = PathBuf::from(SYSTEM_STORE);
    if !candidates.contains(&system) {
        candidates.push(system);
    }
    candidates
}

/// The first of systemd's `$STATE_DIRECTORY` (a colon-separated list).
fn state_directory() -> Option<PathBuf> {
    let dirs = std::env::var_os(env::STATE_DIRECTORY)?;
    let first = dirs.to_str()?.split(':').next()?.to_owned();
    (!first.is_empty()).then(|| PathBuf::from(first))
}

fn user_store_path() -> PathBuf {
    let var = |n: &str| {
        std::env::var_os(n)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let base = var("XDG_STATE_HOME")
        .or_else(|| var("HOME").map(|h| h.join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("hp-heartbeat").join(STORE_FILE)
}

/// Whether the system store's directory exists and is writable, or can be made.
fn system_store_usable() -> bool {
    let Some(dir) = std::path::Path::new(SYSTEM_STORE).parent() else {
        return false;
    };
    let target = if dir.exists() {
        dir
    } else {
        match dir.parent() {
            Some(parent) => parent,
            None => return false,
        }
    };
    let Ok(c) = std::ffi::CString::new(target.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: access(2) with a NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
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

    fn settings(pairs: &[(&str, &str)]) -> StoreSettings {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        StoreSettings::default().apply_env(move |k| map.get(k).cloned())
    }

    #[test]
    fn no_configuration_means_the_local_store() {
        assert!(matches!(settings(&[]).resolve(), Ok(Target::Local(_))));
        let t = settings(&[("HP_STORE", "/tmp/x.db")]).resolve();
        assert!(matches!(t, Ok(Target::Local(p)) if p == std::path::Path::new("/tmp/x.db")));
    }

    #[test]
    fn url_means_supabase_and_store_forces_either() {
        let supa = [
            ("SUPABASE_URL", "https://x.supabase.co"),
            ("SUPABASE_SECRET_KEY", "sb_secret_x"),
        ];
        assert!(matches!(settings(&supa).resolve(), Ok(Target::Supabase(_))));
        let mut local = supa.to_vec();
        local.push(("HP_STORE", "local"));
        assert!(matches!(settings(&local).resolve(), Ok(Target::Local(_))));
        let e = settings(&[("HP_STORE", "supabase")])
            .resolve()
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert!(
            e.as_ref().is_err_and(|e| e.contains("SUPABASE_URL")),
            "{e:?}"
        );
    }

    #[test]
    fn a_key_without_url_is_an_error_not_a_silent_fallback() {
        let e = settings(&[("SUPABASE_SERVICE_ROLE_KEY", "sb_secret_FAKE")])
            .resolve()
            .map(|_| ())
            .map_err(|e| e.to_string());
        let e = e.err().unwrap_or_default();
        assert!(
            e.contains("SUPABASE_SERVICE_ROLE_KEY")
                && e.contains("SUPABASE_URL")
                && !e.contains("FAKE"),
            "{e}"
        );
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
        let e = settings(&[
            ("SUPABASE_URL", "http://db.internal"),
            ("SUPABASE_SECRET_KEY", "sb_secret_x"),
        ])
        .resolve();
        assert!(e.is_err_and(|e| e.to_string().contains("HP_ALLOW_INSECURE_HTTP")));
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
    fn keys_are_checked_and_never_shown() {
        let with_key = |k: &str| {
            settings(&[
                ("SUPABASE_URL", "https://x.supabase.co"),
                ("SUPABASE_SECRET_KEY", k),
            ])
        };
        let e = with_key("sb_secret_FAKE\u{7f}x")
            .resolve()
            .map(|_| ())
            .map_err(|e| e.to_string())
            .err()
            .unwrap_or_default();
        assert!(e.contains("whitespace") && !e.contains("FAKE"), "{e}");
        let e = with_key("sb_publishable_FAKE")
            .resolve()
            .map(|_| ())
            .map_err(|e| e.to_string())
            .err()
            .unwrap_or_default();
        assert!(e.contains("publishable") && !e.contains("FAKE"), "{e}");
        assert!(!format!("{:?}", with_key("sb_secret_FAKE_never")).contains("FAKE"));
        let k = with_key("sb_secret_FAKE_never").key_description();
        assert_eq!(
            k.as_deref(),
            Some("ApiKey(<redacted sb_secret>) from SUPABASE_SECRET_KEY")
        );
    }

    #[test]
    fn schema_must_be_an_identifier() {
        let mut s = settings(&[
            ("SUPABASE_URL", "https://x.supabase.co"),
            ("SUPABASE_SECRET_KEY", "sb_secret_x"),
        ]);
        s.schema = Some("public; drop".into());
        assert!(matches!(
            s.resolve(),
            Err(ConfigError::InvalidSchema { .. })
        ));
    }

    #[test]
    fn a_legacy_anon_key_is_refused_at_start() {
        use base64::Engine as _;
        let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let jwt = |role: &str| {
            format!(
                "{}.{}.FAKE",
                enc.encode(r#"{"alg":"HS256"}"#),
                enc.encode(format!(r#"{{"role":"{role}","iss":"supabase"}}"#))
            )
        };
        let with = |key: &str| {
            settings(&[
                ("SUPABASE_URL", "https://x.supabase.co"),
                ("SUPABASE_SERVICE_KEY", key),
            ])
        };
        let e = with(&jwt("anon"))
            .resolve()
            .map(|_| ())
            .map_err(|e| e.to_string())
            .err()
            .unwrap_or_default();
        assert!(
            e.contains("anon") && e.contains("SUPABASE_SERVICE_KEY") && !e.contains("FAKE"),
            "{e}"
        );
        let Ok(Target::Supabase(ok)) = with(&jwt("service_role")).resolve() else {
            panic!("service_role is fine")
        };
        assert_eq!(ok.key_warning(), None);
        let Ok(Target::Supabase(odd)) = with(&jwt("authenticated")).resolve() else {
            panic!("authenticated is warned, not refused")
        };
        assert!(odd
            .key_warning()
            .is_some_and(|w| w.contains("\"authenticated\"")));
    }

    #[test]
    fn services_share_one_store_and_users_keep_their_own() {
        let user = PathBuf::from("/home/ann/.local/state/hp-heartbeat/heartbeat.db");
        let systemd = Some(PathBuf::from("/var/lib/hp-heartbeat"));
        assert_eq!(
            choose_write_path(systemd, false, || false, user.clone()),
            PathBuf::from("/var/lib/hp-heartbeat/heartbeat.db"),
            "systemd's StateDirectory= first, for any user"
        );
        assert_eq!(
            choose_write_path(None, true, || true, user.clone()),
            PathBuf::from(SYSTEM_STORE),
            "root and system users"
        );
        assert_eq!(
            choose_write_path(None, true, || false, user.clone()),
            user,
            "a system user who cannot write there keeps a store of its own"
        );
        assert_eq!(choose_write_path(None, false, || true, user.clone()), user);
    }

    #[test]
    fn a_service_reads_its_own_state_directory_and_an_admin_looks_in_both() {
        let user = PathBuf::from("/home/ann/.local/state/hp-heartbeat/heartbeat.db");
        assert_eq!(
            read_candidates(Some(PathBuf::from("/var/lib/hp-alerts")), user.clone()),
            [PathBuf::from("/var/lib/hp-alerts/heartbeat.db")],
            "under StateDirectory= only its own, existing yet or not"
        );
        assert_eq!(
            read_candidates(None, user.clone()),
            [user, PathBuf::from(SYSTEM_STORE)]
        );
    }

    #[test]
    fn a_malformed_boolean_names_the_variable_and_the_grammar() {
        let e = settings(&[("HP_ALLOW_INSECURE_HTTP", "maybe")])
            .resolve()
            .map(|_| ())
            .map_err(|e| e.to_string())
            .err()
            .unwrap_or_default();
        assert!(
            e.contains("HP_ALLOW_INSECURE_HTTP") && e.contains("\"maybe\"") && e.contains("yes"),
            "{e}"
        );
        assert_eq!(
            settings(&[("HP_ALLOW_INSECURE_HTTP", "on")]).allow_insecure_http,
            Some(true)
        );
    }
}
