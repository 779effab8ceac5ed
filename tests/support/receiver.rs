//! A real HTTP receiver for webhooks: a listener on 127.0.0.1 that keeps
//! every request it gets and answers each with the status set (200 unless
//! told). Stopping it closes the port, so a sender meets a refused
//! connection, as with a receiver that is down; it can start again on the
//! same port.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Received {
    /// When it was read in full.
    pub at: Instant,
    pub method: String,
    pub path: String,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The status it was answered with.
    pub status: u16,
}

impl Received {
    /// The header `name` (lower case), if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }
}

/// A running receiver; stops when dropped.
#[derive(Debug)]
pub struct Receiver {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    status: Arc<AtomicU16>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    /// Listens on a free port of 127.0.0.1.
    ///
    /// # Panics
    /// When no port can be had.
    pub fn start() -> Receiver {
        Receiver::listen(
            TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"),
            Vec::new(),
        )
    }

    /// Starts again on the port of a receiver that was stopped, keeping what
    /// it had received.
    ///
    /// # Errors
    /// When the port was taken meanwhile.
    pub fn restart(stopped: Stopped) -> std::io::Result<Receiver> {
        let listener = TcpListener::bind(stopped.addr)?;
        Ok(Receiver::listen(listener, stopped.received))
    }

    fn listen(listener: TcpListener, before: Vec<Received>) -> Receiver {
        let addr = listener.local_addr().expect("local addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let received = Arc::new(Mutex::new(before));
        let status = Arc::new(AtomicU16::new(200));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (received, status, stop) = (received.clone(), status.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            if let Some(r) = serve(stream, status.load(Ordering::SeqCst)) {
                                received.lock().unwrap_or_else(|p| p.into_inner()).push(r);
                            }
                        }
                        // Nothing waiting: look again soon (and at `stop`).
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        Receiver {
            addr,
            received,
            status,
            stop,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answers every request from now on with `code`.
    pub fn answer_with(&self, code: u16) {
        self.status.store(code, Ordering::SeqCst);
    }

    /// What was answered 2xx so far, oldest first: what the sender may
    /// count as delivered.
    pub fn delivered(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .collect()
    }

    /// What arrived so far (answered or not), oldest first.
    pub fn received(&self) -> Vec<Received> {
        self.received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Closes the port: connections are refused until [`Receiver::restart`].
    pub fn stop(mut self) -> Stopped {
        self.halt();
        Stopped {
            addr: self.addr,
            received: self.received(),
        }
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.halt();
    }
}

/// A stopped receiver: its port and what it had received.
#[derive(Debug)]
pub struct Stopped {
    pub addr: SocketAddr,
    pub received: Vec<Received>,
}

/// Reads one request and answers it; `None` when it was not a whole request.
fn serve(mut stream: TcpStream, status: u16) -> Option<Received> {
    stream.set_nonblocking(false).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head = loop {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(head) = crate::http_head::parse(&buf).ok()? {
            break head;
        }
    };
    let crate::http_head::Head {
        len: head_len,
        method,
        path,
        headers,
    } = head;
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_len + length {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[head_len..head_len + length].to_vec();
    let answer =
        format!("HTTP/1.1 {status} Status\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
    let _ = stream.write_all(answer.as_bytes());
    Some(Received {
        at: Instant::now(),
        method,
        path,
        headers,
        body,
        status,
    })
}
