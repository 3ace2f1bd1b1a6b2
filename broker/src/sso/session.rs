//! A browser session's cookies and every session's timeouts, as pure functions.
//!
//! `keyward_session` holds the secret: `HttpOnly` (no script reads it), `SameSite=Lax` (another
//! site's form cannot send it with a POST), `Path=/`, and `Secure` unless the broker listens on
//! loopback (a plain-HTTP `keyward dev` must still work). `keyward_csrf` holds the token derived
//! from it, readable by the page's script, which repeats it in `X-Keyward-CSRF` on every
//! state-changing request (the double-submit pattern, bound to the session).

use std::time::Duration;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "keyward_session";
/// The CSRF cookie's name.
pub const CSRF_COOKIE: &str = "keyward_csrf";
/// The header a state-changing request repeats the CSRF cookie in.
pub const CSRF_HEADER: &str = "x-keyward-csrf";

/// The `Set-Cookie` values that start a session lasting `max_age`.
pub fn set_cookies(secret: &str, csrf: &str, secure: bool, max_age: Duration) -> [String; 2] {
    let tail = attributes(secure, max_age.as_secs());
    [format!("{SESSION_COOKIE}={secret}; HttpOnly; {tail}"), format!("{CSRF_COOKIE}={csrf}; {tail}")]
}

/// The `Set-Cookie` values that make a browser forget the session.
pub fn clear_cookies(secure: bool) -> [String; 2] {
    let tail = attributes(secure, 0);
    [format!("{SESSION_COOKIE}=; HttpOnly; {tail}"), format!("{CSRF_COOKIE}=; {tail}")]
}

fn attributes(secure: bool, max_age: u64) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("Path=/; SameSite=Lax; Max-Age={max_age}{secure}")
}

/// The value of cookie `name` among `Cookie` header values (`a=1; b=2`), if present once.
pub fn cookie<'a>(headers: impl Iterator<Item = &'a str>, name: &str) -> Option<&'a str> {
    let mut found = headers
        .flat_map(|header| header.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(key, _)| *key == name)
        .map(|(_, value)| value);
    let first = found.next()?;
    // Two cookies of the same name (one planted by a sibling domain): trust neither.
    found.next().is_none().then_some(first)
}

/// Whether a session may still be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Yes.
    Live,
    /// Unused for longer than the idle timeout.
    Idle,
    /// Past its absolute timeout.
    Expired,
}

/// A session last used at `last_seen`, ending at `expires_at`, under `idle` timeout, at `now`.
pub fn liveness(last_seen: i64, expires_at: i64, idle: Duration, now: i64) -> Liveness {
    let idle = i64::try_from(idle.as_secs()).unwrap_or(i64::MAX);
    if now >= expires_at {
        Liveness::Expired
    } else if now.saturating_sub(last_seen) >= idle {
        Liveness::Idle
    } else {
        Liveness::Live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_have_the_safe_attributes() {
        let [session, csrf] = set_cookies("kws_s", "c", true, Duration::from_secs(3600));
        assert_eq!(session, "keyward_session=kws_s; HttpOnly; Path=/; SameSite=Lax; Max-Age=3600; Secure");
        assert_eq!(csrf, "keyward_csrf=c; Path=/; SameSite=Lax; Max-Age=3600; Secure", "script reads it");
        let [session, _] = set_cookies("kws_s", "c", false, Duration::from_secs(60));
        assert!(!session.contains("Secure"), "a loopback broker serves plain http");
        let [session, csrf] = clear_cookies(true);
        assert!(session.starts_with("keyward_session=;") && session.contains("Max-Age=0"));
        assert!(csrf.starts_with("keyward_csrf=;") && csrf.contains("Max-Age=0"));
    }

    #[test]
    fn cookies_are_read_by_exact_name_once() {
        let headers = ["a=1; keyward_session=kws_x", "keyward_csrf=t"];
        assert_eq!(cookie(headers.iter().copied(), SESSION_COOKIE), Some("kws_x"));
        assert_eq!(cookie(headers.iter().copied(), CSRF_COOKIE), Some("t"));
        assert_eq!(cookie(["xkeyward_session=1"].iter().copied(), SESSION_COOKIE), None);
        assert_eq!(cookie(["keyward_session=1; keyward_session=2"].iter().copied(), SESSION_COOKIE), None);
    }

    #[test]
    fn sessions_end_at_the_idle_and_the_absolute_timeout() {
        let idle = Duration::from_secs(60);
        assert_eq!(liveness(1000, 2000, idle, 1059), Liveness::Live);
        assert_eq!(liveness(1000, 2000, idle, 1060), Liveness::Idle);
        assert_eq!(liveness(1990, 2000, idle, 1999), Liveness::Live);
        assert_eq!(liveness(1999, 2000, idle, 2000), Liveness::Expired, "use does not extend the absolute limit");
    }
}
