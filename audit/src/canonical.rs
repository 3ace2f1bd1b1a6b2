//! Canonical JSON (RFC 8785 style) for audit entries: object keys sorted by their UTF-16 code
//! units, no insignificant whitespace, integers only, strings escaped the one way JSON allows
//! for each character. Anyone can re-encode an entry and get the bytes that were hashed.
//!
//! Sorting is done here rather than relying on `serde_json::Map`'s order, which a dependency
//! enabling serde_json's `preserve_order` feature would silently change.
//!
//! Two ways in: [`to_canonical`] for any [`Value`], and [`Members`] for objects whose keys are
//! fixed in the code (an entry, its context), written in order straight into the output with no
//! tree built first, since every request that is audited pays for its entry's encoding.

use std::cmp::Ordering;
use std::fmt::Write as _;

use serde_json::{Map, Value};

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
        Value::Object(map) => write_map(map, out)?,
    }
    Ok(())
}

/// The canonical encoding of a JSON object: its members sorted by their keys' UTF-16 code units.
pub(crate) fn write_map(map: &Map<String, Value>, out: &mut String) -> Result<(), CanonicalError> {
    let mut members: Vec<(&String, &Value)> = map.iter().collect();
    members.sort_by(|(a, _), (b, _)| utf16_cmp(a, b));
    out.push('{');
    for (i, (key, item)) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(key, out);
        out.push(':');
        write(item, out)?;
    }
    out.push('}');
    Ok(())
}

/// RFC 8785 §3.2.3's order of keys.
fn utf16_cmp(a: &str, b: &str) -> Ordering {
    a.encode_utf16().cmp(b.encode_utf16())
}

/// Writes an object whose keys are known when the code is written (a struct's fields) straight
/// into the output, without a [`Value`] tree to sort: the caller gives the members in canonical
/// order. Debug builds (the tests) check that order at every member.
#[derive(Debug)]
pub(crate) struct Members<'o> {
    out: &'o mut String,
    last: Option<&'static str>,
}

impl<'o> Members<'o> {
    /// Opens the object.
    pub(crate) fn open(out: &'o mut String) -> Self {
        out.push('{');
        Self { out, last: None }
    }

    /// Writes `key` and the colon; the caller writes the member's value into what it returns.
    pub(crate) fn key(&mut self, key: &'static str) -> &mut String {
        debug_assert!(
            self.last.is_none_or(|last| utf16_cmp(last, key).is_lt()),
            "member {key:?} is out of canonical order (after {:?})",
            self.last
        );
        if self.last.is_some() {
            self.out.push(',');
        }
        debug_assert!(find_special(key.as_bytes()).is_none(), "member {key:?} needs escaping");
        self.last = Some(key);
        // A name in the code, with nothing to escape.
        self.out.push('"');
        self.out.push_str(key);
        self.out.push_str("\":");
        self.out
    }

    /// A string member.
    pub(crate) fn string(&mut self, key: &'static str, value: &str) {
        write_string(value, self.key(key));
    }

    /// A string member, left out when absent.
    pub(crate) fn string_if_some(&mut self, key: &'static str, value: Option<&str>) {
        if let Some(value) = value {
            self.string(key, value);
        }
    }

    /// A signed integer member.
    pub(crate) fn signed(&mut self, key: &'static str, value: i64) {
        let _ = write!(self.key(key), "{value}");
    }

    /// An unsigned integer member, left out when absent.
    pub(crate) fn unsigned_if_some(&mut self, key: &'static str, value: Option<u64>) {
        if let Some(value) = value {
            let _ = write!(self.key(key), "{value}");
        }
    }

    /// An array of strings, left out when empty.
    pub(crate) fn strings_if_any(&mut self, key: &'static str, values: &[String]) {
        if values.is_empty() {
            return;
        }
        let out = self.key(key);
        out.push('[');
        for (i, value) in values.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_string(value, out);
        }
        out.push(']');
    }

    /// Closes the object.
    pub(crate) fn close(self) {
        self.out.push('}');
    }
}

/// RFC 8785 §3.2.2.2: the short escapes, `\u00xx` (lower-case hex) for other control characters,
/// everything else literal.
///
/// Only ASCII bytes (`"`, `\`, below 0x20) ever need an escape, and no byte of a multi-byte UTF-8
/// character is ASCII: so the text is scanned by bytes ([`find_special`]) and each run between two
/// such bytes, multi-byte characters included, is copied whole.
pub(crate) fn write_string(s: &str, out: &mut String) {
    out.reserve(s.len() + 2);
    out.push('"');
    let mut rest = s;
    // Each position found is an ASCII byte, hence a character boundary: the splits cannot panic.
    while let Some(at) = find_special(rest.as_bytes()) {
        let (run, tail) = rest.split_at(at);
        let (special, tail) = tail.split_at(1);
        out.push_str(run);
        for c in special.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\u{08}' => out.push_str("\\b"),
                '\u{0c}' => out.push_str("\\f"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c => {
                    let _ = write!(out, "\\u{:04x}", u32::from(c));
                }
            }
        }
        rest = tail;
    }
    out.push_str(rest);
    out.push('"');
}

/// Whether `b` is written escaped.
fn is_special(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// The first byte of `bytes` that [`is_special`], eight at a time: most text has none, and a
/// word's worth of bytes is tested with a few arithmetic operations instead of eight branches.
fn find_special(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Non-zero when some byte of `x` is below `n` (n <= 0x80): the lowest such byte gets its high
    // bit from the subtraction (no byte under it borrows), and `!x` keeps it (it was below 0x80).
    // Bytes above it may be flagged by its borrow: only the byte search below says where.
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH;
    let (words, tail) = bytes.as_chunks::<8>();
    for (i, word) in words.iter().enumerate() {
        let x = u64::from_le_bytes(*word);
        if below(x, 0x20) | below(x ^ (ONES * u64::from(b'"')), 1) | below(x ^ (ONES * u64::from(b'\\')), 1) != 0
            && let Some(at) = word.iter().position(|&b| is_special(b))
        {
            return Some(i * 8 + at);
        }
    }
    tail.iter().position(|&b| is_special(b)).map(|at| words.len() * 8 + at)
}

/// Deterministic generators of awkward text for the byte-for-byte comparisons of this crate's
/// tests (no property-testing crate in the workspace).
#[cfg(test)]
pub(crate) mod generate {
    /// SplitMix64: small, fast, and the same sequence on every run.
    #[derive(Debug)]
    pub(crate) struct Rng(u64);

    impl Rng {
        pub(crate) fn new(seed: u64) -> Self {
            Self(seed)
        }

        pub(crate) fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        /// Uniform enough in `0..n` (`n > 0`).
        pub(crate) fn below(&mut self, n: u64) -> u64 {
            self.next_u64() % n
        }

        /// A character from every class the encoding treats differently: plain ASCII, the
        /// escaped ones (quote, backslash, each control character), DEL, and 2-, 3- and 4-byte
        /// UTF-8 (with the line separators and characters whose UTF-8 and UTF-16 orders differ).
        pub(crate) fn char(&mut self) -> char {
            const SPECIAL: &[char] = &[
                '"',
                '\\',
                '/',
                '\u{7f}',
                '\u{80}',
                'é',
                '\u{2028}',
                '\u{2029}',
                '\u{FB01}',
                '\u{FFFF}',
                '\u{1F600}',
                '\u{10FFFF}',
            ];
            let pick = |range: std::ops::RangeInclusive<u32>, rng: &mut Self| {
                let offset = rng.below(u64::from(range.end() - range.start()) + 1) as u32;
                char::from_u32(range.start() + offset).unwrap_or('\u{FFFD}')
            };
            match self.below(10) {
                0..=3 => pick(0x20..=0x7e, self),
                4 => pick(0x00..=0x1f, self),
                5 => SPECIAL.get(self.below(SPECIAL.len() as u64) as usize).copied().unwrap_or('x'),
                6 => pick(0x80..=0x7ff, self),
                7 => pick(0x800..=0xffff, self),
                8 => pick(0x1_0000..=0x10_ffff, self),
                _ => pick(b'a'.into()..=b'c'.into(), self),
            }
        }

        /// Up to `max` characters of [`Self::char`].
        pub(crate) fn string(&mut self, max: u64) -> String {
            let len = self.below(max + 1);
            (0..len).map(|_| self.char()).collect()
        }
    }
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

    /// The escaping as it was written first, a character at a time: the reference the faster
    /// [`write_string`] must equal.
    fn write_string_char_by_char(s: &str, out: &mut String) {
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

    fn both(s: &str) -> (String, String) {
        let (mut fast, mut reference) = (String::from("["), String::from("["));
        write_string(s, &mut fast);
        write_string_char_by_char(s, &mut reference);
        (fast, reference)
    }

    #[test]
    fn escaping_runs_equals_escaping_each_character() {
        // Every ASCII character alone, at the start, middle and end of a run, and doubled.
        for b in 0..=0x7f_u8 {
            let c = char::from(b);
            for s in [format!("{c}"), format!("{c}ab"), format!("a{c}b"), format!("ab{c}"), format!("{c}{c}é{c}")] {
                let (fast, reference) = both(&s);
                assert_eq!(fast, reference, "{s:?}");
            }
        }
        let mut rng = generate::Rng::new(0x5EED);
        for _ in 0..20_000 {
            let s = rng.string(24);
            let (fast, reference) = both(&s);
            assert_eq!(fast, reference, "{s:?}");
        }
    }

    /// The word-at-a-time search finds what a byte-by-byte one finds: every byte value as the
    /// only special candidate, at every position of the words and of the tail, on a background of
    /// every other byte value (exhaustive over pairs; a borrow from one byte into the next is
    /// where such tricks go wrong).
    #[test]
    fn finding_special_bytes_by_words_equals_by_bytes() {
        for background in 0..=u8::MAX {
            for needle in 0..=u8::MAX {
                for at in 0..19 {
                    let mut bytes = [background; 19];
                    if let Some(byte) = bytes.get_mut(at) {
                        *byte = needle;
                    }
                    let expected = bytes.iter().position(|&b| b < 0x20 || b == b'"' || b == b'\\');
                    assert_eq!(find_special(&bytes), expected, "{needle:#04x} at {at} among {background:#04x}");
                }
            }
        }
    }

    #[test]
    fn members_are_written_as_given() {
        let mut out = String::new();
        let mut members = Members::open(&mut out);
        members.signed("a", -1);
        members.strings_if_any("b", &[]);
        members.strings_if_any("c", &["x\"".to_owned(), String::new()]);
        members.string_if_some("d", None);
        members.unsigned_if_some("e", Some(u64::MAX));
        members.string("\u{1F600}", "☃");
        members.string("\u{FB01}", "");
        members.close();
        assert_eq!(
            out,
            format!("{{\"a\":-1,\"c\":[\"x\\\"\",\"\"],\"e\":{},\"\u{1F600}\":\"☃\",\"\u{FB01}\":\"\"}}", u64::MAX)
        );
    }

    /// Members given out of order are a bug in the caller, caught by the tests that run it.
    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "out of canonical order")]
    fn members_out_of_order_fail_in_debug_builds() {
        let mut out = String::new();
        let mut members = Members::open(&mut out);
        members.string("\u{FB01}", "");
        members.string("\u{1F600}", "");
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
