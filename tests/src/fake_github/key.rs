//! The GitHub App's key pair as `FakeGithub` hands it out: generated with aws-lc-rs (PKCS#8) and
//! also as PKCS#1 (`-----BEGIN RSA PRIVATE KEY-----`), the form GitHub's "Generate a private key"
//! downloads, by taking the `RSAPrivateKey` out of the PKCS#8 wrapper with a small DER walk.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// PEM text of `der` under `label`.
pub(super) fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> =
        body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("base64 is ASCII")).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

/// One DER element at the start of `der`: (tag, contents, rest).
fn element(der: &[u8]) -> (u8, &[u8], &[u8]) {
    let (&tag, rest) = der.split_first().expect("a DER tag");
    let (&first, rest) = rest.split_first().expect("a DER length");
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let (bytes, rest) = rest.split_at(usize::from(first & 0x7f));
        (bytes.iter().fold(0_usize, |n, b| n << 8 | usize::from(*b)), rest)
    };
    let (contents, rest) = rest.split_at(len);
    (tag, contents, rest)
}

/// The PKCS#1 `RSAPrivateKey` a PKCS#8 `PrivateKeyInfo` wraps in its OCTET STRING (RFC 5208:
/// SEQUENCE { version, algorithm, privateKey OCTET STRING, … }).
pub(super) fn pkcs1_of(pkcs8: &[u8]) -> Vec<u8> {
    let (_, info, _) = element(pkcs8);
    let (_, _version, rest) = element(info);
    let (_, _algorithm, rest) = element(rest);
    let (tag, key, _) = element(rest);
    assert_eq!(tag, 0x04, "PrivateKeyInfo.privateKey is an OCTET STRING");
    key.to_vec()
}
