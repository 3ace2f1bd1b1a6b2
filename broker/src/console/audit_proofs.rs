//! The evidence half of the audit page: the latest signed checkpoint, how to check it offline,
//! and each traced entry with what a reader needs to check its inclusion without trusting the
//! page's words — the entry's exact hashed bytes, its leaf index and hash, its audit path, and
//! the tree size and root it leads to.
//!
//! The data rides in `data-*` attributes that `assets/verify.js` reads: it recomputes
//! `SHA-256(0x00 ‖ bytes)`, walks the path (RFC 9162 §2.1.3.2) and compares with the root shown
//! here. Without script each entry says it is unchecked and names the command that checks it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use maud::{Markup, html};

use crate::audit::trace_view::time;

/// The latest signed checkpoint, as stored.
#[derive(Debug, Clone, Copy)]
pub struct Checkpoint<'a> {
    /// The tree size it covers.
    pub size: u64,
    /// Its root (hex).
    pub root: &'a str,
    /// The signed note, verbatim.
    pub note: &'a str,
    /// When it was signed (Unix seconds).
    pub at: i64,
}

/// One traced entry and its inclusion proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proved {
    /// Sequence number: the leaf index.
    pub seq: u64,
    /// The entry's kind.
    pub kind: String,
    /// The canonical JSON that was hashed, as stored.
    pub body: String,
    /// The leaf hash in the tree (hex).
    pub leaf_hash: String,
    /// The tree size the proof is against: the checkpoint's, or the log's current size for an
    /// entry no checkpoint covers yet.
    pub tree_size: u64,
    /// The audit path (hex), bottom-up.
    pub proof: Vec<String>,
}

/// A signature line of a signed note: the key's name, its 4-byte key ID (hex) and the signature
/// (base64), or `None` for a line that is not one.
pub fn signatures(note: &str) -> Vec<(String, String, String)> {
    let mut lines = note.lines().skip_while(|line| !line.is_empty());
    lines.next();
    lines
        .filter_map(|line| {
            let (name, blob) = line.strip_prefix("\u{2014} ")?.split_once(' ')?;
            let blob = B64.decode(blob.trim()).ok()?;
            let (id, signature) = (blob.get(..4)?, blob.get(4..)?);
            Some((name.to_owned(), keyward_proto::encoding::hex(id), B64.encode(signature)))
        })
        .collect()
}

/// The checkpoint section: its facts, the note itself, and how to check it offline.
pub fn checkpoint(checkpoint: Option<Checkpoint<'_>>) -> Markup {
    let Some(cp) = checkpoint else {
        return html! {
            section #checkpoint {
                h2 { "Latest signed checkpoint" }
                p { "No checkpoint yet. The broker signs one every " code { "[audit] checkpoint_interval" }
                    " when the log grew; sign one now with " code { "keyward audit checkpoint" } "." }
            }
        };
    };
    html! {
        section #checkpoint data-anchor data-signed="true" data-size=(cp.size) data-root=(cp.root) {
            h2 { "Latest signed checkpoint" }
            table.facts {
                tr { th { "Entries covered" } td { (cp.size) } }
                tr { th { "Root (hex)" } td { code { (cp.root) } } }
                tr { th { "Signed" } td { (time(cp.at)) } }
                @for (name, id, signature) in signatures(cp.note) {
                    tr { th { "Key" } td { code { (name) } " key ID " code { (id) } } }
                    tr { th { "Signature (Ed25519)" } td { code.wrap { (signature) } } }
                }
            }
            details {
                summary { "The signed note (save it as " code { "cp-" (cp.size) ".txt" } ")" }
                pre { (cp.note) }
            }
            h2 { "Check it offline" }
            p { "With the log's public key, an export and this note, no broker needed (docs/audit.md):" }
            // Focusable: the commands are wider than a phone, and a keyboard must reach them.
            div.scroll tabindex="0" { pre { (offline_commands(cp.size)) } }
        }
    }
}

/// The commands that check the checkpoint of `size` entries and what it covers, offline.
fn offline_commands(size: u64) -> String {
    format!(
        "keyward audit public-key > log.pub      # once; keep it where the broker's operators cannot change it\n\
         # save the signed note above as cp-{size}.txt\n\
         keyward audit export --to {size} > log.jsonl\n\
         keyward-verify export log.jsonl --checkpoint cp-{size}.txt --public-key log.pub\n\
         # one entry, N: its proof from the API, tied to the checkpoint and the export\n\
         curl -sH \"Authorization: Bearer $KEYWARD_TOKEN\" \"$KEYWARD_ADDR/v1/audit/proof/inclusion?seq=N&size={size}\" > inclusion.json\n\
         keyward-verify proof inclusion inclusion.json --checkpoint cp-{size}.txt --public-key log.pub --export log.jsonl"
    )
}

/// The traced entries with their proofs, checked by `verify.js` where script runs.
pub fn entries(proved: &[Proved], head_size: u64, head_root: &str) -> Markup {
    html! {
        h2 { "Inclusion proofs" }
        p #proof-summary data-anchor data-size=(head_size) data-root=(head_root) {
            "Not checked in this page: your browser ran no script here. Each entry names the command that checks it; "
            "or check the whole log offline as shown below."
        }
        div.scroll {
            table.proofs {
                thead { tr { th { "Entry" } th { "Kind" } th { "Leaf hash" } th { "Proof" } th { "Checked" } } }
                tbody {
                    @for entry in proved {
                        tr data-entry data-seq=(entry.seq) data-size=(entry.tree_size)
                            data-leaf-hash=(entry.leaf_hash) data-proof=(entry.proof.join(" "))
                            data-body=(B64.encode(entry.body.as_bytes())) {
                            td { (entry.seq) }
                            td { code { (entry.kind) } }
                            td { code.wrap { (entry.leaf_hash) } }
                            td {
                                details {
                                    summary { (entry.proof.len()) " hashes, tree of " (entry.tree_size) }
                                    ol { @for hash in &entry.proof { li { code { (hash) } } } }
                                }
                            }
                            td data-status {
                                "unchecked: " code { "keyward audit prove --entry " (entry.seq) " --size " (entry.tree_size) }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOTE: &str = "example.com/audit\n3\nq83vEjRWeJA=\n\n\u{2014} example.com/audit AQIDBAUGBwg=\n";

    #[test]
    fn signature_lines_give_the_key_id_and_signature() {
        assert_eq!(
            signatures(NOTE),
            vec![("example.com/audit".to_owned(), "01020304".to_owned(), B64.encode([5u8, 6, 7, 8]))]
        );
        assert!(signatures("no body\n\nnot a signature\n\u{2014} k !!!\n").is_empty());
    }

    #[test]
    fn the_checkpoint_and_entries_carry_their_data_escaped() {
        let cp = Checkpoint { size: 3, root: "abcd", note: NOTE, at: 0 };
        let html = checkpoint(Some(cp)).into_string();
        assert!(html.contains(r#"data-size="3" data-root="abcd""#), "{html}");
        assert!(html.contains("keyward-verify export log.jsonl --checkpoint cp-3.txt --public-key log.pub"), "{html}");
        assert!(html.contains("<code>01020304</code>"), "{html}");
        assert!(checkpoint(None).into_string().contains("No checkpoint yet"));

        let body = r#"{"kind":"<script>","seq":1}"#;
        let proved = Proved {
            seq: 1,
            kind: "<script>".into(),
            body: body.into(),
            leaf_hash: "ff".into(),
            tree_size: 3,
            proof: vec!["aa".into(), "bb".into()],
        };
        let html = entries(std::slice::from_ref(&proved), 4, "ee").into_string();
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains(&format!(r#"data-body="{}""#, B64.encode(body))), "{html}");
        assert!(html.contains(r#"data-proof="aa bb""#) && html.contains(r#"data-size="4" data-root="ee""#), "{html}");
        assert!(html.contains("keyward audit prove --entry 1 --size 3"), "{html}");
    }
}
