//! regopy, an independent Rego implementation (Microsoft's rego-cpp), as a cross-check of the
//! decisions regorus makes for Keyward's policies.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::venv;

const EVALUATE: &str = r#"
import json, pathlib, sys
import regopy
policy_dir, package, input_json = sys.argv[1], sys.argv[2], sys.stdin.read()
interpreter = regopy.Interpreter()
for path in sorted(pathlib.Path(policy_dir).rglob("*.rego")):
    interpreter.add_module(str(path), path.read_text())
for path in sorted(pathlib.Path(policy_dir).rglob("data.json")):
    interpreter.add_data_json(path.read_text())
interpreter.set_input_term(input_json)
output = interpreter.query("x := data." + package)
if not output.ok():
    print(json.dumps({"error": str(output)}))
else:
    print(json.dumps({"document": json.loads(str(output.binding("x")))}))
"#;

/// Evaluates `package` over the policies in `dir` with `input`; returns `{"document": …}` or
/// `{"error": …}`.
pub fn evaluate(dir: &Path, package: &str, input: &Value) -> Value {
    let mut child = Command::new(venv().join("bin/python"))
        .args(["-c", EVALUATE])
        .arg(dir)
        .arg(package)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run python");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(input.to_string().as_bytes()).expect("write input");
    }
    let output = child.wait_with_output().expect("python output");
    assert!(output.status.success(), "regopy failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("regopy verdict is JSON")
}
