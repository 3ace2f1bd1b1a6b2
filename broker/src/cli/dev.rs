//! `keyward dev`: a working broker in one command, with nothing to configure.
//!
//! Everything lives in one data directory (SQLite database, a generated key-encryption key, the
//! admin API token), so restarting with the same directory keeps keys, tokens and data. It only
//! listens on loopback: the KEK sits next to the data it protects, which is fine for a laptop and
//! wrong for anything else.
//!
//! `--config FILE` adds targets, trusted CI issuers, repositories and a policy directory
//! ([`DevOverlay`]). The file is read and checked before anything is written or started, so a
//! mistake in it leaves the data directory as it was.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::Args;

use crate::access::ApiScope;
use crate::clock::SystemClock;
use crate::config::{Checked, Config, DevOverlay, LogFormat, Settings};
use crate::kek::Kek;
use crate::server::{self, Broker};

#[derive(Debug, Args)]
pub(super) struct DevArgs {
    /// Data directory (default: `$XDG_DATA_HOME/keyward/dev`, else `~/.local/share/keyward/dev`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Loopback address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8422")]
    listen: SocketAddr,
    /// A TOML file of `[[targets]]`, `[[issuers]]`, `[[repositories]]` and `[policy]` to add to the
    /// dev defaults, written as in `keyward serve`'s configuration (docs/ci.md has one).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// How the local agent isolates jobs: `sandbox` (needs root or unprivileged user namespaces;
    /// docs/sandbox.md) or `process` (no sandbox: for machines that have neither).
    #[arg(long, default_value = "sandbox", value_parser = ["sandbox", "process"])]
    agent_isolation: String,
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
    let sources = Sources::load(args.config.as_deref(), &data_dir)?;

    // Nothing below writes until the configuration is known to be good.
    let listener = server::bind(args.listen).await?;
    let address = listener.local_addr().context("cannot read the bound address")?;
    let issuer = format!("http://{address}");
    let checked = sources.check(&data_dir, address, &issuer, env)?;

    super::logging::init(LogFormat::Text, "info");
    create_private_dir(&data_dir)?;
    ensure_kek_file(&data_dir.join("kek"))?;
    sources.policies.seed()?;
    let settings = checked.read_kek(env)?;
    let broker = Broker::start(&settings, Arc::new(SystemClock)).await?;
    if let Some(agents) = broker.agents_address() {
        super::dev_agent::remember_port(&data_dir, agents.port())?;
    }
    let token_file = admin_token(&broker, &data_dir).await?;
    super::dev_agent::ensure_example(&data_dir, broker.agents(), broker.runs(), "keyward dev").await?;
    let isolation = &args.agent_isolation;
    let agent = super::dev_agent::start_agent(&data_dir, &issuer, broker.agents(), isolation, "keyward dev").await?;

    let console = console_link(&broker, &token_file, &issuer).await?;
    announce(&settings, &data_dir, sources.policies.dir(), &token_file, &agent)?;
    eprintln!("Console (valid once, for a minute; `keyward console` prints another):\n\n  {console}\n");

    broker.serve(listener, server::shutdown_signal()).await;
    Ok(())
}

/// Writes `<data dir>/env`, the exports a shell needs to talk to this broker, and prints the
/// banner.
fn announce(
    settings: &Settings,
    data_dir: &Path,
    policy_dir: &Path,
    token_file: &Path,
    agent: &super::dev_agent::LocalAgent,
) -> anyhow::Result<()> {
    let issuer = &settings.server.external_url;
    let exports = format!(
        "export KEYWARD_ADDR={issuer}\nexport KEYWARD_TOKEN_FILE={}\n",
        shell_quote(&token_file.display().to_string())
    );
    let env_file = data_dir.join("env");
    write_private_file(&env_file, exports.as_bytes())?;
    let targets: Vec<String> = settings.targets.iter().map(crate::targets::TargetConfig::id).collect();
    let issuers: Vec<&str> = settings.issuers.iter().map(|i| i.name.as_str()).collect();
    let banner = Banner {
        issuer,
        data_dir,
        policy_dir,
        env_file: &env_file,
        exports: &exports,
        agent,
        targets: &targets,
        issuers: &issuers,
    };
    banner.print();
    Ok(())
}

/// What `--config` adds to the dev defaults, and where the policies come from.
struct Sources {
    overlay: Option<DevOverlay>,
    /// The overlay's `[policy] dir`, made absolute.
    overlay_policy_dir: Option<PathBuf>,
    policies: PolicySource,
}

impl Sources {
    /// Reads (and parses) the overlay, if any; values are checked when the configuration is resolved.
    fn load(overlay: Option<&Path>, data_dir: &Path) -> anyhow::Result<Self> {
        let overlay = overlay.map(DevOverlay::load).transpose()?;
        let overlay_policy_dir = match overlay.as_ref().and_then(DevOverlay::policy_dir) {
            Some(dir) => Some(std::path::absolute(dir).with_context(|| format!("cannot resolve {}", dir.display()))?),
            None => None,
        };
        let policies = match &overlay_policy_dir {
            Some(dir) => PolicySource::Overlay(dir.clone()),
            None => PolicySource::dev(data_dir)?,
        };
        Ok(Self { overlay, overlay_policy_dir, policies })
    }

    /// The dev configuration with the overlay's tables, checked, listening at `address`; an
    /// overlay's policies are compiled too, so a broken set is reported as the overlay's.
    fn check(
        &self,
        data_dir: &Path,
        address: SocketAddr,
        issuer: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Checked> {
        let mut config = Config::dev(data_dir.to_owned(), address, issuer.to_owned(), self.policies.dir().to_owned());
        let agent_port = super::dev_agent::remembered_port(data_dir, address.ip());
        config.agents.listen = Some(SocketAddr::new(address.ip(), agent_port));
        let Some(overlay) = &self.overlay else { return Ok(config.check(env)?) };
        let origin = overlay.origin().to_owned();
        let checked = overlay.clone().apply(config, self.overlay_policy_dir.clone(), env)?;
        if let (PolicySource::Overlay(dir), Some(policy)) = (&self.policies, &checked.policy) {
            crate::policy::PolicySet::load(dir, policy.evaluation_timeout)
                .with_context(|| format!("{origin}: `policy.dir`: cannot load the policies in {}", dir.display()))?;
        }
        Ok(checked)
    }
}

/// The admin API token's file: a bootstrap token on first start, a fresh one if the file is gone.
async fn admin_token(broker: &Broker, data_dir: &Path) -> anyhow::Result<PathBuf> {
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
    Ok(token_file)
}

/// A one-time console sign-in link for the admin token in `token_file`.
async fn console_link(broker: &Broker, token_file: &Path, issuer: &str) -> anyhow::Result<String> {
    let token = zeroize::Zeroizing::new(std::fs::read_to_string(token_file)?);
    let operator = broker.access().authenticate(token.trim()).await.context("the admin token file's token")?;
    let link = broker.console_sessions().create_link(&operator, crate::audit::Context::default()).await?;
    Ok(format!("{issuer}{}?link={}", crate::console::SIGN_IN_PATH, link.secret.expose()))
}

/// Where the policies come from.
enum PolicySource {
    /// The overlay's `[policy] dir`.
    Overlay(PathBuf),
    /// The repository's `policies/`, when run from a checkout.
    Checkout(PathBuf),
    /// `<data dir>/policies`, seeded with the shipped library on first use.
    Seeded(PathBuf),
}

impl PolicySource {
    /// The checkout's `policies/` when run from one, else `<data dir>/policies`.
    fn dev(data_dir: &Path) -> anyhow::Result<Self> {
        let checkout = PathBuf::from("policies");
        let has_rego = |dir: &Path| {
            std::fs::read_dir(dir)
                .map(|entries| entries.flatten().any(|e| e.path().extension().is_some_and(|x| x == "rego")))
                .unwrap_or(false)
        };
        if has_rego(&checkout) {
            return Ok(Self::Checkout(std::path::absolute(&checkout).context("cannot resolve ./policies")?));
        }
        Ok(Self::Seeded(data_dir.join("policies")))
    }

    fn dir(&self) -> &Path {
        match self {
            Self::Overlay(dir) | Self::Checkout(dir) | Self::Seeded(dir) => dir,
        }
    }

    /// Writes the shipped library into the data dir, the first time it is used.
    fn seed(&self) -> anyhow::Result<()> {
        match self {
            Self::Seeded(dir) if !dir.exists() => crate::policy::library::write_to(dir)
                .with_context(|| format!("cannot write the policy library to {}", dir.display())),
            _ => Ok(()),
        }
    }
}

/// What `keyward dev` prints once it is ready.
struct Banner<'a> {
    issuer: &'a str,
    data_dir: &'a Path,
    policy_dir: &'a Path,
    env_file: &'a Path,
    exports: &'a str,
    agent: &'a super::dev_agent::LocalAgent,
    targets: &'a [String],
    issuers: &'a [&'a str],
}

impl Banner<'_> {
    fn print(&self) {
        let Self { issuer, data_dir, policy_dir, env_file, exports, agent, targets, issuers } = self;
        let agent = match agent {
            super::dev_agent::LocalAgent::Started { log } => {
                format!("one local agent in pool `dev` (log: {})", log.display())
            }
            super::dev_agent::LocalAgent::Missing { expected } => format!(
                "none: there is no {} (runs stay queued); build it with `cargo build --workspace --bins` \
                 in the checkout, then start `keyward dev` again",
                expected.display()
            ),
        };
        let list = |names: &[&str]| {
            if names.is_empty() {
                "none (add some with --config FILE; docs/ci.md)".to_owned()
            } else {
                names.join(", ")
            }
        };
        let targets = list(&targets.iter().map(String::as_str).collect::<Vec<_>>());
        let issuers = list(issuers);
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
             \n  targets    {targets}\
             \n  issuers    {issuers}\
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
}

pub(super) fn default_data_dir(env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<PathBuf> {
    if let Some(xdg) = env("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(xdg).join("keyward").join("dev"));
    }
    match env("HOME").filter(|v| !v.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".local/share/keyward/dev")),
        None => bail!("neither XDG_DATA_HOME nor HOME is set; pass --data-dir"),
    }
}

/// The dev data dir holds the KEK and the admin token: private, as `serve`'s is
/// ([`crate::store::files`]).
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    Ok(crate::store::files::private_dir(dir)?)
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
