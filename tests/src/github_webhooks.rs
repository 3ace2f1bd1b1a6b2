//! Real GitHub webhook deliveries for the VCS tests (docs/vcs.md): payloads from
//! `@octokit/webhooks-examples`, signed by `@octokit/webhooks-methods` (an implementation
//! independent of the broker's), both npm packages pinned by tests/npm/package-lock.json and
//! installed by scripts/install-test-peers beside the Python venv.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// Where the npm peers are: `<test-peers>/npm`, beside the venv.
pub fn npm_dir() -> PathBuf {
    let venv = crate::venv();
    let dir = venv.parent().map(|p| p.join("npm")).unwrap_or_default();
    assert!(
        dir.join("node_modules/@octokit/webhooks-methods").exists(),
        "npm test peers are not installed at {}: run scripts/install-test-peers (scripts/test does)",
        dir.display()
    );
    dir
}

/// The first example of `event` (with `action`, when given) from @octokit/webhooks-examples,
/// preferring one a GitHub App receives (it names the installation), as the exact bytes GitHub
/// would send (compact JSON).
pub fn example(event: &str, action: Option<&str>) -> Vec<u8> {
    let all = examples(event, action);
    let found = all.iter().find(|e| e.get("installation").is_some()).or_else(|| all.first());
    serde_json::to_vec(found.unwrap()).unwrap()
}

/// Every example of `event` (with `action`, when given) from @octokit/webhooks-examples.
pub fn examples(event: &str, action: Option<&str>) -> Vec<Value> {
    let index = npm_dir().join("node_modules/@octokit/webhooks-examples/api.github.com/index.json");
    let all: Value = serde_json::from_slice(&std::fs::read(&index).unwrap()).unwrap();
    let examples = all.as_array().unwrap().iter().find(|e| e["name"] == event).unwrap()["examples"].as_array().unwrap();
    examples.iter().filter(|e| action.is_none_or(|a| e["action"] == a)).cloned().collect()
}

/// `sha256=<hex>` for `body` and `secret`, as computed by @octokit/webhooks-methods' `sign`.
pub fn sign(body: &[u8], secret: &str) -> String {
    let dir = npm_dir();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), body).unwrap();
    let output = Command::new("node").arg(dir.join("sign.mjs")).arg(file.path()).arg(secret).output().unwrap();
    assert!(output.status.success(), "sign.mjs failed: {}", String::from_utf8_lossy(&output.stderr));
    let signature = String::from_utf8(output.stdout).unwrap();
    assert!(signature.starts_with("sha256=") && signature.len() == 71, "{signature}");
    signature
}
