//! The HTTP wire: what one beat sends, when, and what happens when it fails.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use heartbeat_sdk::{Heartbeat, SendError};
use serde_json::Value;
use wiremock::matchers::{body_string_contains, header, headers, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn builder(server: &MockServer, key: &str) -> heartbeat_sdk::HeartbeatBuilder {
    Heartbeat::builder("wire-worker")
        .url(server.uri())
        .key(key)
        .handle_signals(false)
}

fn header_names(req: &wiremock::Request) -> BTreeSet<String> {
    req.headers.keys().map(|k| k.as_str().to_owned()).collect()
}

fn expected_headers(with_bearer: bool) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = [
        "host",
        "apikey",
        "content-type",
        "content-profile",
        "prefer",
        "x-client-info",
        "user-agent",
        "accept",
        "content-length",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    if with_bearer {
        names.insert("authorization".into());
    }
    names
}

/// Every key the SDK sends, with the JSON type PostgREST will see.
fn assert_row_shape(row: &Value) {
    let kinds: Vec<(&str, &str)> = vec![
        ("worker_name", "string"),
        ("status", "string"),
        ("client_heartbeat", "string"),
        ("jobs_processed", "number"),
        ("error_count", "number"),
        ("circuit_breaker_open", "bool"),
        ("metadata", "object"),
        ("pid", "number"),
        ("hostname", "string|null"),
        ("started_at", "string"),
        ("uptime_seconds", "number"),
        ("memory_rss_bytes", "number"),
        ("cpu_percent", "number"),
        ("version", "string|null"),
        ("reporter", "string"),
        ("instance_id", "string"),
        ("consecutive_errors", "number"),
        ("last_error", "string|null"),
        ("exit_code", "null"),
        ("exit_signal", "null"),
        ("heartbeat_interval_seconds", "number"),
        ("pool", "string"),
        ("state", "string"),
        ("control_generation", "number"),
        ("controls", "object"),
        // An instance's first delivered beat clears the previous one's gap;
        // a beat after undelivered ones carries its gap; others leave them out.
        ("missed_beats", "number"),
        ("gap_started_at", "string|null"),
        ("gap_ended_at", "string|null"),
    ];
    let obj = row.as_object().expect("the body is one JSON object");
    let sent: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
    // The generation applied is sent once the control row was read (never
    // as null, which would erase the one the table has).
    let expected: BTreeSet<&str> = kinds
        .iter()
        .map(|(k, _)| *k)
        .filter(|k| *k != "control_generation" || sent.contains(k))
        .filter(|k| {
            (!k.starts_with("gap_") && *k != "missed_beats") || sent.contains("missed_beats")
        })
        .collect();
    assert_eq!(sent, expected, "the body's keys");
    for (key, kind) in kinds.into_iter().filter(|(k, _)| expected.contains(k)) {
        let v = &obj[key];
        let ok = kind.split('|').any(|k| match k {
            "string" => v.is_string(),
            "number" => v.is_number(),
            "bool" => v.is_boolean(),
            "object" => v.is_object(),
            "null" => v.is_null(),
            _ => false,
        });
        assert!(ok, "{key} should be {kind}, got {v}");
    }
    chrono::DateTime::parse_from_rfc3339(obj["client_heartbeat"].as_str().unwrap_or_default())
        .expect("client_heartbeat is RFC 3339");
}

#[tokio::test(flavor = "multi_thread")]
async fn jwt_key_sends_the_supabase_js_upsert_with_bearer() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(TABLE_PATH))
        .and(query_param("on_conflict", "worker_name"))
        .and(header("apikey", JWT_KEY))
        .and(header(
            "authorization",
            format!("Bearer {JWT_KEY}").as_str(),
        ))
        .and(header("content-type", "application/json"))
        .and(header("content-profile", "public"))
        // wiremock splits header values on commas.
        .and(headers(
            "prefer",
            vec!["resolution=merge-duplicates", "return=minimal"],
        ))
        .respond_with(ResponseTemplate::new(201))
        .expect(1..)
        .mount(&server)
        .await;
    let hb = builder(&server, JWT_KEY)
        .version("1.2.3")
        .start()
        .expect("starts");
    let got = wait_for_requests(&server, 1, Duration::from_secs(5)).await;
    assert!(!got.is_empty(), "no beat arrived");
    let req = &got[0];
    assert_eq!(req.url.query(), Some("on_conflict=worker_name"));
    assert_eq!(header_names(req), expected_headers(true));
    let row = body(req);
    assert_row_shape(&row);
    assert_eq!(row["worker_name"], "wire-worker");
    assert_eq!(row["status"], "running");
    assert_eq!(row["pid"], std::process::id());
    assert_eq!(row["version"], "1.2.3");
    assert_eq!(row["heartbeat_interval_seconds"], 30);
    assert!(
        row["metadata"]["memory"]["rss"].is_number(),
        "seed-compatible metadata: {row}"
    );
    let raw = |name: &str| {
        req.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(
        raw("prefer").as_deref(),
        Some("resolution=merge-duplicates,return=minimal")
    );
    assert!(
        tokio::task::spawn_blocking(move || hb.shutdown())
            .await
            .expect("join"),
        "final row stored"
    );
    server.verify().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn secret_key_goes_in_apikey_only() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(TABLE_PATH))
        .and(header("apikey", SECRET_KEY))
        .respond_with(ResponseTemplate::new(201))
        .mount(&server)
        .await;
    let hb = builder(&server, SECRET_KEY)
        .schema("ops")
        .start()
        .expect("starts");
    let got = wait_for_requests(&server, 1, Duration::from_secs(5)).await;
    assert!(!got.is_empty(), "no beat arrived");
    assert_eq!(header_names(&got[0]), expected_headers(false));
    assert!(got[0].headers.get("authorization").is_none());
    assert_eq!(
        got[0]
            .headers
            .get("content-profile")
            .and_then(|v| v.to_str().ok()),
        Some("ops")
    );
    assert_row_shape(&body(&got[0]));
    drop(hb);
}

/// When beats go out (at once, then every interval) is proven on a paused
/// clock in `beat::beat_loop::tests`; here, the stopped row on the wire.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_sends_stopped_after_the_first_beat() {
    let (server, _) = accepting_server().await;
    let hb = builder(&server, SECRET_KEY).start().expect("starts");
    wait_for_requests(&server, 1, Duration::from_secs(5)).await;
    assert!(tokio::task::spawn_blocking(move || hb.shutdown())
        .await
        .expect("join"));
    let got = beats(&server).await;
    let last = body(got.last().expect("a final row"));
    assert_eq!(last["status"], "stopped");
    assert_eq!(beats(&server).await.len(), got.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_503_and_500_within_the_beat() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(postgrest_error(
            503,
            "PGRST002",
            "Could not query the database for the schema cache. Retrying.",
        ))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201))
        .mount(&server)
        .await;
    let hb = builder(&server, SECRET_KEY)
        .interval(Duration::from_secs(10))
        .start()
        .expect("starts");
    let got = wait_for_requests(&server, 3, Duration::from_secs(5)).await;
    assert_eq!(
        got.len(),
        3,
        "two failures then a success within the first beat"
    );
    drop(hb);
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_after_a_timeout() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201).set_delay(Duration::from_secs(3)))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    let (_, ok) = (0, common::Recorder::new(ResponseTemplate::new(201)));
    Mock::given(method("POST"))
        .respond_with(ok.clone())
        .mount(&server)
        .await;
    let hb = builder(&server, SECRET_KEY)
        .interval(Duration::from_secs(10))
        .request_timeout(Duration::from_millis(300))
        .start()
        .expect("starts");
    let started = Instant::now();
    wait_for_requests(&server, 2, Duration::from_secs(4)).await;
    let times = ok.times();
    assert_eq!(times.len(), 1, "the retry after the timeout was stored");
    assert!(
        times[0] - started < Duration::from_secs(2),
        "retried after {:?}",
        times[0] - started
    );
    drop(hb);
}

type ErrorCase = (ResponseTemplate, fn(&SendError) -> bool, &'static str);

/// What each PostgREST answer becomes, through the real HTTP client.
#[tokio::test(flavor = "multi_thread")]
async fn check_classifies_every_postgrest_error() {
    let cases: Vec<ErrorCase> = vec![
        (postgrest_error(401, "PGRST303", "JWT expired"), |e| matches!(e, SendError::Unauthorized { .. }), "wrong or expired"),
        (postgrest_error(403, "42501", "new row violates row-level security policy for table \"hp_worker_status\""), |e| matches!(e, SendError::PermissionDenied { .. }), "service_role"),
        (postgrest_error(404, "PGRST205", "Could not find the table 'public.hp_worker_status' in the schema cache"), |e| matches!(e, SendError::TableMissing { .. }), "apply the migration"),
        (postgrest_error(400, "PGRST204", "Could not find the 'exit_signal' column of 'hp_worker_status' in the schema cache"), |e| matches!(e, SendError::UnknownColumn { .. }), "older than the SDK"),
        (postgrest_error(503, "PGRST002", "Could not query the database for the schema cache. Retrying."), |e| matches!(e, SendError::SchemaReloading { .. }), "reporter retries this"),
        (ResponseTemplate::new(401).set_body_json(serde_json::json!({"message": "Invalid API key", "hint": "Double check your Supabase `anon` or `service_role` API key."})), |e| matches!(e, SendError::Unauthorized { .. }), "Invalid API key"),
    ];
    for (response, is_kind, says) in cases {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(response)
            .mount(&server)
            .await;
        let result = builder(&server, SECRET_KEY).check().await;
        let e = result.expect_err("the check fails");
        let SendOrConfig::Send(e) = e else {
            panic!("not a send error: {e}")
        };
        assert!(is_kind(&e), "{e:?}");
        assert!(e.to_string().contains(says), "{e}");
        assert!(!e.to_string().contains(SECRET_KEY) && !format!("{e:?}").contains(SECRET_KEY));
    }
}

use heartbeat_sdk::CheckError as SendOrConfig;

#[tokio::test(flavor = "multi_thread")]
async fn check_writes_a_probe_row_and_removes_it_touching_no_worker() {
    let (server, _) = accepting_server().await;
    Mock::given(method("DELETE"))
        .and(path(TABLE_PATH))
        .and(header("apikey", SECRET_KEY))
        .and(header("content-profile", "public"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&server)
        .await;
    let checked = builder(&server, SECRET_KEY)
        .check()
        .await
        .expect("check passes");
    let heartbeat_sdk::Checked::Wrote { probe } = checked else {
        panic!("{checked:?}")
    };
    assert!(probe.starts_with("hp-check-"), "{probe}");
    let got = server.received_requests().await.unwrap_or_default();
    let methods: Vec<&str> = got.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(
        methods,
        ["POST", "DELETE"],
        "one probe row, then its removal"
    );
    assert_eq!(body(&got[0])["worker_name"], probe.as_str());
    assert_eq!(body(&got[0])["status"], "unknown");
    assert_eq!(
        got[1].url.query(),
        Some(format!("worker_name=eq.{probe}").as_str())
    );
    assert!(
        got.iter()
            .all(|r| !String::from_utf8_lossy(&r.body).contains("wire-worker")),
        "the worker's own name is never written"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_says_so_when_the_probe_row_cannot_be_removed() {
    let (server, _) = accepting_server().await;
    Mock::given(method("DELETE"))
        .respond_with(postgrest_error(
            403,
            "42501",
            "permission denied for table hp_worker_status",
        ))
        .mount(&server)
        .await;
    let e = builder(&server, SECRET_KEY)
        .check()
        .await
        .expect_err("the probe stays");
    let text = e.to_string();
    assert!(
        matches!(e, SendOrConfig::Cleanup { .. })
            && text.contains("hp-check-")
            && text.contains("delete it by hand"),
        "{text}"
    );
}

/// Before its first beat a reporter reads its own row once, to warn when
/// another live instance already reports under its name.
#[tokio::test(flavor = "multi_thread")]
async fn at_start_it_reads_its_own_row_once_then_beats() {
    let (server, _) = accepting_server().await;
    Mock::given(method("GET"))
        .and(path(TABLE_PATH))
        .and(query_param("worker_name", "eq.wire-worker"))
        .and(query_param("select", "*"))
        .and(header("apikey", SECRET_KEY))
        .and(header("accept-profile", "public"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!([])))
        .expect(1)
        .mount(&server)
        .await;
    let hb = builder(&server, SECRET_KEY).start().expect("starts");
    wait_for_requests(&server, 1, Duration::from_secs(5)).await;
    let got = server.received_requests().await.unwrap_or_default();
    let order: Vec<(&str, &str)> = got
        .iter()
        .take(3)
        .map(|r| (r.method.as_str(), r.url.path()))
        .collect();
    assert_eq!(
        order,
        [
            ("GET", TABLE_PATH),
            ("GET", CONTROL_PATH),
            ("POST", TABLE_PATH)
        ],
        "the look at its row, then at its control row, then the first beat"
    );
    drop(hb);
    server.verify().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_server_is_a_connect_error_not_a_panic() {
    // A port nothing listens on: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(9);
    let e = Heartbeat::builder("w")
        .url(format!("http://127.0.0.1:{port}"))
        .key(SECRET_KEY)
        .check()
        .await
        .expect_err("nothing listens");
    assert!(
        matches!(e, SendOrConfig::Send(SendError::Connect(_))),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn https_to_a_plain_http_server_says_so() {
    let (server, _) = accepting_server().await;
    let plain = server.uri().replace("http://", "https://");
    let e = Heartbeat::builder("w")
        .url(plain)
        .key(SECRET_KEY)
        .check()
        .await
        .expect_err("no TLS there");
    assert!(e.to_string().contains("plain http"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_is_read_from_the_answer() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            postgrest_error(429, "", "Too many requests").insert_header("retry-after", "30"),
        )
        .mount(&server)
        .await;
    let e = builder(&server, SECRET_KEY)
        .check()
        .await
        .expect_err("rate limited");
    let SendOrConfig::Send(e) = e else {
        panic!("{e:?}")
    };
    assert_eq!(e.retry_after(), Some(Duration::from_secs(30)));
    assert!(e.to_string().contains("after the 30 s it asked for"), "{e}");
}

/// A 500 with a 200 MiB body: at most a few KiB of it are read (the rest is
/// left in the socket), so an outage like this never grows the worker.
#[tokio::test(flavor = "multi_thread")]
async fn a_200_mib_error_body_is_not_read() {
    use hp_heartbeat_tests::chaos::{ChaosServer, Mode};
    let server = ChaosServer::start().await;
    server.set(Mode::HugeBody {
        bytes: 200 << 20,
        chunk: 64 << 10,
        pause: Duration::from_millis(1),
    });
    let e = Heartbeat::builder("w")
        .url(server.uri())
        .key(SECRET_KEY)
        .check()
        .await
        .expect_err("a 500");
    assert!(e.to_string().contains("HTTP 500"), "{e}");
    let taken = hp_heartbeat_tests::eventually::eventually_async(
        Duration::from_secs(10),
        "the server saw the client leave",
        || async {
            let bodies = server.body_bytes_taken();
            // Empty until the server has noticed the client leave.
            (!bodies.is_empty() && bodies.iter().all(|b| b.client_closed)).then_some(bodies)
        },
    )
    .await;
    for body in taken {
        // 8 KiB read; the kernel's receive buffer may have taken more.
        assert!(
            body.taken < 8 << 20,
            "{} of {} bytes taken",
            body.taken,
            body.offered
        );
    }
}

/// A 429 asking for 30 s with a 1 s beat: one request per beat at most, no
/// retries in between (the quiet is capped at one interval).
#[tokio::test(flavor = "multi_thread")]
async fn a_429_with_retry_after_gets_no_retry_storm() {
    use hp_heartbeat_tests::chaos::{ChaosServer, Mode};
    let server = ChaosServer::start().await;
    server.set(Mode::too_many_requests(30));
    let hb = Heartbeat::builder("polite")
        .url(server.uri())
        .key(SECRET_KEY)
        .interval(Duration::from_secs(1))
        .handle_signals(false)
        .start()
        .expect("starts");
    let posts = hp_heartbeat_tests::eventually::eventually_async(
        Duration::from_secs(20),
        "five beats",
        || async {
            let posts: Vec<_> = server
                .requests()
                .into_iter()
                .filter(|r| r.method == "POST")
                .collect();
            (posts.len() >= 5).then_some(posts)
        },
    )
    .await;
    drop(hb);
    for pair in posts.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_millis(850),
            "two requests {gap:?} apart inside Retry-After"
        );
    }
}

const CONTROL_PATH: &str = "/rest/v1/hp_worker_control";

/// The control poll is one primary-key lookup: the exact request, the whole
/// row the first time, then only a row with a newer generation (an empty
/// answer while nothing changes); what it found is in the next beat.
#[tokio::test(flavor = "multi_thread")]
async fn the_control_poll_asks_only_for_a_newer_generation() {
    let (server, _) = accepting_server().await;
    let poll = || {
        Mock::given(method("GET"))
            .and(path(CONTROL_PATH))
            .and(query_param(
                "select",
                "desired,generation,restart_seq,run_now_seq,drain_seq",
            ))
            .and(query_param("worker_name", "eq.wire-worker"))
            .and(header("apikey", SECRET_KEY))
            .and(header("accept-profile", "public"))
    };
    poll()
        .and(query_param("generation", "gt.4"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!([])))
        .with_priority(1)
        .mount(&server)
        .await;
    poll()
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!([
            {"desired": "active", "generation": 4, "restart_seq": 1, "run_now_seq": 2, "drain_seq": 0}
        ])))
        .mount(&server)
        .await;
    let hb = builder(&server, SECRET_KEY)
        .control_poll(Duration::from_millis(100))
        .start()
        .expect("starts");
    let polls = hp_heartbeat_tests::eventually::eventually_async(
        Duration::from_secs(10),
        "three polls",
        || async {
            let got: Vec<_> = server
                .received_requests()
                .await
                .unwrap_or_default()
                .into_iter()
                .filter(|r| r.url.path() == CONTROL_PATH)
                .collect();
            (got.len() >= 3).then_some(got)
        },
    )
    .await;
    let generation = |r: &wiremock::Request| {
        r.url
            .query_pairs()
            .find(|(k, _)| k == "generation")
            .map(|(_, v)| v.into_owned())
    };
    assert_eq!(
        generation(&polls[0]),
        None,
        "the first read takes the whole row"
    );
    for later in &polls[1..] {
        assert_eq!(generation(later).as_deref(), Some("gt.4"));
    }
    let first_beat = body(&beats(&server).await[0]);
    assert_eq!(first_beat["control_generation"], 4);
    assert_eq!(first_beat["state"], "active");
    assert!(
        !hb.should_exit() && !hb.run_now_requested(),
        "counters found at start are served"
    );
    drop(hb);
}

/// A project with only the first migration: no control table, no control
/// or run columns. Every beat is still stored (without those columns) and
/// the final row too; control is off, not a new way to fail.
#[tokio::test(flavor = "multi_thread")]
async fn a_project_without_the_control_migration_still_takes_every_beat() {
    let server = MockServer::start().await;
    for (column, priority) in [
        ("controls", 1),
        ("pool", 2),
        ("max_run_seconds", 3),
        ("runs_total", 4),
    ] {
        Mock::given(method("POST"))
            .and(body_string_contains(format!("\"{column}\"")))
            .respond_with(postgrest_error(
                400,
                "PGRST204",
                &format!("Could not find the '{column}' column of 'hp_worker_status' in the schema cache"),
            ))
            .with_priority(priority)
            .mount(&server)
            .await;
    }
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201))
        .with_priority(10)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(CONTROL_PATH))
        .respond_with(postgrest_error(
            404,
            "PGRST205",
            "Could not find the table 'public.hp_worker_control' in the schema cache",
        ))
        .mount(&server)
        .await;
    let hb = builder(&server, SECRET_KEY)
        .max_run(Duration::from_secs(60))
        .start()
        .expect("starts");
    let no_new_columns = |b: &Value| {
        ["pool", "controls", "max_run_seconds", "runs_total"]
            .iter()
            .all(|k| b.get(*k).is_none())
    };
    hp_heartbeat_tests::eventually::eventually_async(
        Duration::from_secs(10),
        "the first beat stored without the new columns",
        || async {
            beats(&server)
                .await
                .iter()
                .map(body)
                .any(|b| no_new_columns(&b))
                .then_some(())
        },
    )
    .await;
    let run = hb.start_run();
    run.succeeded("done");
    assert!(hb.shutdown(), "the final row is stored");
    let requests = server.received_requests().await.unwrap_or_default();
    let stored: Vec<Value> = requests
        .iter()
        .filter(|r| r.method.as_str() == "POST")
        .map(body)
        .filter(no_new_columns)
        .collect();
    assert!(
        stored.len() >= 2,
        "the first beat and the final row: {stored:?}"
    );
    let refused = requests
        .iter()
        .filter(|r| r.method.as_str() == "POST")
        .count()
        - stored.len();
    assert!(
        refused <= 2,
        "one refusal per missing group, not per beat: {refused}"
    );
    assert_eq!(
        stored.last().map(|b| b["status"].clone()),
        Some("stopped".into())
    );
}

/// Supabase answers at most 1,000 rows to one request (a project may set
/// fewer): the read side asks page after page after the last name seen
/// until a page is empty, so a fleet of 2,500 is read whole.
#[tokio::test(flavor = "multi_thread")]
async fn the_read_side_pages_past_supabases_1000_row_cap() {
    struct Paged;
    impl wiremock::Respond for Paged {
        fn respond(&self, req: &wiremock::Request) -> ResponseTemplate {
            let q = |k: &str| {
                req.url
                    .query_pairs()
                    .find(|(key, _)| key == k)
                    .and_then(|(_, v)| v.parse::<usize>().ok())
            };
            // db-max-rows = 700 here (a project may lower Supabase's 1,000),
            // whatever the client asks for.
            let limit = q("limit").unwrap_or(usize::MAX).min(700);
            let after = req
                .url
                .query_pairs()
                .find(|(k, _)| k == "worker_name")
                .and_then(|(_, v)| {
                    v.strip_prefix("gt.w-")
                        .and_then(|n| n.parse::<usize>().ok())
                });
            let from = after.map_or(0, |n| n + 1);
            let rows: Vec<Value> = (from..2500)
                .take(limit)
                .map(|i| serde_json::json!({"worker_name": format!("w-{i:05}"), "status": "running"}))
                .collect();
            ResponseTemplate::new(200).set_body_json(rows)
        }
    }
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(TABLE_PATH))
        .and(query_param("order", "worker_name.asc"))
        .respond_with(Paged)
        .mount(&server)
        .await;
    let settings = heartbeat_sdk::StoreSettings::default()
        .url(server.uri())
        .key(SECRET_KEY, "the test");
    let reader = heartbeat_sdk::read::Reader::open(&settings).expect("open");
    let snapshot = reader.fetch().await.expect("fetch");
    let names: Vec<&str> = snapshot
        .rows
        .iter()
        .map(|r| r.worker_name.as_str())
        .collect();
    assert_eq!(names.len(), 2500);
    assert!(
        names.windows(2).all(|w| w[0] < w[1]),
        "one stable order, no row twice"
    );
    let pages = server.received_requests().await.unwrap_or_default().len();
    assert_eq!(pages, 5, "700 + 700 + 700 + 400, then an empty page");
}

/// Answers 201, then 503 `PGRST002` (schema cache reloading) from 0.5 s to
/// 20.5 s after the first request, then 201 again: with 1 s beats, the
/// twenty beats due in between are refused (each retried within its beat).
/// The bodies it answered 201 (stored) are kept, in order.
struct Outage {
    first: std::sync::Mutex<Option<Instant>>,
    stored: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

impl wiremock::Respond for Outage {
    fn respond(&self, request: &wiremock::Request) -> ResponseTemplate {
        let since = {
            let mut first = self.first.lock().expect("lock");
            first.get_or_insert_with(Instant::now).elapsed()
        };
        if since > Duration::from_millis(500) && since < Duration::from_millis(20_500) {
            ResponseTemplate::new(503).set_body_json(serde_json::json!({
                "code": "PGRST002", "details": null, "hint": null,
                "message": "Could not query the database for the schema cache. Retrying."
            }))
        } else {
            if let (Ok(body), Ok(mut stored)) = (
                serde_json::from_slice::<Value>(&request.body),
                self.stored.lock(),
            ) {
                stored.push(body);
            }
            ResponseTemplate::new(201)
        }
    }
}

/// Twenty beats that Supabase could not take, then one it did: that one
/// carries `missed_beats` 20 and the gap's bounds, the next leaves them to
/// the row; the worker stays `running` under the same instance throughout.
#[tokio::test(flavor = "multi_thread")]
async fn after_an_outage_of_twenty_beats_the_next_beat_carries_missed_beats_20() {
    let server = MockServer::start().await;
    let stored = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    Mock::given(method("POST"))
        .and(path("/rest/v1/hp_worker_status"))
        .respond_with(Outage {
            first: Default::default(),
            stored: stored.clone(),
        })
        .mount(&server)
        .await;
    let hb = builder(&server, SECRET_KEY)
        .interval(Duration::from_secs(1))
        .start()
        .expect("starts");
    // What was sent, and what was stored: the first beat, the one that got
    // through after the outage, and the one after it.
    let (sent, stored) = hp_heartbeat_tests::eventually::eventually_async(
        Duration::from_secs(60),
        "two beats stored after the outage",
        || async {
            let stored = stored.lock().map(|s| s.clone()).unwrap_or_default();
            let sent: Vec<Value> = server
                .received_requests()
                .await
                .unwrap_or_default()
                .iter()
                .filter(|r| r.method.as_str() == "POST")
                .filter_map(|r| serde_json::from_slice(&r.body).ok())
                .collect();
            (stored.len() >= 3).then_some((sent, stored))
        },
    )
    .await;
    drop(hb);
    assert_eq!(
        stored[0]["missed_beats"], 0,
        "the first beat clears an old gap"
    );
    let first_refused = &sent[1];
    let back = &stored[1];
    let missed = back["missed_beats"].as_i64().unwrap_or(0);
    // Beats are jittered by up to 10%: twenty due in the 20 s, within one.
    assert!((19..=21).contains(&missed), "missed_beats {missed}: {back}");
    assert_eq!(back["gap_ended_at"], back["client_heartbeat"]);
    assert_eq!(
        back["gap_started_at"], first_refused["client_heartbeat"],
        "the gap began with the first beat refused"
    );
    assert!(
        stored[2].get("missed_beats").is_none(),
        "then the row keeps it: {}",
        stored[2]
    );
    for body in &sent {
        assert_eq!(body["status"], "running", "an outage is no crash");
        assert_eq!(body["instance_id"], sent[0]["instance_id"], "nor a restart");
    }
}
