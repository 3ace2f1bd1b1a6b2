//! `keyward dev`: a working broker in one command, with nothing to configure.
//!
//! Everything lives in one data directory (SQLite database, a generated key-encryption key, the
//! admin API token), so restarting with the same directory keeps keys, tokens and data. It only
//! listens on loopback: the KEK sits next to the data it protects, which is fine for a laptop and
//! wrong for anything else.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::Args;

use crate::access::ApiScope;
use crate::clock::SystemClock;
use crate::config::{Config, LogFormat};
use crate::identity::kek::Kek;
use crate::server::{self, Broker};

#[derive(Debug, Args)]
pub(super) struct DevArgs {
    /// Data directory (default: `$XDG_DATA_HOME/keyward/dev`, else `~/.local/share/keyward/dev`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Loopback address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8422")]
    listen: SocketAddr,
}

pub(super) async fn run(args: DevArgs, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    if !args.listen.ip().is_loopback() {
        bail!(
            "`keyward dev` only listens on loopback (got {}); use `keyward serve --config` for anything else",
            args.listen
        );
    }
    let data_dir = match args.data_dir {
        Some(dir) => dir,
        None => default_data_dir(env)?,
    };
    create_private_dir(&data_dir)?;
    super::logging::init(LogFormat::Text, "info");
    ensure_kek_file(&data_dir.join("kek"))?;

    let listener = server::bind(args.listen).await?;
    let address = listener.local_addr().context("cannot read the bound address")?;
    let issuer = format!("http://{address}");
    let policy_dir = dev_policy_dir(&data_dir)?;
    let config = Config::dev(data_dir.clone(), address, issuer.clone(), policy_dir.clone());
    let broker = Broker::start(&config, env, Arc::new(SystemClock)).await?;

    let token_file = data_dir.join("admin-token");
    let secret = match broker.bootstrap_admin().await? {
        Some(secret) => Some(secret),
        // The data dir was used before; make a fresh admin token only if its file is gone.
        None if !token_file.exists() => {
            let name = format!("dev-admin-{}", uuid::Uuid::now_v7().simple());
            Some(broker.access().create(&name, ApiScope::Admin, "keyward dev").await?)
        }
        None => None,
    };
    if let Some(secret) = secret {
        write_private_file(&token_file, secret.expose().as_bytes())?;
    }
    super::dev_agent::ensure_example(&data_dir, broker.agents(), broker.runs(), "keyward dev").await?;
    let agent_log = super::dev_agent::start_agent(&data_dir, &issuer, broker.agents(), "keyward dev").await?;

    let exports = format!(
        "export KEYWARD_ADDR={issuer}\nexport KEYWARD_TOKEN_FILE={}\n",
        shell_quote(&token_file.display().to_string())
    );
    let env_file = data_dir.join("env");
    write_private_file(&env_file, exports.as_bytes())?;
    print_banner(&issuer, &data_dir, &policy_dir, &env_file, &exports, agent_log.as_deref());

    broker.serve(listener, server::shutdown_signal()).await;
    Ok(())
}

fn print_banner(
    issuer: &str,
    data_dir: &Path,
    policy_dir: &Path,
    env_file: &Path,
    exports: &str,
    agent_log: Option<&Path>,
) {
    let agent = match agent_log {
        Some(log) => format!("one local agent in pool `dev` (log: {})", log.display()),
        None => "none: no keyward-agent binary next to keyward; runs wait for one to join".to_owned(),
    };
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "\nKeyward dev broker is running (Ctrl-C stops it; data persists in the data dir).\n\
         \n  issuer     {issuer}\
         \n  discovery  {issuer}/.well-known/openid-configuration\
         \n  jwks       {issuer}/.well-known/jwks.json\
         \n  data dir   {}\
         \n  policies   {} (edit, then `keyward policy reload`)\
         \n  audiences  sts.amazonaws.com, vault\
         \n  agents     {agent}\
         \n  stack      `example` (a local git repository in the data dir)\
         \n\nIn another shell:\n\
         \n  eval \"$(cat {})\"\
         \n  keyward run submit --stack example --wait\
         \n  keyward agent list\
         \n  keyward pool join-token dev        # enroll another agent: keyward-agent join --broker {issuer} --token …\
         \n  keyward token mint --stack demo --run run-1 --phase plan --audience sts.amazonaws.com --json\n",
        data_dir.display(),
        policy_dir.display(),
        env_file.display(),
    );
    let _ = err.flush();
    // The export lines go to stdout, alone, so `keyward dev > env.sh` captures exactly them.
    print!("{exports}");
    let _ = std::io::stdout().flush();
}

/// The repository's `policies/` when run from a checkout, else `<data dir>/policies`, seeded with
/// the shipped library on first use.
fn dev_policy_dir(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let checkout = PathBuf::from("policies");
    let has_rego = |dir: &Path| {
        std::fs::read_dir(dir)
            .map(|entries| entries.flatten().any(|e| e.path().extension().is_some_and(|x| x == "rego")))
            .unwrap_or(false)
    };
    if has_rego(&checkout) {
        return std::path::absolute(&checkout).context("cannot resolve ./policies");
    }
    let seeded = data_dir.join("policies");
    if !seeded.exists() {
        crate::policy::library::write_to(&seeded)
            .with_context(|| format!("cannot write the policy library to {}", seeded.display()))?;
    }
    Ok(seeded)
}

fn default_data_dir(env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<PathBuf> {
    if let Some(xdg) = env("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(xdg).join("keyward").join("dev"));
    }
    match env("HOME").filter(|v| !v.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".local/share/keyward/dev")),
        None => bail!("neither XDG_DATA_HOME nor HOME is set; pass --data-dir"),
    }
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create data directory {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict permissions of {}", dir.display()))?;
    }
    Ok(())
}

fn ensure_kek_file(path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        return Ok(());
    }
    let kek = Kek::generate();
    write_private_file(path, kek.to_base64().as_bytes())
}

/// Writes a file only its owner can read, replacing it atomically.
fn write_private_file(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let temporary = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(&temporary).with_context(|| format!("cannot write {}", temporary.display()))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("cannot write {}", path.display()))
}

fn shell_quote(text: &str) -> String {
    if text.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+:@".contains(&b)) {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}
