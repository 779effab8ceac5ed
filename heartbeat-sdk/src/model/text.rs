//! Text that goes into a row: valid for PostgreSQL `text` and `jsonb` (no
//! NUL), and within the table's CHECKs, in one place, so a row is never
//! refused for what a worker printed or set.

use serde_json::{Map, Value};

use crate::model::row::WorkerRow;

/// Longest `last_error` kept, in bytes; the SQL CHECK allows the same.
pub const MAX_LAST_ERROR_BYTES: usize = 2048;
/// The latest run's summary (or error) keeps at most this many bytes.
pub(crate) const MAX_RUN_SUMMARY_BYTES: usize = 1024;
/// Longest `version` and `reporter`, in bytes (the SQL CHECK).
const MAX_SHORT_TEXT_BYTES: usize = 128;
/// Longest `hostname`, in bytes (the SQL CHECK).
const MAX_HOSTNAME_BYTES: usize = 255;
/// The SQL CHECK's bound on `metadata` as jsonb prints it.
pub(crate) const MAX_METADATA_BYTES: usize = 8192;
/// What the user's metadata may take, leaving room for the keys the row
/// adds itself (`pid`, `uptime`, `memory`, `sidecar_pid`, `hp_dropped_keys`).
pub(crate) const USER_METADATA_BUDGET: usize = 7 * 1024;
/// The row's own key listing metadata keys that did not fit.
pub(crate) const DROPPED_KEYS: &str = "hp_dropped_keys";

/// Cuts `message` to at most `max` bytes on a char boundary, marking the cut.
pub fn truncate_message(message: &str, max: usize) -> String {
    if message.len() <= max {
        return message.to_owned();
    }
    const MARK: &str = "…";
    let mut end = max.saturating_sub(MARK.len());
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &message[..end])
}

/// PostgreSQL's `text` and `jsonb` refuse NUL (22P05, "unsupported Unicode
/// escape sequence"): it becomes U+FFFD. Rust strings hold no lone
/// surrogates, and JSON that has one never parses into a `Value`.
fn without_nul(text: &mut String) {
    if text.contains('\0') {
        *text = text.replace('\0', "\u{FFFD}");
    }
}

fn fit(text: &mut String, max: usize) {
    without_nul(text);
    if text.len() > max {
        *text = truncate_message(text, max);
    }
}

fn fit_value(value: &mut Value) {
    match value {
        Value::String(s) => without_nul(s),
        Value::Array(items) => items.iter_mut().for_each(fit_value),
        Value::Object(map) => fit_map(map),
        _ => {}
    }
}

fn fit_map(map: &mut Map<String, Value>) {
    if map.keys().any(|k| k.contains('\0')) {
        let entries = std::mem::take(map);
        for (mut k, v) in entries {
            without_nul(&mut k);
            map.insert(k, v);
        }
    }
    map.values_mut().for_each(fit_value);
}

/// Makes every text of `row` valid and within the table's bounds.
pub(crate) fn fit_row(row: &mut WorkerRow) {
    if let Some(h) = row.hostname.as_mut() {
        fit(h, MAX_HOSTNAME_BYTES);
    }
    if let Some(v) = row.version.as_mut() {
        fit(v, MAX_SHORT_TEXT_BYTES);
    }
    fit(&mut row.reporter, MAX_SHORT_TEXT_BYTES);
    if let Some(e) = row.last_error.as_mut() {
        fit(e, MAX_LAST_ERROR_BYTES);
    }
    if let Some(summary) = row.last_run_summary.as_mut() {
        fit(summary, MAX_RUN_SUMMARY_BYTES);
    }
    fit_map(&mut row.metadata);
    // The last guard: whatever was added since the caps at entry, the beat
    // is never refused for its metadata.
    if jsonb_text_len_map(&row.metadata) > MAX_METADATA_BYTES {
        let names: Vec<Value> = row
            .metadata
            .keys()
            .take(20)
            .map(|k| Value::String(truncate_message(k, 64)))
            .collect();
        row.metadata = Map::new();
        row.metadata
            .insert(DROPPED_KEYS.into(), Value::Array(names));
    }
}

/// The length of `value` as PostgreSQL prints a jsonb (`{"a": 1, "b": [1, 2]}`),
/// or a little more: numbers with an exponent count as their widest
/// decimal expansion.
pub(crate) fn jsonb_text_len(value: &Value) -> usize {
    match value {
        Value::Null => 4,
        Value::Bool(b) => {
            if *b {
                4
            } else {
                5
            }
        }
        Value::Number(n) => {
            let text = n.to_string();
            if text.contains(['e', 'E']) {
                330
            } else {
                text.len()
            }
        }
        Value::String(s) => json_string_len(s),
        Value::Array(items) => {
            2 + items.iter().map(jsonb_text_len).sum::<usize>() + 2 * items.len().saturating_sub(1)
        }
        Value::Object(map) => jsonb_text_len_map(map),
    }
}

pub(crate) fn jsonb_text_len_map(map: &Map<String, Value>) -> usize {
    2 + map
        .iter()
        .map(|(k, v)| json_string_len(k) + 2 + jsonb_text_len(v))
        .sum::<usize>()
        + 2 * map.len().saturating_sub(1)
}

fn json_string_len(s: &str) -> usize {
    2 + s
        .chars()
        .map(|c| match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{08}' | '\u{0c}' => 2,
            c if (c as u32) < 0x20 => 6,
            c => c.len_utf8(),
        })
        .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn truncation_respects_char_boundaries_and_bound() {
        let long = "é".repeat(3000);
        let cut = truncate_message(&long, MAX_LAST_ERROR_BYTES);
        assert!(cut.len() <= MAX_LAST_ERROR_BYTES, "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert_eq!(truncate_message("short", 10), "short");
    }

    #[test]
    fn nul_never_reaches_a_row_and_texts_fit_their_checks() {
        let mut row: WorkerRow = serde_json::from_value(json!({
            "worker_name": "w", "status": "crashed", "client_heartbeat": "2026-11-23T00:00:00Z",
            "jobs_processed": 0, "error_count": 1, "circuit_breaker_open": false,
            "metadata": {"k\u{0}ey": ["a\u{0}b", {"n": "\u{0}"}]}, "pid": null,
            "hostname": "h\u{0}", "started_at": "2026-11-23T00:00:00Z", "uptime_seconds": 0,
            "memory_rss_bytes": null, "cpu_percent": null, "version": "v".repeat(300),
            "reporter": "r", "instance_id": "i", "consecutive_errors": 1,
            "last_error": format!("boom\u{0}{}", "x".repeat(5000)), "exit_code": 1,
            "exit_signal": null, "heartbeat_interval_seconds": 30
        }))
        .expect("row");
        fit_row(&mut row);
        let text = serde_json::to_string(&row).expect("json");
        assert!(!text.contains("\\u0000") && !text.contains('\0'), "{text}");
        assert_eq!(row.hostname.as_deref(), Some("h\u{FFFD}"));
        assert_eq!(row.metadata["k\u{FFFD}ey"][0], "a\u{FFFD}b");
        assert!(row.version.as_deref().is_some_and(|v| v.len() <= 128));
        assert!(row
            .last_error
            .as_deref()
            .is_some_and(|e| e.len() <= MAX_LAST_ERROR_BYTES && e.starts_with("boom\u{FFFD}")));
    }

    #[test]
    fn jsonb_lengths_match_postgres_printing() {
        // Each literal is what `select '<json>'::jsonb::text` prints.
        for (value, printed) in [
            (json!({"a": 1, "b": [1, 2]}), r#"{"a": 1, "b": [1, 2]}"#),
            (json!({"q": "x\"y\n"}), r#"{"q": "x\"y\n"}"#),
            (json!({}), "{}"),
            (json!([]), "[]"),
            (
                json!({"é": null, "t": true, "f": false}),
                r#"{"é": null, "t": true, "f": false}"#,
            ),
        ] {
            assert_eq!(jsonb_text_len(&value), printed.len(), "{printed}");
        }
    }
}
