//! Where a secret in the configuration file comes from: written inline, named by an environment
//! variable, or kept in a file.
//!
//! Four settings hold a secret (the key-encryption key, the database URL, a webhook sink's HMAC
//! key, a repository's password). Each may be given in more than one way and exactly one way must
//! be chosen, so a file that names two never leaves an operator guessing which one is in force.
//! That rule is written here once; each setting keeps the key names and the wording operators
//! already know ([`KEK`], [`DATABASE_URL`], [`SINK_SECRET`], [`REPOSITORY_PASSWORD`]).
//!
//! Errors name keys, variables and paths, never a value: a secret is only ever held as a
//! [`Secret`], which does not print.

use std::path::{Path, PathBuf};

use keyward_proto::secret::Secret;

use super::{ConfigError, invalid};

/// How one secret is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// Written in the file itself.
    Inline(Secret),
    /// The name of an environment variable that holds it.
    Env(String),
    /// A file that holds it.
    File(PathBuf),
}

/// A key and the message an error about it carries.
type Problem = (&'static str, &'static str);

/// One secret setting: the keys it may be given by, and what to say when they are misused.
#[derive(Debug)]
pub(super) struct SecretSetting {
    /// The inline key, if the value may be written in the file.
    inline: Option<&'static str>,
    /// The key naming an environment variable.
    env: &'static str,
    /// The key naming a file, if the value may come from one.
    file: Option<&'static str>,
    /// When more than one is set.
    several: Problem,
    /// When none is set and the setting is required.
    missing: Option<Problem>,
}

/// `keys.kek`, `keys.kek_env`, `keys.kek_file`: required.
pub(super) const KEK: SecretSetting = SecretSetting {
    inline: Some("keys.kek"),
    env: "keys.kek_env",
    file: Some("keys.kek_file"),
    several: ("keys.kek", "set only one of keys.kek, keys.kek_env, keys.kek_file"),
    missing: Some((
        "keys.kek_file",
        "no key-encryption key: set exactly one of keys.kek_file, keys.kek_env or keys.kek \
         (32 random bytes, base64; generate with `head -c32 /dev/urandom | base64`)",
    )),
};

/// `storage.database_url`, `storage.database_url_env`: optional (SQLite in the data dir).
pub(super) const DATABASE_URL: SecretSetting = SecretSetting {
    inline: Some("storage.database_url"),
    env: "storage.database_url_env",
    file: None,
    several: ("storage.database_url", "set database_url or database_url_env, not both"),
    missing: None,
};

/// A webhook sink's `secret_env` or `secret_file`: required.
pub(super) const SINK_SECRET: SecretSetting = SecretSetting {
    inline: None,
    env: "audit.sinks.secret_env",
    file: Some("audit.sinks.secret_file"),
    several: ("audit.sinks.secret_env", "set exactly one of secret_env or secret_file"),
    missing: Some(("audit.sinks.secret_env", "set exactly one of secret_env or secret_file")),
};

/// A notification's `secret_env` or `secret_file`: optional.
pub(super) const NOTIFICATION_SECRET: SecretSetting = SecretSetting {
    inline: None,
    env: "notifications.secret_env",
    file: Some("notifications.secret_file"),
    several: ("notifications.secret_env", "set at most one of secret_env or secret_file"),
    missing: None,
};

/// A repository's `password_env` or `password_file`: required.
pub(super) const REPOSITORY_PASSWORD: SecretSetting = SecretSetting {
    inline: None,
    env: "repositories.password_env",
    file: Some("repositories.password_file"),
    several: ("repositories.password_env", "set exactly one of password_env or password_file"),
    missing: Some(("repositories.password_env", "set exactly one of password_env or password_file")),
};

impl SecretSetting {
    /// The one source set among `inline`, `env` and `file`, or `None` when none is and the setting
    /// is optional. A source the setting does not have must be passed as `None`.
    pub(super) fn source(
        &self,
        inline: Option<&Secret>,
        env: Option<&str>,
        file: Option<&Path>,
    ) -> Result<Option<SecretSource>, ConfigError> {
        let mut sources = [
            inline.map(|value| SecretSource::Inline(value.clone())),
            env.map(|var| SecretSource::Env(var.to_owned())),
            file.map(|path| SecretSource::File(path.to_owned())),
        ]
        .into_iter()
        .flatten();
        let first = sources.next();
        if sources.next().is_some() {
            let (key, message) = self.several;
            return Err(invalid(key, message));
        }
        match (first, self.missing) {
            (None, Some((key, message))) => Err(invalid(key, message)),
            (source, _) => Ok(source),
        }
    }

    /// [`SecretSetting::source`] of a required setting.
    pub(super) fn required_source(
        &self,
        inline: Option<&Secret>,
        env: Option<&str>,
        file: Option<&Path>,
    ) -> Result<SecretSource, ConfigError> {
        self.source(inline, env, file)?.ok_or_else(|| {
            let (key, message) = self.missing.unwrap_or(self.several);
            invalid(key, message)
        })
    }

    /// The key that names `source`, for errors about the value it gave.
    pub(super) fn key(&self, source: &SecretSource) -> &'static str {
        match source {
            SecretSource::Inline(_) => self.inline.unwrap_or(self.env),
            SecretSource::Env(_) => self.env,
            SecretSource::File(_) => self.file.unwrap_or(self.env),
        }
    }

    /// The value: inline as written, from the environment through `env`, or a file read now with
    /// surrounding whitespace trimmed.
    pub(super) fn read(
        &self,
        source: &SecretSource,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Secret, ConfigError> {
        match source {
            SecretSource::Inline(value) => Ok(value.clone()),
            SecretSource::Env(var) => env(var)
                .map(Secret::from)
                .ok_or_else(|| invalid(self.env, format!("environment variable `{var}` is not set"))),
            SecretSource::File(path) => {
                let text = Secret::from(
                    std::fs::read_to_string(path)
                        .map_err(|e| invalid(self.key(source), format!("cannot read {}: {e}", path.display())))?,
                );
                Ok(Secret::from(text.expose().trim().to_owned()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALUE: &str = "hunter2-hunter2-hunter2";

    fn secret() -> Secret {
        Secret::from(VALUE.to_owned())
    }

    fn message(result: Result<impl std::fmt::Debug, ConfigError>) -> String {
        match result {
            Ok(value) => panic!("expected an error, got {value:?}"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn exactly_one_source_keeps_each_settings_wording() {
        let file = Path::new("/etc/keyward/kek");
        assert_eq!(
            message(KEK.source(Some(&secret()), Some("KEK"), None)),
            "`keys.kek`: set only one of keys.kek, keys.kek_env, keys.kek_file"
        );
        assert_eq!(
            message(KEK.source(None, None, None)),
            "`keys.kek_file`: no key-encryption key: set exactly one of keys.kek_file, keys.kek_env or keys.kek \
             (32 random bytes, base64; generate with `head -c32 /dev/urandom | base64`)"
        );
        assert_eq!(
            message(DATABASE_URL.source(Some(&secret()), Some("DB"), None)),
            "`storage.database_url`: set database_url or database_url_env, not both"
        );
        assert_eq!(DATABASE_URL.source(None, None, None).ok(), Some(None), "the database URL is optional");
        for (setting, says) in [
            (&SINK_SECRET, "`audit.sinks.secret_env`: set exactly one of secret_env or secret_file"),
            (&REPOSITORY_PASSWORD, "`repositories.password_env`: set exactly one of password_env or password_file"),
        ] {
            assert_eq!(message(setting.source(None, Some("VAR"), Some(file))), says);
            assert_eq!(message(setting.required_source(None, None, None)), says);
        }
        assert_eq!(KEK.required_source(None, None, Some(file)).ok(), Some(SecretSource::File(file.to_owned())));
        assert_eq!(KEK.required_source(None, Some("KEK"), None).ok(), Some(SecretSource::Env("KEK".to_owned())));
    }

    #[test]
    fn sources_are_read_through_the_given_environment() -> Result<(), ConfigError> {
        let env = |name: &str| (name == "HOOK").then(|| format!("  {VALUE}\n"));
        let value = SINK_SECRET.read(&SecretSource::Env("HOOK".to_owned()), &env)?;
        assert_eq!(value.expose(), format!("  {VALUE}\n"), "an environment value is taken as it is");
        let unset = message(SINK_SECRET.read(&SecretSource::Env("NOPE".to_owned()), &env));
        assert_eq!(unset, "`audit.sinks.secret_env`: environment variable `NOPE` is not set");
        assert_eq!(DATABASE_URL.read(&SecretSource::Inline(secret()), &|_| None)?, secret());
        Ok(())
    }

    #[test]
    fn a_file_is_read_trimmed_and_a_missing_one_is_named() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("hook-secret");
        std::fs::write(&path, format!("{VALUE}\n"))?;
        assert_eq!(SINK_SECRET.read(&SecretSource::File(path.clone()), &|_| None)?.expose(), VALUE);
        let missing = dir.path().join("absent");
        let error = message(SINK_SECRET.read(&SecretSource::File(missing.clone()), &|_| None));
        assert!(error.starts_with("`audit.sinks.secret_file`: cannot read "), "{error}");
        assert!(error.contains(&missing.display().to_string()), "names the path: {error}");
        Ok(())
    }

    #[test]
    fn a_secret_never_appears_in_debug_or_in_an_error() -> Result<(), Box<dyn std::error::Error>> {
        let inline = SecretSource::Inline(secret());
        assert!(!format!("{inline:?}").contains(VALUE), "{inline:?}");
        let env = |_: &str| Some(VALUE.to_owned());
        let from_env = SINK_SECRET.read(&SecretSource::Env("HOOK".to_owned()), &env)?;
        assert!(!format!("{from_env:?}").contains(VALUE), "{from_env:?}");
        let several = message(KEK.source(Some(&secret()), Some("KEK"), None));
        assert!(!several.contains(VALUE), "{several}");
        // A directory cannot be read as text: the error names it and says nothing of any value.
        let dir = tempfile::tempdir()?;
        let unreadable = message(SINK_SECRET.read(&SecretSource::File(dir.path().to_owned()), &env));
        assert!(!unreadable.contains(VALUE) && unreadable.contains(&dir.path().display().to_string()));
        Ok(())
    }
}
