//! Where a sign-in may send the caller afterwards. `return_to` is a local path under one of the
//! configured prefixes (an open redirect would let anyone dress a phishing link in the broker's
//! name); `keyward login`'s redirect is plain HTTP to a loopback address (RFC 8252 §7.3).

/// Why a `return_to` or CLI redirect was refused. Safe to show the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not a local path, or not under an allowed prefix.
    #[error("return_to must be a local path under {allowed}; `{given}` is not")]
    ReturnTo {
        /// The allowed prefixes, for the message.
        allowed: String,
        /// What was given (truncated).
        given: String,
    },
    /// Not `http://127.0.0.1:PORT/callback` (or `[::1]`).
    #[error("cli_redirect must be http://127.0.0.1:PORT/callback or http://[::1]:PORT/callback")]
    CliRedirect,
}

/// Longest `return_to` accepted.
const MAX_PATH: usize = 2048;

/// Checks `given` is a local path (`/…`, not `//host` or `/\host`, no scheme, no control
/// characters) under one of `allowed` (each a path prefix such as `/` or `/ui/`).
pub fn check_return_to(given: &str, allowed: &[String]) -> Result<(), PathError> {
    let local = given.starts_with('/')
        && !given.starts_with("//")
        && !given.starts_with("/\\")
        && given.len() <= MAX_PATH
        && !given.chars().any(|c| c.is_control() || c == '\\');
    if local && allowed.iter().any(|prefix| given.starts_with(prefix.as_str())) {
        return Ok(());
    }
    Err(PathError::ReturnTo { allowed: allowed.join(", "), given: given.chars().take(80).collect() })
}

/// Checks `given` is `keyward login`'s loopback callback and returns it.
pub fn check_cli_redirect(given: &str) -> Result<String, PathError> {
    let url = reqwest::Url::parse(given).map_err(|_| PathError::CliRedirect)?;
    let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
    let loopback = host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    let clean =
        url.username().is_empty() && url.password().is_none() && url.query().is_none() && url.fragment().is_none();
    if url.scheme() == "http" && loopback && url.port().is_some() && url.path() == "/callback" && clean {
        Ok(url.to_string())
    } else {
        Err(PathError::CliRedirect)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_to_stays_on_site_and_under_the_prefixes() {
        let root = vec!["/".to_owned()];
        for good in ["/", "/ui/runs/01J", "/v1/me?x=1"] {
            assert_eq!(check_return_to(good, &root), Ok(()), "{good}");
        }
        for bad in
            ["//evil.example", "https://evil.example", "/\\evil.example", "evil", "", "/a\r\nSet-Cookie: x", "/a\\b"]
        {
            assert!(check_return_to(bad, &root).is_err(), "{bad:?}");
        }
        let ui = vec!["/ui/".to_owned()];
        assert!(check_return_to("/ui/stacks", &ui).is_ok());
        assert!(check_return_to("/v1/me", &ui).is_err());
    }

    #[test]
    fn cli_redirect_is_loopback_http_callback_only() {
        assert_eq!(
            check_cli_redirect("http://127.0.0.1:4711/callback").as_deref(),
            Ok("http://127.0.0.1:4711/callback")
        );
        assert!(check_cli_redirect("http://[::1]:4711/callback").is_ok());
        for bad in [
            "https://127.0.0.1:4711/callback",
            "http://evil.example:4711/callback",
            "http://localhost.evil.example:1/callback",
            "http://127.0.0.1/callback",
            "http://127.0.0.1:4711/other",
            "http://127.0.0.1:4711/callback?x=1",
            "http://u@127.0.0.1:4711/callback",
            "http://10.0.0.1:4711/callback",
        ] {
            assert_eq!(check_cli_redirect(bad), Err(PathError::CliRedirect), "{bad}");
        }
    }
}
