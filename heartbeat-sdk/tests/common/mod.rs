//! Helpers shared by the SDK's integration tests.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hp_heartbeat_tests::eventually::poll_until_async;
use serde_json::Value;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// A fake legacy service_role JWT (not a real key).
pub const JWT_KEY: &str = "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.x";
/// A fake new-style secret key.
pub const SECRET_KEY: &str = "sb_secret_FAKE_test_key_0000";

pub const TABLE_PATH: &str = "/rest/v1/hp_worker_status";

/// Answers with a fixed response and records when each request came.
#[derive(Clone)]
pub struct Recorder {
    pub times: Arc<Mutex<Vec<Instant>>>,
    pub response: ResponseTemplate,
}

impl Recorder {
    pub fn new(response: ResponseTemplate) -> Self {
        Recorder {
            times: Arc::default(),
            response,
        }
    }
    pub fn times(&self) -> Vec<Instant> {
        self.times.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

impl Respond for Recorder {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        if let Ok(mut t) = self.times.lock() {
            t.push(Instant::now());
        }
        self.response.clone()
    }
}

/// A PostgREST stand-in that accepts every upsert with 201.
pub async fn accepting_server() -> (MockServer, Recorder) {
    let server = MockServer::start().await;
    let recorder = Recorder::new(ResponseTemplate::new(201));
    Mock::given(method("POST"))
        .and(path(TABLE_PATH))
        .respond_with(recorder.clone())
        .mount(&server)
        .await;
    (server, recorder)
}

/// The beats (upserts) the server received, oldest first: the reporter's
/// other requests (the look at its own row at start) are left out.
pub async fn beats(server: &MockServer) -> Vec<Request> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.method.as_str() == "POST")
        .collect()
}

/// Polls until the server has `n` beats or `timeout` passes.
pub async fn wait_for_requests(server: &MockServer, n: usize, timeout: Duration) -> Vec<Request> {
    let enough = poll_until_async(timeout, || async {
        let got = beats(server).await;
        (got.len() >= n).then_some(got)
    })
    .await;
    match enough {
        Some(got) => got,
        None => beats(server).await,
    }
}

pub fn body(req: &Request) -> Value {
    serde_json::from_slice(&req.body).unwrap_or(Value::Null)
}

pub fn postgrest_error(status: u16, code: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(serde_json::json!({
        "code": code, "details": null, "hint": null, "message": message
    }))
}
