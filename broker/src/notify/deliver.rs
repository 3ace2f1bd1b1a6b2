//! What a notification looks like on the wire, and one attempt to send it.
//!
//! Two formats: `json` (the event's facts, for machines) and `slack` (Slack's incoming-webhook
//! message: `{"text": …}`). With a secret, each request carries
//! `X-Keyward-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`: the receiver
//! recomputes it and refuses a stale `t`, so a captured request cannot be replayed later, and
//! `X-Keyward-Delivery` (the delivery's ID, the same on every attempt) lets it drop duplicates.

use std::time::Duration;

use aws_lc_rs::hmac;
use keyward_proto::encoding::hex;
use serde_json::json;

use super::events::Event;

/// How a notification's body is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The event as JSON.
    Json,
    /// A Slack incoming-webhook message.
    Slack,
}

/// The request body for `event`, in `format`.
pub fn body(event: &Event, format: Format, delivery: &str) -> String {
    match format {
        Format::Json => json!({
            "event": event.name.as_str(),
            "delivery": delivery,
            "at": event.at,
            "audit_seq": event.seq,
            "stack": event.stack,
            "run": event.run,
            "summary": event.summary,
            "details": event.details,
        })
        .to_string(),
        Format::Slack => json!({ "text": format!("[keyward] {}", event.summary) }).to_string(),
    }
}

/// `t=<at>,v1=<hex HMAC-SHA256 over "<at>.<body>">`.
pub fn signature(key: &hmac::Key, at: i64, body: &str) -> String {
    let tag = hmac::sign(key, format!("{at}.{body}").as_bytes());
    format!("t={at},v1={}", hex(tag.as_ref()))
}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptError {
    /// Worth retrying: the network, a timeout, a 5xx, 408 or 429.
    Transient(String),
    /// The receiver refuses it and will keep refusing it (any other 4xx).
    Permanent(String),
}

/// The HTTP client notifications are sent with: short timeouts, no redirects.
pub fn client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(3))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.to_string())
}

/// One attempt to POST `body` to `url`.
pub async fn send(
    client: &reqwest::Client,
    url: &str,
    body: &str,
    headers: &[(&str, String)],
) -> Result<(), AttemptError> {
    let mut request = client.post(url).header("content-type", "application/json").body(body.to_owned());
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.send().await.map_err(|e| AttemptError::Transient(e.without_url().to_string()))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
        Err(AttemptError::Transient(format!("HTTP {}", status.as_u16())))
    } else {
        Err(AttemptError::Permanent(format!("HTTP {}", status.as_u16())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::events::EventName;

    fn event() -> Event {
        Event {
            name: EventName::RunFailed,
            seq: 3,
            at: 1_700_000_000,
            stack: Some("net".into()),
            run: Some("r1".into()),
            summary: "run r1 of stack net failed".into(),
            details: json!({"to": "failed"}),
        }
    }

    #[test]
    fn bodies_carry_the_event_in_either_format() {
        let json: serde_json::Value = serde_json::from_str(&body(&event(), Format::Json, "d1")).unwrap();
        assert_eq!(
            (json["event"].as_str(), json["audit_seq"].as_u64(), json["delivery"].as_str()),
            (Some("run.failed"), Some(3), Some("d1"))
        );
        let slack: serde_json::Value = serde_json::from_str(&body(&event(), Format::Slack, "d1")).unwrap();
        assert_eq!(slack, json!({"text": "[keyward] run r1 of stack net failed"}));
    }

    #[test]
    fn the_signature_covers_the_time_and_the_body() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"0123456789abcdef");
        let signed = signature(&key, 100, "{}");
        assert!(signed.starts_with("t=100,v1="));
        assert_ne!(signed, signature(&key, 101, "{}"), "another time, another signature");
        assert_ne!(signed, signature(&key, 100, "{ }"), "another body, another signature");
        let expected = hex(hmac::sign(&key, b"100.{}").as_ref());
        assert_eq!(signed, format!("t=100,v1={expected}"));
    }
}
