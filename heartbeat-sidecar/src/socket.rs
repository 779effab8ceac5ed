//! `HP_SIDECAR_SOCKET`: a Unix socket the worker may write lines to, for
//! exact counts: `job`, `error <message>`, `meta <key> <json>`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use heartbeat_sdk::Heartbeat;
use tokio::io::AsyncReadExt;
use tokio::net::{UnixListener, UnixStream};

/// Longest accepted line; longer ones are dropped with a warning.
const MAX_LINE: usize = 16 * 1024;

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
        let warnings = Arc::new(AtomicU64::new(0));
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

async fn serve_one(mut stream: UnixStream, heartbeat: Arc<Heartbeat>, warnings: Arc<AtomicU64>) {
    let mut buf = vec![0u8; 8192];
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            if b == b'\n' {
                if too_long {
                    warn(&warnings, "a line longer than 16 KiB was ignored");
                } else {
                    apply(&line, &heartbeat, &warnings);
                }
                line.clear();
                too_long = false;
            } else if line.len() < MAX_LINE {
                line.push(b);
            } else {
                too_long = true;
            }
        }
    }
    if !line.is_empty() && !too_long {
        apply(&line, &heartbeat, &warnings);
    }
}

/// Applies one protocol line. Malformed lines are ignored with a warning.
pub fn apply(line: &[u8], heartbeat: &Heartbeat, warnings: &AtomicU64) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches('\r');
    let (word, rest) = text.split_once(' ').unwrap_or((text, ""));
    match word {
        "" => {}
        "job" if rest.trim().is_empty() => heartbeat.increment_job(),
        "error" if rest.trim().is_empty() => heartbeat.increment_error(),
        "error" => heartbeat.job_failed(&rest),
        "meta" => {
            let (key, json) = rest.split_once(' ').unwrap_or((rest, ""));
            match serde_json::from_str::<serde_json::Value>(json) {
                Ok(value) if !key.is_empty() => heartbeat.set_metadata(key, value),
                _ => warn(
                    warnings,
                    &format!(
                        "ignored `meta` line: want `meta <key> <json>`, got {:?}",
                        truncate(text)
                    ),
                ),
            }
        }
        _ => warn(
            warnings,
            &format!(
                "ignored line: want `job`, `error <message>` or `meta <key> <json>`, got {:?}",
                truncate(text)
            ),
        ),
    }
}

fn truncate(s: &str) -> String {
    heartbeat_sdk::truncate_message(s, 80)
}

/// The first few malformed lines are logged, then one in a thousand.
fn warn(count: &AtomicU64, message: &str) {
    let n = count.fetch_add(1, Ordering::Relaxed);
    if n < 5 || n % 1000 == 0 {
        tracing::warn!("HP_SIDECAR_SOCKET: {message} ({} so far)", n + 1);
    }
}
