//! The `keyward-agent` binary.

use clap::Parser;

/// Keyward private worker agent (enrollment and job execution arrive with the agent release).
#[derive(Debug, Parser)]
#[command(name = "keyward-agent", version, about)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
    eprintln!(
        "keyward-agent {} speaks {}; enrollment (`join`) and job execution (`run`) are not part of this release",
        keyward_agent::version(),
        keyward_agent::PROTOCOL_PACKAGE
    );
}
