//! `keyward console [--no-open]`: a one-time sign-in link to the web console for the caller's own
//! API token (docs/console.md), printed and opened in a browser. The link works once, for a
//! minute; the browser session it opens acts as the token and ends when the token is revoked.

use anyhow::Context as _;
use clap::Args;
use serde_json::json;

use super::Connection;
use super::client::{Client, print_json, text};
use super::output::outln;

/// `keyward console`.
#[derive(Debug, Args)]
pub(super) struct ConsoleArgs {
    /// Print the link without opening a browser.
    #[arg(long)]
    no_open: bool,
    /// Print JSON (`url`, `expires_at`).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    connection: Connection,
}

/// `keyward console [--no-open] [--json]`.
pub(super) async fn console(args: ConsoleArgs, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    let client = Client::new(&args.connection, env)?;
    let answer = client.post("/v1/console/links", &json!({})).await?;
    let base = args.connection.addr().trim_end_matches('/');
    let url = format!("{base}{}", text(&answer, "path"));
    reqwest::Url::parse(&url).context("KEYWARD_ADDR is not a URL")?;
    if args.json {
        return print_json(&json!({ "url": url, "expires_at": answer.get("expires_at") }));
    }
    if args.no_open || !super::login::open_browser(&url) {
        outln!("Open this link in a browser (valid once, for a minute):\n{url}")?;
    } else {
        outln!("Opened the console in your browser. If nothing opened, this link works once, for a minute:\n{url}")?;
    }
    Ok(())
}
