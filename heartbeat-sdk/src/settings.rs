//! Where rows go: Supabase (URL, key, schema) or the local SQLite store.
//! Shared by the reporters and by readers such as `heartbeat-sidecar status`,
//! so both resolve the target by the same rules.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::Url;

use crate::config::{env, DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT};
use crate::error::ConfigError;
use crate::key::ApiKey;
use crate::postgrest::{PostgrestConfig, PostgrestTransport};
use crate::sqlite::SqliteStore;
use crate::transport::Transport;

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

impl Target {
    /// Where rows go, for the one log line at start.
    pub fn describe(&self) -> String {
        match self {
            Target::Supabase(c) => format!("Supabase at {}", c.url.origin().ascii_serialization()),
            Target::Local(p) => format!("the local store {}", p.display()),
        }
    }

    pub(crate) fn into_transport(self, reporter: &str) -> Result<Box<dyn Transport>, ConfigError> {
        match self {
            Target::Supabase(config) => PostgrestTransport::new(&config, reporter)
                .map(|t| Box::new(t) as Box<dyn Transport>)
                .map_err(|e| ConfigError::InvalidUrl {
                    value: config.url.to_string(),
                    reason: e.to_string(),
                }),
            Target::Local(path) => Ok(Box::new(SqliteStore::new(path))),
        }
    }
}

/// Connection settings, filled from the environment where left unset.
#[derive(Clone)]
pub struct StoreSettings {
    /// `SUPABASE_URL`.
    pub url: Option<String>,
    /// The key and where it came from (an env variable name, or "builder").
    pub key: Option<(ApiKey, String)>,
    /// `HP_SUPABASE_SCHEMA` (default `public`).
    pub schema: Option<String>,
    /// `HP_STORE`.
    pub store: Option<StoreChoice>,
    /// `HP_ALLOW_INSECURE_HTTP`.
    pub allow_insecure_http: Option<bool>,
    /// TCP + TLS connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout.
    pub request_timeout: Duration,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            url: None,
            key: None,
            schema: None,
            store: None,
            allow_insecure_http: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

impl fmt::Debug for StoreSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreSettings")
            .field("url", &self.url)
            .field("key", &self.key.as_ref().map(|(k, source)| (k, source)))
            .field("schema", &self.schema)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl StoreSettings {
    /// Fills unset fields from the process environment.
    pub fn from_env(self) -> Self {
        self.apply_env(|name| std::env::var(name).ok())
    }

    /// Fills unset fields from `get` (empty values count as unset).
    pub fn apply_env(mut self, get: impl Fn(&str) -> Option<String>) -> Self {
        let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        if self.url.is_none() {
            self.url = get(env::URL);
        }
        if self.key.is_none() {
            self.key = env::KEYS
                .iter()
                .find_map(|var| get(var).map(|k| (ApiKey::new(k.trim()), (*var).to_owned())));
        }
        if self.schema.is_none() {
            self.schema = get(env::SCHEMA);
        }
        if self.store.is_none() {
            self.store = get(env::STORE).map(|v| StoreChoice::parse(&v));
        }
        if self.allow_insecure_http.is_none() {
            self.allow_insecure_http =
                get(env::ALLOW_INSECURE_HTTP).map(|v| matches!(v.trim(), "1" | "true" | "yes"));
        }
        self
    }

    /// Picks the store: `HP_STORE` when set; else Supabase when `SUPABASE_URL`
    /// is set; else the local store at its default path.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the missing or malformed setting.
    pub fn resolve(&self) -> Result<Target, ConfigError> {
        match &self.store {
            Some(StoreChoice::Local(path)) => Ok(Target::Local(
                path.clone().unwrap_or_else(Self::default_local_path),
            )),
            Some(StoreChoice::Supabase) => self.postgrest_config().map(Target::Supabase),
            None if self.url.is_some() => self.postgrest_config().map(Target::Supabase),
            // A key with no URL is a half-done Supabase setup, not a wish for the local store.
            None => match &self.key {
                Some((_, source)) => Err(ConfigError::KeyWithoutUrl {
                    source_name: source.clone(),
                }),
                None => Ok(Target::Local(Self::default_local_path())),
            },
        }
    }

    /// `$XDG_STATE_HOME/hp-heartbeat/heartbeat.db`, else
    /// `$HOME/.local/state/hp-heartbeat/heartbeat.db`, else under the temp dir.
    pub fn default_local_path() -> PathBuf {
        let var = |n: &str| {
            std::env::var_os(n)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let base = var("XDG_STATE_HOME")
            .or_else(|| var("HOME").map(|h| h.join(".local/state")))
            .unwrap_or_else(std::env::temp_dir);
        base.join("hp-heartbeat").join("heartbeat.db")
    }

    /// The checked Supabase settings.
    ///
    /// # Errors
    /// [`ConfigError`] for a missing or malformed URL, key or schema.
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
}
