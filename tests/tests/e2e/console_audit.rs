//! The console's audit and policies pages (docs/console.md) over real HTTP against `keyward dev`.
//!
//! What must hold: the audit page shows the latest signed checkpoint, and every traced entry
//! carries its exact hashed bytes, leaf hash and inclusion proof, correct against the root shown
//! for its tree size — checked here independently in Rust (the signed note with the log's public
//! key, the proofs with `keyward-audit`'s verifier) and with the page's own `verify.js` under
//! Node, which must also refuse a tampered entry, proof or root. The policies page shows the set
//! in force, its load, and a denial provoked here; both pages need the API's permissions.

use std::collections::HashMap;
use std::str::FromStr as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use keyward_broker::audit::checkpoint::VerifierKey;
use keyward_broker::audit::merkle::{self, Hash};
use keyward_proto::encoding::{hex, hex_decode};
use keyward_tests::broker::Broker;
use keyward_tests::console_session::get_as as get;
use serde_json::{Value, json};

fn json_of(output: &keyward_tests::broker::Output) -> Value {
    assert!(output.success, "{}", output.stderr);
    serde_json::from_str(&output.stdout).unwrap()
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&amp;", "&")
}

/// The attributes of every start tag of `page` that carries `marker` (e.g. `data-entry`).
fn tags_with(page: &str, marker: &str) -> Vec<HashMap<String, String>> {
    let mut found = Vec::new();
    for (start, _) in page.match_indices('<') {
        let tag = &page[start + 1..start + page[start..].find('>').unwrap()];
        let attributes = attributes(tag);
        if attributes.contains_key(marker) {
            found.push(attributes);
        }
    }
    found
}

/// `name="value"` and bare `name` attributes of a start tag (maud quotes every value).
fn attributes(tag: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = tag.split_once(' ').map_or("", |(_, rest)| rest).trim_start();
    while !rest.is_empty() {
        let end = rest.find([' ', '=']).unwrap_or(rest.len());
        let name = rest[..end].to_owned();
        rest = &rest[end..];
        if let Some(value) = rest.strip_prefix("=\"") {
            let close = value.find('"').unwrap();
            out.insert(name, unescape(&value[..close]));
            rest = &value[close + 1..];
        } else {
            out.insert(name, String::new());
        }
        rest = rest.trim_start();
    }
    out
}

fn hash_of(text: &str) -> Hash {
    hex_decode(text).unwrap().try_into().unwrap()
}

/// One entry's proof as the page serves it, in the shape `verify.js`'s `verifyEntry` takes.
fn case(row: &HashMap<String, String>, roots: &HashMap<String, String>) -> Value {
    json!({
        "body": row["data-body"],
        "leafHash": row["data-leaf-hash"],
        "index": row["data-seq"].parse::<u64>().unwrap(),
        "size": row["data-size"].parse::<u64>().unwrap(),
        "proof": row["data-proof"].split_whitespace().collect::<Vec<_>>(),
        "root": roots[&row["data-size"]],
    })
}

/// Runs `harness` under Node next to the served `verify.js` and `input.json`; its JSON output.
fn node(dir: &std::path::Path, script: &str, input: &Value, harness: &str) -> Value {
    std::fs::write(dir.join("verify.js"), script).unwrap();
    std::fs::write(dir.join("input.json"), serde_json::to_vec(input).unwrap()).unwrap();
    let prelude = "'use strict';\nconst verify = require('./verify.js');\nconst input = require('./input.json');\n";
    std::fs::write(dir.join("run.js"), format!("{prelude}{harness}")).unwrap();
    let out = std::process::Command::new("node").arg("run.js").current_dir(dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `verifyEntry` of the served `verify.js` for each case: did it verify?
fn node_verdicts(dir: &std::path::Path, script: &str, cases: &[Value]) -> Vec<bool> {
    let harness = "Promise.all(input.map((c) => verify.verifyEntry(c)))\n\
                   .then((results) => console.log(JSON.stringify(results.map((r) => r.ok))));\n";
    serde_json::from_value(node(dir, script, &json!(cases), harness)).unwrap()
}

/// `checkPage` of the served `verify.js` over a stand-in for the page's DOM (its rows' and
/// anchors' data attributes): what it wrote in each row's status cell and in the summary.
fn node_page(dir: &std::path::Path, script: &str, rows: &[Value], anchors: &[Value]) -> (Vec<String>, String) {
    let harness = "const cells = input.rows.map(() => ({ textContent: '' }));\n\
        const summary = { textContent: '' };\n\
        const rows = input.rows.map((dataset, i) => ({ dataset, querySelector: () => cells[i] }));\n\
        const anchors = input.anchors.map((dataset) => ({ dataset }));\n\
        const document = { getElementById: () => summary,\n\
          querySelectorAll: (selector) => (selector === 'tr[data-entry]' ? rows : anchors) };\n\
        verify.checkPage(document).then(() =>\n\
          console.log(JSON.stringify([cells.map((c) => c.textContent), summary.textContent])));\n";
    serde_json::from_value(node(dir, script, &json!({ "rows": rows, "anchors": anchors }), harness)).unwrap()
}

/// A tag's `data-*` attributes as the DOM's `dataset` names them (`data-leaf-hash` → `leafHash`).
fn dataset(attributes: &HashMap<String, String>) -> Value {
    let mut out = serde_json::Map::new();
    for (name, value) in attributes {
        let Some(name) = name.strip_prefix("data-") else { continue };
        let mut parts = name.split('-');
        let mut key = parts.next().unwrap().to_owned();
        for part in parts {
            key.push_str(&part[..1].to_uppercase());
            key.push_str(&part[1..]);
        }
        out.insert(key, json!(value));
    }
    Value::Object(out)
}

/// Mints a plan-phase run token of `run_id` (each one a `token.minted` entry of the run).
async fn mint(broker: &Broker, run_id: &str) -> String {
    let body = json!({ "stack": "example", "run_id": run_id, "phase": "plan", "audience": broker.addr });
    let (status, minted) = broker.mint_raw(&body, Some(&broker.admin_token)).await;
    assert_eq!(status, 201, "{minted}");
    minted["token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_audit_page_proves_each_traced_entry_against_the_signed_checkpoint_in_rust_and_in_verify_js() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::dev(&dir.path().join("data")).await;
    let admin = broker.admin_token.as_str();
    let run = "run-console-proofs";

    // Two entries a signed checkpoint covers, one after it (proven against the unsigned head).
    mint(&broker, run).await;
    mint(&broker, run).await;
    let signed = json_of(&broker.cli(&["audit", "checkpoint", "--json"]));
    mint(&broker, run).await;

    let (status, headers, page) = get(&broker, &format!("/ui/audit?key={run}"), Some(admin)).await;
    assert_eq!(status, 200, "{page}");
    let csp = headers.get("content-security-policy").and_then(|v| v.to_str().ok()).unwrap();
    assert!(csp.contains("script-src 'self'") && csp.starts_with("default-src 'none'"), "{csp}");
    assert_eq!(page.matches("<script").count(), 1, "one script, no inline script: {page}");
    assert!(page.contains(r#"<script src="/ui/assets/verify.js" defer></script>"#), "{page}");
    assert!(page.contains("Not checked in this page"), "without script the proofs say they are unchecked");

    // The checkpoint shown is the one signed, and its note verifies with the log's public key.
    let checkpoint = tags_with(&page, "data-signed").pop().expect("a checkpoint section");
    let cp_size = signed["size"].as_u64().unwrap();
    assert_eq!(checkpoint["data-size"], cp_size.to_string());
    assert_eq!(Some(checkpoint["data-root"].as_str()), signed["root"].as_str());
    let section = &page[page.find(r#"id="checkpoint""#).unwrap()..];
    let note_shown = section.split("<pre>").nth(1).unwrap().split("</pre>").next().unwrap();
    let note_shown = unescape(note_shown);
    let public_key = broker.cli(&["audit", "public-key"]);
    let verifier = VerifierKey::from_str(public_key.stdout.trim()).unwrap();
    let verified = verifier.verify(&note_shown).unwrap();
    assert_eq!((verified.size, hex(&verified.root)), (cp_size, checkpoint["data-root"].clone()));
    assert!(page.contains(&format!("keyward-verify export log.jsonl --checkpoint cp-{cp_size}.txt")), "{page}");

    // Every traced entry: its bytes hash to its leaf, and its proof leads to the root shown for
    // its tree size (the checkpoint's, or the current head's).
    let roots: HashMap<String, String> = tags_with(&page, "data-anchor")
        .into_iter()
        .map(|anchor| (anchor["data-size"].clone(), anchor["data-root"].clone()))
        .collect();
    let rows = tags_with(&page, "data-entry");
    assert_eq!(rows.len(), 3, "three entries name the run: {page}");
    let sizes: Vec<u64> = rows.iter().map(|row| row["data-size"].parse().unwrap()).collect();
    assert!(sizes[..2].iter().all(|&s| s == cp_size) && sizes[2] > cp_size, "{sizes:?}");
    for row in &rows {
        let body = B64.decode(&row["data-body"]).unwrap();
        let entry: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (entry["context"]["run_id"].as_str(), entry["seq"].to_string()),
            (Some(run), row["data-seq"].clone())
        );
        let leaf = merkle::leaf_hash(&body);
        assert_eq!(hex(&leaf), row["data-leaf-hash"]);
        let proof: Vec<Hash> = row["data-proof"].split_whitespace().map(hash_of).collect();
        merkle::verify_inclusion(
            &leaf,
            row["data-seq"].parse().unwrap(),
            row["data-size"].parse().unwrap(),
            &proof,
            &hash_of(&roots[&row["data-size"]]),
        )
        .unwrap();
    }

    // The served script, under Node: the page's proofs verify; tampering with any part fails.
    let (status, headers, script) = get(&broker, "/ui/assets/verify.js", None).await;
    assert_eq!(
        (status, headers.get("content-type").and_then(|v| v.to_str().ok())),
        (200, Some("text/javascript; charset=utf-8"))
    );
    let good: Vec<Value> = rows.iter().map(|row| case(row, &roots)).collect();
    let mut cases = good.clone();
    for good in &good {
        let mut body = B64.decode(good["body"].as_str().unwrap()).unwrap();
        let at = body.len() / 2;
        body[at] ^= 1;
        let mut edited = good.clone();
        edited["body"] = json!(B64.encode(&body));
        let mut wrong_leaf = good.clone();
        wrong_leaf["leafHash"] = json!(hex(&[7; 32]));
        let mut wrong_root = good.clone();
        wrong_root["root"] = json!(hex(&[7; 32]));
        let mut wrong_index = good.clone();
        wrong_index["index"] = json!(good["index"].as_u64().unwrap() ^ 1);
        cases.extend([edited, wrong_leaf, wrong_root, wrong_index]);
        if let Some(first) = good["proof"].as_array().and_then(|p| p.first()) {
            let mut hash = hash_of(first.as_str().unwrap());
            hash[0] ^= 1;
            let mut wrong_proof = good.clone();
            wrong_proof["proof"][0] = json!(hex(&hash));
            let mut short_proof = good.clone();
            short_proof["proof"].as_array_mut().unwrap().pop();
            cases.extend([wrong_proof, short_proof]);
        }
    }
    let verdicts = node_verdicts(dir.path(), &script, &cases);
    assert_eq!(&verdicts[..good.len()], vec![true; good.len()], "the page's proofs verify in verify.js");
    assert!(verdicts[good.len()..].iter().all(|ok| !ok), "every tampered case fails: {verdicts:?}");
    assert!(verdicts.len() > good.len() + 4 * good.len(), "proofs were tampered with too");

    // And the page as the browser runs it: each row marked, and an edited entry caught.
    let anchors: Vec<Value> = tags_with(&page, "data-anchor").iter().map(dataset).collect();
    let mut datasets: Vec<Value> = rows.iter().map(dataset).collect();
    let (cells, summary) = node_page(dir.path(), &script, &datasets, &anchors);
    let signed = format!("\u{2713} included in checkpoint {cp_size} (checked in your browser)");
    assert_eq!(cells[..2], [signed.clone(), signed], "{cells:?}");
    assert!(
        cells[2].starts_with("\u{2713} included in the log\u{2019}s head of") && cells[2].contains("not yet signed")
    );
    assert_eq!(summary, "All 3 inclusion proofs checked in your browser.");
    datasets[0]["body"] = cases[good.len()]["body"].clone(); // the first entry, one bit changed
    let (cells, summary) = node_page(dir.path(), &script, &datasets, &anchors);
    assert_eq!(cells[0], "\u{2717} proof failed: the entry does not hash to its leaf", "{cells:?}");
    assert!(cells[1].starts_with('\u{2713}') && summary.starts_with("1 of 3 inclusion proofs FAILED"), "{summary}");

    // Audit access is needed, as for the API.
    json_of(&broker.cli(&["space", "create", "elsewhere", "--json"]));
    let viewer = json_of(&broker.cli(&["token", "create", "v", "--space", "elsewhere", "--role", "viewer", "--json"]));
    let (status, _, refused) = get(&broker, "/ui/audit", viewer["token"].as_str()).await;
    assert_eq!(status, 403, "{refused}");
    assert!(!refused.contains("data-root"), "{refused}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_policies_page_shows_the_loaded_set_and_a_denial() {
    let dir = tempfile::tempdir().unwrap();
    // A write target; a plan-phase token asking for it is refused before STS is ever called.
    let overlay = dir.path().join("targets.toml");
    std::fs::write(
        &overlay,
        "[[targets]]\nname = \"network-apply\"\ntype = \"aws\"\naccess = \"write\"\n\
         role_arn = \"arn:aws:iam::123456789012:role/network-apply\"\nregion = \"eu-west-1\"\n\
         sts_endpoint = \"http://127.0.0.1:9\"\nduration = \"1h\"\nmode = \"broker\"\n",
    )
    .unwrap();
    let broker = Broker::dev_with(&dir.path().join("data"), &["--config", overlay.to_str().unwrap()]).await;
    let admin = broker.admin_token.as_str();
    let token = mint(&broker, "run-denied").await;
    let (status, denied) = broker.exchange(&token, "aws:network-apply").await;
    assert_eq!(status, 400, "{denied}");

    let (status, headers, page) = get(&broker, "/ui/policies", Some(admin)).await;
    assert_eq!(status, 200, "{page}");
    assert!(headers.get("content-security-policy").is_some());
    let (_, _, loaded) = get(&broker, "/v1/policies", Some(admin)).await;
    let loaded: Value = serde_json::from_str(&loaded).unwrap();
    let digest = loaded["digest"].as_str().unwrap();
    assert!(page.contains(&format!("Policy set <code>{digest}</code> decides")), "{page}");
    assert!(
        page.contains("<code>credentials.rego</code>") && page.contains("<code>data.keyward.credentials</code>"),
        "{page}"
    );
    assert!(page.contains("Last loaded ") && page.contains(&format!(": <code>{digest}</code>.")), "{page}");
    let denials = page.split("Recent denials").nth(1).unwrap().split("Recent decisions").next().unwrap();
    assert!(denials.contains("denied") && denials.contains("aws:network-apply"), "{denials}");
    assert!(denials.contains("only apply-phase tokens may use it"), "{denials}");
    assert!(denials.contains(r#"href="/ui/audit?key=run-denied""#), "{denials}");
    assert!(page.contains(r#"<a href="/ui/policies">Policies</a>"#), "the navigation links it");

    // Who may read `GET /v1/policies` may read the page; a viewer may not.
    let viewer = json_of(&broker.cli(&["token", "create", "v", "--role", "viewer", "--json"]));
    let (status, _, refused) = get(&broker, "/ui/policies", viewer["token"].as_str()).await;
    assert_eq!(status, 403, "{refused}");
    assert!(!refused.contains(digest), "{refused}");
}
