//! `HP_SIDECAR_SOCKET`: a Unix socket the worker may write lines to, for
//! exact counts: `job`, `error <message>`, `meta <key> <json>`; and to ask:
//! `state` is answered with one line, `active`, `paused`, `draining` or
//! `restarting` (what operators want of it now), so a `--every` run can end
//! early on a pause. Every line is progress for `--hung-after`; `progress`
//! says only that.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use heartbeat_sdk::sidecar::{self as hooks, truncate_message, LogLimiter};
use heartbeat_sdk::Heartbeat;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// Longest accepted line; longer ones are dropped with a warning.
const MAX_LINE: usize = 16 * 1024;
/// Each kind of malformed line is reported at most this often.
const WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(300);

/// The socket and its private directory, removed on drop.
#[derive(Debug)]
pub struct ReportSocket {
    dir: PathBuf,
    path: PathBuf,
    listener: Option<UnixListener>,
}

impl ReportSocket {
    /// Binds in a fresh 0700 directory under `$XDG_RUNTIME_DIR` or the temp dir.
    pub fn bind() -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|d| d.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!(
            "hp-sidecar-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let path = dir.join("report.sock");
        let listener = UnixListener::bind(&path)?;
        Ok(ReportSocket {
            dir,
            path,
            listener: Some(listener),
        })
    }

    /// The path the child gets as `HP_SIDECAR_SOCKET`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves connections until the runtime stops.
    pub fn serve(&mut self, heartbeat: Arc<Heartbeat>) {
        let Some(listener) = self.listener.take() else {
            return;
        };
        let warnings = Arc::new(Mutex::new(LogLimiter::new(WARN_EVERY)));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_one(
                    stream,
                    Arc::clone(&heartbeat),
                    Arc::clone(&warnings),
                ));
            }
        });
    }
}

impl Drop for ReportSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Reads lines of at most `MAX_LINE` bytes; a longer line is skipped whole.
async fn serve_one(
    stream: UnixStream,
    heartbeat: Arc<Heartbeat>,
    warnings: Arc<Mutex<LogLimiter>>,
) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::with_capacity(8192, read);
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let buf = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(buf) => buf,
        };
        let (take, ends_line) = match memchr::memchr(b'\n', buf) {
            Some(i) => (i, true),
            None => (buf.len(), false),
        };
        if line.len() + take > MAX_LINE {
            too_long = true;
        } else {
            line.extend_from_slice(&buf[..take]);
        }
        reader.consume(take + usize::from(ends_line));
        if ends_line {
            if too_long {
                warn(&warnings, "long", "a line longer than 16 KiB was ignored");
            } else if let Some(answer) = apply(&line, &heartbeat, &warnings) {
                // A worker that asks and then stops reading costs us nothing.
                let _ = write.write_all(answer.as_bytes()).await;
            }
            line.clear();
            too_long = false;
        }
    }
    if !line.is_empty() && !too_long {
        if let Some(answer) = apply(&line, &heartbeat, &warnings) {
            let _ = write.write_all(answer.as_bytes()).await;
        }
    }
}

/// Applies one protocol line; a question gets its answer, newline ended.
/// Malformed lines are ignored with a warning.
fn apply(line: &[u8], heartbeat: &Heartbeat, warnings: &Mutex<LogLimiter>) -> Option<String> {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches('\r');
    let (word, rest) = text.split_once(' ').unwrap_or((text, ""));
    heartbeat.progress();
    match word {
        "state" if rest.trim().is_empty() => {
            return Some(format!("{}\n", hooks::control_state(heartbeat).as_str()));
        }
        "" | "progress" => {}
        "job" if rest.trim().is_empty() => heartbeat.job_succeeded(),
        "error" => heartbeat.job_failed(rest.trim()),
        "meta" => {
            let (key, json) = rest.split_once(' ').unwrap_or((rest, ""));
            match serde_json::from_str::<serde_json::Value>(json) {
                Ok(value) if !key.is_empty() => heartbeat.set_metadata(key, value),
                _ => warn(
                    warnings,
                    "meta",
                    &format!(
                        "ignored `meta` line: want `meta <key> <json>`, got {:?}",
                        truncate_message(text, 80)
                    ),
                ),
            }
        }
        _ => warn(
            warnings,
            "unknown",
            &format!(
                "ignored line: want `job`, `error <message>`, `meta <key> <json>`, `state` or `progress`, got {:?}",
                truncate_message(text, 80)
            ),
        ),
    }
    None
}

/// One line per kind per 5 minutes, saying how many were held back.
fn warn(limiter: &Mutex<LogLimiter>, kind: &str, message: &str) {
    let allowed = limiter
        .lock()
        .ok()
        .and_then(|mut l| l.allow(kind, tokio::time::Instant::now()));
    if let Some(held) = allowed {
        let more = if held > 0 {
            format!(" ({held} more like it since the last report)")
        } else {
            String::new()
        };
        tracing::warn!("HP_SIDECAR_SOCKET: {message}{more}");
    }
}
