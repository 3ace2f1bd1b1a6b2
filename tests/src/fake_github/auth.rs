//! How `FakeGithub` authenticates a request, as GitHub does: an RS256 App JWT for the `/app`
//! endpoints (verified with the App's public key, issued in the past, living at most 10 minutes),
//! an unexpired installation token it issued for the repository endpoints, covering that
//! repository with the permission the endpoint needs. Only who a credential proved is recorded,
//! never the credential.

use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
use axum::http::HeaderMap;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use super::openapi::Matched;
use super::{Auth, Data, Inner, IssuedToken, TOKEN_LIFETIME_SECONDS};

/// Issues a new installation token (`ghs_…`) for `installation` with `permissions`.
pub(super) fn issue(data: &mut Data, installation: u64, now: i64, permissions: Value) -> String {
    let mut random = [0_u8; 27];
    aws_lc_rs::rand::fill(&mut random).expect("random");
    let token = format!("ghs_{}", URL_SAFE_NO_PAD.encode(random).replace(['-', '_'], "0"));
    data.tokens
        .insert(token.clone(), IssuedToken { installation, expires_at: now + TOKEN_LIFETIME_SECONDS, permissions });
    token
}

/// Who the `Authorization` header proves to be, or why it proves nothing (a 401).
pub(super) fn authenticate(
    inner: &Inner,
    data: &Data,
    headers: &HeaderMap,
    path: &str,
    now: i64,
) -> (Auth, Option<String>) {
    let Some(value) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return (Auth::None, Some("Requires authentication".into()));
    };
    let credential = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("token ")).unwrap_or_default();
    let result = if path == "/app" || path.starts_with("/app/") {
        check_jwt(inner, credential, now).map(Auth::App)
    } else {
        match data.tokens.get(credential) {
            Some(token) if now < token.expires_at => Ok(Auth::Installation(token.installation)),
            Some(_) => Err("Bad credentials (the installation token expired)".to_owned()),
            None => Err("Bad credentials".to_owned()),
        }
    };
    match result {
        Ok(auth) => (auth, None),
        Err(message) => (Auth::Invalid(message.clone()), Some(message)),
    }
}

/// The App ID an App JWT proves, checked as GitHub does.
fn check_jwt(inner: &Inner, jwt: &str, now: i64) -> Result<u64, String> {
    let undecodable = || "A JSON web token could not be decoded".to_owned();
    let parts: Vec<&str> = jwt.split('.').collect();
    let [header, claims, signature] = parts.as_slice() else { return Err(undecodable()) };
    let decode = |part: &str| -> Result<Value, String> {
        let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| undecodable())?;
        serde_json::from_slice(&bytes).map_err(|_| undecodable())
    };
    let (header, claims) = (decode(header)?, decode(claims)?);
    if header["alg"] != "RS256" {
        return Err(format!("A JSON web token must be signed with RS256, not {}", header["alg"]));
    }
    let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| undecodable())?;
    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &inner.public_key)
        .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
        .map_err(|_| "A JSON web token could not be decoded (bad signature)".to_owned())?;
    let issuer = match &claims["iss"] {
        Value::String(s) => s.parse::<u64>().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    };
    if issuer != Some(inner.app_id) {
        return Err(format!("Integration not found (iss {})", claims["iss"]));
    }
    let (Some(iat), Some(exp)) = (claims["iat"].as_i64(), claims["exp"].as_i64()) else {
        return Err("'Issued at' and 'Expiration time' claims must be integers".into());
    };
    if iat > now {
        return Err("'Issued at' claim ('iat') must be an Integer representing a time in the past.".into());
    }
    if exp <= now {
        return Err("'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires.".into());
    }
    if exp - iat > 600 {
        return Err("'Expiration time' claim ('exp') is too far in the future.".into());
    }
    Ok(inner.app_id)
}

/// Why installation `installation` may not make this repository request, if it may not.
pub(super) fn check_access(
    data: &Data,
    headers: &HeaderMap,
    installation: u64,
    matched: &Matched<'_>,
) -> Option<String> {
    let owner = matched.params.iter().find(|(n, _)| n == "owner")?;
    let repo = format!("{}/{}", owner.1, matched.param("repo")).to_ascii_lowercase();
    let covered = data.installations.get(&installation).is_some_and(|repos| repos.contains(&repo));
    if !covered {
        return Some(format!("Not Found: installation {installation} does not cover {repo}"));
    }
    let credential = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let credential =
        credential.strip_prefix("Bearer ").or_else(|| credential.strip_prefix("token ")).unwrap_or_default();
    let permissions = data.tokens.get(credential).map(|t| &t.permissions)?;
    let has = |name: &str, write: bool| match permissions[name].as_str() {
        Some("write") => true,
        Some("read") => !write,
        _ => false,
    };
    let allowed = match matched.template {
        "/repos/{owner}/{repo}/statuses/{sha}" => has("statuses", true),
        "/repos/{owner}/{repo}/issues/{issue_number}/comments"
        | "/repos/{owner}/{repo}/issues/comments/{comment_id}" => has("pull_requests", true) || has("issues", true),
        _ => has("pull_requests", false) || has("contents", false),
    };
    (!allowed).then(|| format!("Resource not accessible by integration (permissions {permissions})"))
}
