//! `keyward creds aws|vault`: what a CI job runs instead of holding static keys.
//!
//! It trades the job's token (a Keyward run token, or a trusted CI issuer's token) at
//! `POST /v1/token` and prints the credentials in the shape the caller needs. Usable as an AWS CLI `credential_process`:
//!
//! ```ini
//! [profile deploy]
//! credential_process = keyward creds aws --target aws:network-apply --subject-token-file /run/token
//! ```
//!
//! For a target in `worker` mode the broker returns a web-identity token instead of credentials,
//! and this command calls STS itself, from the caller's network.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::config::{AwsTarget, ExchangeMode};
use crate::exchange::aws::{self, AssumeRole};

#[derive(Debug, Subcommand)]
pub(super) enum CredsCommand {
    /// AWS credentials for a target, from a subject token.
    Aws(AwsArgs),
    /// A Vault token (and the target's secrets) for a target, from a subject token.
    Vault(VaultArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum VaultFormat {
    /// The Vault token alone (for `VAULT_TOKEN`; default).
    Token,
    /// `export VAULT_TOKEN=…` for `eval`.
    Env,
    /// The broker's whole answer, secrets included.
    Json,
}

/// Where the subject token comes from and where the broker is.
#[derive(Debug, Args)]
struct Subject {
    /// File holding the subject token.
    #[arg(long, conflicts_with = "subject_token_env")]
    subject_token_file: Option<PathBuf>,
    /// Environment variable holding the subject token.
    #[arg(long)]
    subject_token_env: Option<String>,
    /// Ask for a shorter lifetime than the target and policy allow, e.g. `20m`.
    #[arg(long, value_parser = humantime::parse_duration)]
    ttl: Option<Duration>,
    /// Broker URL.
    #[arg(long, env = "KEYWARD_ADDR", default_value = super::DEFAULT_ADDR)]
    addr: String,
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

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    /// The AWS CLI `credential_process` JSON (default).
    CredentialProcess,
    /// `export AWS_ACCESS_KEY_ID=…` lines for `eval`.
    Env,
    /// The broker's whole answer.
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
    match command {
        CredsCommand::Aws(args) => aws_credentials(args, env).await,
        CredsCommand::Vault(args) => vault_credentials(args, env).await,
    }
}

/// Trades the subject token at `POST /v1/token` for `target` (`<kind>:<name>`, prefix optional).
async fn exchange(
    subject: &Subject,
    kind: &str,
    target: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Value> {
    let token = Zeroizing::new(match (&subject.subject_token_file, &subject.subject_token_env) {
        (Some(path), _) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read subject token file {}", path.display()))?
            .trim()
            .to_owned(),
        (None, Some(var)) => {
            env(var).ok_or_else(|| anyhow!("environment variable {var} is not set"))?.trim().to_owned()
        }
        (None, None) => bail!("pass --subject-token-file or --subject-token-env"),
    });
    let target = if target.contains(':') { target.to_owned() } else { format!("{kind}:{target}") };
    let mut form = vec![
        ("grant_type", crate::exchange::GRANT_TYPE.to_owned()),
        ("subject_token", token.to_string()),
        ("subject_token_type", crate::exchange::JWT_TOKEN_TYPE.to_owned()),
        ("resource", target),
    ];
    if let Some(ttl) = subject.ttl {
        form.push(("ttl_seconds", ttl.as_secs().to_string()));
    }
    let base = subject.addr.trim_end_matches('/');
    let http =
        reqwest::Client::builder().timeout(Duration::from_secs(30)).build().context("cannot build the HTTP client")?;
    let response = http
        .post(format!("{base}/v1/token"))
        .form(&form)
        .send()
        .await
        .map_err(|e| anyhow!("cannot reach the broker at {base}: {e} (is KEYWARD_ADDR right?)"))?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let text = |key: &str| body.get(key).and_then(Value::as_str).unwrap_or_default().to_owned();
        bail!("{} ({}, HTTP {})", text("error_description"), text("error"), status.as_u16());
    }
    Ok(body)
}

async fn vault_credentials(args: VaultArgs, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    let body = exchange(&args.subject, "vault", &args.target, env).await?;
    let token = body.get("access_token").and_then(Value::as_str).unwrap_or("N_A");
    match args.format {
        VaultFormat::Json => println!("{}", serde_json::to_string_pretty(&body)?),
        VaultFormat::Token | VaultFormat::Env if token == "N_A" => {
            bail!(
                "the target does not return its Vault token (return_token = false); use --format json for its secrets"
            )
        }
        VaultFormat::Token => println!("{token}"),
        VaultFormat::Env => println!("export VAULT_TOKEN={token}"),
    }
    Ok(())
}

async fn aws_credentials(args: AwsArgs, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    let body = exchange(&args.subject, "aws", &args.target, env).await?;
    let credentials = match body.get("aws").and_then(|a| a.get("mode")).and_then(Value::as_str) {
        Some("worker") => assume_in_worker(&body).await?,
        _ => {
            body.get("aws_credentials").cloned().ok_or_else(|| anyhow!("the broker's answer has no AWS credentials"))?
        }
    };
    let field = |key: &str| credentials.get(key).and_then(Value::as_str).unwrap_or_default().to_owned();
    match args.format {
        Format::CredentialProcess => println!("{credentials}"),
        Format::Json => {
            let mut body = body;
            if let Some(object) = body.as_object_mut() {
                object.insert("aws_credentials".to_owned(), credentials.clone());
            }
            println!("{}", serde_json::to_string_pretty(&body)?);
        }
        Format::Env => {
            println!("export AWS_ACCESS_KEY_ID={}", field("AccessKeyId"));
            println!("export AWS_SECRET_ACCESS_KEY={}", field("SecretAccessKey"));
            println!("export AWS_SESSION_TOKEN={}", field("SessionToken"));
            println!("export AWS_CREDENTIAL_EXPIRATION={}", field("Expiration"));
        }
    }
    Ok(())
}

/// Worker mode: call STS here with the web-identity token the broker minted.
async fn assume_in_worker(body: &Value) -> anyhow::Result<Value> {
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
    Ok(json!({
        "Version": 1,
        "AccessKeyId": credentials.access_key_id,
        "SecretAccessKey": credentials.secret_access_key.as_str(),
        "SessionToken": credentials.session_token.as_str(),
        "Expiration": aws::rfc3339(credentials.expires_at),
    }))
}
