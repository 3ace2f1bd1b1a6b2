//! `keyward serve` and `keyward check-config`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;

use super::output::outln;
use crate::clock::SystemClock;
use crate::config::Config;
use crate::server::{self, Broker};

#[derive(Debug, Args)]
pub(super) struct ServeArgs {
    /// The configuration file (see deploy/keyward.example.toml).
    #[arg(long)]
    config: PathBuf,
    /// On first start, create the bootstrap admin API token and print it once.
    #[arg(long)]
    init: bool,
}

pub(super) async fn serve(args: ServeArgs, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    let settings = Config::load(&args.config, env)?;
    super::logging::init(settings.log.format, &settings.log.level);
    let broker = Broker::start(&settings, Arc::new(SystemClock)).await?;
    if args.init {
        match broker.bootstrap_admin().await? {
            Some(secret) => {
                outln!("Bootstrap admin API token (shown once; store it in a secret manager):")?;
                outln!("{}", secret.expose())?;
            }
            None => eprintln!("--init: API tokens already exist; no bootstrap token was created"),
        }
    }
    let listener = server::bind(settings.server.listen).await?;
    broker.serve(listener, server::shutdown_signal()).await;
    Ok(())
}

/// Resolves the file as `serve` would (every secret read, then dropped) and compiles its policies.
pub(super) fn check_config(file: &Path, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    let settings = Config::load(file, env)?;
    if let Some(policy) = &settings.policy {
        let set = crate::policy::PolicySet::load(&policy.dir, policy.evaluation_timeout)?;
        outln!("{}: {} policy files, digest {}", policy.dir.display(), set.files().len(), set.digest())?;
    }
    outln!("{}: OK", file.display())?;
    Ok(())
}
