//! Targets and trusted issuers: what may be asked for, and whose tokens are believed.
//!
//! Both are checked against each other and against `[tokens]`: a target's audience must be one
//! tokens may be minted for, and an issuer must be bound to claims and name configured targets
//! its phase may use (security review M1).

use std::time::Duration;

use keyward_proto::claims::Phase;

use super::file::{IssuerEntry, TargetEntry, default_write_subjects};
use super::url::check_url;
use super::{ConfigError, invalid};
use crate::exchange::trusted_issuers::IssuerConfig;
use crate::targets::{AwsTarget, TargetAccess, TargetConfig, TargetKind, VaultTarget};
use crate::tokens::mint::AWS_TAG_KEYS;
use crate::tokens::rules::MAX_TOKEN_LIFETIME;

/// The `[[targets]]`, checked; their audiences must be among `allowed_audiences`.
pub(super) fn targets(
    entries: Vec<TargetEntry>,
    allowed_audiences: &[String],
) -> Result<Vec<TargetConfig>, ConfigError> {
    let targets: Vec<TargetConfig> = entries.into_iter().map(TargetConfig::from).collect();
    check_targets(&targets, allowed_audiences)?;
    Ok(targets)
}

/// The `[[issuers]]`, checked against the broker's own issuer URL and the targets they name.
pub(super) fn issuers(
    entries: Vec<IssuerEntry>,
    external_url: &str,
    targets: &[TargetConfig],
) -> Result<Vec<IssuerConfig>, ConfigError> {
    let issuers: Vec<IssuerConfig> = entries.into_iter().map(IssuerConfig::from).collect();
    check_issuers(&issuers, external_url, targets)?;
    Ok(issuers)
}

/// Checks the targets: each one's name, lifetime and writers, then its relying party's settings.
fn check_targets(targets: &[TargetConfig], allowed_audiences: &[String]) -> Result<(), ConfigError> {
    let mut seen = std::collections::BTreeSet::new();
    for target in targets {
        check_target_name(target)?;
        if !seen.insert(target.id()) {
            return Err(invalid("targets.name", format!("target `{}` is defined twice", target.id())));
        }
        check_target_grant(target)?;
        match &target.kind {
            TargetKind::Vault(vault) => check_vault_target(&target.id(), vault, allowed_audiences)?,
            TargetKind::Aws(aws) => check_aws_target(&target.id(), aws, allowed_audiences)?,
        }
    }
    Ok(())
}

fn check_target_name(target: &TargetConfig) -> Result<(), ConfigError> {
    let name = &target.name;
    let valid =
        !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !valid {
        return Err(invalid(
            "targets.name",
            format!("invalid target name `{name}`: use 1-64 of a-z, 0-9, `-`, `_`, `.`"),
        ));
    }
    Ok(())
}

/// What a target grants: a lifetime between 1m and 12h, and writers only for a write target.
fn check_target_grant(target: &TargetConfig) -> Result<(), ConfigError> {
    let id = target.id();
    if target.duration < Duration::from_secs(60) || target.duration > MAX_TOKEN_LIFETIME * 12 {
        return Err(invalid("targets.duration", format!("target `{id}`: duration must be between 1m and 12h")));
    }
    if target.access == TargetAccess::Read && target.write_subjects != default_write_subjects() {
        return Err(invalid(
            "targets.write_subjects",
            format!("target `{id}` grants read access; write_subjects only applies to write targets"),
        ));
    }
    if target.write_subjects.is_empty() {
        return Err(invalid(
            "targets.write_subjects",
            format!("target `{id}`: write_subjects is empty; leave it out for the default [\"job\"]"),
        ));
    }
    Ok(())
}

fn check_vault_target(id: &str, vault: &VaultTarget, allowed_audiences: &[String]) -> Result<(), ConfigError> {
    check_url("targets.address", &vault.address)?;
    check_audience(id, &vault.audience, allowed_audiences)?;
    if !vault.return_token && vault.kv_reads.is_empty() && vault.pki_issues.is_empty() {
        return Err(invalid(
            "targets.kv_reads",
            format!("target `{id}` returns nothing: set return_token, or list kv_reads or pki_issues"),
        ));
    }
    Ok(())
}

fn check_aws_target(id: &str, aws: &AwsTarget, allowed_audiences: &[String]) -> Result<(), ConfigError> {
    if let Some(unknown) = aws.session_tags.iter().flatten().find(|k| !AWS_TAG_KEYS.contains(&k.as_str())) {
        return Err(invalid(
            "targets.session_tags",
            format!("target `{id}`: unknown tag `{unknown}`; use {}", AWS_TAG_KEYS.join(", ")),
        ));
    }
    let arn = &aws.role_arn;
    if !arn.starts_with("arn:aws") || arn.split(':').count() != 6 || !arn.contains(":role/") {
        return Err(invalid("targets.role_arn", format!("target `{id}`: `{arn}` is not an IAM role ARN")));
    }
    check_audience(id, &aws.audience, allowed_audiences)
}

/// A target's tokens are minted for its relying party's audience, which `[tokens]` must allow.
fn check_audience(id: &str, audience: &str, allowed_audiences: &[String]) -> Result<(), ConfigError> {
    if !allowed_audiences.iter().any(|allowed| allowed == audience) {
        return Err(invalid(
            "targets.audience",
            format!("target `{id}`: audience `{audience}` is not in tokens.allowed_audiences"),
        ));
    }
    Ok(())
}

/// Checks the trusted issuers: unique, reachable, bound to claims and to configured targets.
fn check_issuers(issuers: &[IssuerConfig], external_url: &str, targets: &[TargetConfig]) -> Result<(), ConfigError> {
    let mut seen = std::collections::BTreeSet::new();
    for issuer in issuers {
        if !seen.insert(issuer.name.as_str()) {
            return Err(invalid("issuers.name", format!("issuer `{}` is defined twice", issuer.name)));
        }
        check_url("issuers.issuer", &issuer.issuer)?;
        if issuer.issuer == external_url {
            return Err(invalid(
                "issuers.issuer",
                "the broker's own tokens are trusted already; do not list its issuer",
            ));
        }
        if issuer.audience.trim().is_empty() {
            return Err(invalid("issuers.audience", format!("issuer `{}`: audience must not be empty", issuer.name)));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&issuer.jwks_refresh_interval) {
            return Err(invalid(
                "issuers.jwks_refresh_interval",
                format!("issuer `{}`: must be between 1s and 1h", issuer.name),
            ));
        }
        if issuer.algorithms.is_empty() {
            return Err(invalid(
                "issuers.algorithms",
                format!("issuer `{}`: allow at least one algorithm", issuer.name),
            ));
        }
        check_issuer_binding(issuer, targets)?;
    }
    Ok(())
}

/// An issuer must say whose tokens it accepts (`required_claims`) and what they may reach
/// (`targets`): CI systems mint tokens for every repository they host, with any audience the
/// workflow asks for, so neither is implied by trusting the issuer.
fn check_issuer_binding(issuer: &IssuerConfig, targets: &[TargetConfig]) -> Result<(), ConfigError> {
    let name = &issuer.name;
    if issuer.required_claims.is_empty() {
        return Err(invalid(
            "issuers.required_claims",
            format!(
                "issuer `{name}` has no required_claims, so every repository its CI system serves could exchange \
                     tokens; bind it, e.g. required_claims = {{ repository_owner = \"acme\" }}"
            ),
        ));
    }
    if let Some(claim) = issuer.required_claims.keys().find(|claim| UNBINDING_CLAIMS.contains(&claim.as_str())) {
        return Err(invalid(
            "issuers.required_claims",
            format!(
                "issuer `{name}`: `{claim}` is checked on every token already and binds no repository; require \
                     a claim naming who the token is for (repository_owner, repository, namespace_path, sub)"
            ),
        ));
    }
    if issuer.targets.is_empty() {
        return Err(invalid(
            "issuers.targets",
            format!(
                "issuer `{name}` lists no targets; name the ones its tokens may ask for, e.g. targets = [\"aws:ci-read\"]"
            ),
        ));
    }
    for wanted in &issuer.targets {
        let Some(target) = targets.iter().find(|target| &target.id() == wanted) else {
            return Err(invalid(
                "issuers.targets",
                format!(
                    "issuer `{name}`: `{wanted}` is not a configured target (write `<type>:<name>`, e.g. aws:deploy)"
                ),
            ));
        };
        if issuer.phase != Phase::Apply && target.access == TargetAccess::Write {
            return Err(invalid(
                "issuers.targets",
                format!(
                    "issuer `{name}` stands for the plan phase, which never gets write target `{wanted}`; \
                         use a separate issuer entry with phase = \"apply\" for it"
                ),
            ));
        }
    }
    Ok(())
}

/// Claims the verifier checks on every token, which therefore bind no caller.
const UNBINDING_CLAIMS: &[&str] = &["iss", "aud", "exp", "nbf", "iat", "jti"];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::targets::{ExchangeMode, KvRead, WriteSubject};

    const KEK: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    fn parse_target(target: &str) -> Result<Vec<TargetConfig>, ConfigError> {
        let config = Config::parse(
            &format!(
                "[server]\nlisten = \"127.0.0.1:1\"\nexternal_url = \"https://kw.example\"\n\
                 [storage]\ndata_dir = \"/tmp/kw\"\n[keys]\nkek_env = \"K\"\n\
                 [tokens]\nallowed_audiences = [\"sts.amazonaws.com\", \"vault\"]\n[[targets]]\n{target}\n"
            ),
            "t.toml",
        )?;
        Ok(config.resolve(&|_| Some(KEK.to_owned()))?.targets)
    }

    fn with_issuer(binding: &str) -> Result<Config, ConfigError> {
        Config::parse(
            &format!(
                "[server]\nlisten = \"127.0.0.1:1\"\nexternal_url = \"https://kw.example\"\n\
                 [storage]\ndata_dir = \"/tmp/kw\"\n[keys]\nkek = \"{KEK}\"\n\
                 [tokens]\nallowed_audiences = [\"sts.amazonaws.com\"]\n\
                 [[targets]]\nname = \"deploy\"\ntype = \"aws\"\naccess = \"write\"\n\
                 role_arn = \"arn:aws:iam::123456789012:role/deploy\"\n\
                 [[targets]]\nname = \"read\"\ntype = \"aws\"\naccess = \"read\"\n\
                 role_arn = \"arn:aws:iam::123456789012:role/read\"\n\
                 [[issuers]]\nname = \"gh\"\nissuer = \"https://token.actions.githubusercontent.com\"\n\
                 audience = \"https://kw.example\"\n{binding}"
            ),
            "test.toml",
        )
    }

    const GOOD: &str =
        "name = \"net\"\ntype = \"aws\"\naccess = \"write\"\nrole_arn = \"arn:aws:iam::123456789012:role/net\"";
    const VAULT: &str =
        "name = \"secrets\"\ntype = \"vault\"\naccess = \"read\"\naddress = \"https://vault.example\"\nrole = \"r\"";

    #[test]
    fn a_valid_vault_target_parses_with_defaults() -> Result<(), ConfigError> {
        let targets = parse_target(&format!("{VAULT}\nkv_reads = [{{ mount = \"secret\", path = \"db\" }}]"))?;
        let target = &targets[0];
        assert_eq!(target.id(), "vault:secrets");
        let TargetKind::Vault(vault) = &target.kind else { panic!("a vault target") };
        assert_eq!((vault.auth_mount.as_str(), vault.audience.as_str(), vault.return_token), ("jwt", "vault", true));
        assert_eq!(vault.kv_reads, vec![KvRead { mount: "secret".into(), path: "db".into() }]);
        Ok(())
    }

    #[test]
    fn a_valid_aws_target_parses_with_defaults() -> Result<(), ConfigError> {
        let targets = parse_target(&format!("{GOOD}\nlabels = {{ env = \"prod\" }}"))?;
        let target = &targets[0];
        assert_eq!(target.id(), "aws:net");
        assert_eq!(target.access, TargetAccess::Write);
        assert_eq!(target.duration, Duration::from_secs(3600));
        assert_eq!(target.labels.get("env").map(String::as_str), Some("prod"));
        assert_eq!(target.write_subjects, [WriteSubject::Job], "only jobs get write credentials unless opted in");
        let TargetKind::Aws(aws) = &target.kind else { panic!("an aws target") };
        assert_eq!(
            (aws.region.as_str(), aws.audience.as_str(), aws.mode),
            ("us-east-1", "sts.amazonaws.com", ExchangeMode::Broker)
        );
        Ok(())
    }

    #[test]
    fn a_write_target_can_opt_in_ci_subjects() -> Result<(), ConfigError> {
        let targets = parse_target(&format!("{GOOD}\nwrite_subjects = [\"job\", \"ci\"]"))?;
        assert_eq!(targets[0].write_subjects, [WriteSubject::Job, WriteSubject::Ci]);
        Ok(())
    }

    #[test]
    fn bad_targets_are_refused_with_a_key_path() {
        for (text, key) in [
            (format!("{GOOD}\nrole_arm = \"x\""), "role_arm"),
            (format!("{GOOD}\nacess = \"read\""), "acess"),
            (GOOD.replace("aws", "gcp"), "gcp"),
            (GOOD.replace("write", "admin"), "admin"),
            (GOOD.replace("role/net", "user/net"), "not an IAM role ARN"),
            (format!("{GOOD}\naudience = \"elsewhere\""), "tokens.allowed_audiences"),
            (format!("{GOOD}\n[[targets]]\n{GOOD}"), "defined twice"),
            (GOOD.replace("\"net\"", "\"net work\""), "invalid target name"),
            (VAULT.replace("vault\"\naccess", "vault\"\nreturn_token = false\naccess"), "returns nothing"),
            (format!("{VAULT}\naudience = \"elsewhere\""), "tokens.allowed_audiences"),
            (VAULT.replace("https://vault.example", "http://vault.example"), "loopback"),
            (format!("{VAULT}\nrole_arn = \"x\""), "role_arn"),
            (format!("{GOOD}\nsession_tags = [\"run\", \"owner\"]"), "unknown tag `owner`"),
            (format!("{GOOD}\nwrite_subjects = [\"human\"]"), "human"),
            (format!("{GOOD}\nwrite_subjects = []"), "write_subjects is empty"),
            (format!("{VAULT}\nwrite_subjects = [\"ci\"]"), "only applies to write targets"),
        ] {
            let error = parse_target(&text).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(error.contains(key), "{text:?} gave {error:?}");
        }
    }

    /// Security review M1: an issuer says whose tokens it accepts and which targets they reach.
    #[test]
    fn issuers_must_be_bound_to_claims_and_targets() -> Result<(), ConfigError> {
        let error = |binding: &str| -> Result<String, ConfigError> {
            Ok(with_issuer(binding)?.resolve(&|_| None).err().map(|e| e.to_string()).unwrap_or_default())
        };
        let owner = "required_claims = { repository_owner = \"acme\" }\n";
        with_issuer(&format!("{owner}targets = [\"aws:read\"]"))?.resolve(&|_| None)?;
        with_issuer(&format!("{owner}targets = [\"aws:deploy\", \"aws:read\"]\nphase = \"apply\""))?
            .resolve(&|_| None)?;

        let unbound = error("targets = [\"aws:read\"]")?;
        assert!(unbound.starts_with("`issuers.required_claims`: issuer `gh` has no required_claims"), "{unbound}");
        let audience_only = error("required_claims = { aud = \"https://kw.example\" }\ntargets = [\"aws:read\"]")?;
        assert!(audience_only.contains("`aud` is checked on every token already"), "{audience_only}");
        let no_targets = error(owner)?;
        assert!(no_targets.starts_with("`issuers.targets`: issuer `gh` lists no targets"), "{no_targets}");
        let unknown = error(&format!("{owner}targets = [\"aws:nope\"]"))?;
        assert!(unknown.contains("`aws:nope` is not a configured target"), "{unknown}");
        let plan_writes = error(&format!("{owner}targets = [\"aws:deploy\"]"))?;
        assert!(plan_writes.contains("plan phase, which never gets write target `aws:deploy`"), "{plan_writes}");
        Ok(())
    }
}
