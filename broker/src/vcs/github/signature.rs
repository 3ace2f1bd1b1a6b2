//! `X-Hub-Signature-256`: `sha256=<hex HMAC-SHA256 of the raw body>` with the webhook secret,
//! checked in constant time before anything of the body is parsed.

use aws_lc_rs::hmac;

/// Why a signature was refused. Says nothing of the expected value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `X-Hub-Signature-256` header.
    #[error("missing X-Hub-Signature-256 header")]
    Missing,
    /// Not `sha256=` and 64 hex digits.
    #[error("X-Hub-Signature-256 is not `sha256=` followed by 64 hex digits")]
    Malformed,
    /// Well formed but not this body's signature with the configured secret.
    #[error("X-Hub-Signature-256 does not match the body")]
    Mismatch,
}

/// Checks `header` (the header's value, if any) against `body` signed with `secret`.
pub fn verify(secret: &[u8], body: &[u8], header: Option<&[u8]>) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let hex = header.strip_prefix(b"sha256=").ok_or(SignatureError::Malformed)?;
    let tag = decode_hex(hex).ok_or(SignatureError::Malformed)?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    hmac::verify(&key, body, &tag).map_err(|_| SignatureError::Mismatch)
}

/// The header value for `body` signed with `secret` (unit tests and documentation examples).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

fn decode_hex(hex: &[u8]) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let &[high, low] = pair else { return None };
        let (high, low) = (char::from(high).to_digit(16)?, char::from(low).to_digit(16)?);
        *byte = u8::try_from(high * 16 + low).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // GitHub's documented example ("Validating webhook deliveries").
    const SECRET: &[u8] = b"It's a Secret to Everybody";
    const BODY: &[u8] = b"Hello, World!";
    const EXPECTED: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    #[test]
    fn github_s_documented_vector_verifies() {
        assert_eq!(sign(SECRET, BODY), EXPECTED);
        assert_eq!(verify(SECRET, BODY, Some(EXPECTED.as_bytes())), Ok(()));
        assert_eq!(verify(SECRET, BODY, Some(EXPECTED.to_uppercase().replace("SHA256", "sha256").as_bytes())), Ok(()));
    }

    #[test]
    fn a_changed_body_secret_or_tag_is_a_mismatch() {
        let tag = Some(EXPECTED.as_bytes());
        assert_eq!(verify(SECRET, b"Hello, World?", tag), Err(SignatureError::Mismatch));
        assert_eq!(verify(b"another secret", BODY, tag), Err(SignatureError::Mismatch));
        let flipped = EXPECTED.replace("757107", "757108");
        assert_eq!(verify(SECRET, BODY, Some(flipped.as_bytes())), Err(SignatureError::Mismatch));
    }

    #[test]
    fn a_missing_or_malformed_header_is_refused() {
        assert_eq!(verify(SECRET, BODY, None), Err(SignatureError::Missing));
        let sha1 = EXPECTED.replace("sha256=", "sha1=");
        for header in ["", "sha256=", &EXPECTED[..70], &format!("{EXPECTED}00"), &sha1, &EXPECTED.replace('7', "g")] {
            assert_eq!(verify(SECRET, BODY, Some(header.as_bytes())), Err(SignatureError::Malformed), "{header}");
        }
    }
}
