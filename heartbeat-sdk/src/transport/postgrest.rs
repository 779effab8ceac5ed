//! Supabase's REST API (PostgREST): one client that upserts a row the way
//! supabase-js's `upsert` does, and reads the table back.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::Url;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::model::control::ControlError;
use crate::model::desired::{DesiredControl, CONTROL_COLUMNS};
use crate::model::error::{ConfigError, ReadError, SendError};
use crate::model::key::ApiKey;
use crate::model::row::WorkerRow;
use crate::model::status_row::StatusRow;
use crate::model::text::truncate_message;
use crate::transport::{ControlFuture, ControlSource, ReadFuture, SendFuture, Transport};

/// The most of an error answer ever read: enough for PostgREST's JSON and a
/// gateway's page, and a 200 MiB body costs nothing.
const MAX_ERROR_BODY: usize = 8 * 1024;
/// The most of one read of rows (a page of up to 1,000 rows is ~2 MiB).
const MAX_ROWS_BODY: usize = 64 * 1024 * 1024;

/// Rows asked for in one read of the whole table: Supabase's default cap.
pub(crate) const PAGE_ROWS: usize = 1000;
/// The table every row goes to.
pub(crate) const TABLE: &str = "hp_worker_status";
/// What operators want of each worker (`sql/20261124000001_hp_control.sql`).
pub(crate) const CONTROL_TABLE: &str = "hp_worker_control";
/// `hp_control()`'s answer: one object, its lists bounded by the request.
const MAX_CONTROL_ANSWER: usize = 4 * 1024 * 1024;
/// A control poll's answer is one small row or none.
const MAX_CONTROL_BODY: usize = 8 * 1024;

/// Where and how to reach PostgREST.
#[derive(Debug, Clone)]
pub struct PostgrestConfig {
    /// Project URL, e.g. `https://abcdefgh.supabase.co` (no `/rest/v1`).
    pub url: Url,
    /// Secret, service_role, or a worker-scoped JWT.
    pub(crate) key: ApiKey,
    /// A signed-in operator's token: the bearer instead of the key.
    pub(crate) bearer: Option<ApiKey>,
    /// Schema holding the table (`Content-Profile` / `Accept-Profile`).
    pub schema: String,
    /// TCP + TLS connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout.
    pub request_timeout: Duration,
}

/// "Supabase at https://abcdefgh.supabase.co": where rows go, in messages.
pub(crate) fn describe(url: &Url) -> String {
    format!("Supabase at {}", url.origin().ascii_serialization())
}

impl PostgrestConfig {
    /// What to say about a key that may not do what a reporter needs: a JWT
    /// whose role is neither `service_role` nor `hp_reporter`.
    pub fn key_warning(&self) -> Option<String> {
        let role = self.key.jwt_claims()?.role?;
        match role.as_str() {
            "service_role" | "hp_reporter" => None,
            other => Some(format!(
                "the API key's role is {other:?}: rows are written only if your grants and policies let that role write hp_worker_status; hp-heartbeat expects the secret (service_role) key, or an hp_reporter key"
            )),
        }
    }

    /// The worker an `hp_reporter` key is scoped to, if it is one.
    pub fn scoped_worker(&self) -> Option<String> {
        let claims = self.key.jwt_claims()?;
        (claims.role.as_deref() == Some("hp_reporter"))
            .then_some(claims.worker_name)
            .flatten()
    }
}

/// One HTTP client (connections are reused) for every request to the table.
#[derive(Clone)]
pub(crate) struct PostgrestClient {
    client: reqwest::Client,
    table: Url,
    control_table: Url,
    /// `{SUPABASE_URL}/rest/v1`, for RPCs and the control migration's tables.
    rest: Url,
    schema: HeaderValue,
    request_timeout: Duration,
    description: String,
}

impl std::fmt::Debug for PostgrestClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgrestClient")
            .field("table", &self.table.as_str())
            .finish_non_exhaustive()
    }
}

impl PostgrestClient {
    /// Builds the client; `agent` is sent as `User-Agent` and `X-Client-Info`.
    ///
    /// # Errors
    /// [`ConfigError`] when the key or schema cannot be sent as a header, or
    /// the TLS backend cannot start.
    pub fn new(config: &PostgrestConfig, agent: &str) -> Result<Self, ConfigError> {
        let mut headers = HeaderMap::new();
        let bad_key = || ConfigError::MalformedKey {
            source_name: "the configured key".into(),
        };
        // `apikey` always; `Authorization: Bearer` only for JWT keys (Supabase
        // rejects `sb_secret_` keys as a bearer token). Both marked sensitive.
        let mut key = HeaderValue::from_str(config.key.expose()).map_err(|_| bad_key())?;
        key.set_sensitive(true);
        headers.insert("apikey", key);
        // An operator's token speaks for the operator; else a JWT key is the bearer.
        let bearer = config
            .bearer
            .as_ref()
            .or(config.key.is_jwt().then_some(&config.key));
        if let Some(token) = bearer {
            let mut bearer = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                .map_err(|_| bad_key())?;
            bearer.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, bearer);
        }
        if let Ok(v) = HeaderValue::from_str(agent) {
            headers.insert("x-client-info", v);
        }
        let schema =
            HeaderValue::from_str(&config.schema).map_err(|_| ConfigError::InvalidSchema {
                value: config.schema.clone(),
            })?;
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .user_agent(agent)
            .default_headers(headers)
            .build()
            .map_err(|e| ConfigError::HttpClient(e.to_string()))?;
        let rest = |name: &str| {
            let mut url = config.url.clone();
            url.set_path(&format!(
                "{}/rest/v1/{name}",
                config.url.path().trim_end_matches('/')
            ));
            url
        };
        Ok(PostgrestClient {
            client,
            table: rest(TABLE),
            control_table: rest(CONTROL_TABLE),
            rest: rest(""),
            schema,
            request_timeout: config.request_timeout,
            description: describe(&config.url),
        })
    }

    /// Upserts one row: `POST /rest/v1/hp_worker_status?on_conflict=worker_name`.
    pub async fn upsert(&self, row: &WorkerRow) -> Result<(), SendError> {
        let body = serde_json::to_vec(row)
            .map_err(|e| SendError::Store(format!("cannot serialize the row: {e}")))?;
        let mut url = self.table.clone();
        url.set_query(Some("on_conflict=worker_name"));
        let response = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("content-profile", self.schema.clone())
            .header("prefer", "resolution=merge-duplicates,return=minimal")
            .body(body)
            .send()
            .await
            .map_err(|e| self.connection_error(e).into_send())?;
        if response.status().is_success() {
            return Ok(());
        }
        Err(classify_response(response).await.into_send())
    }

    /// Removes `worker`'s row: `DELETE /rest/v1/hp_worker_status?worker_name=eq.W`.
    pub async fn delete(&self, worker: &str) -> Result<(), SendError> {
        let response = self
            .client
            .delete(self.worker_url(worker, None))
            .header("content-profile", self.schema.clone())
            .header("prefer", "return=minimal")
            .send()
            .await
            .map_err(|e| self.connection_error(e).into_send())?;
        if response.status().is_success() {
            return Ok(());
        }
        Err(classify_response(response).await.into_send())
    }

    /// `worker`'s row, if there is one.
    pub async fn select_one(&self, worker: &str) -> Result<Option<StatusRow>, ReadError> {
        let (mut rows, _) = self.get_rows(self.worker_url(worker, Some("*"))).await?;
        Ok(rows.pop())
    }

    fn worker_url(&self, worker: &str, select: Option<&str>) -> Url {
        let mut url = self.table.clone();
        url.query_pairs_mut()
            .append_pair("worker_name", &format!("eq.{worker}"));
        if let Some(columns) = select {
            url.query_pairs_mut().append_pair("select", columns);
        }
        url
    }

    /// Every row, ordered by worker name, with the server's clock (its `Date`
    /// header) so that staleness does not depend on the reader's clock.
    ///
    /// Read a page at a time: Supabase answers at most 1,000 rows to one
    /// request (`db-max-rows`, which a project may set lower), so the rows
    /// are read in pages after the last name seen (`worker_name=gt.<last>`,
    /// which no row added or removed meanwhile can shift), until a page is
    /// empty.
    pub async fn select_status(
        &self,
    ) -> Result<(Vec<StatusRow>, Option<DateTime<Utc>>), ReadError> {
        let mut all: Vec<StatusRow> = Vec::new();
        let mut server_now = None;
        loop {
            let mut url = self.table.clone();
            url.query_pairs_mut()
                .append_pair("select", "*")
                .append_pair("order", "worker_name.asc")
                .append_pair("limit", &PAGE_ROWS.to_string());
            if let Some(last) = all.last() {
                url.query_pairs_mut()
                    .append_pair("worker_name", &format!("gt.{}", last.worker_name));
            }
            let (rows, now) = self.get_rows(url).await?;
            server_now = server_now.or(now);
            // A server that ignores the filter would send the same page
            // again: only names past the last one count, and none ends it.
            let before = all.len();
            let last = all.last().map(|r| r.worker_name.clone());
            all.extend(
                rows.into_iter()
                    .filter(|r| last.as_ref().is_none_or(|l| r.worker_name > *l)),
            );
            if all.len() == before {
                return Ok((all, server_now));
            }
        }
    }

    /// `worker`'s control row if its generation is above `above`:
    /// `GET /rest/v1/hp_worker_control?select=...&worker_name=eq.W&generation=gt.N`.
    /// A primary-key lookup; an unchanged row is an empty answer.
    pub async fn select_control(
        &self,
        worker: &str,
        above: Option<i64>,
    ) -> Result<Option<DesiredControl>, ReadError> {
        let mut url = self.control_table.clone();
        url.query_pairs_mut()
            .append_pair("select", CONTROL_COLUMNS)
            .append_pair("worker_name", &format!("eq.{worker}"));
        if let Some(generation) = above {
            url.query_pairs_mut()
                .append_pair("generation", &format!("gt.{generation}"));
        }
        let (mut rows, _) = self
            .get_json::<DesiredControl>(url, MAX_CONTROL_BODY)
            .await?;
        Ok(rows.pop())
    }

    async fn get_rows(
        &self,
        url: Url,
    ) -> Result<(Vec<StatusRow>, Option<DateTime<Utc>>), ReadError> {
        self.get_json(url, MAX_ROWS_BODY).await
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        url: Url,
        limit: usize,
    ) -> Result<(Vec<T>, Option<DateTime<Utc>>), ReadError> {
        let response = self
            .client
            .get(url)
            .header("accept-profile", self.schema.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| self.connection_error(e).into_read())?;
        let status = response.status().as_u16();
        let server_now = response
            .headers()
            .get(reqwest::header::DATE)
            .and_then(|d| d.to_str().ok())
            .and_then(|d| DateTime::parse_from_rfc2822(d).ok())
            .map(|d| d.with_timezone(&Utc));
        if !(200..300).contains(&status) {
            return Err(classify_response(response).await.into_read());
        }
        let body = read_at_most(response, limit).await;
        let rows: Vec<T> =
            serde_json::from_slice(&body).map_err(|e| ReadError::Unparsable(e.to_string()))?;
        Ok((rows, server_now))
    }

    /// Calls `public.<function>` the way supabase-js's `rpc()` does:
    /// `POST /rest/v1/rpc/<function>` with the named arguments as a JSON
    /// object (an operator's token, when configured, is the bearer).
    pub async fn rpc<T: DeserializeOwned>(
        &self,
        function: &str,
        arguments: &serde_json::Value,
    ) -> Result<T, ControlError> {
        let url = self.rest_url(&format!("rpc/{function}"));
        let request = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("content-profile", self.schema.clone())
            .json(arguments);
        let response = request
            .send()
            .await
            .map_err(|e| ControlError::Store(self.connection_error(e).into_read().to_string()))?;
        if !response.status().is_success() {
            return Err(classify_response(response).await.into_control(function));
        }
        let body = read_at_most(response, MAX_CONTROL_ANSWER).await;
        serde_json::from_slice(&body).map_err(|e| {
            ControlError::Store(format!("{function} answered something unexpected: {e}"))
        })
    }

    /// A table of the control migration, all rows (`hp_pool`), or those a
    /// query picks (`hp_audit_log?...`).
    pub async fn select_table<T: DeserializeOwned>(
        &self,
        table: &str,
        query: &[(&str, String)],
    ) -> Result<Vec<T>, ReadError> {
        let mut url = self.rest_url(table);
        {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                pairs.append_pair(k, v);
            }
        }
        Ok(self.get_json(url, MAX_ROWS_BODY).await?.0)
    }

    /// `{SUPABASE_URL}/rest/v1/<path>`.
    fn rest_url(&self, path: &str) -> Url {
        let mut url = self.rest.clone();
        url.set_path(&format!(
            "{}/{path}",
            self.rest.path().trim_end_matches('/')
        ));
        url
    }

    fn connection_error(&self, e: reqwest::Error) -> Failure {
        if e.is_timeout() {
            return Failure::Timeout(self.request_timeout);
        }
        // reqwest's own message is "error sending request": the cause is
        // further down the chain. The URL holds no secret; it is left out
        // anyway to keep messages short.
        let e = e.without_url();
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !text.contains(&cause_text) {
                text = format!("{text}: {cause_text}");
            }
            source = cause.source();
        }
        if text.contains("InvalidContentType") || text.contains("corrupt message") {
            text.push_str(
                " (the server did not answer in TLS: it speaks plain http; use an https:// server, or http:// for a local one)",
            );
        }
        Failure::Connect(text)
    }
}

impl Transport for PostgrestClient {
    fn send<'a>(&'a mut self, row: &'a WorkerRow) -> SendFuture<'a> {
        Box::pin(self.upsert(row))
    }

    fn describe(&self) -> String {
        self.description.clone()
    }

    fn read_row<'a>(&'a mut self, worker_name: &'a str) -> ReadFuture<'a> {
        Box::pin(self.select_one(worker_name))
    }
}

impl ControlSource for PostgrestClient {
    fn read_control<'a>(&'a mut self, worker: &'a str, above: Option<i64>) -> ControlFuture<'a> {
        Box::pin(self.select_control(worker, above))
    }
}

/// The first `limit` bytes of an answer's body; the rest is never read (the
/// connection is dropped), whatever the server sends.
async fn read_at_most(mut response: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = limit - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= limit {
            break;
        }
    }
    body
}

/// PostgREST's error body; Supabase's gateway sends only `message` (and `hint`).
#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    code: Option<String>,
    message: Option<String>,
    hint: Option<String>,
}

/// What went wrong with one request, before it is worded for a send or a read.
#[derive(Debug)]
enum Failure {
    Answer {
        kind: AnswerKind,
        status: u16,
        code: String,
        message: String,
        hint: String,
        retry_after: Option<Duration>,
    },
    Timeout(Duration),
    Connect(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AnswerKind {
    Unauthorized,
    PermissionDenied,
    TableMissing,
    UnknownColumn,
    SchemaReloading,
    Server,
    Other,
}

/// `Retry-After`: a number of seconds, or an HTTP date.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    (at - Utc::now()).to_std().ok()
}

/// Sorts a non-2xx answer by what the user can do about it.
fn classify(status: u16, body: &[u8]) -> Failure {
    let parsed: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
    let code = parsed.code.unwrap_or_default();
    let message = parsed.message.unwrap_or_else(|| {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        if text.is_empty() {
            "(no message)".to_owned()
        } else {
            truncate_message(text, 200)
        }
    });
    let kind = match (status, code.as_str()) {
        (_, "42501") => AnswerKind::PermissionDenied,
        (401, _) => AnswerKind::Unauthorized,
        (404, "PGRST205" | "42P01") => AnswerKind::TableMissing,
        (400, "PGRST204") => AnswerKind::UnknownColumn,
        (503, "PGRST002") => AnswerKind::SchemaReloading,
        (429, _) | (500..=599, _) => AnswerKind::Server,
        _ => AnswerKind::Other,
    };
    let hint = parsed.hint.unwrap_or_else(|| match code.as_str() {
        "23514" => "a value broke a CHECK constraint of the table".into(),
        "23502" => "a required column was empty".into(),
        "PGRST102" => "the body was not valid JSON".into(),
        "" if status == 404 => "is SUPABASE_URL the project URL, without a path?".into(),
        _ => "see the message".into(),
    });
    Failure::Answer {
        kind,
        status,
        code,
        message,
        hint,
        retry_after: None,
    }
}

/// [`classify`] an answer, keeping what its headers ask for.
async fn classify_response(response: reqwest::Response) -> Failure {
    let status = response.status().as_u16();
    let asked = retry_after(response.headers());
    let body = read_at_most(response, MAX_ERROR_BODY).await;
    match classify(status, &body) {
        Failure::Answer {
            kind,
            status,
            code,
            message,
            hint,
            ..
        } => Failure::Answer {
            kind,
            status,
            code,
            message,
            hint,
            retry_after: asked,
        },
        other => other,
    }
}

impl Failure {
    /// A control call that failed: bad input (22023) and a denied caller
    /// (42501) as the database said them; a missing function names the
    /// migration.
    fn into_control(self, function: &str) -> ControlError {
        match self {
            Failure::Answer { code, message, .. } if code == "22023" || code == "P0001" => {
                ControlError::Invalid { code, message }
            }
            Failure::Answer {
                kind: AnswerKind::PermissionDenied | AnswerKind::Unauthorized,
                code,
                message,
                ..
            } => ControlError::Denied(format!(
                "{message} ({code}): steering needs the secret key (service_role) or HP_OPERATOR_JWT of a user whose app_metadata.hp_role is \"operator\" (docs/control.md)"
            )),
            Failure::Answer { code, message, .. } if code == "PGRST202" || code == "42883" => {
                ControlError::Store(format!(
                    "{function}() is missing ({code}: {message}): apply sql/20261124000001_hp_control.sql"
                ))
            }
            other => ControlError::Store(other.into_read().to_string()),
        }
    }

    fn into_send(self) -> SendError {
        match self {
            Failure::Timeout(d) => SendError::Timeout(d),
            Failure::Connect(m) => SendError::Connect(m),
            Failure::Answer {
                kind,
                status,
                code,
                message,
                hint,
                retry_after,
            } => match kind {
                AnswerKind::Unauthorized => SendError::Unauthorized {
                    status,
                    code,
                    message,
                },
                AnswerKind::PermissionDenied => SendError::PermissionDenied {
                    status,
                    code,
                    message,
                },
                AnswerKind::TableMissing => SendError::TableMissing {
                    status,
                    code,
                    message,
                },
                AnswerKind::UnknownColumn => SendError::UnknownColumn {
                    status,
                    code,
                    message,
                },
                AnswerKind::SchemaReloading => SendError::SchemaReloading {
                    status,
                    code,
                    message,
                    retry_after,
                },
                AnswerKind::Server => SendError::Server {
                    status,
                    code,
                    message,
                    retry_after,
                },
                AnswerKind::Other => SendError::Rejected {
                    status,
                    code,
                    message,
                    hint,
                },
            },
        }
    }

    fn into_read(self) -> ReadError {
        match self {
            Failure::Timeout(d) => ReadError::Timeout(d),
            Failure::Connect(m) => ReadError::Connect(m),
            Failure::Answer {
                kind,
                status,
                code,
                message,
                hint,
                ..
            } => match kind {
                AnswerKind::Unauthorized => ReadError::Unauthorized {
                    status,
                    code,
                    message,
                },
                AnswerKind::PermissionDenied => ReadError::PermissionDenied {
                    status,
                    code,
                    message,
                },
                AnswerKind::TableMissing => ReadError::TableMissing {
                    status,
                    code,
                    message,
                },
                AnswerKind::SchemaReloading => ReadError::Refused {
                    status,
                    code,
                    message,
                    hint: "PostgREST is reloading its schema cache: try again in a moment".into(),
                },
                AnswerKind::Server => ReadError::Refused {
                    status,
                    code,
                    message,
                    hint: "the server failed: try again in a moment".into(),
                },
                AnswerKind::UnknownColumn | AnswerKind::Other => ReadError::Refused {
                    status,
                    code,
                    message,
                    hint,
                },
            },
        }
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
            let e = classify(status, &b).into_send();
            assert!(
                check(&e),
                "{status} {} -> {e:?}",
                String::from_utf8_lossy(&b)
            );
        }
    }

    #[test]
    fn retryable_only_when_waiting_can_help() {
        let send = |status, b: &[u8]| classify(status, b).into_send();
        assert!(send(503, &body("PGRST002", "x")).is_retryable());
        assert!(send(500, b"").is_retryable());
        assert!(!send(401, &body("PGRST301", "x")).is_retryable());
        assert!(!send(404, &body("PGRST205", "x")).is_retryable());
        assert!(!send(400, &body("PGRST204", "x")).is_retryable());
    }

    #[test]
    fn messages_say_the_fix_and_reads_never_promise_a_retry() {
        let e = classify(404, &body("PGRST205", "Could not find the table")).into_send();
        assert!(e.to_string().contains("apply the migration"), "{e}");
        let e = classify(400, &body("PGRST204", "Could not find the 'x' column")).into_send();
        assert!(e.to_string().contains("older than the SDK"), "{e}");
        for status in [500, 503, 429] {
            let e = classify(status, &body("PGRST002", "x")).into_read();
            assert!(!e.to_string().contains("retrying"), "{e}");
        }
        let e = classify(404, &body("PGRST205", "Could not find the table")).into_read();
        assert!(matches!(e, ReadError::TableMissing { .. }), "{e:?}");
    }
}
