//! `keyward audit trace KEY`: from an access key ID, token `jti`, role session name, Vault
//! accessor or run ID back to the run, its code, and the people behind it.
//!
//! Every entry shown is first checked against the signed tree by its inclusion proof. The
//! rendering is `crate::audit::trace_view`'s, shared with the console.

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use super::audit::{parse_hash, parse_hashes};
use super::client::{Client, items, print_json};
use super::output::outln;
use crate::audit::canonical::to_canonical;
use crate::audit::merkle;
use crate::audit::trace_view::{at, render};
use keyward_proto::encoding::percent_encode;

/// Fetches what the log holds about `key`, verifies each entry's inclusion, and prints it.
pub(super) async fn trace(client: &Client, key: &str, json: bool) -> anyhow::Result<()> {
    let answer = client.get(&format!("/v1/audit/trace/{}", percent_encode(key))).await?;
    let lines: Vec<&Value> = items(&answer, "entries").collect();
    if lines.is_empty() {
        bail!("nothing in the audit log refers to `{key}`");
    }
    // Every entry shown must be in the signed tree: check each inclusion proof here.
    let size = at(&answer, "/log/size").as_u64().context("no log size")?;
    let root = parse_hash(at(&answer, "/log/root"))?;
    for line in &lines {
        let seq = at(line, "/entry/seq").as_u64().context("no seq")?;
        let proof = client.get(&format!("/v1/audit/proof/inclusion?seq={seq}&size={size}")).await?;
        let canonical = to_canonical(at(line, "/entry"))?;
        merkle::verify_inclusion(
            &merkle::leaf_hash(canonical.as_bytes()),
            seq,
            size,
            &parse_hashes(at(&proof, "/proof"))?,
            &root,
        )
        .with_context(|| format!("entry {seq} is not in the log the broker signs"))?;
    }
    if json {
        return print_json(&json!({ "key": key, "verified": true, "entries": lines, "log": at(&answer, "/log") }));
    }
    let entries: Vec<&Value> = lines.iter().map(|line| at(line, "/entry")).collect();
    for line in render(key, &entries) {
        outln!("{line}")?;
    }
    outln!(
        "log: {size} entries, head {} (base64, as in `keyward audit checkpoint`); every entry above verified by \
         inclusion proof (`keyward audit prove --entry N`)",
        B64.encode(root)
    )?;
    Ok(())
}
