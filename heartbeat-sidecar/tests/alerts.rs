//! `heartbeat-sidecar alerts` with real parts: the watcher process, real
//! sidecars whose workers crash, the local store, and an HTTP receiver the
//! test starts (and stops, to play a webhook that is down).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use hp_heartbeat_tests::eventually::eventually;
use hp_heartbeat_tests::receiver::{Received, Receiver};

/// Part of the webhook's path that stands for its secret: it must never
/// reach a log.
const SECRET_PATH: &str = "/hooks/T0FAKE/B0FAKE/not-a-real-webhook-secret";

/// A watcher process; its stderr goes to a file the test reads as it runs.
struct Watcher {
    child: Child,
    log: PathBuf,
}

impl Watcher {
    fn start(db: &Path, url: &str, extra: &[&str], log: PathBuf) -> Watcher {
        let file = std::fs::File::create(&log).expect("log");
        let child = common::sidecar()
            .env("HP_STORE", db)
            .env("HP_ALERT_WEBHOOKS", url)
            .env("HP_LOG", "info")
            .arg("alerts")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("alerts");
        Watcher { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then its exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        common::kill(self.child.id() as i32, libc::SIGTERM);
        let child = &mut self.child;
        eventually(
            Duration::from_secs(20),
            "the watcher ends on SIGTERM",
            || child.try_wait().ok().flatten(),
        )
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Who holds the webhook's cursor, read from the store.
fn holder(db: &Path) -> Option<String> {
    let conn = rusqlite::Connection::open(db).ok()?;
    conn.query_row(
        "select holder from hp_alert_cursor where holder is not null",
        [],
        |r| r.get(0),
    )
    .ok()
}

/// A worker that starts, writes an error and exits 3: a `crashed` event.
fn crash(db: &Path, name: &str) {
    let status = common::sidecar()
        .env("HP_STORE", db)
        .env("HP_LOG", "warn")
        .args(["run", "--name", name, "--"])
        .args(["sh", "-c", "echo 'Error: boom' >&2; exit 3"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run");
    assert_eq!(
        status.code(),
        Some(3),
        "the sidecar exits as its worker did"
    );
}

/// The webhook's URL (its path is the secret) never reaches a log.
fn assert_no_secret(log: &str) {
    assert!(
        !log.contains("not-a-real-webhook-secret"),
        "the webhook's URL reached the log:\n{log}"
    );
}

fn crashes(received: &[Received], name: &str) -> Vec<Received> {
    received
        .iter()
        .filter(|r| r.json()["worker_name"] == name)
        .cloned()
        .collect()
}

fn wait_for(receiver: &Receiver, name: &str, within: Duration) -> Received {
    eventually(
        within,
        &format!("{name}'s crash reaches the webhook"),
        || crashes(&receiver.delivered(), name).into_iter().next(),
    )
}

/// The event ids the receiver got, each as many times as it got it.
fn ids(received: &[Received]) -> Vec<i64> {
    let mut ids: Vec<i64> = received
        .iter()
        .map(|r| r.json()["id"].as_i64().expect("an event id"))
        .collect();
    ids.sort_unstable();
    ids
}

fn assert_once_each(received: &[Received]) {
    let all = ids(received);
    let mut unique = all.clone();
    unique.dedup();
    assert_eq!(all, unique, "an event was delivered twice");
}

#[test]
fn a_crash_reaches_the_webhook_within_20_s_with_the_defaults() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("heartbeat.db");
    let receiver = Receiver::start();
    let watcher = Watcher::start(
        &db,
        &receiver.url(SECRET_PATH),
        &[],
        dir.path().join("alerts.log"),
    );
    eventually(
        Duration::from_secs(30),
        "the watcher holds the webhook's cursor",
        || holder(&db),
    );

    crash(&db, "order-executor");
    let crashed_at = Instant::now();
    let got = wait_for(&receiver, "order-executor", Duration::from_secs(40));
    let took = got.at.saturating_duration_since(crashed_at);
    assert!(
        took < Duration::from_secs(20),
        "the crash took {took:?} to arrive"
    );

    assert_eq!(got.method, "POST");
    assert_eq!(got.path, SECRET_PATH);
    assert_eq!(got.header("content-type"), Some("application/json"));
    let body = got.json();
    assert_eq!(body["kind"], "crashed", "{body}");
    assert_eq!(body["detail"]["exit_code"], 3, "{body}");
    assert!(
        body["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("order-executor crashed") && t.contains("exit code 3")),
        "{body}"
    );
    let id = body["id"].as_i64().expect("id");
    assert_eq!(got.header("x-hp-event-id"), Some(id.to_string().as_str()));
    assert!(
        got.header("idempotency-key")
            .is_some_and(|k| k.starts_with("webhook-") && k.ends_with(&format!("-{id}"))),
        "{:?}",
        got.headers
    );
    // `started` is not among the default kinds: only the crash came.
    assert_eq!(receiver.received().len(), 1, "{:?}", receiver.received());

    let status = watcher.stop();
    assert!(
        status.success(),
        "SIGTERM ends the watcher with 0: {status:?}"
    );
    assert_eq!(holder(&db), None, "it let go of the webhook as it stopped");
    let log = std::fs::read_to_string(dir.path().join("alerts.log")).expect("log");
    assert!(log.contains("delivered event"), "{log}");
    assert_no_secret(&log);
}

#[test]
fn a_webhook_down_for_a_minute_gets_every_event_once_when_it_comes_back() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("heartbeat.db");
    let receiver = Receiver::start();
    // Down: every request answered 503, as a webhook whose service is out.
    receiver.answer_with(503);
    let watcher = Watcher::start(
        &db,
        &receiver.url(SECRET_PATH),
        &["--every", "5s"],
        dir.path().join("alerts.log"),
    );
    eventually(
        Duration::from_secs(30),
        "the watcher holds the webhook's cursor",
        || holder(&db),
    );

    crash(&db, "crawler");
    eventually(
        Duration::from_secs(30),
        "the watcher says the webhook refused",
        || {
            watcher
                .log()
                .contains("not delivered: the receiver answered 503")
                .then_some(())
        },
    );
    let went_down = Instant::now();
    // The scenario itself: the webhook stays down for a minute.
    std::thread::sleep(Duration::from_secs(60).saturating_sub(went_down.elapsed()));
    let refused = receiver.received().len();
    receiver.answer_with(200);

    let first = wait_for(&receiver, "crawler", Duration::from_secs(60));
    assert_eq!(first.json()["kind"], "crashed");
    // A sentinel: events go out in order, so once this arrives any repeat of
    // the first would have arrived before it.
    crash(&db, "sentinel");
    wait_for(&receiver, "sentinel", Duration::from_secs(30));
    let delivered = receiver.delivered();
    assert_eq!(crashes(&delivered, "crawler").len(), 1, "{delivered:?}");
    assert_eq!(delivered.len(), 2, "{delivered:?}");
    assert_once_each(&delivered);

    // Retried with backoff: more than once, far fewer than once a second.
    assert!((3..=20).contains(&refused), "{refused} tries in a minute");
    let log = watcher.log();
    assert_no_secret(&log);
}

#[test]
fn two_watchers_deliver_each_event_once_and_one_takes_over_when_the_other_stops() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("heartbeat.db");
    let receiver = Receiver::start();
    let url = receiver.url(SECRET_PATH);
    let every = ["--every", "2s"];
    let a = Watcher::start(&db, &url, &every, dir.path().join("a.log"));
    let b = Watcher::start(&db, &url, &every, dir.path().join("b.log"));
    eventually(
        Duration::from_secs(30),
        "one watcher holds the webhook, the other waits",
        || {
            let waiting = a.log().contains("takes over if it stops")
                || b.log().contains("takes over if it stops");
            holder(&db).filter(|_| waiting)
        },
    );

    for name in ["w1", "w2", "w3"] {
        crash(&db, name);
    }
    crash(&db, "sentinel-1");
    wait_for(&receiver, "sentinel-1", Duration::from_secs(30));
    for name in ["w1", "w2", "w3"] {
        assert_eq!(crashes(&receiver.received(), name).len(), 1, "{name}");
    }
    assert_once_each(&receiver.received());

    // The holder stops: it lets go, and the other sends from where it was.
    let held = holder(&db).expect("held");
    let (stopping, survivor) = if held.contains(&format!(" pid {} (", a.pid())) {
        (a, b)
    } else {
        (b, a)
    };
    assert!(stopping.stop().success());
    crash(&db, "after-takeover");
    wait_for(&receiver, "after-takeover", Duration::from_secs(30));
    assert!(
        survivor.log().contains("this watcher now sends its events"),
        "{}",
        survivor.log()
    );
    assert_once_each(&receiver.received());

    // With no watcher running, an event waits in the store; the next
    // watcher sends it, and nothing it had sent before.
    assert!(survivor.stop().success());
    crash(&db, "while-none-ran");
    let before = receiver.received().len();
    let _c = Watcher::start(&db, &url, &every, dir.path().join("c.log"));
    wait_for(&receiver, "while-none-ran", Duration::from_secs(30));
    crash(&db, "sentinel-2");
    wait_for(&receiver, "sentinel-2", Duration::from_secs(30));
    let received = receiver.received();
    assert_eq!(received.len(), before + 2, "{received:?}");
    assert_once_each(&received);
    assert_eq!(
        received.len(),
        7,
        "w1-3, sentinel-1, after-takeover, while-none-ran, sentinel-2"
    );
}

/// One cursor per webhook: while a watcher holds it, its `--on` is what is
/// sent, so a watcher waiting with other kinds says which it cannot send.
#[test]
fn a_watcher_waiting_with_other_kinds_says_which_are_not_sent() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("heartbeat.db");
    let receiver = Receiver::start();
    let url = receiver.url(SECRET_PATH);
    let a = Watcher::start(&db, &url, &["--every", "2s"], dir.path().join("a.log"));
    let held = eventually(
        Duration::from_secs(30),
        "the first watcher holds it",
        || holder(&db),
    );
    assert!(held.contains(&format!(" pid {} (", a.pid())), "{held}");
    let b = Watcher::start(
        &db,
        &url,
        &["--every", "2s", "--on", "crashed,started"],
        dir.path().join("b.log"),
    );
    let said = eventually(Duration::from_secs(30), "the second says so", || {
        b.log()
            .lines()
            .find(|l| l.contains("not this watcher's --on"))
            .map(str::to_owned)
    });
    assert!(
        said.contains("WARN")
            && said.contains("sends breaker_opened,crashed,hung,stale")
            && said.contains("started events are not sent")
            && said.contains("the same --on"),
        "{said}"
    );
    assert!(!a.log().contains("not this watcher's --on"), "{}", a.log());
    assert_no_secret(&b.log());
}

#[test]
fn a_watcher_without_a_webhook_or_with_a_bad_one_says_what_to_give() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("heartbeat.db");
    let run = |args: &[&str]| {
        let out = common::sidecar()
            .env("HP_STORE", &db)
            .env_remove("HP_ALERT_WEBHOOKS")
            .arg("alerts")
            .args(args)
            .output()
            .expect("alerts");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let hook = ["--webhook", "https://example.com/x"];
    let cases: [(Vec<&str>, &str); 5] = [
        (vec![], "HP_ALERT_WEBHOOKS"),
        (
            vec!["--webhook", "hooks.example.com/x"],
            "give the whole URL",
        ),
        (
            [&hook[..], &["--on", "crashed,exploded"]].concat(),
            "no event kind `exploded`",
        ),
        (
            [&hook[..], &["--prune-gone-for", "10m"]].concat(),
            "under an hour",
        ),
        (
            vec!["--webhook", "https:///not-a-real-webhook-secret"],
            "webhook 1 of --webhook: it has no host",
        ),
    ];
    for (args, says) in &cases {
        let (code, err) = run(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(
            !err.contains("not-a-real-webhook-secret"),
            "the URL is not quoted: {err}"
        );
    }
    // A local store that cannot be written is said at start, not retried.
    let out = common::sidecar()
        .env("HP_STORE", dir.path().join("no-such-dir/heartbeat.db"))
        .env("HP_ALERT_WEBHOOKS", "http://127.0.0.1:9/x")
        .arg("alerts")
        .output()
        .expect("alerts");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("does not exist: create it"), "{err}");
    // The help never shows the variable's value: it may hold a secret URL.
    let out = common::sidecar()
        .env(
            "HP_ALERT_WEBHOOKS",
            "https://example.com/not-a-real-webhook-secret",
        )
        .args(["alerts", "--help"])
        .output()
        .expect("help");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("HP_ALERT_WEBHOOKS"), "{help}");
    assert!(!help.contains("not-a-real-webhook-secret"), "{help}");
}

/// On Supabase the watcher speaks to PostgREST (mocked: it cannot run
/// here): the sweep, the claim with the body `hp_alert_claim` takes (the
/// same body `tests/alerts_sql.rs` runs on PostgreSQL), the POST to the
/// real receiver, then the acks.
#[tokio::test(flavor = "multi_thread")]
async fn on_supabase_the_watcher_sweeps_claims_posts_and_acks_through_postgrest() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    let server = MockServer::start().await;
    let event = serde_json::json!({
        "id": 7, "at": "2026-12-01T13:00:00+00:00", "worker_name": "pnl-job", "kind": "crashed",
        "from_state": "running", "to_state": "crashed", "detail": {"exit_code": 1, "error": "Error: boom"},
    });
    Mock::given(method("POST"))
        .and(path("/rest/v1/rpc/hp_sweep"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!([])))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/rest/v1/rpc/hp_alert_claim"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "held": true, "holder": "me", "lease_until": "2026-12-01T13:02:00+00:00",
            "events": [event], "through": 9,
        })))
        // The watcher's first claim at start takes its place (one event at
        // most, not sent from); the first round's claim then sends.
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/rest/v1/rpc/hp_alert_claim"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "held": true, "holder": "me", "lease_until": "2026-12-01T13:02:00+00:00",
            "events": [], "through": 9,
        })))
        .with_priority(2)
        .mount(&server)
        .await;
    for function in ["hp_alert_ack", "hp_alert_release"] {
        Mock::given(method("POST"))
            .and(path(format!("/rest/v1/rpc/{function}")))
            .respond_with(ResponseTemplate::new(200).set_body_json(true))
            .mount(&server)
            .await;
    }
    let receiver = Receiver::start();
    let dir = tempfile::tempdir().expect("tmp");
    let log = dir.path().join("alerts.log");
    let mut child = common::sidecar_to(&server)
        .env("HP_ALERT_WEBHOOKS", receiver.url(SECRET_PATH))
        .env("HP_LOG", "info")
        .args(["alerts", "--every", "1s"])
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("alerts");
    let got = hp_heartbeat_tests::eventually::eventually_async(
        Duration::from_secs(20),
        "the event reaches the webhook",
        || async { receiver.received().into_iter().next() },
    )
    .await;
    assert_eq!(got.json()["worker_name"], "pnl-job");
    let bodies = |function: &'static str| {
        let server = &server;
        async move {
            server
                .received_requests()
                .await
                .unwrap_or_default()
                .into_iter()
                .filter(|r| r.url.path() == format!("/rest/v1/rpc/{function}"))
                .map(|r| {
                    assert_eq!(
                        r.headers.get("apikey").and_then(|v| v.to_str().ok()),
                        Some(common::SECRET_KEY)
                    );
                    serde_json::from_slice::<serde_json::Value>(&r.body).expect("json body")
                })
                .collect::<Vec<_>>()
        }
    };
    let acks = hp_heartbeat_tests::eventually::eventually_async(
        Duration::from_secs(20),
        "the delivery and the batch are acknowledged",
        || async { Some(bodies("hp_alert_ack").await).filter(|a| a.len() >= 2) },
    )
    .await;
    assert_eq!(acks[0]["through"], 7, "{acks:?}");
    assert_eq!(acks[0]["delivered"], 1, "{acks:?}");
    assert_eq!(acks[1]["through"], 9, "past the kinds not sent: {acks:?}");
    assert_eq!(acks[1]["delivered"], 0, "{acks:?}");

    let claims = bodies("hp_alert_claim").await;
    assert_eq!(claims[0]["max_events"], 1, "the place taken at start");
    let claim = &claims[1];
    assert!(
        claim["sink"]
            .as_str()
            .is_some_and(|s| s.starts_with("webhook-")),
        "{claim}"
    );
    assert!(
        claim["holder"]
            .as_str()
            .is_some_and(|h| h.contains(" pid ")),
        "{claim}"
    );
    assert_eq!(
        claim["kinds"],
        serde_json::json!(["breaker_opened", "crashed", "hung", "stale"])
    );
    assert_eq!(claim["lease"], "120 seconds");
    assert_eq!(claim["max_events"], 100);
    assert!(!bodies("hp_sweep").await.is_empty(), "the sweep ran");

    common::kill(child.id() as i32, libc::SIGTERM);
    let status = hp_heartbeat_tests::eventually::eventually(
        Duration::from_secs(20),
        "the watcher ends",
        || child.try_wait().ok().flatten(),
    );
    assert!(status.success(), "{status:?}");
    let released = bodies("hp_alert_release").await;
    assert_eq!(released.len(), 1, "it let go as it stopped");
    assert_eq!(released[0]["sink"], claim["sink"]);
    let log = std::fs::read_to_string(&log).expect("log");
    assert!(!log.contains("not-a-real-webhook-secret"), "{log}");
    assert!(!log.contains(common::SECRET_KEY), "{log}");
}

/// Several webhooks, one per line in `HP_ALERT_WEBHOOKS` (as an environment
/// file may hold them): each gets every event, and one that is down does not
/// hold up the other.
#[test]
fn each_webhook_gets_the_events_and_one_down_holds_up_no_other() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("heartbeat.db");
    let up = Receiver::start();
    let down = Receiver::start();
    down.answer_with(500);
    let both = format!("{}\n{}\n", up.url("/a"), down.url("/b"));
    let watcher = Watcher::start(
        &db,
        &both,
        &["--every", "2s"],
        dir.path().join("alerts.log"),
    );
    eventually(Duration::from_secs(30), "both webhooks claimed", || {
        let conn = rusqlite::Connection::open(&db).ok()?;
        let held: i64 = conn
            .query_row(
                "select count(*) from hp_alert_cursor where holder is not null",
                [],
                |r| r.get(0),
            )
            .ok()?;
        (held == 2).then_some(())
    });
    crash(&db, "two-hooks");
    wait_for(&up, "two-hooks", Duration::from_secs(30));
    eventually(
        Duration::from_secs(30),
        "the other webhook was tried",
        || (!down.received().is_empty()).then_some(()),
    );
    down.answer_with(200);
    wait_for(&down, "two-hooks", Duration::from_secs(60));
    assert_eq!(up.delivered().len(), 1);
    assert_eq!(down.delivered().len(), 1);
    drop(watcher);
}

/// `--prune-gone-for`: the sweep's schedule removes a ghost (a worker gone
/// for eight days) as the watcher starts, recorded as a `pruned` event; a
/// worker seen now stays.
#[test]
fn the_watcher_prunes_ghosts_on_its_schedule() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("heartbeat.db");
    for name in ["ghost", "alive"] {
        let status = common::sidecar()
            .env("HP_STORE", &db)
            .env("HP_LOG", "warn")
            .args(["once", "--name", name, "--", "true"])
            .status()
            .expect("once");
        assert!(status.success());
    }
    let old = (chrono::Utc::now() - chrono::Duration::days(8)).to_rfc3339();
    rusqlite::Connection::open(&db)
        .expect("open")
        .execute(
            "update hp_worker_status set last_heartbeat = ?1, updated_at = ?1 where worker_name = 'ghost'",
            [&old],
        )
        .expect("age the ghost");
    let receiver = Receiver::start();
    let _watcher = Watcher::start(
        &db,
        &receiver.url("/p"),
        &["--every", "1s", "--prune-gone-for", "7d"],
        dir.path().join("alerts.log"),
    );
    let store = heartbeat_sdk::sidecar::SqliteStore::new(&db);
    let pruned = eventually(Duration::from_secs(30), "the ghost pruned", || {
        store
            .events(None, None)
            .ok()?
            .into_iter()
            .find(|e| e.kind == "pruned")
    });
    assert_eq!(pruned.worker_name, "ghost");
    let names: Vec<String> = store
        .read_all()
        .expect("rows")
        .into_iter()
        .map(|r| r.worker_name)
        .collect();
    assert_eq!(names, ["alive"]);
}
