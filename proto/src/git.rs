//! How git is handed a private repository's credentials, the same way by the broker (`git
//! ls-remote` at submit) and by the agent (the job's checkout).
//!
//! The credentials become one `http.<url_prefix>.extraHeader` setting (`Authorization: Basic …`)
//! passed in git's environment (`GIT_CONFIG_COUNT`, `GIT_CONFIG_KEY_0`, `GIT_CONFIG_VALUE_0`,
//! git ≥ 2.31): never on a command line (`ps` shows those), never in a configuration file, never
//! in the repository's own `.git/config`. Git sends the header only to URLs under the prefix.

use base64::Engine as _;

/// The environment that makes `git` authenticate to URLs under `url_prefix` as `username`.
/// The last value is secret: callers keep it out of logs and drop it after the command.
pub fn auth_environment(url_prefix: &str, username: &str, password: &str) -> [(String, String); 3] {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    [
        ("GIT_CONFIG_COUNT".to_owned(), "1".to_owned()),
        ("GIT_CONFIG_KEY_0".to_owned(), format!("http.{url_prefix}.extraHeader")),
        ("GIT_CONFIG_VALUE_0".to_owned(), format!("Authorization: Basic {basic}")),
    ]
}

/// Whether git may be given credentials for `url`: over HTTPS, or plain HTTP to a loopback
/// address (tests, a local mirror). Anything else would send them in the clear.
pub fn may_carry_credentials(url: &str) -> bool {
    if url.starts_with("https://") {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else { return false };
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    matches!(host, "127.0.0.1" | "localhost" | "::1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_is_basic_auth_scoped_to_the_prefix() {
        let env = auth_environment("https://git.example.com/acme/", "x-access-token", "s3cret");
        assert_eq!(env[0], ("GIT_CONFIG_COUNT".to_owned(), "1".to_owned()));
        assert_eq!(env[1].1, "http.https://git.example.com/acme/.extraHeader");
        // RFC 7617: base64 of `user:password`.
        assert_eq!(env[2].1, "Authorization: Basic eC1hY2Nlc3MtdG9rZW46czNjcmV0");
    }

    #[test]
    fn only_https_or_loopback_http_carries_credentials() {
        for ok in
            ["https://git.example.com/a.git", "http://127.0.0.1:8080/a.git", "http://localhost/a", "http://[::1]:9/a"]
        {
            assert!(may_carry_credentials(ok), "{ok}");
        }
        for no in ["http://git.example.com/a.git", "http://127.0.0.1.evil.com/a", "ssh://git@host/a", "file:///tmp/a"] {
            assert!(!may_carry_credentials(no), "{no}");
        }
    }
}
