//! The web console's pages (docs/console.md), rendered on the server: no separate front end,
//! every asset embedded in the binary, and script only where it helps (a run in progress follows
//! its log live); every page works without it.
//!
//! This module only turns data into HTML — `http/console.rs` authenticates, checks roles and
//! spaces, and reads the data. Rendering goes through `maud`, whose templates escape every
//! interpolated string, so a pull request title, a ticket or a log line holding `<script>` is
//! shown as text. What the console shows is what the API shows the same caller; nothing secret
//! is ever read here.

pub mod agents;
pub mod audit;
pub mod layout;
pub mod run_evidence;
pub mod runs;
pub mod stacks;

/// The console's stylesheet, served at [`STYLESHEET_PATH`].
pub const STYLESHEET: &str = include_str!("assets/console.css");

/// Where the stylesheet is served.
pub const STYLESHEET_PATH: &str = "/ui/assets/console.css";

/// The script that follows a run in progress (its log and state, by server-sent events),
/// served at [`LIVE_SCRIPT_PATH`]. It writes what arrives with `textContent`, never as HTML.
pub const LIVE_SCRIPT: &str = include_str!("assets/live.js");

/// Where the live script is served.
pub const LIVE_SCRIPT_PATH: &str = "/ui/assets/live.js";

/// The Content-Security-Policy of every console response: nothing but the console's own
/// stylesheet, images and scripts loads (no inline script, no inline handler), connections go
/// only back to the broker (the live events), no other site may frame it, and forms post only
/// back to the broker.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
     script-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
