//! Offline verification of an audit export (`audit::verify::verify_export`, what `keyward audit
//! verify` runs on a file someone handed over) against signed checkpoints.
//!
//! Input: `mode ‖ export ‖ (0x00 ‖ checkpoint note)*`; the notes are checked with the fixture log
//! key (the seeds carry notes it signed) and also read as verifier keys. When bit 0 of `mode` is
//! set, every line that is an export line gets its leaf hash recomputed first, as anyone editing
//! an export can do: the fuzzer's entries then reach the sequence and checkpoint checks. What
//! must hold for an export that verifies:
//! - it holds exactly its non-blank lines as entries, numbered from its first;
//! - each entry's canonical form reads back as the same entry (anyone can re-encode it and get
//!   the hashed bytes), and each line reads back from its own serialization;
//! - the export re-serialized line by line verifies again, to the same tree head.

use keyward_broker::audit::Entry;
use keyward_broker::audit::checkpoint::VerifierKey;
use keyward_broker::audit::merkle::leaf_hash;
use keyward_broker::audit::verify::{ExportLine, verify_export};

use crate::Outcome;
use crate::fixtures::log_verifier;

/// Runs one input.
pub fn check(data: &[u8]) -> Outcome {
    let Some((&mode, data)) = data.split_first() else { return Outcome::Refused };
    let mut parts = data.split(|b| *b == 0);
    let export = parts.next().unwrap_or_default();
    let rehashed;
    let export = if mode & 1 == 1 {
        rehashed = rehash(export);
        rehashed.as_slice()
    } else {
        export
    };
    let notes: Vec<String> = parts.map(|note| String::from_utf8_lossy(note).into_owned()).collect();
    for note in &notes {
        let _ = note.parse::<VerifierKey>();
    }
    let Ok(report) = verify_export(export, &notes, Some(log_verifier())) else { return Outcome::Refused };
    let lines: Vec<&str> = std::str::from_utf8(export)
        .expect("a verified export is UTF-8")
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    assert_eq!(report.entries, lines.len() as u64, "every non-blank line is an entry");
    assert_eq!(report.checkpoints.len(), notes.len(), "every checkpoint was checked");
    let mut again = String::new();
    for (index, line) in lines.iter().enumerate() {
        let parsed: ExportLine = serde_json::from_str(line).expect("a verified line parses");
        assert_eq!(parsed.entry.seq, report.first + index as u64, "entries are numbered in order");
        let canonical = parsed.entry.canonical().expect("a verified entry has a canonical form");
        let reread: Entry = serde_json::from_str(&canonical).expect("the canonical form is JSON");
        assert_eq!(reread, parsed.entry, "the canonical form reads back as the same entry");
        assert_eq!(reread.canonical().ok().as_deref(), Some(canonical.as_str()), "canonical is a fixed point");
        let serialized = serde_json::to_string(&parsed).expect("an export line serializes");
        let back: ExportLine = serde_json::from_str(&serialized).expect("a serialized line parses");
        assert_eq!(back.entry, parsed.entry, "an export line reads back from its serialization");
        again.push_str(&serialized);
        again.push('\n');
    }
    let second = verify_export(again.as_bytes(), &notes, Some(log_verifier()))
        .expect("a verified export, re-serialized, verifies");
    assert_eq!(second.root, report.root, "the same entries make the same tree");
    Outcome::Accepted
}

/// `export` with each line that is an export line given the leaf hash of its entry.
fn rehash(export: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(export.len());
    for line in export.split_inclusive(|b| *b == b'\n') {
        let rewritten = std::str::from_utf8(line)
            .ok()
            .and_then(|text| serde_json::from_str::<ExportLine>(text).ok())
            .and_then(|mut parsed| {
                let canonical = parsed.entry.canonical().ok()?;
                parsed.leaf_hash = leaf_hash(canonical.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
                serde_json::to_string(&parsed).ok()
            });
        match rewritten {
            Some(text) => {
                out.extend_from_slice(text.as_bytes());
                out.push(b'\n');
            }
            None => out.extend_from_slice(line),
        }
    }
    out
}
