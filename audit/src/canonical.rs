//! Canonical JSON (RFC 8785 style) for audit entries: object keys sorted by their UTF-16 code
//! units, no insignificant whitespace, integers only, strings escaped the one way JSON allows
//! for each character. Anyone can re-encode an entry and get the bytes that were hashed.
//!
//! Sorting is done here rather than relying on `serde_json::Map`'s order, which a dependency
//! enabling serde_json's `preserve_order` feature would silently change.

use std::fmt::Write as _;

use serde_json::Value;

/// Why a value has no canonical form here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    /// Audit entries carry integers only: a float's text form is where encoders disagree.
    #[error("audit entries carry integers only; found the number {0}")]
    NotAnInteger(String),
    /// The value could not be turned into JSON at all.
    #[error("cannot encode the entry: {0}")]
    Encode(String),
}

/// The canonical encoding of `value`.
pub fn to_canonical(value: &Value) -> Result<String, CanonicalError> {
    let mut out = String::with_capacity(512);
    write(value, &mut out)?;
    Ok(out)
}

fn write(value: &Value, out: &mut String) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if !(n.is_i64() || n.is_u64()) {
                return Err(CanonicalError::NotAnInteger(n.to_string()));
            }
            let _ = write!(out, "{n}");
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(item, out)?;
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                if let Some(item) = map.get(key) {
                    write(item, out)?;
                }
            }
            out.push('}');
        }
    }
    Ok(())
}

/// RFC 8785 §3.2.2.2: the short escapes, `\u00xx` (lower-case hex) for other control characters,
/// everything else literal.
fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c < ' ' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn keys_are_sorted_and_whitespace_is_gone() {
        let value = json!({"b": [1, {"z": null, "a": true}], "a": "x", "é": 1, "Z": -3});
        assert_eq!(to_canonical(&value).unwrap(), r#"{"Z":-3,"a":"x","b":[1,{"a":true,"z":null}],"é":1}"#);
    }

    #[test]
    fn strings_escape_exactly_as_rfc_8785_says() {
        let value = json!("quote\" back\\ nl\n tab\t bell\u{7} del\u{7f} slash/ snow☃ line\u{2028}");
        assert_eq!(
            to_canonical(&value).unwrap(),
            "\"quote\\\" back\\\\ nl\\n tab\\t bell\\u0007 del\u{7f} slash/ snow☃ line\u{2028}\""
        );
    }

    #[test]
    fn utf16_order_differs_from_utf8_order_and_utf16_wins() {
        // U+FB01 sorts before U+1F600 in UTF-8 bytes but after it in UTF-16 code units.
        let value = json!({"\u{1F600}": 1, "\u{FB01}": 2});
        assert_eq!(to_canonical(&value).unwrap(), "{\"\u{1F600}\":1,\"\u{FB01}\":2}");
    }

    #[test]
    fn floats_are_refused() {
        assert!(matches!(to_canonical(&json!({"x": 1.5})), Err(CanonicalError::NotAnInteger(_))));
        assert_eq!(to_canonical(&json!(u64::MAX)).unwrap(), u64::MAX.to_string());
    }

    #[test]
    fn reparsing_and_reencoding_is_the_identity() {
        let value =
            json!({"kind": "credentials.issued", "context": {"run_id": "r", "approved_by": ["b", "a"]}, "seq": 7});
        let once = to_canonical(&value).unwrap();
        let again = to_canonical(&serde_json::from_str(&once).unwrap()).unwrap();
        assert_eq!(once, again);
    }
}
