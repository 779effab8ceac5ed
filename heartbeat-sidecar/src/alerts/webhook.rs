//! One webhook: its URL (a secret for Slack and Discord: never logged, never
//! stored), the key its cursor is kept under, and the POST.

use std::time::Duration;

use heartbeat_sdk::WorkerEvent;

use crate::cli::AlertFormat;

/// How long one POST may take.
pub const POST_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Webhook {
    url: reqwest::Url,
    /// The body it gets (never `Auto`: decided by `parse`).
    pub format: AlertFormat,
    /// The cursor's key in the store: a SHA-256 of the URL.
    pub key: String,
    /// Scheme, host and port only, for logs: "https://hooks.slack.com/… (webhook 1a2b3c4d)".
    pub shown: String,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// Why a POST did not count as delivered.
#[derive(Debug)]
pub struct NotDelivered {
    pub why: String,
    /// The receiver's `Retry-After`, when it gave one.
    pub retry_after: Option<Duration>,
}

impl Webhook {
    /// `text` as given to `--webhook`; `format` as `--format` says (`auto`
    /// is decided here, by the URL's host).
    /// Errors never quote the URL: it may be a secret.
    pub fn parse(text: &str, format: AlertFormat) -> Result<Webhook, String> {
        let text = text.trim();
        if text.contains(",http://") || text.contains(",https://") {
            return Err(
                "two webhooks joined by a comma: separate them with spaces or newlines".into(),
            );
        }
        let url = reqwest::Url::parse(text).map_err(|e| match e {
            url::ParseError::RelativeUrlWithoutBase => {
                "it has no scheme: give the whole URL, with https://, e.g. https://hooks.slack.com/services/...".to_owned()
            }
            other => format!(
                "it is not a URL ({other}): give the whole URL, e.g. https://hooks.slack.com/services/..."
            ),
        })?;
        // `https:///x` parses with `x` as its host: refuse what has none.
        let written_host = text
            .split_once("://")
            .is_some_and(|(_, rest)| !rest.is_empty() && !rest.starts_with('/'));
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "it must be an http:// or https:// URL, not {}:",
                url.scheme()
            ));
        }
        if url.host_str().is_none() || !written_host {
            return Err(
                "it has no host: give the whole URL, e.g. https://hooks.slack.com/services/..."
                    .into(),
            );
        }
        if !url.username().is_empty() || url.password().is_some() {
            // Allowed (some receivers use basic auth), but never shown.
            tracing::debug!("a webhook URL carries credentials");
        }
        let format = match format {
            AlertFormat::Auto => match url.host_str().unwrap_or_default() {
                "hooks.slack.com" => AlertFormat::Slack,
                "discord.com" | "discordapp.com" if url.path().ends_with("/slack") => {
                    AlertFormat::Slack
                }
                "discord.com" | "discordapp.com" => AlertFormat::Discord,
                _ => AlertFormat::Json,
            },
            chosen => chosen,
        };
        // The cursor is the URL's alone: a watcher started again with other
        // --on kinds or --format goes on from where the last one stopped.
        let digest = ring::digest::digest(
            &ring::digest::SHA256,
            format!("hp-alerts v1\n{url}").as_bytes(),
        );
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        let key = format!("webhook-{}", &hex[..32]);
        let shown = format!("{}/… (webhook {})", origin(&url), &hex[..8]);
        Ok(Webhook {
            url,
            format,
            key,
            shown,
        })
    }

    /// Plain http to a host other than this one: the events go in clear.
    pub fn in_clear(&self) -> bool {
        let host = self.url.host_str().unwrap_or_default();
        let loopback = host == "localhost"
            || host
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        self.url.scheme() == "http" && !loopback
    }

    /// POSTs `event`; delivered on any 2xx. The `Idempotency-Key` lets a
    /// receiver drop the rare repeat (a watcher stalled past its lease).
    pub async fn post(
        &self,
        client: &reqwest::Client,
        event: &WorkerEvent,
    ) -> Result<(), NotDelivered> {
        let body = super::message::body(event, self.format);
        let response = client
            .post(self.url.clone())
            .header("idempotency-key", format!("{}-{}", self.key, event.id))
            .header("x-hp-event-id", event.id.to_string())
            .json(&body)
            .send()
            .await
            .map_err(|e| NotDelivered {
                // Without the URL: reqwest's errors name it, and it is the secret.
                why: describe(&e.without_url()),
                retry_after: None,
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s.min(3600)));
        let to = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| self.url.join(v).ok())
            .map(|u| format!(" (to {}/…: give the URL it points to)", origin(&u)));
        let hint = match status.as_u16() {
            300..=399 => to
                .as_deref()
                .unwrap_or(" (a redirect: give the URL it points to)"),
            400 => " (the receiver refuses the body: check --format)",
            401 | 403 => " (the receiver refuses: check the URL's token)",
            404 | 410 => " (no such webhook: check the URL, or make the webhook again)",
            429 => " (too many requests: slowing down)",
            _ => "",
        };
        Err(NotDelivered {
            why: format!("the receiver answered {status}{hint}"),
            retry_after,
        })
    }
}

/// `https://host:port`: what may be shown of a webhook's URL (its path and
/// query are the secret).
fn origin(url: &reqwest::Url) -> String {
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    format!(
        "{}://{}{port}",
        url.scheme(),
        url.host_str().unwrap_or_default()
    )
}

/// A client for webhooks: bounded, no redirects (a POST is not replayed to
/// wherever a redirect points).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(POST_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!(
            "heartbeat-sidecar/",
            env!("CARGO_PKG_VERSION"),
            " (alerts)"
        ))
        .build()
        .unwrap_or_default()
}

fn describe(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut text = if e.is_timeout() {
        format!("no answer within {} s", POST_TIMEOUT.as_secs())
    } else if e.is_connect() {
        "cannot connect".to_owned()
    } else {
        "the request failed".to_owned()
    };
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_is_never_shown_and_the_key_is_the_urls() {
        let secret = "https://hooks.slack.com/services/T000/B000/not-a-real-token";
        let hook = Webhook::parse(secret, AlertFormat::Auto).expect("parse");
        assert!(
            hook.shown
                .starts_with("https://hooks.slack.com/… (webhook "),
            "{}",
            hook.shown
        );
        assert!(!hook.shown.contains("not-a-real-token") && !hook.key.contains("token"));
        assert!(!format!("{hook:?}").contains("token"));
        assert_eq!(hook.key.len(), "webhook-".len() + 32);
        let json = Webhook::parse(secret, AlertFormat::Json).expect("parse");
        assert_eq!(hook.key, json.key, "another format keeps the place");
        let other = Webhook::parse(
            "https://hooks.slack.com/services/T000/B000/other",
            AlertFormat::Slack,
        )
        .expect("parse");
        assert_ne!(hook.key, other.key);
    }

    #[test]
    fn auto_picks_the_format_the_host_takes() {
        let format = |u: &str| Webhook::parse(u, AlertFormat::Auto).expect("parse").format;
        assert_eq!(
            format("https://hooks.slack.com/services/T/B/x"),
            AlertFormat::Slack
        );
        assert_eq!(
            format("https://discord.com/api/webhooks/1/x"),
            AlertFormat::Discord
        );
        assert_eq!(
            format("https://discord.com/api/webhooks/1/x/slack"),
            AlertFormat::Slack
        );
        assert_eq!(format("https://alerts.example.com/hook"), AlertFormat::Json);
        let chosen = Webhook::parse("https://hooks.slack.com/x", AlertFormat::Json).expect("parse");
        assert_eq!(chosen.format, AlertFormat::Json, "a chosen format stays");
    }

    #[test]
    fn joined_or_hostless_webhooks_are_refused_without_quoting_them() {
        for bad in [
            "https://a.example/x,https://b.example/not-a-real-secret",
            "https:///not-a-real-secret",
            "127.0.0.1:8701/not-a-real-secret",
        ] {
            let e = Webhook::parse(bad, AlertFormat::Json).expect_err(bad);
            assert!(!e.contains("secret"), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_urls_say_what_to_give() {
        let e = Webhook::parse("hooks.slack.com/x", AlertFormat::Json).expect_err("no scheme");
        assert!(
            e.contains("no scheme") && e.contains("give the whole URL"),
            "{e}"
        );
        let e = Webhook::parse("ftp://example.com/x", AlertFormat::Json).expect_err("ftp");
        assert!(e.contains("http:// or https://"), "{e}");
    }

    #[test]
    fn plain_http_is_in_clear_unless_loopback() {
        let at = |u: &str| {
            Webhook::parse(u, AlertFormat::Json)
                .expect("parse")
                .in_clear()
        };
        assert!(at("http://alerts.example.com/hook"));
        assert!(!at("http://127.0.0.1:9000/hook"));
        assert!(!at("http://localhost/hook"));
        assert!(!at("https://alerts.example.com/hook"));
    }
}
