//! `[[notifications]]`, checked: unique names, known events, a URL the broker may call, a known
//! format, and a signing key (optional) that is long enough to be one.

use std::collections::BTreeSet;

use super::file::NotificationEntry;
use super::secret_source::NOTIFICATION_SECRET;
use super::url::check_url;
use super::{ConfigError, invalid};
use crate::notify::NotificationConfig;
use crate::notify::deliver::Format;
use crate::notify::events::EventName;

/// The checked notifications, their keys read.
pub(super) fn check(
    entries: Vec<NotificationEntry>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<NotificationConfig>, ConfigError> {
    let mut names = BTreeSet::new();
    let mut checked = Vec::with_capacity(entries.len());
    for entry in entries {
        let name = entry.name;
        if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c)) {
            return Err(invalid("notifications.name", format!("`{name}`: use 1 to 64 letters, digits, `-` and `_`")));
        }
        if !names.insert(name.clone()) {
            return Err(invalid("notifications.name", format!("two notifications are named `{name}`")));
        }
        if entry.events.is_empty() {
            return Err(invalid("notifications.events", format!("`{name}`: list at least one event")));
        }
        let mut events = Vec::with_capacity(entry.events.len());
        for event in &entry.events {
            let parsed: EventName =
                event.parse().map_err(|e| invalid("notifications.events", format!("`{name}`: {e}")))?;
            if !events.contains(&parsed) {
                events.push(parsed);
            }
        }
        check_url("notifications.url", &entry.url)?;
        let format = match entry.format.as_str() {
            "json" => Format::Json,
            "slack" => Format::Slack,
            other => {
                return Err(invalid("notifications.format", format!("`{name}`: `{other}` is not `json` or `slack`")));
            }
        };
        if !(1..=20).contains(&entry.max_attempts) {
            return Err(invalid("notifications.max_attempts", format!("`{name}`: must be between 1 and 20")));
        }
        let source = NOTIFICATION_SECRET.source(None, entry.secret_env.as_deref(), entry.secret_file.as_deref())?;
        let secret = source.map(|source| NOTIFICATION_SECRET.read(&source, env)).transpose()?;
        if secret.as_ref().is_some_and(|s| s.expose().len() < 16) {
            return Err(invalid(
                "notifications.secret_env",
                format!("`{name}`: the signing key must be at least 16 characters"),
            ));
        }
        checked.push(NotificationConfig {
            name,
            events,
            url: entry.url,
            format,
            secret,
            max_attempts: entry.max_attempts,
        });
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, events: &[&str], format: &str) -> NotificationEntry {
        NotificationEntry {
            name: name.into(),
            events: events.iter().map(|e| (*e).to_owned()).collect(),
            url: "https://hooks.example.com/x".into(),
            format: format.into(),
            secret_env: None,
            secret_file: None,
            max_attempts: 8,
        }
    }

    fn refusal(entries: Vec<NotificationEntry>, env: &dyn Fn(&str) -> Option<String>) -> String {
        check(entries, env).err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn bad_entries_are_refused_with_the_reason() {
        let none = |_: &str| None;
        assert!(refusal(vec![entry("a", &["run.exploded"], "json")], &none).contains("unknown event `run.exploded`"));
        assert!(refusal(vec![entry("a", &[], "json")], &none).contains("at least one event"));
        assert!(refusal(vec![entry("a", &["run.failed"], "xml")], &none).contains("not `json` or `slack`"));
        assert!(refusal(vec![entry("a b", &["run.failed"], "json")], &none).contains("letters, digits"));
        let twice = vec![entry("a", &["run.failed"], "json"), entry("a", &["run.failed"], "slack")];
        assert!(refusal(twice, &none).contains("two notifications are named `a`"));
        let mut short = entry("a", &["run.failed"], "json");
        short.secret_env = Some("SHORT".into());
        assert!(refusal(vec![short], &|_| Some("short".into())).contains("at least 16 characters"));
        let mut missing = entry("a", &["run.failed"], "json");
        missing.secret_env = Some("UNSET".into());
        assert!(!refusal(vec![missing], &none).is_empty(), "a named variable that is not set is an error");
    }

    #[test]
    fn a_good_entry_is_checked_once() {
        let mut good = entry("ops", &["stack.drifted", "run.failed", "run.failed"], "slack");
        good.secret_env = Some("KEY".into());
        let checked = check(vec![good], &|_| Some("0123456789abcdef".into())).unwrap();
        assert_eq!(checked[0].events, [EventName::StackDrifted, EventName::RunFailed]);
        assert_eq!(checked[0].format, Format::Slack);
        assert!(checked[0].secret.is_some());
    }
}
