//! `keyward creds aws|vault`: what a CI job runs instead of holding static keys.
//!
//! It trades the job's token (a Keyward run token, or a trusted CI issuer's token) at
//! `POST /v1/token` and prints the credentials in the shape the caller needs. Usable as an AWS CLI `credential_process`:
//!
//! ```ini
//! [profile deploy]
//! credential_process = keyward creds aws --target aws:network-apply --subject-token-command 'get-ci-token'
//! ```
//!
//! What it obtained is cached (see `creds_cache`) and handed out again until it is within
//! `--refresh-before` of expiry, because a subject token is accepted once and clients run the
//! command far more often than that. For a target in `worker` mode the broker returns a
//! web-identity token instead of credentials, and this command calls STS itself, from the caller's
//! network. Output is written only once everything succeeded: a failure prints nothing on stdout.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::creds_cache::{self, CacheDir, CacheLock, Credentials, Entry, Freshness, Key, KeySubject, Lookup, Secret};
use super::creds_subject::{SubjectSource, Token};
use crate::clock::{Clock as _, SystemClock};
use crate::exchange::aws::{self, AssumeRole};
use crate::targets::{AwsTarget, ExchangeMode};

#[derive(Debug, Subcommand)]
pub(super) enum CredsCommand {
    /// AWS credentials for a target, from a subject token.
    Aws(AwsArgs),
    /// A Vault token (and the target's secrets) for a target, from a subject token.
    Vault(VaultArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum VaultFormat {
    /// The Vault token alone (for `VAULT_TOKEN`; default).
    Token,
    /// `export VAULT_TOKEN=…` for `eval`.
    Env,
    /// `VAULT_TOKEN=…` (what `$GITHUB_ENV` takes).
    Dotenv,
    /// The broker's whole answer, secrets included (never cached).
    Json,
}

/// Where the subject token comes from: exactly one source.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct SubjectArgs {
    /// File holding the subject token (one token: the broker accepts it once).
    #[arg(long)]
    subject_token_file: Option<PathBuf>,
    /// Environment variable holding the subject token (one token: the broker accepts it once).
    #[arg(long)]
    subject_token_env: Option<String>,
    /// Shell command (run with `sh -c`) that prints a fresh subject token; run only when an
    /// exchange is needed, e.g. to ask GitHub Actions' ID-token endpoint again.
    #[arg(long)]
    subject_token_command: Option<String>,
}

impl SubjectArgs {
    fn source(&self) -> anyhow::Result<SubjectSource> {
        match (&self.subject_token_file, &self.subject_token_env, &self.subject_token_command) {
            (Some(path), None, None) => Ok(SubjectSource::File(path.clone())),
            (None, Some(name), None) => Ok(SubjectSource::Env(name.clone())),
            (None, None, Some(command)) => Ok(SubjectSource::Command(command.clone())),
            _ => bail!("pass exactly one of --subject-token-file, --subject-token-env, --subject-token-command"),
        }
    }
}

/// Where the subject token comes from, where the broker is, and how to cache.
#[derive(Debug, Args)]
struct Subject {
    #[command(flatten)]
    source: SubjectArgs,
    /// Ask for a shorter lifetime than the target and policy allow, e.g. `20m`.
    #[arg(long, value_parser = humantime::parse_duration)]
    ttl: Option<Duration>,
    /// Broker URL.
    #[arg(long, env = "KEYWARD_ADDR", default_value = super::DEFAULT_ADDR)]
    addr: String,
    /// Exchange again once cached credentials are this close to expiry.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "15m")]
    refresh_before: Duration,
    /// Neither read nor write the credential cache: exchange every time.
    #[arg(long)]
    no_cache: bool,
}

#[derive(Debug, Args)]
pub(super) struct VaultArgs {
    /// The target, e.g. `vault:network-secrets` (the `vault:` prefix may be left out).
    #[arg(long)]
    target: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "token")]
    format: VaultFormat,
    #[command(flatten)]
    subject: Subject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// The AWS CLI `credential_process` JSON (default).
    CredentialProcess,
    /// `export AWS_ACCESS_KEY_ID=…` lines for `eval`.
    Env,
    /// `AWS_ACCESS_KEY_ID=…` lines (what `$GITHUB_ENV` takes).
    Dotenv,
    /// The broker's whole answer (never cached).
    Json,
}

#[derive(Debug, Args)]
pub(super) struct AwsArgs {
    /// The target, e.g. `aws:network-apply` (the `aws:` prefix may be left out).
    #[arg(long)]
    target: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "credential-process")]
    format: Format,
    #[command(flatten)]
    subject: Subject,
}

pub(super) async fn run(command: CredsCommand, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    let output = match command {
        CredsCommand::Aws(args) => aws_credentials(args, env).await?,
        CredsCommand::Vault(args) => vault_credentials(args, env).await?,
    };
    // Everything succeeded: only now does anything reach stdout.
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(output.as_bytes()).and_then(|()| stdout.flush()).context("cannot write to stdout")
}

fn now() -> i64 {
    SystemClock.now()
}

/// `<kind>:<name>`, the prefix optional on the command line.
fn target_id(kind: &str, target: &str) -> String {
    if target.contains(':') { target.to_owned() } else { format!("{kind}:{target}") }
}

/// A looked-up cache slot, held under the cache's lock until the exchange's result is stored.
struct Slot {
    dir: CacheDir,
    key: Key,
    lock: CacheLock,
}

/// Opens the cache and takes its lock; on any problem says why on stderr and goes on without it.
async fn open_slot(
    subject: &Subject,
    target: &str,
    token: &Token,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<Slot> {
    let opened = async {
        let path = creds_cache::default_dir(env)?;
        let mut notes = Vec::new();
        let dir = CacheDir::open(path, &mut notes)?;
        for note in notes {
            eprintln!("keyward creds: {note}");
        }
        let locking = dir.clone();
        let lock = tokio::task::spawn_blocking(move || locking.lock()).await.map_err(|e| {
            creds_cache::CacheError::Lock { path: PathBuf::from(".lock"), source: std::io::Error::other(e) }
        })??;
        Ok::<_, creds_cache::CacheError>((dir, lock))
    };
    let (dir, lock) = match opened.await {
        Ok(opened) => opened,
        Err(error) => {
            eprintln!("keyward creds: not caching: {error}");
            return None;
        }
    };
    let key = match token {
        Token::Fixed(fixed) => Key::new(&subject.addr, target, &KeySubject::Token(fixed.expose())),
        Token::Command(command) => {
            let cwd = std::env::current_dir().unwrap_or_default();
            Key::new(
                &subject.addr,
                target,
                &KeySubject::Command { command, cwd: &cwd, env: std::env::vars_os().collect() },
            )
        }
    };
    Some(Slot { dir, key, lock })
}

/// What the cache says to do.
enum Cached {
    /// Hand these out.
    Use(Credentials),
    /// Exchange. `spent`: the fixed token was exchanged before (its entry expired), so a
    /// single-use issuer will refuse it.
    Exchange { spent: bool },
}

/// Cached credentials still good to hand out, if any.
fn cached(slot: &Slot, subject: &Subject, token: &Token) -> Cached {
    let entry = match slot.dir.read(&slot.key, &slot.lock) {
        Lookup::Hit(entry) => entry,
        Lookup::Miss => return Cached::Exchange { spent: false },
        Lookup::Ignored(why) => {
            eprintln!("keyward creds: ignoring a cache entry because {why}; it will be replaced");
            return Cached::Exchange { spent: false };
        }
    };
    let fixed = matches!(token, Token::Fixed(_));
    match entry.freshness(now(), subject.refresh_before) {
        Freshness::Fresh => Cached::Use(entry.credentials),
        // A file or variable holds the token this entry came from, which the broker will not take
        // again: renewing early is impossible, so use what is left.
        Freshness::Due if fixed => {
            eprintln!(
                "keyward creds: the cached credentials expire in {}s and cannot be renewed with the same \
                 subject token; use --subject-token-command to renew them",
                entry.expires_at - now()
            );
            Cached::Use(entry.credentials)
        }
        Freshness::Due | Freshness::Expired => Cached::Exchange { spent: fixed },
    }
}

/// The subject token for an exchange that bypasses the cache (`--format json`).
async fn token_now(subject: &Subject, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Secret> {
    Ok(subject.source.source()?.resolve(env)?.get().await?)
}

/// What one exchange obtained, and when it expires (`None`: do not cache it).
type Obtained = (Credentials, Option<i64>);

/// Looks in the cache, exchanges when needed (`obtain`), stores what was obtained.
async fn cached_or_obtained<F>(
    subject: &Subject,
    target: &str,
    env: &dyn Fn(&str) -> Option<String>,
    obtain: F,
) -> anyhow::Result<Credentials>
where
    F: AsyncFnOnce(Secret) -> anyhow::Result<Obtained>,
{
    let token = subject.source.source()?.resolve(env)?;
    let slot = if subject.no_cache { None } else { open_slot(subject, target, &token, env).await };
    let spent = match slot.as_ref().map(|slot| cached(slot, subject, &token)) {
        Some(Cached::Use(credentials)) => return Ok(credentials),
        Some(Cached::Exchange { spent }) => spent,
        None => false,
    };
    let obtained = obtain(token.get().await?).await;
    let (credentials, expires_at) = if spent {
        obtained.context(
            "this subject token was exchanged before and its credentials have expired; a new token is needed \
             (--subject-token-command gets one for each exchange)",
        )?
    } else {
        obtained?
    };
    if let (Some(slot), Some(expires_at)) = (slot, expires_at) {
        let entry = Entry::new(target, expires_at, credentials.clone());
        if let Err(error) = slot.dir.write(&slot.key, &entry, now(), &slot.lock) {
            eprintln!("keyward creds: not caching: {error}");
        }
    }
    Ok(credentials)
}

/// Trades the subject token at `POST /v1/token` for `target`.
async fn exchange(subject: &Subject, target: &str, token: &Secret) -> anyhow::Result<Value> {
    let mut form = vec![
        ("grant_type", crate::exchange::GRANT_TYPE.to_owned()),
        ("subject_token", token.expose().to_owned()),
        ("subject_token_type", crate::exchange::JWT_TOKEN_TYPE.to_owned()),
        ("resource", target.to_owned()),
    ];
    if let Some(ttl) = subject.ttl {
        form.push(("ttl_seconds", ttl.as_secs().to_string()));
    }
    let base = subject.addr.trim_end_matches('/');
    let http =
        reqwest::Client::builder().timeout(Duration::from_secs(30)).build().context("cannot build the HTTP client")?;
    let sent = http.post(format!("{base}/v1/token")).form(&form).send().await;
    if let Some((_, token)) = form.iter_mut().find(|(name, _)| *name == "subject_token") {
        zeroize::Zeroize::zeroize(token);
    }
    let response = sent.map_err(|e| anyhow!("cannot reach the broker at {base}: {e} (is KEYWARD_ADDR right?)"))?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let text = |key: &str| body.get(key).and_then(Value::as_str).unwrap_or_default().to_owned();
        bail!("{} ({}, HTTP {})", text("error_description"), text("error"), status.as_u16());
    }
    Ok(body)
}

/// A value safe to print unquoted in `export NAME=value` and `NAME=value` lines: what AWS keys,
/// session tokens, Vault tokens and RFC 3339 dates are made of. Anything else (a newline that would
/// add a line to `$GITHUB_ENV`, a `$(…)` for `eval`) is refused, never printed.
fn shell_safe(value: &str) -> anyhow::Result<&str> {
    if !value.is_empty() && value.chars().all(|c| c.is_ascii_alphanumeric() || "+/=._:-".contains(c)) {
        Ok(value)
    } else {
        bail!("the credentials hold characters unsafe for an environment line; use --format json")
    }
}

/// `NAME=value` lines, each with `prefix` (`export ` or nothing).
fn env_lines(prefix: &str, pairs: &[(&str, &str)]) -> anyhow::Result<String> {
    let mut out = String::new();
    for (name, value) in pairs {
        out.push_str(&format!("{prefix}{name}={}\n", shell_safe(value)?));
    }
    Ok(out)
}

async fn vault_credentials(args: VaultArgs, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<String> {
    let target = target_id("vault", &args.target);
    if args.format == VaultFormat::Json {
        let body = exchange(&args.subject, &target, &token_now(&args.subject, env).await?).await?;
        return Ok(format!("{}\n", serde_json::to_string_pretty(&body)?));
    }
    let credentials = cached_or_obtained(&args.subject, &target, env, async |token| {
        vault_token(&exchange(&args.subject, &target, &token).await?)
    })
    .await?;
    let Credentials::Vault { token } = &credentials else { bail!("the cached entry is not a Vault token") };
    Ok(match args.format {
        VaultFormat::Token | VaultFormat::Json => format!("{}\n", token.expose()),
        VaultFormat::Env => env_lines("export ", &[("VAULT_TOKEN", token.expose())])?,
        VaultFormat::Dotenv => env_lines("", &[("VAULT_TOKEN", token.expose())])?,
    })
}

/// The Vault token of a broker answer and when it expires (its lease; a token without one is not
/// cached).
fn vault_token(body: &Value) -> anyhow::Result<Obtained> {
    let token = body.get("access_token").and_then(Value::as_str).filter(|t| *t != "N_A" && !t.is_empty());
    let Some(token) = token else {
        bail!("the target does not return its Vault token (return_token = false); use --format json for its secrets")
    };
    let lease = body.get("expires_in").and_then(Value::as_i64).filter(|lease| *lease > 0);
    Ok((Credentials::Vault { token: Secret::new(token.to_owned()) }, lease.map(|lease| now().saturating_add(lease))))
}

async fn aws_credentials(args: AwsArgs, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<String> {
    let target = target_id("aws", &args.target);
    if args.format == Format::Json {
        let mut body = exchange(&args.subject, &target, &token_now(&args.subject, env).await?).await?;
        let credentials = aws_from_answer(&body).await?;
        if let Some(object) = body.as_object_mut() {
            object.insert("aws_credentials".to_owned(), credential_process_json(&credentials));
        }
        return Ok(format!("{}\n", serde_json::to_string_pretty(&body)?));
    }
    let credentials = cached_or_obtained(&args.subject, &target, env, async |token| {
        let credentials = aws_from_answer(&exchange(&args.subject, &target, &token).await?).await?;
        let expires_at = match &credentials {
            Credentials::Aws { expiration, .. } => parse_rfc3339(expiration),
            Credentials::Vault { .. } => None,
        };
        Ok((credentials, expires_at))
    })
    .await?;
    let Credentials::Aws { access_key_id, secret_access_key, session_token, expiration } = &credentials else {
        bail!("the cached entry is not AWS credentials")
    };
    let pairs = [
        ("AWS_ACCESS_KEY_ID", access_key_id.as_str()),
        ("AWS_SECRET_ACCESS_KEY", secret_access_key.expose()),
        ("AWS_SESSION_TOKEN", session_token.expose()),
        ("AWS_CREDENTIAL_EXPIRATION", expiration.as_str()),
    ];
    Ok(match args.format {
        Format::CredentialProcess | Format::Json => format!("{}\n", credential_process_json(&credentials)),
        Format::Env => env_lines("export ", &pairs)?,
        Format::Dotenv => env_lines("", &pairs)?,
    })
}

/// The AWS CLI `credential_process` JSON.
fn credential_process_json(credentials: &Credentials) -> Value {
    match credentials {
        Credentials::Aws { access_key_id, secret_access_key, session_token, expiration } => json!({
            "Version": 1,
            "AccessKeyId": access_key_id,
            "SecretAccessKey": secret_access_key.expose(),
            "SessionToken": session_token.expose(),
            "Expiration": expiration,
        }),
        Credentials::Vault { .. } => Value::Null,
    }
}

/// Seconds since the epoch of an RFC 3339 date (`None` if it does not parse: then nothing is cached).
fn parse_rfc3339(text: &str) -> Option<i64> {
    use aws_sdk_sts::primitives::{DateTime, DateTimeFormat};
    DateTime::from_str(text, DateTimeFormat::DateTime).ok().map(|date| date.secs())
}

/// The AWS credentials of a broker answer: as the broker obtained them, or (worker mode) from STS
/// here.
async fn aws_from_answer(body: &Value) -> anyhow::Result<Credentials> {
    if body.get("aws").and_then(|a| a.get("mode")).and_then(Value::as_str) == Some("worker") {
        return assume_in_worker(body).await;
    }
    let answer = body.get("aws_credentials").ok_or_else(|| anyhow!("the broker's answer has no AWS credentials"))?;
    let field = |key: &str| {
        answer
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("the broker's AWS credentials have no {key}"))
    };
    Ok(Credentials::Aws {
        access_key_id: field("AccessKeyId")?,
        secret_access_key: Secret::new(field("SecretAccessKey")?),
        session_token: Secret::new(field("SessionToken")?),
        expiration: field("Expiration")?,
    })
}

/// Worker mode: call STS here with the web-identity token the broker minted.
async fn assume_in_worker(body: &Value) -> anyhow::Result<Credentials> {
    let aws_info = body.get("aws").ok_or_else(|| anyhow!("the broker's answer has no `aws` section"))?;
    let text = |key: &str| aws_info.get(key).and_then(Value::as_str).map(str::to_owned);
    let target = AwsTarget {
        role_arn: text("role_arn").ok_or_else(|| anyhow!("no role_arn in the broker's answer"))?,
        region: text("region").unwrap_or_else(|| "us-east-1".to_owned()),
        sts_endpoint: text("sts_endpoint"),
        audience: String::new(),
        mode: ExchangeMode::Worker,
        session_tags: None,
        source_identity: None,
    };
    let session_name = text("role_session_name").unwrap_or_else(|| "keyward".to_owned());
    let web_identity = Zeroizing::new(
        body.get("access_token").and_then(Value::as_str).ok_or_else(|| anyhow!("no web-identity token"))?.to_owned(),
    );
    let duration = aws_info.get("duration_seconds").and_then(Value::as_u64).unwrap_or(900);
    let credentials = aws::assume_role(AssumeRole {
        target: &target,
        session_name: &session_name,
        web_identity_token: &web_identity,
        duration: Duration::from_secs(duration),
        session_policy: None,
    })
    .await?;
    Ok(Credentials::Aws {
        access_key_id: credentials.access_key_id.clone(),
        secret_access_key: Secret::new(credentials.secret_access_key.to_string()),
        session_token: Secret::new(credentials.session_token.to_string()),
        expiration: crate::clock::rfc3339(credentials.expires_at),
    })
}
