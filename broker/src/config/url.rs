//! The one rule for URLs in the configuration file: HTTPS, or plain HTTP to loopback only, and
//! absolute without a trailing slash, query or fragment (the issuer URL, webhook sinks,
//! repositories, Vault addresses and trusted issuers all follow it).

use super::{ConfigError, invalid};

/// Checks `url`, naming `key` in the error.
pub(super) fn check_url(key: &'static str, url: &str) -> Result<(), ConfigError> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| invalid(key, format!("`{url}` must start with https:// (http:// only for loopback)")))?;
    if url.starts_with("http://") {
        let host = if rest.starts_with("[::1]") { "[::1]" } else { rest.split(['/', ':']).next().unwrap_or_default() };
        if !matches!(host, "127.0.0.1" | "localhost" | "[::1]") {
            return Err(invalid(key, format!("`{url}`: plain http is only allowed for a loopback issuer")));
        }
    }
    if rest.is_empty() || url.ends_with('/') || url.contains(['?', '#']) {
        return Err(invalid(
            key,
            format!("`{url}` must be an absolute URL without a trailing slash, query or fragment"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuer_urls_are_checked() {
        for (url, ok) in [
            ("https://kw.example", true),
            ("https://kw.example/tenant-a", true),
            ("http://127.0.0.1:8422", true),
            ("http://[::1]:8422", true),
            ("http://kw.example", false),
            ("https://kw.example/", false),
            ("https://kw.example?x=1", false),
            ("ftp://kw.example", false),
        ] {
            assert_eq!(check_url("server.external_url", url).is_ok(), ok, "{url}");
        }
    }
}
