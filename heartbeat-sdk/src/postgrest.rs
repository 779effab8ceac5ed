//! Sends a row the way supabase-js's `upsert` does, to PostgREST.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::Url;
use serde::Deserialize;

use crate::error::SendError;
use crate::key::ApiKey;
use crate::row::WorkerRow;
use crate::transport::{SendFuture, Transport};

/// The table every row goes to.
pub const TABLE: &str = "hp_worker_status";

/// Where and how to reach PostgREST.
#[derive(Debug, Clone)]
pub struct PostgrestConfig {
    /// Project URL, e.g. `https://abcdefgh.supabase.co` (no `/rest/v1`).
    pub url: Url,
    /// Secret, service_role, or a worker-scoped JWT.
    pub key: ApiKey,
    /// Schema holding the table (`Content-Profile`).
    pub schema: String,
    /// TCP + TLS connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout.
    pub request_timeout: Duration,
}

/// Upserts rows through Supabase's REST API.
pub struct PostgrestTransport {
    client: reqwest::Client,
    endpoint: Url,
    request_timeout: Duration,
    origin: String,
}

impl std::fmt::Debug for PostgrestTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgrestTransport")
            .field("endpoint", &self.endpoint.as_str())
            .finish_non_exhaustive()
    }
}

impl PostgrestTransport {
    /// Builds the client. Fails only if the TLS backend cannot initialise.
    pub fn new(config: &PostgrestConfig, reporter: &str) -> Result<Self, SendError> {
        let mut endpoint = table_url(config);
        endpoint.set_query(Some("on_conflict=worker_name"));
        let mut headers = auth_headers(config)?;
        headers.insert(
            reqwest::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert("content-profile", schema_header(config)?);
        headers.insert(
            "prefer",
            HeaderValue::from_static("resolution=merge-duplicates,return=minimal"),
        );
        if let Ok(v) = HeaderValue::from_str(reporter) {
            headers.insert("x-client-info", v);
        }
        Ok(PostgrestTransport {
            client: http_client(config, reporter, headers)?,
            endpoint,
            request_timeout: config.request_timeout,
            origin: config.url.origin().ascii_serialization(),
        })
    }

    async fn post(&self, row: &WorkerRow) -> Result<(), SendError> {
        let body = serde_json::to_vec(row)
            .map_err(|e| SendError::Store(format!("cannot serialize the row: {e}")))?;
        let response = self
            .client
            .post(self.endpoint.clone())
            .body(body)
            .send()
            .await
            .map_err(|e| transport_error(e, self.request_timeout))?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let body = response.bytes().await.unwrap_or_default();
        Err(classify(status, &body))
    }
}

/// `{url}/rest/v1/hp_worker_status`, keeping any path prefix of the project URL.
fn table_url(config: &PostgrestConfig) -> Url {
    let mut url = config.url.clone();
    url.set_path(&format!(
        "{}/rest/v1/{TABLE}",
        config.url.path().trim_end_matches('/')
    ));
    url
}

/// `apikey` always; `Authorization: Bearer` only for JWT keys (Supabase
/// rejects `sb_secret_` keys as a bearer token). Both marked sensitive.
fn auth_headers(config: &PostgrestConfig) -> Result<HeaderMap, SendError> {
    let bad_key = || SendError::Connect("the API key is not a valid header value".into());
    let mut key = HeaderValue::from_str(config.key.expose()).map_err(|_| bad_key())?;
    key.set_sensitive(true);
    let mut headers = HeaderMap::new();
    headers.insert("apikey", key);
    if config.key.is_jwt() {
        let mut bearer = HeaderValue::from_str(&format!("Bearer {}", config.key.expose()))
            .map_err(|_| bad_key())?;
        bearer.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, bearer);
    }
    Ok(headers)
}

fn schema_header(config: &PostgrestConfig) -> Result<HeaderValue, SendError> {
    HeaderValue::from_str(&config.schema).map_err(|_| SendError::Connect("invalid schema".into()))
}

fn http_client(
    config: &PostgrestConfig,
    user_agent: &str,
    headers: HeaderMap,
) -> Result<reqwest::Client, SendError> {
    reqwest::Client::builder()
        .connect_timeout(config.connect_timeout)
        .timeout(config.request_timeout)
        .user_agent(user_agent)
        .default_headers(headers)
        .build()
        .map_err(|e| SendError::Connect(format!("cannot build the HTTP client: {e}")))
}

fn transport_error(e: reqwest::Error, request_timeout: Duration) -> SendError {
    if e.is_timeout() {
        SendError::Timeout(request_timeout)
    } else {
        // The URL holds no secret; strip it anyway to keep messages short.
        SendError::Connect(e.without_url().to_string())
    }
}

impl Transport for PostgrestTransport {
    fn send<'a>(&'a mut self, row: &'a WorkerRow) -> SendFuture<'a> {
        Box::pin(self.post(row))
    }

    fn describe(&self) -> String {
        format!("Supabase at {}", self.origin)
    }
}

/// PostgREST's error body; Supabase's gateway sends only `message` (and `hint`).
#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    hint: Option<String>,
}

/// Turns a non-2xx answer into a typed error with a fix.
pub fn classify(status: u16, body: &[u8]) -> SendError {
    let parsed: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
    let code = parsed.code.unwrap_or_default();
    let message = parsed.message.unwrap_or_else(|| {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        if text.is_empty() {
            "(no message)".to_owned()
        } else {
            crate::row::truncate_message(text, 200)
        }
    });
    match (status, code.as_str()) {
        (_, "42501") => SendError::PermissionDenied {
            status,
            code,
            message,
        },
        (401, _) => SendError::Unauthorized {
            status,
            code,
            message,
        },
        (404, "PGRST205" | "42P01") => SendError::TableMissing {
            status,
            code,
            message,
        },
        (400, "PGRST204") => SendError::UnknownColumn {
            status,
            code,
            message,
        },
        (503, "PGRST002") => SendError::SchemaReloading {
            status,
            code,
            message,
        },
        (429, _) | (500..=599, _) => SendError::Server {
            status,
            code,
            message,
        },
        _ => {
            let hint = parsed.hint.unwrap_or_else(|| match code.as_str() {
                "23514" => "a value broke a CHECK constraint of the table".into(),
                "23502" => "a required column was empty".into(),
                "PGRST102" => "the body was not valid JSON".into(),
                "" if status == 404 => "is SUPABASE_URL the project URL, without a path?".into(),
                _ => "see the message".into(),
            });
            SendError::Rejected {
                status,
                code,
                message,
                hint,
            }
        }
    }
}

/// Reads the table. Build it once and call [`fetch_rows`](Self::fetch_rows)
/// as often as needed: the connection is reused.
pub struct PostgrestReader {
    client: reqwest::Client,
    url: Url,
    request_timeout: Duration,
}

impl std::fmt::Debug for PostgrestReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgrestReader")
            .field("url", &self.url.as_str())
            .finish_non_exhaustive()
    }
}

impl PostgrestReader {
    /// Builds the client. Fails only if the TLS backend cannot initialise.
    pub fn new(config: &PostgrestConfig) -> Result<Self, SendError> {
        let mut url = table_url(config);
        url.set_query(Some("select=*&order=worker_name.asc"));
        let mut headers = auth_headers(config)?;
        headers.insert("accept-profile", schema_header(config)?);
        headers.insert(
            reqwest::header::ACCEPT,
            HeaderValue::from_static("application/json"),
        );
        let agent = concat!("heartbeat-sdk/", env!("CARGO_PKG_VERSION"));
        Ok(PostgrestReader {
            client: http_client(config, agent, headers)?,
            url,
            request_timeout: config.request_timeout,
        })
    }

    /// Every row, ordered by worker name, with the server's clock (its `Date`
    /// header) so that staleness does not depend on the reader's clock.
    ///
    /// # Errors
    /// The same classified [`SendError`]s as a beat.
    pub async fn fetch_rows(
        &self,
    ) -> Result<(Vec<crate::StatusRow>, Option<chrono::DateTime<chrono::Utc>>), SendError> {
        let response = self
            .client
            .get(self.url.clone())
            .send()
            .await
            .map_err(|e| transport_error(e, self.request_timeout))?;
        let status = response.status().as_u16();
        let server_now = response
            .headers()
            .get(reqwest::header::DATE)
            .and_then(|d| d.to_str().ok())
            .and_then(|d| chrono::DateTime::parse_from_rfc2822(d).ok())
            .map(|d| d.with_timezone(&chrono::Utc));
        let body = response.bytes().await.unwrap_or_default();
        if !(200..300).contains(&status) {
            return Err(classify(status, &body));
        }
        let rows: Vec<crate::StatusRow> =
            serde_json::from_slice(&body).map_err(|e| SendError::Rejected {
                status,
                code: String::new(),
                message: format!("the rows did not parse: {e}"),
                hint: "is this the hp_worker_status table?".into(),
            })?;
        Ok((rows, server_now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(code: &str, message: &str) -> Vec<u8> {
        serde_json::json!({"code": code, "details": null, "hint": null, "message": message})
            .to_string()
            .into_bytes()
    }

    type Case = (u16, Vec<u8>, fn(&SendError) -> bool);

    #[test]
    fn classifies_postgrest_errors() {
        let cases: Vec<Case> = vec![
            (401, body("PGRST301", "Expected 3 parts in JWT; got 1"), |e| matches!(e, SendError::Unauthorized { .. })),
            (401, body("PGRST303", "JWT expired"), |e| matches!(e, SendError::Unauthorized { .. })),
            (401, br#"{"message":"Invalid API key","hint":"Double check your Supabase `anon` or `service_role` API key."}"#.to_vec(), |e| matches!(e, SendError::Unauthorized { .. })),
            (401, body("42501", "permission denied for table hp_worker_status"), |e| matches!(e, SendError::PermissionDenied { .. })),
            (403, body("42501", "new row violates row-level security policy"), |e| matches!(e, SendError::PermissionDenied { .. })),
            (404, body("PGRST205", "Could not find the table 'public.hp_worker_status' in the schema cache"), |e| matches!(e, SendError::TableMissing { .. })),
            (404, body("42P01", "relation \"public.hp_worker_status\" does not exist"), |e| matches!(e, SendError::TableMissing { .. })),
            (400, body("PGRST204", "Could not find the 'exit_signal' column"), |e| matches!(e, SendError::UnknownColumn { .. })),
            (503, body("PGRST002", "Could not query the database for the schema cache. Retrying."), |e| matches!(e, SendError::SchemaReloading { .. })),
            (504, body("PGRST003", "Timed out acquiring connection from connection pool."), |e| matches!(e, SendError::Server { .. })),
            (400, body("23514", "new row violates check constraint"), |e| matches!(e, SendError::Rejected { .. })),
            (502, b"<html>Bad Gateway</html>".to_vec(), |e| matches!(e, SendError::Server { .. })),
        ];
        for (status, b, check) in cases {
            let e = classify(status, &b);
            assert!(
                check(&e),
                "{status} {} -> {e:?}",
                String::from_utf8_lossy(&b)
            );
        }
    }

    #[test]
    fn retryable_only_when_waiting_can_help() {
        assert!(classify(503, &body("PGRST002", "x")).is_retryable());
        assert!(classify(500, b"").is_retryable());
        assert!(!classify(401, &body("PGRST301", "x")).is_retryable());
        assert!(!classify(404, &body("PGRST205", "x")).is_retryable());
        assert!(!classify(400, &body("PGRST204", "x")).is_retryable());
    }

    #[test]
    fn messages_say_the_fix() {
        let e = classify(404, &body("PGRST205", "Could not find the table"));
        assert!(e.to_string().contains("apply the migration"), "{e}");
        let e = classify(400, &body("PGRST204", "Could not find the 'x' column"));
        assert!(e.to_string().contains("older than the SDK"), "{e}");
    }
}
