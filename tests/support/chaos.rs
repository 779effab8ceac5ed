//! A misbehaving PostgREST: an HTTP/1.1 server on 127.0.0.1 that fails in
//! exactly one chosen way at a time, switchable while it runs, and records
//! every request it read.
//!
//! ```ignore
//! let server = ChaosServer::start().await;
//! // SUPABASE_URL = server.uri(), any fake key
//! server.set(Mode::too_many_requests(30));
//! let t = std::time::Instant::now();
//! // ... let the reporter run ...
//! let during = server.requests().iter().filter(|r| r.at > t + Duration::from_secs(1)).count();
//! assert_eq!(during, 0, "a request inside Retry-After");
//! ```
//!
//! | [`Mode`] | what a client meets |
//! |---|---|
//! | `Accept` | 201 to a POST to `/rest/v1/hp_worker_status`, 200 `[]` to a GET |
//! | `Status { code, body, retry_after }` | that answer to everything (500, 503 PGRST002, 401, 429 with `Retry-After`) |
//! | `Refuse` | connection refused: the listener is closed and open connections are dropped |
//! | `Hang` | the request is read and never answered |
//! | `Slow(d)` | the `Accept` answer after `d` |
//! | `Reset` | the request is read, then the connection is reset (RST, `SO_LINGER` 0) |
//! | `Flap { period }` | `Accept` and 500 alternating every `period` |
//! | `HugeBody { bytes, chunk, pause }` | a 500 whose body is `bytes` long, sent `chunk` bytes at a time with `pause` between |
//!
//! The server speaks plain HTTP only: [`ChaosServer::https_uri`] points an
//! `https://` URL at it, which fails every TLS handshake (a wrong scheme or a
//! proxy that does not speak TLS).
//!
//! It runs on its own thread with its own runtime, so it keeps answering while
//! a test's thread blocks (a process test polling with `std::thread::sleep`),
//! and works from plain `#[test]` ([`ChaosServer::start_blocking`]) and from any
//! tokio runtime ([`ChaosServer::start`]). Dropping it stops it.
//!
//! What a client really took of a huge body is what its kernel acknowledged
//! (`TCP_INFO`): at most its socket receive buffer more than its code read.
//! The server's own send buffer is kept small for these answers so the count
//! follows the client closely.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The path every beat is POSTed to.
pub const TABLE_PATH: &str = "/rest/v1/hp_worker_status";
/// Request heads longer than this are refused (400) and the connection closed.
const MAX_HEAD: usize = 64 * 1024;
/// Body bytes kept per request; longer bodies are read in full and counted.
const KEEP_BODY: usize = 64 * 1024;
/// Send buffer asked for while streaming a huge body, so that what the
/// client acknowledged follows what it read.
const HUGE_BODY_SNDBUF: libc::c_int = 64 * 1024;

/// How the server misbehaves. One at a time; [`ChaosServer::set`] switches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Behave: 201 to a POST to `/rest/v1/hp_worker_status`, 200 `[]` to a GET,
    /// 404 to anything else.
    Accept,
    /// Answer every request with this status and body (JSON), and a
    /// `Retry-After: secs` header when given.
    Status {
        /// HTTP status code.
        code: u16,
        /// Response body, sent as `application/json`.
        body: String,
        /// Seconds for the `Retry-After` header.
        retry_after: Option<u64>,
    },
    /// Stop listening: new connections are refused, open ones are closed.
    Refuse,
    /// Read each request and never answer it (until the client leaves or the
    /// mode becomes `Refuse`). A hung connection stays hung after a switch.
    Hang,
    /// Answer as `Accept` does, after this delay.
    Slow(Duration),
    /// Read each request, then reset the connection (RST, `SO_LINGER` 0).
    Reset,
    /// `Accept` for `period`, then 500 for `period`, and so on, counted from the switch.
    Flap {
        /// How long each half lasts.
        period: Duration,
    },
    /// A 500 whose `text/html` body is `bytes` long (announced in
    /// `Content-Length`), written `chunk` bytes at a time with `pause` between.
    /// See [`ChaosServer::body_bytes_taken`].
    HugeBody {
        /// Body length.
        bytes: u64,
        /// Bytes per write.
        chunk: usize,
        /// Pause after each write.
        pause: Duration,
    },
}

impl Mode {
    /// `code` with a PostgREST error body (`{"code","details","hint","message"}`).
    pub fn status(code: u16, postgrest_code: &str, message: &str) -> Mode {
        let body = serde_json::json!({
            "code": postgrest_code,
            "details": null,
            "hint": null,
            "message": message,
        });
        Mode::Status {
            code,
            body: body.to_string(),
            retry_after: None,
        }
    }

    /// 500, as PostgREST answers an internal error.
    pub fn server_error() -> Mode {
        Mode::status(500, "XX000", "chaos server: internal error")
    }

    /// 503 `PGRST002`: PostgREST reloading its schema cache.
    pub fn schema_reloading() -> Mode {
        Mode::status(
            503,
            "PGRST002",
            "Could not query the database for the schema cache. Retrying.",
        )
    }

    /// 401 from Supabase's gateway: a wrong or revoked key.
    pub fn unauthorized() -> Mode {
        Mode::Status {
            code: 401,
            body: r#"{"message":"Invalid API key","hint":"Double check your Supabase `anon` or `service_role` API key."}"#.into(),
            retry_after: None,
        }
    }

    /// 429 with `Retry-After: secs`.
    pub fn too_many_requests(secs: u64) -> Mode {
        let Mode::Status { body, .. } = Mode::status(429, "", "chaos server: too many requests")
        else {
            unreachable!("Mode::status builds a Status")
        };
        Mode::Status {
            code: 429,
            body,
            retry_after: Some(secs),
        }
    }

    /// A short name for logs: `accept`, `status-503`, `status-429-retry-after-30s`,
    /// `refuse`, `hang`, `slow-3000ms`, `reset`, `flap-2000ms`, `huge-body-209715200`.
    pub fn label(&self) -> String {
        match self {
            Mode::Accept => "accept".into(),
            Mode::Status {
                code,
                retry_after: Some(s),
                ..
            } => format!("status-{code}-retry-after-{s}s"),
            Mode::Status { code, .. } => format!("status-{code}"),
            Mode::Refuse => "refuse".into(),
            Mode::Hang => "hang".into(),
            Mode::Slow(d) => format!("slow-{}ms", d.as_millis()),
            Mode::Reset => "reset".into(),
            Mode::Flap { period } => format!("flap-{}ms", period.as_millis()),
            Mode::HugeBody { bytes, .. } => format!("huge-body-{bytes}"),
        }
    }
}

/// What the server did with a request (decided when it had read it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Answered at once with this status.
    Status(u16),
    /// Answered with this status after this delay (`Slow`), unless the client
    /// left first.
    Delayed(u16, Duration),
    /// Never answered (`Hang`).
    Hung,
    /// The connection was reset (`Reset`).
    Reset,
    /// A 500 with a body this long (`HugeBody`); see [`ChaosServer::body_bytes_taken`].
    HugeBody(u64),
    /// Closed unanswered: the mode became `Refuse` while it was being read.
    Closed,
}

/// One request the server read in full.
#[derive(Debug, Clone)]
pub struct Request {
    /// Its number, from 1, in the order requests were read.
    pub seq: u64,
    /// When its body was read (for "no request between t and t + 30 s").
    pub at: Instant,
    /// The same moment on the wall clock (for logs).
    pub wall: SystemTime,
    /// `POST`, `GET`, ...
    pub method: String,
    /// Path and query, e.g. `/rest/v1/hp_worker_status?on_conflict=worker_name`.
    pub path: String,
    /// Headers as sent (names lower-cased).
    pub headers: Vec<(String, String)>,
    /// The body's first 64 KiB.
    pub body: Vec<u8>,
    /// The body's full length.
    pub body_len: u64,
    /// What the server did with it.
    pub answer: Answer,
}

impl Request {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `worker_name` of the JSON row in the body, if there is one.
    pub fn worker_name(&self) -> Option<String> {
        self.row_text("worker_name")
    }

    /// A text field of the JSON row in the body (`status`, `worker_name`, ...).
    pub fn row_text(&self, field: &str) -> Option<String> {
        let row: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        row.get(field)?.as_str().map(str::to_owned)
    }
}

/// How much of a huge body a client took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyTaken {
    /// The request it answered ([`Request::seq`]).
    pub seq: u64,
    /// The body's announced length.
    pub offered: u64,
    /// Body bytes the client's kernel acknowledged before it closed the
    /// connection (at most its receive buffer more than its code read).
    pub taken: u64,
    /// Whether the client closed before the end of the body.
    pub client_closed: bool,
}

/// The server. See the [module docs](self).
#[derive(Debug)]
pub struct ChaosServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    mode: watch::Sender<Switched>,
    requests: Mutex<Vec<Request>>,
    bodies: Mutex<Vec<BodyTaken>>,
    connections: AtomicU64,
    next_seq: AtomicU64,
}

/// The mode and when it was set (`Flap` counts its halves from there).
#[derive(Debug, Clone)]
struct Switched {
    mode: Mode,
    since: Instant,
}

impl ChaosServer {
    /// Starts in `Accept` mode on a free port of 127.0.0.1.
    ///
    /// # Panics
    /// When no port can be bound or the server thread cannot start.
    pub async fn start() -> ChaosServer {
        Self::start_blocking()
    }

    /// [`start`](Self::start) for code outside any runtime (plain `#[test]`).
    ///
    /// # Panics
    /// When no port can be bound or the server thread cannot start.
    pub fn start_blocking() -> ChaosServer {
        match Self::bind(0) {
            Ok(server) => server,
            Err(e) => panic!("chaos server: cannot listen on 127.0.0.1: {e}"),
        }
    }

    /// Starts in `Accept` mode on 127.0.0.1:`port` (0: any free port).
    ///
    /// # Errors
    /// The port cannot be bound, or the server thread cannot start.
    pub fn bind(port: u16) -> io::Result<ChaosServer> {
        let listener = std::net::TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (mode, _) = watch::channel(Switched {
            mode: Mode::Accept,
            since: Instant::now(),
        });
        let shared = Arc::new(Shared {
            mode,
            requests: Mutex::new(Vec::new()),
            bodies: Mutex::new(Vec::new()),
            connections: AtomicU64::new(0),
            next_seq: AtomicU64::new(1),
        });
        let (shutdown, stop) = watch::channel(false);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let serving = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("chaos-server-{}", addr.port()))
            .spawn(move || runtime.block_on(accept_loop(listener, addr, serving, stop)))?;
        Ok(ChaosServer {
            addr,
            shared,
            shutdown,
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT`: the project URL to give the reporter.
    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `https://127.0.0.1:PORT`: the same server under the wrong scheme, so
    /// every TLS handshake fails.
    pub fn https_uri(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The address it listens on (kept across `Refuse`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches to `mode` for every request read from now on. `Refuse` takes
    /// effect at once: the listener closes and so does every open connection.
    pub fn set(&self, mode: Mode) {
        self.shared.mode.send_replace(Switched {
            mode,
            since: Instant::now(),
        });
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        self.shared.mode.borrow().mode.clone()
    }

    /// Every request read so far (since the last [`take_requests`](Self::take_requests)), oldest first.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.shared.requests).clone()
    }

    /// Like [`requests`](Self::requests), and forgets them: for long runs.
    pub fn take_requests(&self) -> Vec<Request> {
        std::mem::take(&mut *lock(&self.shared.requests))
    }

    /// One entry per huge body sent, once the client closed or took it all.
    pub fn body_bytes_taken(&self) -> Vec<BodyTaken> {
        lock(&self.shared.bodies).clone()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }
}

impl Drop for ChaosServer {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn is_refuse(s: &Switched) -> bool {
    s.mode == Mode::Refuse
}

/// Accepts until shut down; while the mode is `Refuse` there is no listener
/// at all, so the kernel refuses connections.
async fn accept_loop(
    first: std::net::TcpListener,
    addr: SocketAddr,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut mode = shared.mode.subscribe();
    let mut first = Some(first);
    loop {
        let listener = match first.take() {
            Some(l) => TcpListener::from_std(l),
            None => {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    l = rebind(addr) => Ok(l),
                }
            }
        };
        let Ok(listener) = listener else {
            eprintln!("chaos server: cannot serve on {addr}");
            return;
        };
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = mode.wait_for(is_refuse) => break,
                accepted = listener.accept() => {
                    if let Ok((stream, _)) = accepted {
                        shared.connections.fetch_add(1, Ordering::Relaxed);
                        tokio::spawn(connection(stream, Arc::clone(&shared)));
                    }
                }
            }
        }
        drop(listener);
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = mode.wait_for(|s| !is_refuse(s)) => {}
        }
    }
}

/// The same port again after `Refuse` (SO_REUSEADDR, set by tokio, lets it
/// past connections in TIME_WAIT); retried while something else holds it.
async fn rebind(addr: SocketAddr) -> TcpListener {
    let mut complained = false;
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) => {
                if !complained {
                    eprintln!("chaos server: cannot listen on {addr} again ({e}); retrying");
                    complained = true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A parsed request, before it is recorded.
struct Incoming {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    body_len: u64,
    close: bool,
}

/// One connection: read a request, answer as the mode says, repeat while
/// the client keeps the connection alive.
async fn connection(stream: TcpStream, shared: Arc<Shared>) {
    let mut conn = Conn {
        stream,
        buf: Vec::new(),
    };
    let mut mode = shared.mode.subscribe();
    loop {
        let read = tokio::select! {
            _ = mode.wait_for(is_refuse) => return,
            r = conn.read_request() => r,
        };
        let incoming = match read {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                if e.kind() == io::ErrorKind::InvalidData {
                    let _ = conn
                        .stream
                        .write_all(&head(400, "text/plain", 0, None, true))
                        .await;
                }
                return;
            }
        };
        let now = Instant::now();
        let switched = mode.borrow_and_update().clone();
        let answer = decide(&switched, &incoming, now);
        let seq = shared.next_seq.fetch_add(1, Ordering::Relaxed);
        let close = incoming.close;
        lock(&shared.requests).push(Request {
            seq,
            at: now,
            wall: SystemTime::now(),
            method: incoming.method,
            path: incoming.path,
            headers: incoming.headers,
            body: incoming.body,
            body_len: incoming.body_len,
            answer,
        });
        let keep_going = match (answer, &switched.mode) {
            (
                Answer::Status(code),
                Mode::Status {
                    body, retry_after, ..
                },
            ) => {
                conn.respond(
                    code,
                    "application/json",
                    body.as_bytes(),
                    *retry_after,
                    close,
                )
                .await
            }
            (Answer::Status(code), _) => {
                let body = normal_body(code);
                conn.respond(code, "application/json", body.as_bytes(), None, close)
                    .await
            }
            (Answer::Delayed(code, delay), _) => {
                let waited = tokio::select! {
                    _ = tokio::time::sleep(delay) => true,
                    _ = conn.wait_peer_close() => false,
                    _ = mode.wait_for(is_refuse) => false,
                };
                waited && {
                    let body = normal_body(code);
                    conn.respond(code, "application/json", body.as_bytes(), None, close)
                        .await
                }
            }
            (Answer::Hung, _) => {
                tokio::select! {
                    _ = conn.wait_peer_close() => {}
                    _ = mode.wait_for(is_refuse) => {}
                }
                false
            }
            (Answer::Reset, _) => {
                let _ = conn.stream.set_zero_linger();
                false
            }
            (Answer::HugeBody(bytes), Mode::HugeBody { chunk, pause, .. }) => {
                let (taken, finished) = tokio::select! {
                    r = conn.huge_body(bytes, *chunk, *pause) => r,
                    _ = mode.wait_for(is_refuse) => (0, false),
                };
                lock(&shared.bodies).push(BodyTaken {
                    seq,
                    offered: bytes,
                    taken,
                    client_closed: !finished,
                });
                finished && !close
            }
            (Answer::HugeBody(_), _) | (Answer::Closed, _) => false,
        };
        if !keep_going {
            return;
        }
    }
}

/// What the mode in force does with this request.
fn decide(switched: &Switched, req: &Incoming, now: Instant) -> Answer {
    match &switched.mode {
        Mode::Accept => Answer::Status(normal_status(req)),
        Mode::Status { code, .. } => Answer::Status(*code),
        Mode::Refuse => Answer::Closed,
        Mode::Hang => Answer::Hung,
        Mode::Slow(d) => Answer::Delayed(normal_status(req), *d),
        Mode::Reset => Answer::Reset,
        Mode::Flap { period } => {
            let half = now.duration_since(switched.since).as_nanos() / period.as_nanos().max(1);
            if half % 2 == 0 {
                Answer::Status(normal_status(req))
            } else {
                Answer::Status(500)
            }
        }
        Mode::HugeBody { bytes, .. } => Answer::HugeBody(*bytes),
    }
}

/// What a healthy PostgREST with the migration applied answers.
fn normal_status(req: &Incoming) -> u16 {
    let table = req.path == TABLE_PATH || req.path.starts_with(&format!("{TABLE_PATH}?"));
    match req.method.as_str() {
        "POST" if table => 201,
        "GET" => 200,
        _ => 404,
    }
}

fn normal_body(code: u16) -> String {
    match code {
        200 => "[]".into(),
        201 => String::new(),
        500 => r#"{"code":"XX000","details":null,"hint":null,"message":"chaos server: flapping"}"#.into(),
        _ => r#"{"code":"PGRST205","details":null,"hint":null,"message":"chaos server: only POST /rest/v1/hp_worker_status and GET exist"}"#.into(),
    }
}

fn head(code: u16, content_type: &str, len: u64, retry_after: Option<u64>, close: bool) -> Vec<u8> {
    let reason = match code {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Chaos",
    };
    let mut h = format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {len}\r\n"
    );
    if let Some(secs) = retry_after {
        h.push_str(&format!("retry-after: {secs}\r\n"));
    }
    if close {
        h.push_str("connection: close\r\n");
    }
    h.push_str("\r\n");
    h.into_bytes()
}

struct Conn {
    stream: TcpStream,
    /// Bytes read past the last request (a pipelined next one).
    buf: Vec<u8>,
}

impl Conn {
    /// The next request, `None` when the client closed between requests.
    /// `InvalidData` for anything that is not an HTTP/1.1 request we serve.
    async fn read_request(&mut self) -> io::Result<Option<Incoming>> {
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
        let (head_len, method, path, headers) = loop {
            match crate::http_head::parse(&self.buf) {
                Ok(Some(h)) => break (h.len, h.method, h.path, h.headers),
                Ok(None) if self.buf.len() < MAX_HEAD => {
                    if self.fill().await? == 0 {
                        return if self.buf.is_empty() {
                            Ok(None)
                        } else {
                            Err(io::ErrorKind::UnexpectedEof.into())
                        };
                    }
                }
                Ok(None) => return Err(bad("request head too long")),
                Err(e) => return Err(bad(&format!("not an HTTP request: {e}"))),
            }
        };
        self.buf.drain(..head_len);
        let value = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.to_ascii_lowercase())
        };
        if value("transfer-encoding").is_some() {
            return Err(bad("chunked request bodies are not supported"));
        }
        let body_len: u64 = match value("content-length") {
            Some(v) => v.trim().parse().map_err(|_| bad("bad content-length"))?,
            None => 0,
        };
        let close = value("connection").is_some_and(|v| v.contains("close"));
        let mut body = Vec::new();
        let mut left = body_len;
        while left > 0 {
            if self.buf.is_empty() && self.fill().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let n = self
                .buf
                .len()
                .min(usize::try_from(left).unwrap_or(usize::MAX));
            let room = KEEP_BODY.saturating_sub(body.len()).min(n);
            body.extend_from_slice(&self.buf[..room]);
            self.buf.drain(..n);
            left -= n as u64;
        }
        Ok(Some(Incoming {
            method,
            path,
            headers,
            body,
            body_len,
            close,
        }))
    }

    /// Reads more into `buf`; the count read (0 at end of stream).
    async fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Returns when the client closes its side (or the connection breaks).
    /// Anything it sends meanwhile is kept for later. Cancel-safe.
    async fn wait_peer_close(&mut self) {
        until_closed(&mut self.stream, &mut self.buf).await;
    }

    /// Writes one answer; whether the connection may serve another request.
    async fn respond(
        &mut self,
        code: u16,
        content_type: &str,
        body: &[u8],
        retry_after: Option<u64>,
        close: bool,
    ) -> bool {
        let mut out = head(code, content_type, body.len() as u64, retry_after, close);
        out.extend_from_slice(body);
        self.stream.write_all(&out).await.is_ok() && !close
    }

    /// Streams a 500 with a `bytes`-long body; returns the body bytes the
    /// client acknowledged and whether the whole body went out.
    async fn huge_body(&mut self, bytes: u64, chunk: usize, pause: Duration) -> (u64, bool) {
        set_send_buffer(&self.stream, HUGE_BODY_SNDBUF);
        // Every chunk goes out at once, never held for the client's delayed ACK.
        let _ = self.stream.set_nodelay(true);
        let acked_before = bytes_acked(&self.stream);
        let head = head(500, "text/html", bytes, None, false);
        let (mut reader, mut writer) = self.stream.split();
        if writer.write_all(&head).await.is_err() {
            return (0, false);
        }
        let filler = vec![b'x'; chunk.max(1)];
        let mut written: u64 = 0;
        let mut finished = true;
        while written < bytes {
            let n = usize::try_from(bytes - written)
                .map_or(filler.len(), |left| left.min(filler.len()));
            let sent = tokio::select! {
                r = writer.write(&filler[..n]) => r,
                _ = until_closed(&mut reader, &mut self.buf) => Err(io::ErrorKind::ConnectionAborted.into()),
            };
            match sent {
                Ok(k) if k > 0 => written += k as u64,
                _ => {
                    finished = false;
                    break;
                }
            }
            if written < bytes && !pause.is_zero() {
                let closed = tokio::select! {
                    _ = tokio::time::sleep(pause) => false,
                    _ = until_closed(&mut reader, &mut self.buf) => true,
                };
                if closed {
                    finished = false;
                    break;
                }
            }
        }
        if finished {
            return (bytes, true);
        }
        let taken = match (acked_before, bytes_acked(&self.stream)) {
            (Some(before), Some(after)) => after
                .saturating_sub(before)
                .saturating_sub(head.len() as u64)
                .min(written),
            _ => written,
        };
        (taken, false)
    }
}

/// Returns when the peer closes its side (or the connection breaks), keeping
/// anything it sends meanwhile in `buf`. Cancel-safe: nothing read is lost.
async fn until_closed(from: &mut (impl tokio::io::AsyncRead + Unpin), buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 8192];
    while let Ok(n) = from.read(&mut chunk).await {
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Asks for a small send buffer, so unsent data waits in our process, not the kernel.
fn set_send_buffer(stream: &TcpStream, bytes: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt on a socket this process owns, with a c_int option value.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            std::ptr::from_ref(&bytes).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Bytes of our output the peer's kernel acknowledged (Linux `TCP_INFO`).
#[cfg(target_os = "linux")]
fn bytes_acked(stream: &TcpStream) -> Option<u64> {
    use std::os::fd::AsRawFd;
    // SAFETY: an all-zero tcp_info is valid (plain integers).
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt on our own socket into a buffer of the size given.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            std::ptr::from_mut(&mut info).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(info.tcpi_bytes_acked)
}

#[cfg(not(target_os = "linux"))]
fn bytes_acked(_: &TcpStream) -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const WITHIN: Duration = Duration::from_secs(10);

    fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(WITHIN)
            .build()
            .expect("client")
    }

    async fn beat(
        server: &ChaosServer,
        http: &reqwest::Client,
    ) -> reqwest::Result<reqwest::Response> {
        http.post(format!(
            "{}{TABLE_PATH}?on_conflict=worker_name",
            server.uri()
        ))
        .header("apikey", "sb_secret_FAKE_chaos")
        .header("content-type", "application/json")
        .body(r#"{"worker_name":"chaos-test","status":"running"}"#)
        .send()
        .await
    }

    /// The first huge body's outcome, once the server has one.
    async fn first_body_taken(server: &ChaosServer) -> BodyTaken {
        crate::eventually::eventually_async(WITHIN, "the huge body's outcome", || {
            std::future::ready(server.body_bytes_taken().first().copied())
        })
        .await
    }

    async fn raw_request(server: &ChaosServer) -> TcpStream {
        let mut s = TcpStream::connect(server.addr()).await.expect("connect");
        s.write_all(
            format!("POST {TABLE_PATH} HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{{}}")
                .as_bytes(),
        )
        .await
        .expect("write");
        s
    }

    #[tokio::test]
    async fn accept_answers_like_postgrest_and_records_every_request() {
        let server = ChaosServer::start().await;
        let http = client();
        let r = beat(&server, &http).await.expect("beat");
        assert_eq!(r.status(), 201);
        let r = http
            .get(format!("{}{TABLE_PATH}?select=*", server.uri()))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.expect("body"), "[]");
        let r = http
            .post(format!("{}/rest/v1/other", server.uri()))
            .send()
            .await
            .expect("post elsewhere");
        assert_eq!(r.status(), 404);

        let seen = server.requests();
        assert_eq!(seen.len(), 3);
        let first = &seen[0];
        assert_eq!((first.seq, first.method.as_str()), (1, "POST"));
        assert_eq!(first.path, format!("{TABLE_PATH}?on_conflict=worker_name"));
        assert_eq!(first.header("APIKEY"), Some("sb_secret_FAKE_chaos"));
        assert_eq!(first.worker_name().as_deref(), Some("chaos-test"));
        assert_eq!(first.row_text("status").as_deref(), Some("running"));
        assert_eq!(first.body_len, first.body.len() as u64);
        assert_eq!(first.answer, Answer::Status(201));
        assert_eq!(seen[1].answer, Answer::Status(200));
        assert_eq!(seen[2].answer, Answer::Status(404));
        assert!(seen[0].at <= seen[1].at && seen[1].at <= seen[2].at);
        assert_eq!(
            server.connections(),
            1,
            "keep-alive: one connection for all three"
        );
        assert_eq!(server.take_requests().len(), 3);
        assert!(server.requests().is_empty(), "take_requests forgets");
    }

    #[tokio::test]
    async fn status_modes_send_code_body_and_retry_after() {
        let server = ChaosServer::start().await;
        let http = client();
        for (mode, code, in_body, retry_after) in [
            (Mode::server_error(), 500, "XX000", None),
            (Mode::schema_reloading(), 503, "PGRST002", None),
            (Mode::unauthorized(), 401, "Invalid API key", None),
            (Mode::too_many_requests(30), 429, "too many", Some("30")),
        ] {
            server.set(mode);
            let r = beat(&server, &http).await.expect("beat");
            assert_eq!(r.status(), code);
            let header = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().expect("ascii").to_owned());
            assert_eq!(header.as_deref(), retry_after);
            let body = r.text().await.expect("body");
            assert!(body.contains(in_body), "{code}: {body}");
        }
        let answers: Vec<Answer> = server.requests().iter().map(|r| r.answer).collect();
        assert_eq!(
            answers,
            [500, 503, 401, 429].map(Answer::Status),
            "each request answered by the mode in force when it was read"
        );
    }

    #[tokio::test]
    async fn refuse_closes_the_port_and_accept_reopens_it() {
        let server = ChaosServer::start().await;
        let http = client();
        beat(&server, &http).await.expect("first beat");
        let mut idle = TcpStream::connect(server.addr())
            .await
            .expect("idle connection");

        server.set(Mode::Refuse);
        let refused = poll_connect(&server, true).await;
        assert_eq!(refused, io::ErrorKind::ConnectionRefused);
        let mut byte = [0u8; 1];
        let n = idle.read(&mut byte).await.unwrap_or(0);
        assert_eq!(n, 0, "open connections are closed too");
        let e = beat(&server, &http).await.expect_err("refused");
        assert!(e.is_connect() || e.is_request(), "{e:?}");

        server.set(Mode::Accept);
        poll_connect(&server, false).await;
        let r = beat(&server, &http).await.expect("beat after refuse");
        assert_eq!(r.status(), 201, "on the same port");
    }

    /// Waits until a new connection is refused (`want_refused`) or accepted.
    async fn poll_connect(server: &ChaosServer, want_refused: bool) -> io::ErrorKind {
        let addr = server.addr();
        let mut last = io::ErrorKind::Other;
        let deadline = Instant::now() + WITHIN;
        loop {
            match TcpStream::connect(addr).await {
                Ok(_) if !want_refused => return last,
                Err(e) if want_refused && e.kind() == io::ErrorKind::ConnectionRefused => {
                    return e.kind()
                }
                Err(e) => last = e.kind(),
                Ok(_) => {}
            }
            assert!(
                Instant::now() < deadline,
                "port never became {}",
                if want_refused { "refused" } else { "open" }
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn hang_reads_the_request_and_never_answers() {
        let server = ChaosServer::start().await;
        server.set(Mode::Hang);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(300))
            .build()
            .expect("client");
        let e = beat(&server, &http).await.expect_err("no answer");
        assert!(e.is_timeout(), "{e:?}");
        let seen = server.requests();
        assert_eq!(seen.len(), 1, "the request was read");
        assert_eq!(seen[0].answer, Answer::Hung);
    }

    #[tokio::test]
    async fn slow_answers_after_the_delay() {
        let server = ChaosServer::start().await;
        let delay = Duration::from_millis(300);
        server.set(Mode::Slow(delay));
        let t = Instant::now();
        let r = beat(&server, &client()).await.expect("slow beat");
        assert_eq!(r.status(), 201);
        assert!(t.elapsed() >= delay, "answered after {:?}", t.elapsed());
        assert_eq!(server.requests()[0].answer, Answer::Delayed(201, delay));
    }

    #[tokio::test]
    async fn reset_sends_rst() {
        let server = ChaosServer::start().await;
        server.set(Mode::Reset);
        let mut s = raw_request(&server).await;
        let mut buf = [0u8; 64];
        let e = s
            .read(&mut buf)
            .await
            .expect_err("reset, not a clean close");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(server.requests()[0].answer, Answer::Reset);
        let e = beat(&server, &client()).await.expect_err("reset");
        assert!(e.is_request() || e.is_connect(), "{e:?}");
    }

    #[tokio::test]
    async fn flap_alternates_201_and_500_every_period() {
        let server = ChaosServer::start().await;
        server.set(Mode::Flap {
            period: Duration::from_millis(100),
        });
        let http = client();
        let mut seen = Vec::new();
        let deadline = Instant::now() + WITHIN;
        // Both halves, in order: 201 (first half), 500, then 201 again.
        while seen.len() < 3 {
            let code = beat(&server, &http).await.expect("beat").status().as_u16();
            if seen.last() != Some(&code) {
                seen.push(code);
            }
            assert!(Instant::now() < deadline, "saw only {seen:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(seen, vec![201, 500, 201]);
    }

    #[tokio::test]
    async fn huge_body_counts_what_the_client_took() {
        let server = ChaosServer::start().await;
        let bytes = 200 * 1024 * 1024;
        server.set(Mode::HugeBody {
            bytes,
            chunk: 64 * 1024,
            pause: Duration::from_millis(1),
        });
        let mut s = raw_request(&server).await;
        let read_first = 1024 * 1024;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        while got.len() < read_first {
            let n = s.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed early");
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got[..200]);
        assert!(text.starts_with("HTTP/1.1 500"), "{text}");
        assert!(text.contains(&format!("content-length: {bytes}")), "{text}");
        drop(s);
        let taken = first_body_taken(&server).await;
        assert_eq!(
            (taken.seq, taken.offered, taken.client_closed),
            (1, bytes, true)
        );
        let head_len = got
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a head")
            + 4;
        let body_read = (got.len() - head_len) as u64;
        // What we read, plus at most what sat in our receive buffer unread.
        assert!(
            taken.taken >= body_read && taken.taken <= body_read + 512 * 1024,
            "read {body_read}, server counted {taken:?}"
        );
    }

    #[tokio::test]
    async fn huge_body_read_to_the_end_keeps_the_connection() {
        let server = ChaosServer::start().await;
        server.set(Mode::HugeBody {
            bytes: 300_000,
            chunk: 70_000,
            pause: Duration::ZERO,
        });
        let http = client();
        let r = beat(&server, &http).await.expect("beat");
        assert_eq!(r.status(), 500);
        assert_eq!(r.bytes().await.expect("body").len(), 300_000);
        let taken = first_body_taken(&server).await;
        assert_eq!((taken.taken, taken.client_closed), (300_000, false));
        server.set(Mode::Accept);
        assert_eq!(beat(&server, &http).await.expect("beat").status(), 201);
        assert_eq!(server.connections(), 1);
    }

    #[tokio::test]
    async fn https_against_plain_http_fails_and_records_nothing() {
        let server = ChaosServer::start().await;
        let e = client()
            .post(format!("{}{TABLE_PATH}", server.https_uri()))
            .send()
            .await
            .expect_err("TLS to a plain HTTP server");
        assert!(e.is_connect(), "{e:?}");
        assert!(server.connections() >= 1);
        assert!(server.requests().is_empty());
    }

    #[test]
    fn works_without_a_runtime_and_stops_on_drop() {
        let server = ChaosServer::start_blocking();
        let addr = server.addr();
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        use std::io::{Read, Write};
        s.write_all(
            b"GET /rest/v1/hp_worker_status HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .expect("write");
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("read");
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\n[]"), "{answer}");
        drop(server);
        let e = std::net::TcpStream::connect(addr).expect_err("stopped");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn labels_name_each_mode() {
        assert_eq!(Mode::Accept.label(), "accept");
        assert_eq!(
            Mode::too_many_requests(30).label(),
            "status-429-retry-after-30s"
        );
        assert_eq!(Mode::schema_reloading().label(), "status-503");
        assert_eq!(Mode::Slow(Duration::from_secs(3)).label(), "slow-3000ms");
    }
}
