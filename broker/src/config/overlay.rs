//! `keyward dev --config FILE`: the tables a newcomer adds to the dev defaults.
//!
//! Trying the exchange or the CI flow needs targets and trusted issuers, and nothing else of a
//! full `serve` configuration. An overlay holds exactly those tables (plus repositories and the
//! policy directory), written with the same types and checks as `serve`, so a block copied from
//! an overlay into a real configuration means the same thing. Everything else (listener, storage,
//! keys, audiences, audit, agent endpoint) belongs to dev mode; naming it is an error that says so
//! rather than a setting silently ignored.
//!
//! `[sso]` and `[vcs.github]` (DESIGN.md §7) are overlay content too, checked as in `serve`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{
    Checked, Config, ConfigError, IssuerEntry, NotificationEntry, PolicyConfig, RepositoryConfig, TargetEntry,
};

/// The top-level tables an overlay may contain.
pub const OVERLAY_TABLES: &[&str] = &["targets", "issuers", "repositories", "policy", "notifications", "sso", "vcs"];

/// `serve` tables that dev mode sets itself, and what it sets them to.
const DEV_OWNED_TABLES: &[(&str, &str)] = &[
    ("server", "it listens on loopback at --listen and is its own issuer there"),
    ("log", "it logs text at level info"),
    ("storage", "its SQLite database lives in the data dir (--data-dir)"),
    ("keys", "its key-encryption key is generated into the data dir"),
    ("tokens", "it allows the audiences sts.amazonaws.com and vault"),
    ("audit", "its audit log lives in the data dir's database"),
    ("agents", "its agent endpoint listens on loopback and its local agent enrolls itself"),
    ("scheduler", "its drift scheduler wakes every 5 s, alone on its database"),
];

/// Why an overlay file was refused. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// The file could not be read, is not TOML, or a key is misspelled or mistyped (the error
    /// names the file and the key path already).
    #[error(transparent)]
    File(ConfigError),
    /// A `serve` table that dev mode sets itself.
    #[error(
        "{path}: `{table}`: dev mode owns this table ({why}); a `keyward dev --config` file holds only \
         [[targets]], [[issuers]], [[repositories]], [[notifications]], [policy], [sso] and [vcs.github] (use `keyward serve --config` for a full configuration)"
    )]
    DevOwned {
        /// The file.
        path: String,
        /// The table.
        table: String,
        /// What dev mode sets it to.
        why: &'static str,
    },
    /// A table no configuration has.
    #[error(
        "{path}: `{table}`: unknown table; a `keyward dev --config` file holds only \
         [[targets]], [[issuers]], [[repositories]], [[notifications]], [policy], [sso] and [vcs.github]"
    )]
    Unknown {
        /// The file.
        path: String,
        /// The table.
        table: String,
    },
    /// A value parsed but is not acceptable (the same checks as `serve`).
    #[error("{path}: {source}")]
    Invalid {
        /// The file.
        path: String,
        /// The key path and what is wrong.
        source: ConfigError,
    },
}

/// The contents of an overlay file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevOverlay {
    /// Credential targets, as `[[targets]]` in `serve`.
    #[serde(default)]
    pub targets: Vec<TargetEntry>,
    /// Trusted CI issuers, as `[[issuers]]` in `serve`.
    #[serde(default)]
    pub issuers: Vec<IssuerEntry>,
    /// Private repository credentials, as `[[repositories]]` in `serve`.
    #[serde(default)]
    pub repositories: Vec<RepositoryConfig>,
    /// The policy directory, replacing the dev default.
    #[serde(default)]
    pub policy: Option<PolicyConfig>,
    /// Who is told about drift, runs and denials, as `[[notifications]]` in `serve`.
    #[serde(default)]
    pub notifications: Vec<NotificationEntry>,
    /// Sign-in for people, as `[sso]` in `serve` (the redirect URL defaults to dev's address).
    #[serde(default)]
    pub sso: Option<super::SsoConfig>,
    /// Pull requests and pushes from GitHub, as `[vcs.github]` in `serve`.
    #[serde(default)]
    pub vcs: Option<super::VcsConfig>,
    /// Where it came from, for error messages.
    #[serde(skip)]
    origin: String,
}

impl DevOverlay {
    /// Reads and parses `path`. Values are checked by [`DevOverlay::apply`], against the
    /// configuration they join.
    pub fn load(path: &Path) -> Result<Self, OverlayError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| OverlayError::File(ConfigError::Read { path: path.to_owned(), source }))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses overlay text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, OverlayError> {
        // Tables first, so `[server]` gets "dev mode owns this" rather than serde's list of fields.
        let tables: toml::Table = super::parse_toml(text, origin).map_err(OverlayError::File)?;
        for table in tables.keys() {
            if OVERLAY_TABLES.contains(&table.as_str()) {
                continue;
            }
            let path = origin.to_owned();
            return Err(match DEV_OWNED_TABLES.iter().find(|(owned, _)| owned == table) {
                Some((_, why)) => OverlayError::DevOwned { path, table: table.clone(), why },
                None => OverlayError::Unknown { path, table: table.clone() },
            });
        }
        let mut overlay: Self = super::parse_toml(text, origin).map_err(OverlayError::File)?;
        overlay.origin = origin.to_owned();
        Ok(overlay)
    }

    /// The policy directory the overlay names, if any.
    pub fn policy_dir(&self) -> Option<&Path> {
        self.policy.as_ref().map(|policy| policy.dir.as_path())
    }

    /// Where the overlay came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// `base` with the overlay's tables, checked as `serve` checks a configuration: a problem can
    /// only be in the overlay's tables (dev mode sets the others), so it is reported as the
    /// overlay's. The key-encryption key, dev mode's own, is read afterwards
    /// ([`Checked::read_kek`]). `policy_dir` replaces a relative `[policy] dir` by its resolved form.
    pub fn apply(
        self,
        mut base: Config,
        policy_dir: Option<PathBuf>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Checked, OverlayError> {
        let origin = self.origin;
        base.targets = self.targets;
        base.issuers = self.issuers;
        base.repositories = self.repositories;
        base.notifications = self.notifications;
        base.sso = self.sso;
        base.vcs = self.vcs;
        if let Some(mut policy) = self.policy {
            if let Some(dir) = policy_dir {
                policy.dir = dir;
            }
            base.policy = Some(policy);
        }
        base.check(env).map_err(|source| OverlayError::Invalid { path: origin, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLE: &str = "arn:aws:iam::123456789012:role/ci";

    fn dev() -> Config {
        let data = PathBuf::from("/tmp/kw-dev");
        let listen = ([127, 0, 0, 1], 8422).into();
        Config::dev(data.clone(), listen, "http://127.0.0.1:8422".into(), data.join("policies"))
    }

    fn apply(text: &str) -> Result<Checked, OverlayError> {
        DevOverlay::parse(text, "ci.toml")?.apply(dev(), None, &|_| None)
    }

    #[test]
    fn targets_and_issuers_join_the_dev_defaults() -> Result<(), OverlayError> {
        let config = apply(&format!(
            "[[targets]]\nname = \"deploy\"\ntype = \"aws\"\naccess = \"write\"\nrole_arn = \"{ROLE}\"\n\
             [[issuers]]\nname = \"bao\"\nissuer = \"http://127.0.0.1:8200/v1/identity/oidc\"\n\
             audience = \"keyward\"\nrequire_nbf = false\nrequired_claims = {{ repository_owner = \"acme\" }}\n\
             targets = [\"aws:deploy\"]\nphase = \"apply\"\n\
             [policy]\ndir = \"/srv/policies\"\n"
        ))?;
        assert_eq!(config.targets.first().map(crate::targets::TargetConfig::id).as_deref(), Some("aws:deploy"));
        assert_eq!(config.issuers.first().map(|i| i.require_nbf), Some(false));
        assert_eq!(config.policy.map(|p| p.dir), Some(PathBuf::from("/srv/policies")));
        // What dev mode owns is untouched.
        assert_eq!(config.tokens.allowed_audiences, ["sts.amazonaws.com", "vault"]);
        assert_eq!(config.database, crate::store::DatabaseLocation::Sqlite("/tmp/kw-dev/keyward.db".into()));
        assert_eq!(config.kek, crate::config::SecretSource::File("/tmp/kw-dev/kek".into()), "read later, not here");
        assert_eq!(config.server.external_url, "http://127.0.0.1:8422");
        Ok(())
    }

    #[test]
    fn sso_joins_the_dev_defaults_with_dev_s_redirect_url() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s")?;
        let text = format!(
            "[sso]\nissuer = \"http://127.0.0.1:8200/v1/identity/oidc/provider/p\"\nclient_id = \"kw\"\n\
             client_secret_file = \"{}\"\n",
            secret.display()
        );
        let sso = apply(&text)?.sso.ok_or("no [sso]")?;
        assert_eq!(sso.redirect_url, "http://127.0.0.1:8422/auth/callback");
        assert!(!sso.secure_cookies, "dev listens on loopback");
        let error = apply("[sso]\nissuer = \"https://idp\"\n").map(drop).unwrap_err().to_string();
        assert!(error.starts_with("ci.toml: ") && error.contains("client_id"), "{error}");
        Ok(())
    }

    #[test]
    fn vcs_github_joins_the_dev_defaults() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (key, secret) = (dir.path().join("app.pem"), dir.path().join("webhook-secret"));
        std::fs::write(&key, "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\n")?;
        std::fs::write(&secret, "a-long-random-webhook-secret")?;
        let text = format!(
            "[vcs.github]\napp_id = 7\nprivate_key_file = {:?}\nwebhook_secret_file = {:?}\n",
            key.display().to_string(),
            secret.display().to_string()
        );
        let github = apply(&text)?.github.ok_or("no [vcs.github]")?;
        assert_eq!((github.app_id, github.api_url.as_str()), (7, "https://api.github.com"));
        let error = apply("[vcs.github]\napp_id = 7\n").map(drop).unwrap_err().to_string();
        assert!(error.starts_with("ci.toml: ") && error.contains("private_key_file"), "{error}");
        Ok(())
    }

    #[test]
    fn an_empty_overlay_changes_nothing() -> Result<(), OverlayError> {
        let config = apply("")?;
        assert!(config.targets.is_empty() && config.issuers.is_empty());
        assert_eq!(config.policy.map(|p| p.dir), Some(PathBuf::from("/tmp/kw-dev/policies")));
        Ok(())
    }

    #[test]
    fn tables_dev_mode_owns_are_refused_by_name() {
        for table in ["server", "storage", "keys", "tokens", "agents", "audit", "log"] {
            let error = apply(&format!("[{table}]\n")).map(drop).unwrap_err().to_string();
            assert!(error.starts_with(&format!("ci.toml: `{table}`: dev mode owns this table")), "{error}");
        }
        let error = apply("[store]\n").map(drop).unwrap_err().to_string();
        assert!(error.starts_with("ci.toml: `store`: unknown table"), "{error}");
        let error = apply("[[target]]\nname = \"x\"\n").map(drop).unwrap_err().to_string();
        assert!(error.contains("`target`: unknown table"), "{error}");
    }

    #[test]
    fn keys_and_values_are_checked_as_serve_checks_them() {
        let cases = [
            (
                format!("[[targets]]\nname = \"d\"\ntype = \"aws\"\naccess = \"read\"\nrole_ar = \"{ROLE}\"\n"),
                "role_ar",
            ),
            (
                "[[targets]]\nname = \"d\"\ntype = \"aws\"\naccess = \"read\"\nrole_arn = \"nope\"\n".to_owned(),
                "targets.role_arn",
            ),
            (
                format!(
                    "[[targets]]\nname = \"d\"\ntype = \"aws\"\naccess = \"read\"\nrole_arn = \"{ROLE}\"\naudience = \"x\"\n"
                ),
                "targets.audience",
            ),
            (
                "[[issuers]]\nname = \"i\"\nissuer = \"http://ci.example\"\naudience = \"k\"\n".to_owned(),
                "issuers.issuer",
            ),
            (
                "[[issuers]]\nname = \"i\"\nissuer = \"https://ci.example\"\naudience = \"k\"\nrequire_nfb = false\n"
                    .to_owned(),
                "require_nfb",
            ),
            (
                "[[issuers]]\nname = \"i\"\nissuer = \"https://ci.example\"\naudience = \"k\"\n".to_owned(),
                "issuers.required_claims",
            ),
            ("[policy]\ndir = \"/p\"\nevaluation_timeout = \"1m\"\n".to_owned(), "policy.evaluation_timeout"),
            ("[policy]\npath = \"/p\"\n".to_owned(), "policy"),
        ];
        for (text, key) in cases {
            let error = apply(&text).map(drop).unwrap_err().to_string();
            assert!(error.starts_with("ci.toml: ") && error.contains(key), "{text}: {error}");
        }
    }
}
