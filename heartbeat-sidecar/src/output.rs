//! What the sidecar writes: the worker's stdout and stderr, copied through
//! byte for byte, and the sidecar's own log lines, which share stderr with
//! the worker and so go out only at the worker's line boundaries.

use std::fs::File;
use std::io::{Read, Write};
use std::mem::ManuallyDrop;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use heartbeat_sdk::sidecar::{truncate_message, MAX_LAST_ERROR_BYTES};
use heartbeat_sdk::Heartbeat;
use tokio::sync::oneshot;

use crate::lines::{LineKind, LineMatcher};

/// Our own lines held while the worker is in the middle of a line, at most.
const MAX_HELD: usize = 64 * 1024;

/// Serialises writes to fd 2 between the worker's stderr and our own log
/// lines, so ours never land in the middle of one of the worker's lines.
struct StderrGate {
    state: Mutex<GateState>,
}

struct GateState {
    /// The worker's last stderr byte was not a newline.
    mid_line: bool,
    /// Our lines waiting for the worker's line to end.
    held: Vec<u8>,
    /// Our lines dropped because `held` was full.
    dropped: u64,
    /// Where bytes go: stderr, or (in tests) a buffer.
    captured: Option<Vec<u8>>,
}

impl GateState {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match &mut self.captured {
            Some(buffer) => {
                buffer.extend_from_slice(bytes);
                Ok(())
            }
            None => std::io::stderr().lock().write_all(bytes),
        }
    }
}

static GATE: StderrGate = StderrGate {
    state: Mutex::new(GateState {
        mid_line: false,
        held: Vec::new(),
        dropped: 0,
        captured: None,
    }),
};

impl StderrGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The worker's bytes, in order; our held lines follow at its next newline.
    fn worker(&self, chunk: &[u8]) -> std::io::Result<()> {
        let mut state = self.lock();
        let written = state.write(chunk);
        if let Some(&last) = chunk.last() {
            state.mid_line = last != b'\n';
        }
        if !state.mid_line {
            release(&mut state);
        }
        written
    }

    /// The worker's stderr ended, perhaps mid-line: what we held goes out now,
    /// on a line of its own.
    fn worker_done(&self) {
        let mut state = self.lock();
        if state.mid_line && !state.held.is_empty() {
            let _ = state.write(b"\n");
        }
        state.mid_line = false;
        release(&mut state);
    }

    /// One of our own log lines.
    fn own(&self, line: &[u8]) {
        let mut state = self.lock();
        if !state.mid_line {
            let _ = state.write(line);
        } else if state.held.len() + line.len() <= MAX_HELD {
            state.held.extend_from_slice(line);
        } else {
            state.dropped += 1;
        }
    }
}

fn release(state: &mut GateState) {
    if state.held.is_empty() && state.dropped == 0 {
        return;
    }
    let held = std::mem::take(&mut state.held);
    let _ = state.write(&held);
    if state.dropped > 0 {
        let note = format!(
            "heartbeat-sidecar: {} log line(s) dropped while the worker's stderr was mid-line\n",
            state.dropped
        );
        let _ = state.write(note.as_bytes());
    }
    state.dropped = 0;
}

/// Writes what we held back, when we are about to exit.
pub fn flush_held() {
    GATE.worker_done();
}

/// A formatted log event, written through the gate when tracing is done with it.
struct GateWriter(Vec<u8>);

impl Write for GateWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for GateWriter {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            GATE.own(&self.0);
        }
    }
}

/// The sidecar's log: stderr through the gate, `HP_LOG` filters (default info).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_writer(|| GateWriter(Vec::new()))
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HP_LOG").unwrap_or_else(|_| "info".into()),
        )
        .init();
}

/// Which of our streams a pump copies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Copies one of the child's streams to ours byte for byte on its own thread
/// (a full pipe never blocks the supervisor), counting matching lines.
/// Resolves when the child's end of the pipe is closed.
pub fn pump(
    from: OwnedFd,
    to: Stream,
    mut matcher: LineMatcher,
    heartbeat: Option<Arc<Heartbeat>>,
    tail: Option<Arc<Mutex<Vec<u8>>>>,
) -> oneshot::Receiver<()> {
    let (done, finished) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name(format!("hp-pump-{to:?}").to_lowercase())
        .spawn(move || {
            let mut from = File::from(from);
            // SAFETY: fd 1 stays open for the life of the process; ManuallyDrop never closes it.
            let mut stdout = ManuallyDrop::new(unsafe { File::from_raw_fd(1) });
            let mut buf = vec![0u8; 128 * 1024];
            let mut on_match = |kind: LineKind, line: &[u8]| match (kind, &heartbeat) {
                (LineKind::Job, Some(hb)) => hb.job_succeeded(),
                (LineKind::Error, Some(hb)) => hb.job_failed(String::from_utf8_lossy(line)),
                (_, None) => {}
            };
            let mut output_open = true;
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                let chunk = &buf[..n];
                // Any output is progress, for --hung-after.
                if let Some(hb) = &heartbeat {
                    hb.progress();
                }
                // If our own output is gone, keep draining so the worker never blocks.
                if output_open {
                    let written = match to {
                        Stream::Stdout => stdout.write_all(chunk),
                        Stream::Stderr => GATE.worker(chunk),
                    };
                    output_open = written.is_ok();
                }
                matcher.feed(chunk, &mut on_match);
                if let Some(tail) = &tail {
                    keep_tail(tail, chunk);
                }
            }
            matcher.finish(&mut on_match);
            if to == Stream::Stderr {
                GATE.worker_done();
            }
            let _ = done.send(());
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start an output thread: {e}");
    }
    finished
}

/// Keeps the last bytes of stderr (for `last_error` when the worker crashes).
pub fn keep_tail(tail: &Mutex<Vec<u8>>, chunk: &[u8]) {
    let Ok(mut tail) = tail.lock() else { return };
    if chunk.len() >= MAX_LAST_ERROR_BYTES {
        tail.clear();
        tail.extend_from_slice(&chunk[chunk.len() - MAX_LAST_ERROR_BYTES..]);
    } else {
        tail.extend_from_slice(chunk);
        let excess = tail.len().saturating_sub(MAX_LAST_ERROR_BYTES);
        tail.drain(..excess);
    }
}

/// The last lines of stderr, starting at a line boundary when cut; one line
/// longer than the whole tail is kept cut (its end), not dropped.
pub fn tail_text(bytes: &[u8]) -> String {
    // The newline that ends the last line is not a boundary to start at.
    let body = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(&bytes[..0], |end| &bytes[..=end]);
    let start = if bytes.len() >= MAX_LAST_ERROR_BYTES {
        body.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1)
    } else {
        0
    };
    let text = String::from_utf8_lossy(&bytes[start..]);
    truncate_message(text.trim_end(), MAX_LAST_ERROR_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_longer_than_the_tail_is_kept_cut_not_dropped() {
        let tail = Mutex::new(Vec::new());
        let line = format!("{}Error: boom\n", "x".repeat(2 * MAX_LAST_ERROR_BYTES));
        keep_tail(&tail, line.as_bytes());
        let text = tail_text(&tail.lock().map(|t| t.clone()).unwrap_or_default());
        assert!(text.ends_with("Error: boom"), "{text:?}");
        assert!(text.len() <= MAX_LAST_ERROR_BYTES);
    }

    #[test]
    fn tail_keeps_the_last_lines_within_bounds() {
        let tail = Mutex::new(Vec::new());
        for i in 0..1000 {
            keep_tail(&tail, format!("line {i}\n").as_bytes());
        }
        let text = tail_text(&tail.lock().map(|t| t.clone()).unwrap_or_default());
        assert!(text.len() <= MAX_LAST_ERROR_BYTES);
        assert!(
            text.starts_with("line ") && text.ends_with("line 999"),
            "{text}"
        );
    }

    fn captured_gate() -> StderrGate {
        StderrGate {
            state: Mutex::new(GateState {
                mid_line: false,
                held: Vec::new(),
                dropped: 0,
                captured: Some(Vec::new()),
            }),
        }
    }

    fn written(gate: &StderrGate) -> String {
        String::from_utf8_lossy(gate.lock().captured.as_deref().unwrap_or_default()).into_owned()
    }

    #[test]
    fn own_lines_wait_for_the_end_of_the_workers_line() {
        let gate = captured_gate();
        gate.worker(b"worker says: hel").expect("write");
        gate.own(b"OURS\n");
        gate.worker(b"lo wor").expect("write");
        assert_eq!(
            written(&gate),
            "worker says: hello wor",
            "held while mid-line"
        );
        gate.worker(b"ld\nnext ").expect("write");
        assert_eq!(
            written(&gate),
            "worker says: hello world\nnext ",
            "still mid-line"
        );
        gate.worker(b"line\n").expect("write");
        assert_eq!(
            written(&gate),
            "worker says: hello world\nnext line\nOURS\n",
            "released at a boundary"
        );
        gate.own(b"AT ONCE\n");
        assert!(
            written(&gate).ends_with("OURS\nAT ONCE\n"),
            "not mid-line: at once"
        );
    }

    #[test]
    fn a_worker_that_ends_mid_line_gets_our_lines_on_a_line_of_their_own() {
        let gate = captured_gate();
        gate.worker(b"no newline").expect("write");
        gate.own(b"OURS\n");
        gate.worker_done();
        assert_eq!(written(&gate), "no newline\nOURS\n");
    }

    #[test]
    fn held_lines_are_bounded_and_counted() {
        let gate = captured_gate();
        gate.worker(b"mid").expect("write");
        for _ in 0..(MAX_HELD / 10 + 10) {
            gate.own(b"123456789\n");
        }
        assert!(gate.lock().held.len() <= MAX_HELD);
        assert!(gate.lock().dropped > 0);
        gate.worker(b"\n").expect("write");
        assert!(
            written(&gate).contains("log line(s) dropped"),
            "said once released"
        );
    }
}
