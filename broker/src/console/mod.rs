//! The web console's pages (docs/console.md), rendered on the server: no separate front end,
//! plain forms, every asset embedded in the binary. Scripts are same-origin files that only add
//! to what the page already shows (`assets/live.js` follows a run in progress, `assets/verify.js`
//! re-checks inclusion proofs); every page works without them.
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
pub mod review;
pub mod run_evidence;
pub mod runs;
pub mod stack;
pub mod stacks;

/// The console's stylesheet, served at [`STYLESHEET_PATH`].
pub const STYLESHEET: &str = include_str!("assets/console.css");

/// Where a one-time console sign-in link (`keyward console`) is opened.
pub const SIGN_IN_PATH: &str = "/ui/sign-in";

/// The hidden field every console form carries its CSRF token in (the session's, as in the
/// `keyward_csrf` cookie).
pub const CSRF_FIELD: &str = "csrf";

/// Where the stylesheet is served.
pub const STYLESHEET_PATH: &str = "/ui/assets/console.css";

/// The console's icon (a browser asks for `/favicon.ico`, and logs its 404, without one).
pub const ICON: &str = include_str!("assets/favicon.svg");

/// Where the icon is served.
pub const ICON_PATH: &str = "/ui/assets/favicon.svg";
/// The script that checks the audit page's inclusion proofs in the browser, served at
/// [`VERIFY_SCRIPT_PATH`]; Node loads the same file in the tests.
pub const VERIFY_SCRIPT: &str = include_str!("assets/verify.js");

/// Where the proof-checking script is served.
pub const VERIFY_SCRIPT_PATH: &str = "/ui/assets/verify.js";

/// The script that follows a run in progress (its log and state, by server-sent events),
/// served at [`LIVE_SCRIPT_PATH`]. It writes what arrives with `textContent`, never as HTML.
pub const LIVE_SCRIPT: &str = include_str!("assets/live.js");

/// Where the live script is served.
pub const LIVE_SCRIPT_PATH: &str = "/ui/assets/live.js";

/// The Content-Security-Policy of every console response: nothing but the console's own
/// stylesheet, images and script files loads (no inline script, no inline handler, no `eval`),
/// connections go only back to the broker (a run's live events), no other site may frame it, and
/// forms post only back to the broker.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; \
     style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
