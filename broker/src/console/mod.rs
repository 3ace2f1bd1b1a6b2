//! The web console's pages (docs/console.md), rendered on the server: no separate front end,
//! every asset embedded in the binary. The one script, `assets/verify.js`, only re-checks
//! inclusion proofs the page already shows; every page works without it.
//!
//! This module only turns data into HTML — `http/console.rs` authenticates, checks roles and
//! spaces, and reads the data. Rendering goes through `maud`, whose templates escape every
//! interpolated string, so a pull request title, a ticket or a log line holding `<script>` is
//! shown as text. What the console shows is what the API shows the same caller; nothing secret
//! is ever read here.

pub mod agents;
pub mod audit;
pub mod audit_proofs;
pub mod layout;
pub mod policies;
pub mod runs;
pub mod stacks;

/// The console's stylesheet, served at [`STYLESHEET_PATH`].
pub const STYLESHEET: &str = include_str!("assets/console.css");

/// Where the stylesheet is served.
pub const STYLESHEET_PATH: &str = "/ui/assets/console.css";

/// The script that checks the audit page's inclusion proofs in the browser, served at
/// [`VERIFY_SCRIPT_PATH`]; Node loads the same file in the tests.
pub const VERIFY_SCRIPT: &str = include_str!("assets/verify.js");

/// Where the proof-checking script is served.
pub const VERIFY_SCRIPT_PATH: &str = "/ui/assets/verify.js";

/// The Content-Security-Policy of every console response: nothing but the console's own
/// stylesheet, images and script files load (no inline script, no `eval`), no other site may
/// frame it, and forms post only back to the broker.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
