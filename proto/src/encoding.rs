//! Lowercase hex, PEM and URL percent-encoding, written once.
//!
//! Digests, key IDs and fingerprints travel as lowercase hex in audit entries, log bundles and
//! join tokens; certificates and keys travel as PEM. The broker, the agent and the offline
//! verifier must write these byte for byte alike (a fingerprint is compared as text), so they
//! share this module instead of each keeping a copy.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// `bytes` as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// The bytes of `text`, hex in either case; `None` for an odd length or anything but hex
/// digits (`u8::from_str_radix` alone would take `+f`, letting one value have two spellings).
pub fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| text.get(i..i + 2).and_then(|pair| u8::from_str_radix(pair, 16).ok())).collect()
}

/// `der` as a PEM block labelled `label` (`CERTIFICATE`, `PRIVATE KEY`), 64 columns.
pub fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The DER inside the first PEM block of `text`, whatever its label; `None` when there is none.
pub fn pem_der(text: &str) -> Option<Vec<u8>> {
    let start = text.find("-----BEGIN ")?;
    let body_start = start + text.get(start..)?.find('\n')? + 1;
    let body_end = body_start + text.get(body_start..)?.find("-----END ")?;
    let body: String = text.get(body_start..body_end)?.chars().filter(|c| !c.is_whitespace()).collect();
    STANDARD.decode(body).ok()
}

/// `text` percent-encoded for a URL path segment or query value: every byte but RFC 3986's
/// unreserved characters (`A-Z a-z 0-9 - . _ ~`) as `%XX`.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push_str(&hex(&[byte]).to_ascii_uppercase());
        }
    }
    out
}

#[cfg(test)]
mod tests {

    #[test]
    fn percent_encoding_keeps_only_unreserved_characters() {
        assert_eq!(super::percent_encode("/ui/runs?stack=a b&c=é~"), "%2Fui%2Fruns%3Fstack%3Da%20b%26c%3D%C3%A9~");
        assert_eq!(super::percent_encode("ASIA-1_x.y"), "ASIA-1_x.y");
    }
    use super::*;

    #[test]
    fn hex_round_trips_in_lowercase() {
        let bytes = [0x00, 0x0f, 0xa5, 0xff];
        assert_eq!(hex(&bytes), "000fa5ff");
        assert_eq!(hex_decode("000fa5ff").as_deref(), Some(&bytes[..]));
        assert_eq!(hex_decode("000FA5FF").as_deref(), Some(&bytes[..]));
        assert_eq!(hex_decode(""), Some(Vec::new()));
        for bad in ["0", "zz", "0g", "é0", "+f", "+f+f", "-1"] {
            assert_eq!(hex_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn pem_round_trips_and_wraps_at_64_columns() {
        let der: Vec<u8> = (0..=255).collect();
        let text = pem("CERTIFICATE", &der);
        assert!(text.starts_with("-----BEGIN CERTIFICATE-----\n") && text.ends_with("-----END CERTIFICATE-----\n"));
        assert!(text.lines().all(|line| line.len() <= 64), "{text}");
        assert_eq!(pem_der(&text), Some(der.clone()));
        assert_eq!(pem_der(&format!("leading words\n{text}trailing")), Some(der));
        assert_eq!(pem_der("-----BEGIN X-----\n!!!\n-----END X-----\n"), None);
        assert_eq!(pem_der("no block"), None);
    }
}
