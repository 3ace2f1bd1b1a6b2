//! PyJWT (`PyJWKClient`) as an independent verifier of the broker's tokens.

use std::process::Command;

use serde_json::Value;

use crate::venv;

const VERIFY: &str = r#"
import json, sys
import jwt
jwks_url, token, audience, issuer = sys.argv[1:5]
try:
    key = jwt.PyJWKClient(jwks_url).get_signing_key_from_jwt(token)
    claims = jwt.decode(
        token, key.key, algorithms=["ES256", "RS256"], audience=audience, issuer=issuer,
        options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]},
    )
    print(json.dumps({"ok": True, "alg": jwt.get_unverified_header(token)["alg"], "claims": claims}))
except Exception as e:
    print(json.dumps({"ok": False, "error": type(e).__name__ + ": " + str(e)}))
"#;

/// Verifies `token` with PyJWT against the JWKS at `jwks_url`; returns PyJWT's verdict as JSON
/// (`{"ok": true, "claims": …}` or `{"ok": false, "error": …}`).
pub fn verify(jwks_url: &str, token: &str, audience: &str, issuer: &str) -> Value {
    let output = Command::new(venv().join("bin/python"))
        .args(["-c", VERIFY, jwks_url, token, audience, issuer])
        .output()
        .expect("run python");
    assert!(output.status.success(), "python failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("PyJWT verdict is JSON")
}
