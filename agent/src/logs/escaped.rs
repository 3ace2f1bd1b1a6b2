//! The forms a secret value takes when a tool writes it inside a quoted string, for the masker
//! ([`super::mask`]): a value with a `"`, a `\`, a `<` or a control character is no longer itself
//! once escaped, and without these forms only its pieces between escapes would be masked (those
//! of at least the window's length), leaving the rest readable.
//!
//! - JSON as Go's `encoding/json` writes it: Terraform (`terraform show -json`, `-json` output,
//!   `jsonencode`), Vault, most Go tools. `"` `\` and control characters escaped (`\n`, `\b`, …,
//!   `\u001b`), and `<` `>` `&` U+2028 U+2029 as `\u003c` `\u003e` `\u0026` `\u2028` `\u2029`.
//! - JSON as serde_json and JavaScript write it: the same without the HTML and line-separator
//!   escapes.
//! - JSON with every non-ASCII character as `\uXXXX` (surrogate pairs above U+FFFF): Python's
//!   default.
//! - Go's JSON of Go's JSON: a JSON document held in a JSON string (an IAM policy in a plan).
//! - HCL as Terraform prints a string value (Go's `strconv.Quote`, then `${` as `$${`).
//! - HCL as written in source (`hclwrite`): `\n` `\r` `\t` `\"` `\\`, `${` as `$${`, `%{` as
//!   `%%{`, other control characters as `\uXXXX`.
//!
//! A value that is not UTF-8 has no such forms (JSON encoders would replace its bytes). Forms equal
//! to the value itself are left out.

/// Every escaped form of `value` that differs from it, without duplicates.
pub fn forms(value: &[u8]) -> Vec<Vec<u8>> {
    let Ok(text) = std::str::from_utf8(value) else { return Vec::new() };
    let go = json(text, Json::Go);
    let mut forms = vec![
        json(&go, Json::Go),
        go,
        json(text, Json::Plain),
        json(text, Json::Ascii),
        terraform_hcl(text),
        hcl_source(text),
    ];
    forms.retain(|form| form.as_bytes() != value);
    forms.sort();
    forms.dedup();
    forms.into_iter().map(String::into_bytes).collect()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Json {
    /// Go's `encoding/json` (HTML-safe, line separators escaped).
    Go,
    /// serde_json, JavaScript's `JSON.stringify`.
    Plain,
    /// Python's `json.dumps` (`ensure_ascii`).
    Ascii,
}

/// `text` as the inside of a JSON string literal, written in `style`.
fn json(text: &str, style: Json) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if u32::from(c) < 0x20 => push_u(&mut out, c),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' if style == Json::Go => push_u(&mut out, c),
            c if style == Json::Ascii && !c.is_ascii() => push_u(&mut out, c),
            c => out.push(c),
        }
    }
    out
}

/// `\uXXXX` (lowercase hex, as all three encoders write it), as a surrogate pair above U+FFFF.
fn push_u(out: &mut String, c: char) {
    let mut units = [0u16; 2];
    for unit in c.encode_utf16(&mut units) {
        out.push_str(&format!("\\u{unit:04x}"));
    }
}

/// A string value as Terraform prints it in a plan or in `terraform console`: Go's
/// `strconv.Quote` (without the quotes), then `${` as `$${`.
fn terraform_hcl(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.replace("${", "$${")
}

/// A string as HCL source writes it between quotes (`hclwrite`).
fn hcl_source(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.replace("${", "$${").replace("%{", "%%{")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has(value: &str, form: &str) -> bool {
        forms(value.as_bytes()).iter().any(|f| f == form.as_bytes())
    }

    #[test]
    fn json_as_go_serde_and_python_write_it() {
        // serde_json agrees with the plain form, byte for byte.
        let value = "a\"b\\c<d>&e\nf\u{1}g\u{e9}h\u{2028}i\u{1f600}";
        let serde = serde_json::to_string(value).unwrap_or_default();
        assert!(has(value, &serde[1..serde.len() - 1]), "{serde}");
        assert!(has(value, "a\\\"b\\\\c\\u003cd\\u003e\\u0026e\\nf\\u0001g\u{e9}h\\u2028i\u{1f600}"), "Go");
        assert!(has(value, "a\\\"b\\\\c<d>&e\\nf\\u0001g\\u00e9h\\u2028i\\ud83d\\ude00"), "Python");
    }

    #[test]
    fn json_inside_json_is_escaped_twice() {
        // What Terraform's plan JSON holds for `jsonencode({k = "p\"<"})`.
        assert!(has("p\"<", "p\\\\\\\"\\\\u003c"));
    }

    #[test]
    fn hcl_as_terraform_prints_and_as_source_writes() {
        let value = "a\"b\\c${d}%{e}\u{1b}";
        assert!(has(value, "a\\\"b\\\\c$${d}%{e}\\x1b"), "terraform plan output");
        assert!(has(value, "a\\\"b\\\\c$${d}%%{e}\\u001b"), "hclwrite");
    }

    #[test]
    fn a_value_that_needs_no_escape_has_no_forms() {
        assert!(forms(b"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY").is_empty());
        assert!(forms(&[0xff, 0xfe, b'"']).is_empty(), "not UTF-8");
    }
}
