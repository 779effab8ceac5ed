//! What a webhook receives for one event: the event as `events --json`
//! prints it plus a `text` line, or a Slack message (`{"text": ...}`, which
//! Discord takes at its webhook URL + `/slack`). No I/O here.

use heartbeat_sdk::WorkerEvent;
use serde_json::{json, Value};

use crate::cli::AlertFormat;

/// Discord refuses messages over 2,000 characters; Slack's limit is higher.
const MAX_TEXT_CHARS: usize = 1_900;

/// The body posted for `event`.
pub fn body(event: &WorkerEvent, format: AlertFormat) -> Value {
    match format {
        AlertFormat::Json => {
            let mut value = serde_json::to_value(event).unwrap_or_else(|_| json!({}));
            if let Value::Object(fields) = &mut value {
                fields.insert("text".into(), Value::String(text(event)));
            }
            value
        }
        AlertFormat::Slack => json!({ "text": slack_text(event) }),
        // Mentions off: nothing a worker wrote can ping anyone.
        AlertFormat::Discord => json!({
            "content": bounded(&format!("**{}**{}", event.worker_name,
                text(event).strip_prefix(event.worker_name.as_str()).unwrap_or_default())),
            "allowed_mentions": { "parse": [] },
        }),
        // Decided per webhook before a body is made; plain JSON otherwise.
        AlertFormat::Auto => body(event, AlertFormat::Json),
    }
}

/// "order-executor crashed: exit code 1, Error: boom".
pub fn text(event: &WorkerEvent) -> String {
    let what = match event.kind.as_str() {
        "stale" => "went stale, its beats stopped",
        "hung" => "is hung: running, but making no progress",
        "breaker_opened" => "cannot report: its circuit breaker opened",
        "breaker_closed" => "reports again: its circuit breaker closed",
        "vanished" => "vanished: a new instance started without the old one's last row",
        "reporting_gap" => "could not report for a while",
        other => other,
    };
    let detail = crate::events::detail(event);
    let line = if detail.is_empty() {
        format!("{} {what}", event.worker_name)
    } else {
        format!("{} {what}: {detail}", event.worker_name)
    };
    bounded(&line)
}

/// [`text`], bold name, with what a worker wrote kept from pinging anyone:
/// Slack's `<!channel>` and links are escaped as Slack asks (`&`, `<`, `>`),
/// Discord's `@everyone` and `@here` broken by a zero-width space. Cut to
/// fit whole escapes and the event's id and time.
fn slack_text(event: &WorkerEvent) -> String {
    let suffix = format!(
        " (event {}, {})",
        event.id,
        event.at.format("%Y-%m-%d %H:%M:%S UTC")
    );
    let name = escape(&event.worker_name);
    let line = text(event);
    let rest = line
        .strip_prefix(event.worker_name.as_str())
        .unwrap_or(&line);
    let budget = MAX_TEXT_CHARS.saturating_sub(suffix.chars().count() + name.chars().count() + 3);
    let mut out = String::new();
    let mut used = 0;
    for c in unping(rest).chars() {
        let piece = match c {
            '&' => "&amp;".to_owned(),
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            c => c.to_string(),
        };
        let n = piece.chars().count();
        if used + n > budget {
            out.push('…');
            break;
        }
        out.push_str(&piece);
        used += n;
    }
    format!("*{name}*{out}{suffix}")
}

fn unping(text: &str) -> String {
    text.replace("@everyone", "@\u{200b}everyone")
        .replace("@here", "@\u{200b}here")
}

fn escape(text: &str) -> String {
    unping(text)
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn bounded(text: &str) -> String {
    if text.chars().count() <= MAX_TEXT_CHARS {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(MAX_TEXT_CHARS - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crash(error: &str) -> WorkerEvent {
        WorkerEvent {
            id: 42,
            at: "2026-12-01T13:00:00Z".parse().expect("time"),
            worker_name: "order-executor".into(),
            kind: "crashed".into(),
            from_state: Some("running".into()),
            to_state: Some("crashed".into()),
            detail: json!({"exit_code": 1, "error": error}),
        }
    }

    #[test]
    fn json_is_the_event_plus_a_line() {
        let body = body(&crash("Error: boom"), AlertFormat::Json);
        assert_eq!(body["id"], 42);
        assert_eq!(body["kind"], "crashed");
        assert_eq!(body["worker_name"], "order-executor");
        assert_eq!(body["detail"]["exit_code"], 1);
        assert_eq!(
            body["text"],
            "order-executor crashed: running -> crashed, exit code 1, Error: boom"
        );
    }

    #[test]
    fn slack_pings_no_one_and_escapes_what_the_worker_wrote() {
        let body = body(
            &crash("<!channel> @everyone look at <https://evil.example|this> & @here"),
            AlertFormat::Slack,
        );
        let text = body["text"].as_str().expect("text");
        assert_eq!(body.as_object().map(|o| o.len()), Some(1), "{body}");
        assert!(text.starts_with("*order-executor* crashed: "), "{text}");
        assert!(!text.contains('<') && !text.contains('>'), "{text}");
        assert!(text.contains("&lt;!channel&gt;"), "{text}");
        assert!(text.contains("&amp;"), "{text}");
        assert!(
            !text.contains("@everyone") && !text.contains("@here"),
            "{text}"
        );
        assert!(
            text.ends_with("(event 42, 2026-12-01 13:00:00 UTC)"),
            "{text}"
        );
    }

    #[test]
    fn discord_allows_no_mentions() {
        let body = body(&crash("@everyone <@&123> look"), AlertFormat::Discord);
        assert_eq!(body["allowed_mentions"], json!({"parse": []}));
        let content = body["content"].as_str().expect("content");
        assert!(
            content.starts_with("**order-executor** crashed: "),
            "{content}"
        );
    }

    #[test]
    fn a_huge_error_is_cut_to_fit_discord() {
        let slack = body(&crash(&"x".repeat(10_000)), AlertFormat::Slack);
        let text = slack["text"].as_str().expect("text");
        assert!(text.chars().count() <= MAX_TEXT_CHARS);
        assert!(
            text.ends_with("… (event 42, 2026-12-01 13:00:00 UTC)"),
            "{text}"
        );
        // Cut between escapes, never inside one.
        let amps = body(&crash(&"&".repeat(10_000)), AlertFormat::Slack);
        let text = amps["text"].as_str().expect("text");
        assert!(text.chars().count() <= MAX_TEXT_CHARS);
        assert!(text.contains("&amp;…"), "{text}");
        let discord = body(&crash(&"x".repeat(10_000)), AlertFormat::Discord);
        assert!(
            discord["content"]
                .as_str()
                .expect("content")
                .chars()
                .count()
                <= MAX_TEXT_CHARS
        );
    }

    #[test]
    fn every_kind_reads_as_a_sentence() {
        for kind in crate::cli::EVENT_KINDS {
            let mut e = crash("e");
            e.kind = kind.into();
            e.detail = json!({});
            e.from_state = None;
            e.to_state = None;
            let line = text(&e);
            assert!(line.starts_with("order-executor "), "{line}");
            assert!(!line.contains('_'), "{kind}: {line}");
        }
    }
}
