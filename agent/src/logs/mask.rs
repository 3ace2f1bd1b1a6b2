//! Masking a job's output before it is chunked, hashed and signed (DESIGN.md §8.5).
//!
//! Every credential value issued to the job is replaced with `***`, and so are its common
//! encodings: standard and URL-safe base64 at each of the three byte alignments the value can have
//! inside a longer encoded text, the padded standard encoding, percent-encoding, and the forms it
//! takes escaped inside a JSON or HCL string ([`super::escaped`]: `\"`, `\\`, `\u003c`, `$${`, …,
//! as Terraform, Go, serde and Python write them). Every 10-byte window of the value, of its
//! escaped forms and of its standard base64 encodings is masked too, so a value a
//! tool cuts into pieces is masked piece by piece: base64 wrapped over several lines (as `base64`
//! does at 76 columns), or a value Terraform prints as two prefixed lines because it arrived in
//! two writes. Configured regular
//! expressions (`--mask-pattern`, plus built-ins for AWS access key IDs, Vault tokens and JWTs)
//! are masked too.
//!
//! A process writes when it likes, so a value can arrive split across two reads (`printf` of each
//! half). The masker therefore never emits the last `longest value − 1` bytes it has seen until
//! more output shows they cannot begin a value, or the stream ends; and since a regular
//! expression can only be judged on a whole line, it emits up to the last complete line (a line
//! longer than [`LONGEST_LINE`] is cut there). When the stream ends, a trailing fragment of at
//! least [`MIN_FRAGMENT`] bytes that begins a value is masked too: the process may have written
//! half a secret and exited.
//!
//! What it cannot catch, and docs/sandbox.md says so: a value transformed in ways not listed
//! (reversed, hex, encrypted), and a piece of a cut-up value shorter than the window.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use aho_corasick::AhoCorasick;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use regex::bytes::Regex;

/// What replaces a masked value.
pub const MASK: &[u8] = b"***";
/// Values shorter than this are not masked (they would mask ordinary words); the broker never
/// issues credentials this short.
pub const MIN_SECRET: usize = 6;
/// The window of a value, or of its base64 encoding, that is masked on its own (cut-up values).
const WINDOW: usize = 10;
/// A line is cut here for the regular expressions' sake when it has no newline yet.
pub const LONGEST_LINE: usize = 16 * 1024;
/// The shortest trailing fragment of a value masked when a stream ends.
pub const MIN_FRAGMENT: usize = 4;

/// Patterns masked in every job's output whatever its credentials.
const BUILT_IN_PATTERNS: [&str; 3] = [
    // AWS access key IDs (long-term and temporary).
    r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b",
    // Vault / OpenBao service, batch and recovery tokens.
    r"\bhv[sbr]\.[A-Za-z0-9_-]{20,}",
    // JWTs (run tokens, web-identity tokens).
    r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
];

/// A `--mask-pattern` that is not a valid regular expression.
#[derive(Debug, thiserror::Error)]
#[error("invalid --mask-pattern `{pattern}`: {message}")]
pub struct PatternError {
    /// The pattern.
    pub pattern: String,
    /// Why.
    pub message: String,
}

/// The agent's configured secret patterns, compiled once.
#[derive(Clone, Default)]
pub struct Patterns {
    compiled: Vec<Regex>,
}

impl fmt::Debug for Patterns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Patterns").field("count", &self.compiled.len()).finish()
    }
}

impl Patterns {
    /// The built-in patterns plus `extra`.
    pub fn new(extra: &[String]) -> Result<Self, PatternError> {
        let mut compiled = Vec::with_capacity(BUILT_IN_PATTERNS.len() + extra.len());
        for pattern in BUILT_IN_PATTERNS.iter().copied().chain(extra.iter().map(String::as_str)) {
            let regex = Regex::new(pattern)
                .map_err(|e| PatternError { pattern: pattern.to_owned(), message: e.to_string() })?;
            compiled.push(regex);
        }
        Ok(Self { compiled })
    }
}

/// What one job's output is masked with: its secret values (and their encodings) and the
/// patterns. Built once per job and shared by its streams.
pub struct MaskRules {
    literals: Option<AhoCorasick>,
    /// The long forms of each value (raw and whole encodings): what an unfinished value can be.
    whole: Vec<Vec<u8>>,
    /// Indexes into `whole` by first byte.
    starting_with: HashMap<u8, Vec<usize>>,
    /// Whether base64 windows are masked (then a trailing run of base64 characters may be one).
    windows: bool,
    longest: usize,
    patterns: Patterns,
}

impl fmt::Debug for MaskRules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MaskRules")
            .field("values", &self.whole.len())
            .field("longest", &self.longest)
            .field("patterns", &self.patterns)
            .finish()
    }
}

impl MaskRules {
    /// Rules for `secrets` (values shorter than [`MIN_SECRET`] are skipped) and `patterns`.
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a [u8]>, patterns: Patterns) -> Arc<Self> {
        let mut whole = Vec::new();
        let mut windows = Vec::new();
        for secret in secrets.into_iter().filter(|s| s.len() >= MIN_SECRET) {
            whole.push(secret.to_vec());
            // A tool may cut a value apart and print each piece on its own line, with its own
            // prefix (Terraform does this to `local-exec` output that arrives in two writes).
            windows.extend(secret.windows(WINDOW).map(<[u8]>::to_vec));
            whole.push(STANDARD.encode(secret).into_bytes());
            let percent = percent_encode(secret);
            if percent != secret {
                whole.push(percent);
            }
            // Escaped inside a quoted string, a value with a `"` or a `<` is no longer itself: only
            // its pieces between escapes would match.
            for escaped in super::escaped::forms(secret) {
                windows.extend(escaped.windows(WINDOW).map(<[u8]>::to_vec));
                whole.push(escaped);
            }
            for skip in 0..3 {
                let Some(rest) = secret.get(skip..) else { continue };
                let aligned = rest.get(..rest.len() / 3 * 3).unwrap_or_default();
                if aligned.len() < 3 {
                    continue;
                }
                let standard = STANDARD_NO_PAD.encode(aligned).into_bytes();
                windows.extend(standard.windows(WINDOW).map(<[u8]>::to_vec));
                whole.push(URL_SAFE_NO_PAD.encode(aligned).into_bytes());
                whole.push(standard);
            }
        }
        whole.sort();
        whole.dedup();
        windows.sort();
        windows.dedup();
        let longest = whole.iter().chain(&windows).map(Vec::len).max().unwrap_or(0);
        let literals = if whole.is_empty() {
            None
        } else {
            // Standard match semantics: overlapping matches of different values are all found,
            // and the union of them is masked.
            AhoCorasick::new(whole.iter().chain(&windows)).ok()
        };
        let mut starting_with: HashMap<u8, Vec<usize>> = HashMap::new();
        for (index, value) in whole.iter().enumerate() {
            if let Some(&first) = value.first() {
                starting_with.entry(first).or_default().push(index);
            }
        }
        Arc::new(Self { literals, whole, starting_with, windows: !windows.is_empty(), longest, patterns })
    }

    /// The patterns these rules mask.
    pub fn patterns(&self) -> &Patterns {
        &self.patterns
    }

    /// Rules that mask only the patterns (a job with no credentials).
    pub fn patterns_only(patterns: Patterns) -> Arc<Self> {
        Self::new(std::iter::empty(), patterns)
    }

    /// Byte ranges of `text` to mask: every literal match that starts before `limit`, and every
    /// pattern match in `text[..limit]`. Returns them and where the first `limit` bytes really end
    /// (a literal starting before `limit` may run past it).
    fn ranges(&self, text: &[u8], limit: usize) -> (Vec<(usize, usize)>, usize) {
        let mut ranges = Vec::new();
        let mut end = limit;
        if let Some(literals) = &self.literals {
            for found in literals.find_overlapping_iter(text) {
                if found.start() < limit {
                    end = end.max(found.end());
                    ranges.push((found.start(), found.end()));
                }
            }
        }
        let judged = text.get(..end).unwrap_or(text);
        for regex in &self.patterns.compiled {
            ranges.extend(regex.find_iter(judged).map(|m| (m.start(), m.end())));
        }
        (ranges, end)
    }

    /// Where the unfinished value `text` may end with begins: the earliest position whose
    /// remainder, at least `shortest` bytes long, begins one of the values' forms (and, while
    /// streaming, a trailing run of base64 characters that may begin a window). `text.len()` when
    /// there is none.
    fn unfinished_from(&self, text: &[u8], shortest: usize, streaming: bool) -> usize {
        let mut from = text.len();
        if streaming && self.windows {
            let run = text.iter().rev().take(WINDOW - 1).take_while(|&&b| is_base64(b)).count();
            from -= run;
        }
        let earliest = text.len().saturating_sub(self.longest.saturating_sub(1));
        for start in earliest..from {
            let rest = text.get(start..).unwrap_or_default();
            if rest.len() < shortest {
                break;
            }
            let Some(candidates) = rest.first().and_then(|b| self.starting_with.get(b)) else { continue };
            if candidates.iter().filter_map(|&i| self.whole.get(i)).any(|v| v.len() > rest.len() && v.starts_with(rest))
            {
                return start;
            }
        }
        from
    }
}

fn is_base64(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'+' || byte == b'/'
}

/// One stream's masker: holds back what might still become a value.
#[derive(Debug)]
pub struct Masker {
    rules: Arc<MaskRules>,
    pending: Vec<u8>,
}

impl Masker {
    /// A masker for one stream.
    pub fn new(rules: Arc<MaskRules>) -> Self {
        Self { rules, pending: Vec::new() }
    }

    /// Bytes held back, waiting for more output or the end.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Takes `input` and appends to `out` what is now safe to emit, masked.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        self.pending.extend_from_slice(input);
        let text = std::mem::take(&mut self.pending);
        // Bytes from here on could begin a value that is not complete yet.
        let unsure = self.rules.unfinished_from(&text, 1, true);
        let limit = match text.get(..unsure).and_then(|sure| sure.iter().rposition(|&b| b == b'\n')) {
            Some(newline) => newline + 1,
            None if unsure >= LONGEST_LINE => unsure,
            None => 0,
        };
        if limit == 0 {
            self.pending = text;
            return;
        }
        let (ranges, end) = self.rules.ranges(&text, limit);
        emit(text.get(..end).unwrap_or(&text), ranges, out);
        self.pending = text.get(end..).unwrap_or_default().to_vec();
    }

    /// The stream ended: appends everything held back, masked, including a trailing fragment of
    /// a value.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        let text = std::mem::take(&mut self.pending);
        let (mut ranges, _) = self.rules.ranges(&text, text.len());
        let fragment = self.rules.unfinished_from(&text, MIN_FRAGMENT, false);
        if fragment < text.len() {
            ranges.push((fragment, text.len()));
        }
        emit(&text, ranges, out);
    }
}

/// Appends `text` to `out` with each range of `ranges` replaced by [`MASK`]; overlapping and
/// touching ranges become one mask. Line breaks inside a range are kept (each line's part
/// becomes a mask of its own), so a multi-line value, or a piece of one that ends with its line
/// break, does not pull the lines around it into one.
fn emit(text: &[u8], mut ranges: Vec<(usize, usize)>, out: &mut Vec<u8>) {
    ranges.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        let end = end.min(text.len());
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    let mut at = 0;
    for (start, end) in merged {
        out.extend_from_slice(text.get(at..start).unwrap_or_default());
        let masked = text.get(start..end).unwrap_or_default();
        for (index, part) in masked.split(|&b| b == b'\n').enumerate() {
            if index > 0 {
                out.push(b'\n');
            }
            if !part.is_empty() {
                out.extend_from_slice(MASK);
            }
        }
        at = end;
    }
    out.extend_from_slice(text.get(at..).unwrap_or_default());
}

/// `value` with every byte outside `A-Za-z0-9-._~` percent-encoded, as URLs and form bodies carry it.
fn percent_encode(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    for &byte in value {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte);
        } else {
            out.extend_from_slice(format!("%{byte:02X}").as_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    fn rules(secrets: &[&str]) -> Arc<MaskRules> {
        MaskRules::new(secrets.iter().map(|s| s.as_bytes()), Patterns::new(&[]).expect("built-ins compile"))
    }

    /// Feeds `pieces` one after another and returns everything emitted.
    fn masked(rules: &Arc<MaskRules>, pieces: &[&[u8]]) -> String {
        let mut masker = Masker::new(Arc::clone(rules));
        let mut out = Vec::new();
        for piece in pieces {
            masker.push(piece, &mut out);
        }
        masker.finish(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn a_value_is_masked_whole_and_split_at_every_byte() {
        let rules = rules(&[SECRET]);
        let line = format!("key={SECRET} done\n");
        assert_eq!(masked(&rules, &[line.as_bytes()]), "key=*** done\n");
        for split in 0..line.len() {
            let (a, b) = line.as_bytes().split_at(split);
            assert_eq!(masked(&rules, &[a, b]), "key=*** done\n", "split at {split}");
        }
        // Byte by byte.
        let bytes: Vec<&[u8]> = line.as_bytes().chunks(1).collect();
        assert_eq!(masked(&rules, &bytes), "key=*** done\n");
    }

    #[test]
    fn encodings_of_a_value_are_masked() {
        let rules = rules(&[SECRET]);
        for encoded in [
            STANDARD.encode(SECRET),
            URL_SAFE_NO_PAD.encode(SECRET),
            STANDARD.encode(format!("x{SECRET}")),
            STANDARD.encode(format!("xy{SECRET}")),
            STANDARD.encode(format!("{{\"key\":\"{SECRET}\"}}")),
            String::from_utf8(percent_encode(SECRET.as_bytes())).expect("ascii"),
        ] {
            let out = masked(&rules, &[format!("{encoded}\n").as_bytes()]);
            let core = STANDARD_NO_PAD.encode(&SECRET.as_bytes()[..39]);
            assert!(!out.contains(&core[4..30]), "{encoded} -> {out}");
            assert!(out.contains("***"), "{encoded} -> {out}");
        }
    }

    /// A value with every character JSON and HCL escape, and pieces shorter than the window
    /// between them.
    const ESCAPY: &str = "pa\"ss\\w<o>r&d${x}%{y}\u{e9}\n1";

    #[test]
    fn json_and_hcl_escaped_forms_are_masked_whole_and_split_at_every_byte() {
        let rules = rules(&[ESCAPY]);
        let serde = serde_json::to_string(ESCAPY).unwrap_or_default();
        for escaped in [
            // Go (Terraform's `show -json`), serde_json, Python's ensure_ascii, JSON in JSON.
            "pa\\\"ss\\\\w\\u003co\\u003er\\u0026d${x}%{y}\u{e9}\\n1".to_owned(),
            serde.trim_matches('"').to_owned(),
            "pa\\\"ss\\\\w<o>r&d${x}%{y}\\u00e9\\n1".to_owned(),
            "pa\\\\\\\"ss\\\\\\\\w\\\\u003co\\\\u003er\\\\u0026d${x}%{y}\u{e9}\\\\n1".to_owned(),
            // As Terraform prints it in a plan, and as HCL source writes it.
            "pa\\\"ss\\\\w<o>r&d$${x}%{y}\u{e9}\\n1".to_owned(),
            "pa\\\"ss\\\\w<o>r&d$${x}%%{y}\u{e9}\\n1".to_owned(),
        ] {
            let line = format!("value = \"{escaped}\" done\n");
            let expected = "value = \"***\" done\n";
            assert_eq!(masked(&rules, &[line.as_bytes()]), expected, "{escaped}");
            for split in 0..line.len() {
                let (a, b) = line.as_bytes().split_at(split);
                assert_eq!(masked(&rules, &[a, b]), expected, "{escaped} split at {split}");
            }
        }
    }

    #[test]
    fn base64_wrapped_over_lines_is_masked_piece_by_piece() {
        let token = "hvs.CAESIJlWh0bJxq6CqKzNrZ2YzU3Q2c1h4eTNmVXpUZ2dOcHVzVVNoMEtBcDRIaU5vbGVQU3ZjdjVSdFY";
        let rules = MaskRules::new([token.as_bytes()], Patterns::default());
        let encoded = STANDARD.encode(token);
        let wrapped: String =
            encoded.as_bytes().chunks(76).map(|line| format!("{}\n", String::from_utf8_lossy(line))).collect();
        let out = masked(&rules, &[wrapped.as_bytes()]);
        for line in out.lines() {
            assert!(line.starts_with("***") || line.len() < WINDOW, "{out}");
        }
    }

    #[test]
    fn a_multi_line_value_keeps_the_line_breaks_around_its_masks() {
        let key = "-----BEGIN TEST KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END TEST KEY-----\n";
        let rules = rules(&[key]);
        assert_eq!(masked(&rules, &[format!("key:\n{key}done\n").as_bytes()]), "key:\n***\n***\n***\ndone\n");
        // Each line printed with a prefix (as Terraform prints a `local-exec`'s output): a
        // 10-byte window ending in the value's line break is masked, the break is not lost.
        let prefixed: String = key.lines().map(|line| format!("exec: {line}\n")).collect();
        assert_eq!(masked(&rules, &[prefixed.as_bytes()]), "exec: ***\nexec: ***\nexec: ***\n");
    }

    #[test]
    fn patterns_mask_without_credentials_and_bad_patterns_are_refused() {
        let rules = MaskRules::patterns_only(Patterns::new(&["password=\\S+".to_owned()]).expect("valid"));
        let out = masked(&rules, &[b"id AKIAIOSFODNN7EXAMPLE and password=hunter22\n"]);
        assert_eq!(out, "id *** and ***\n");
        let error = Patterns::new(&["(".to_owned()]).expect_err("invalid");
        assert!(error.to_string().contains("--mask-pattern `(`"), "{error}");
    }

    #[test]
    fn a_trailing_half_value_is_masked_at_the_end_and_short_values_are_ignored() {
        let rules = rules(&[SECRET, "abc"]);
        assert_eq!(masked(&rules, &[format!("half {}", &SECRET[..12]).as_bytes()]), "half ***");
        assert_eq!(masked(&rules, &[b"abc is fine\n"]), "abc is fine\n");
    }

    #[test]
    fn output_is_held_back_only_while_it_could_begin_a_value() {
        let rules = rules(&[SECRET]);
        let mut masker = Masker::new(Arc::clone(&rules));
        let mut out = Vec::new();
        masker.push(b"first line\nsecond", &mut out);
        // A whole line goes out at once; "second" has no newline yet: held back.
        assert_eq!(out, b"first line\n");
        masker.push(b" line\nthird wJalrX", &mut out);
        assert_eq!(out, b"first line\nsecond line\n", "a line that ends where a value may begin waits");
        masker.push(&[b'x'; 2 * LONGEST_LINE], &mut out);
        assert!(out.len() > LONGEST_LINE, "a line without a newline is cut at the longest-line bound");
        assert!(masker.pending() < rules.longest + 1);
        // Overlapping values are masked as one range.
        let both = rules_for_overlap();
        assert_eq!(masked(&both, &[b"[abcdefghij]\n"]), "[***]\n");
    }

    fn rules_for_overlap() -> Arc<MaskRules> {
        MaskRules::new([b"abcdefg".as_slice(), b"efghij".as_slice()], Patterns::default())
    }

    #[test]
    fn debug_never_shows_values() {
        let rules = rules(&[SECRET]);
        assert!(!format!("{rules:?}").contains("wJalr"));
        assert!(!format!("{:?}", Masker::new(rules)).contains("wJalr"));
    }
}
