//! A job's credentials: asked for just before its phase starts, given only to the phase's process,
//! and gone when the job ends.
//!
//! The assignment names the stack's targets for the phase; the agent asks the broker for each one
//! (`Credentials`, proving the lease with its fencing token) and the broker's answer is a set of
//! environment variables plus secret files (a web-identity token, Vault secrets). The files go
//! into a directory of the job's own inside its slot ([`crate::slots`]), readable only by the
//! agent's user and then handed to the slot's uid alone, removed when the credentials are
//! dropped. Values never reach a log or `Debug` output.
//!
//! A private repository's credentials (`SourceCredentials`, when the assignment says the broker
//! has some) are kept here too, in memory only: they go to git's environment for the checkout and
//! never to Terraform's, and the job's log masks them like every other secret.
//!
//! So are the job's variables (`JobVariables`): into the environment, or, those with a path, kept
//! as files for [`crate::mounts`] to write into the checkout. A secret one is masked whole and
//! line by line (a tool may print one line of a key file).

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use keyward_proto::agent_v1::agent_service_client::AgentServiceClient;
use keyward_proto::agent_v1::{CredentialsRequest, JobVariablesRequest, SourceCredentialsRequest, StateBackendRequest};
use tonic::transport::Channel;
use zeroize::Zeroizing;

use crate::idrange::JobIds;
use crate::job::Job;
use crate::logs::mask::MIN_SECRET;
use crate::mounts::MountedFile;

/// What the job's variables are set "by" in a conflict's message.
const VARIABLES: &str = "the stack's variables (contexts)";

/// How long one `Credentials` call may take (the broker may call STS or Vault).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a job got no credentials; the job fails with this message.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The broker refused or failed.
    #[error("credentials for target `{target}` refused: {message}")]
    Refused {
        /// The target.
        target: String,
        /// The broker's reason.
        message: String,
    },
    /// Two targets set the same variable, so one would silently shadow the other.
    #[error("targets `{first}` and `{second}` both set {variable}; give the phase one target per kind")]
    Conflict {
        /// The variable.
        variable: String,
        /// Its first setter.
        first: String,
        /// Its second setter.
        second: String,
    },
    /// The broker sent a variable name a process environment cannot hold.
    #[error("the broker sent an unusable variable name for target `{0}`")]
    BadName(String),
    /// The broker would not give the job's variables.
    #[error("the job's variables refused: {0}")]
    Variables(String),
    /// The broker would not give the stack's state backend, or gave an unusable one.
    #[error("the stack's state backend refused: {0}")]
    State(String),
    /// The broker would not give the repository's credentials, or gave unusable ones.
    #[error("credentials for the repository refused: {0}")]
    Source(String),
    /// A secret file could not be written.
    #[error("cannot write the job's credential files under {path}: {source}")]
    Files {
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Variables whose values are not secret: they are not masked in the job's log (a region, an
/// address, a role name and the paths of secret files). Every other value is.
const PUBLIC_VARIABLES: [&str; 8] = [
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_ENDPOINT_URL_STS",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "VAULT_ADDR",
    "KEYWARD_VAULT_SECRETS_FILE",
];

/// The credentials of one job: environment variables, and the directory of its secret files.
#[derive(Default)]
pub struct JobCredentials {
    variables: BTreeMap<String, (Zeroizing<String>, String)>,
    secrets: Vec<Zeroizing<Vec<u8>>>,
    files: Vec<MountedFile>,
    dir: Option<PathBuf>,
    source: Option<SourceAccess>,
    state: Option<crate::state_relay::Backend>,
}

/// A private repository's credentials, for git alone.
struct SourceAccess {
    url_prefix: String,
    username: String,
    password: Zeroizing<String>,
}

impl fmt::Debug for JobCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobCredentials")
            .field("variables", &self.variables.keys().collect::<Vec<_>>())
            .field("files", &self.files)
            .field("dir", &self.dir)
            .field("source", &self.source.as_ref().map(|s| &s.url_prefix))
            .field("state", &self.state)
            .finish()
    }
}

impl Drop for JobCredentials {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir
            && let Err(error) = std::fs::remove_dir_all(dir)
        {
            tracing::warn!(dir = %dir.display(), %error, "could not remove a job's credential files");
        }
    }
}

impl JobCredentials {
    /// Asks the broker for everything `job` needs: the repository's credentials, the state
    /// backend, the variables and every target's credentials; files go under a new directory in
    /// `parent`.
    pub async fn fetch(
        client: &mut AgentServiceClient<Channel>,
        job: &Job,
        parent: &Path,
    ) -> Result<Self, CredentialsError> {
        let mut credentials = Self::for_checkout(client, job).await?;
        credentials.fetch_rest(client, job, parent).await?;
        Ok(credentials)
    }

    /// Only what checking out the run's commit needs (a private repository's credentials). A
    /// scanned job asks for the rest once the broker allowed its scan ([`Self::fetch_rest`]):
    /// before that, the broker gives it nothing else.
    pub async fn for_checkout(client: &mut AgentServiceClient<Channel>, job: &Job) -> Result<Self, CredentialsError> {
        let mut credentials = Self::default();
        if job.source_credentials {
            credentials.fetch_source(client, job).await?;
        }
        Ok(credentials)
    }

    /// The state backend, the variables and every target's credentials; files go under a new
    /// directory in `parent`.
    pub async fn fetch_rest(
        &mut self,
        client: &mut AgentServiceClient<Channel>,
        job: &Job,
        parent: &Path,
    ) -> Result<(), CredentialsError> {
        if job.managed_state {
            self.fetch_state(client, job).await?;
        }
        self.fetch_variables(client, job).await?;
        for target in &job.credential_targets {
            self.fetch_target(client, job, target, parent).await?;
        }
        Ok(())
    }

    /// One target's credentials: variables (secret ones masked) and files.
    async fn fetch_target(
        &mut self,
        client: &mut AgentServiceClient<Channel>,
        job: &Job,
        target: &str,
        parent: &Path,
    ) -> Result<(), CredentialsError> {
        let mut request = tonic::Request::new(CredentialsRequest {
            job_id: job.job_id.clone(),
            fencing_token: job.fencing_token,
            target: target.to_owned(),
        });
        request.set_timeout(CALL_TIMEOUT);
        let response = client
            .credentials(request)
            .await
            .map_err(|status| CredentialsError::Refused {
                target: target.to_owned(),
                message: status.message().to_owned(),
            })?
            .into_inner();
        for (name, value) in response.environment {
            if !PUBLIC_VARIABLES.contains(&name.as_str()) {
                self.secrets.push(Zeroizing::new(value.as_bytes().to_vec()));
            }
            self.set(target, name, Zeroizing::new(value))?;
        }
        for file in response.files {
            let content = Zeroizing::new(file.content);
            self.secrets.push(content.clone());
            self.secrets.extend(json_strings(&content));
            let path = self.write_file(parent, &job.job_id, &file.environment_variable, &content)?;
            self.set(target, file.environment_variable, Zeroizing::new(path.display().to_string()))?;
        }
        Ok(())
    }

    /// Asks for the repository's credentials, and keeps them if git may carry them to it.
    /// The stack's state backend for this lease: kept for the state relay, never put into the
    /// job's environment; its password is masked like every secret.
    async fn fetch_state(
        &mut self,
        client: &mut AgentServiceClient<Channel>,
        job: &Job,
    ) -> Result<(), CredentialsError> {
        let mut request =
            tonic::Request::new(StateBackendRequest { job_id: job.job_id.clone(), fencing_token: job.fencing_token });
        request.set_timeout(CALL_TIMEOUT);
        let response = client
            .state_backend(request)
            .await
            .map_err(|status| CredentialsError::State(status.message().to_owned()))?
            .into_inner();
        let password = Zeroizing::new(response.password);
        if password.is_empty() || !(response.address.starts_with("https://") || response.address.starts_with("http://"))
        {
            return Err(CredentialsError::State("the broker sent an unusable address or an empty password".to_owned()));
        }
        self.secrets.push(Zeroizing::new(password.as_bytes().to_vec()));
        self.state =
            Some(crate::state_relay::Backend { address: response.address, username: response.username, password });
        Ok(())
    }

    /// The job's variables from its contexts and stack: into its environment, or kept to be
    /// mounted as files; secret ones masked. A variable and a target's credential of the same
    /// name fail the job (neither silently wins).
    async fn fetch_variables(
        &mut self,
        client: &mut AgentServiceClient<Channel>,
        job: &Job,
    ) -> Result<(), CredentialsError> {
        let mut request =
            tonic::Request::new(JobVariablesRequest { job_id: job.job_id.clone(), fencing_token: job.fencing_token });
        request.set_timeout(CALL_TIMEOUT);
        let response = client
            .job_variables(request)
            .await
            .map_err(|status| CredentialsError::Variables(status.message().to_owned()))?
            .into_inner();
        let from = VARIABLES.to_owned();
        for variable in response.variables {
            let value = Zeroizing::new(variable.value);
            if variable.secret {
                self.secrets.extend(secret_pieces(value.as_bytes()));
            }
            if variable.file.is_empty() {
                self.set(&from, variable.name, value)?;
            } else {
                self.keep_file(variable.name, variable.file, value, variable.secret)?;
            }
        }
        Ok(())
    }

    /// Notes in the job's log (and the agent's) which credential variables it received, never
    /// their values; nothing when it has none (yet).
    pub async fn note_received(&self, job: &Job, log: &crate::logs::JobLog) {
        if self.is_empty() {
            return;
        }
        tracing::info!(job_id = %job.job_id, variables = self.len(), "job credentials received");
        let names: Vec<&str> = self.environment().map(|(name, _)| name).collect();
        log.note(&format!("keyward: credentials for {}: {}", job.credential_targets.join(", "), names.join(" "))).await;
    }

    /// Keeps a variable to mount at `path`, checked again here (the broker checked it first).
    fn keep_file(
        &mut self,
        name: String,
        path: String,
        value: Zeroizing<String>,
        secret: bool,
    ) -> Result<(), CredentialsError> {
        keyward_proto::mount::check(&path)
            .map_err(|e| CredentialsError::Variables(format!("variable `{name}` cannot be mounted: {e}")))?;
        if let Some(other) = self.files.iter().find(|file| file.path == path) {
            return Err(CredentialsError::Variables(format!(
                "variables `{}` and `{name}` are both mounted at `{path}`",
                other.name
            )));
        }
        let content = Zeroizing::new(value.as_bytes().to_vec());
        self.files.push(MountedFile { name, path, content, secret });
        Ok(())
    }

    /// The variables to mount as files in the job's configuration directory.
    pub fn files(&self) -> &[MountedFile] {
        &self.files
    }

    /// The stack's state backend, when the broker keeps the stack's state.
    pub fn take_state_backend(&mut self) -> Option<crate::state_relay::Backend> {
        self.state.take()
    }

    async fn fetch_source(
        &mut self,
        client: &mut AgentServiceClient<Channel>,
        job: &Job,
    ) -> Result<(), CredentialsError> {
        let mut request = tonic::Request::new(SourceCredentialsRequest {
            job_id: job.job_id.clone(),
            fencing_token: job.fencing_token,
        });
        request.set_timeout(CALL_TIMEOUT);
        let response = client
            .source_credentials(request)
            .await
            .map_err(|status| CredentialsError::Source(status.message().to_owned()))?
            .into_inner();
        let password = Zeroizing::new(response.password);
        if !job.repository.starts_with(&response.url_prefix)
            || !keyward_proto::git::may_carry_credentials(&job.repository)
        {
            return Err(CredentialsError::Source(format!(
                "they are for `{}`, which {} does not start with (or git would send them in the clear)",
                response.url_prefix, job.repository
            )));
        }
        if password.is_empty() || response.username.is_empty() {
            return Err(CredentialsError::Source("the broker sent an empty user name or password".to_owned()));
        }
        self.secrets.push(Zeroizing::new(password.as_bytes().to_vec()));
        // What git puts in the Authorization header is base64 of `user:password`; masking that
        // string masks the header's encoding too.
        self.secrets.push(Zeroizing::new(format!("{}:{}", response.username, password.as_str()).into_bytes()));
        self.source = Some(SourceAccess { url_prefix: response.url_prefix, username: response.username, password });
        Ok(())
    }

    /// The environment that lets git fetch the job's private repository, if it is one.
    pub fn git_environment(&self) -> Option<[(String, String); 3]> {
        let source = self.source.as_ref()?;
        Some(keyward_proto::git::auth_environment(&source.url_prefix, &source.username, &source.password))
    }

    /// The variables to add to the job's environment.
    pub fn environment(&self) -> impl Iterator<Item = (&str, &str)> {
        self.variables.iter().map(|(name, (value, _))| (name.as_str(), value.as_str()))
    }

    /// Every secret value the job was given: variable values (but for `PUBLIC_VARIABLES`), file
    /// contents, and the strings inside a JSON file (Vault secrets). The job's log masks them.
    pub fn secret_values(&self) -> impl Iterator<Item = &[u8]> {
        self.secrets.iter().map(|s| s.as_slice())
    }

    /// The directory of the secret files, if there are any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Hands the secret files to the job slot's host uid and gid, read-only, so the job's
    /// processes can read them and no other job, and nothing else of the agent's.
    pub fn grant(&self, ids: JobIds) -> Result<(), CredentialsError> {
        let (uid, gid) = (ids.uid, ids.gid);
        use std::os::unix::fs::PermissionsExt as _;
        let Some(dir) = &self.dir else { return Ok(()) };
        let failed = |path: &Path, source| CredentialsError::Files { path: path.to_path_buf(), source };
        for entry in std::fs::read_dir(dir).map_err(|e| failed(dir, e))? {
            let path = entry.map_err(|e| failed(dir, e))?.path();
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(|e| failed(&path, e))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).map_err(|e| failed(&path, e))?;
        }
        std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(|e| failed(dir, e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o500)).map_err(|e| failed(dir, e))
    }

    /// How many variables there are.
    pub fn len(&self) -> usize {
        self.variables.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.variables.is_empty()
    }

    fn set(&mut self, target: &str, name: String, value: Zeroizing<String>) -> Result<(), CredentialsError> {
        let valid = !name.is_empty()
            && name.len() <= 128
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && !name.starts_with("KEYWARD_JOB")
            && name != "PATH";
        if !valid {
            return Err(CredentialsError::BadName(target.to_owned()));
        }
        if let Some((_, first)) = self.variables.get(&name) {
            return Err(CredentialsError::Conflict { variable: name, first: first.clone(), second: target.to_owned() });
        }
        self.variables.insert(name, (value, target.to_owned()));
        Ok(())
    }

    /// Writes `content` to a file only the agent's user can read, in the job's directory.
    fn write_file(
        &mut self,
        parent: &Path,
        job_id: &str,
        variable: &str,
        content: &[u8],
    ) -> Result<PathBuf, CredentialsError> {
        let dir = match &self.dir {
            Some(dir) => dir.clone(),
            None => {
                let dir = parent.join(format!("keyward-job-{}-{}", sanitize(job_id), random_suffix()));
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&dir)
                    .map_err(|source| CredentialsError::Files { path: dir.clone(), source })?;
                self.dir = Some(dir.clone());
                dir
            }
        };
        let path = dir.join(sanitize(&variable.to_ascii_lowercase()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| CredentialsError::Files { path: path.clone(), source })?;
        file.write_all(content).map_err(|source| CredentialsError::Files { path: path.clone(), source })?;
        Ok(path)
    }
}

/// What of a secret value the log masks: the whole value, and each of its lines (without the
/// surrounding blanks) long enough to be masked on its own ([`MIN_SECRET`]): a key file's lines
/// each, since a tool may print one of them alone. Shorter lines are masked only as part of the
/// whole or of a longer piece (docs/contexts.md).
fn secret_pieces(value: &[u8]) -> Vec<Zeroizing<Vec<u8>>> {
    let mut pieces = vec![Zeroizing::new(value.to_vec())];
    if value.contains(&b'\n') {
        for line in value.split(|&b| b == b'\n').map(<[u8]>::trim_ascii) {
            if line.len() >= MIN_SECRET && !pieces.iter().any(|piece| piece.as_slice() == line) {
                pieces.push(Zeroizing::new(line.to_vec()));
            }
        }
    }
    pieces
}

/// The string values inside `content` when it is JSON (a Vault secrets file): each is a secret
/// a process may print on its own.
fn json_strings(content: &[u8]) -> Vec<Zeroizing<Vec<u8>>> {
    fn collect(value: &serde_json::Value, out: &mut Vec<Zeroizing<Vec<u8>>>) {
        match value {
            serde_json::Value::String(text) => out.push(Zeroizing::new(text.as_bytes().to_vec())),
            serde_json::Value::Array(items) => items.iter().for_each(|item| collect(item, out)),
            serde_json::Value::Object(fields) => fields.values().for_each(|field| collect(field, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(content) {
        collect(&value, &mut out);
    }
    out
}

/// Keeps `[A-Za-z0-9_-]`, so a name from the wire cannot leave the directory.
fn sanitize(text: &str) -> String {
    text.chars().take(64).map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect()
}

fn random_suffix() -> String {
    let mut bytes = [0_u8; 8];
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    keyward_proto::encoding::hex(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_conflicts_refused() {
        let mut credentials = JobCredentials::default();
        credentials.set("aws:a", "AWS_ACCESS_KEY_ID".into(), Zeroizing::new("AKIA".into())).expect("set");
        let conflict = credentials.set("aws:b", "AWS_ACCESS_KEY_ID".into(), Zeroizing::new("AKIB".into()));
        assert!(matches!(conflict, Err(CredentialsError::Conflict { .. })), "{conflict:?}");
        for bad in ["", "1X", "A-B", "PATH", "KEYWARD_JOB_ID", "A=B"] {
            let result = credentials.set("t", bad.into(), Zeroizing::new(String::new()));
            assert!(matches!(result, Err(CredentialsError::BadName(_))), "{bad}: {result:?}");
        }
        assert_eq!(credentials.environment().collect::<Vec<_>>(), vec![("AWS_ACCESS_KEY_ID", "AKIA")]);
        assert!(!format!("{credentials:?}").contains("AKIA"), "Debug shows names, never values");
    }

    #[test]
    fn a_multi_line_secret_is_masked_whole_and_line_by_line() {
        let pem = b"-----BEGIN KEY-----\r\n  Zx9Qw7Lp\nshort\n\n-----END KEY-----\n";
        let pieces: Vec<Vec<u8>> = secret_pieces(pem).into_iter().map(|p| p.to_vec()).collect();
        let expected: [&[u8]; 4] = [pem, b"-----BEGIN KEY-----", b"Zx9Qw7Lp", b"-----END KEY-----"];
        assert_eq!(pieces, expected.map(<[u8]>::to_vec), "`short` is under MIN_SECRET: only masked within the whole");
        let rules = crate::logs::MaskRules::new(pieces.iter().map(Vec::as_slice), crate::logs::Patterns::default());
        let mut masker = crate::logs::mask::Masker::new(rules);
        let mut out = Vec::new();
        // 8 bytes, printed without its neighbours: no 10-byte window of the whole value matches.
        masker.push(b"line [Zx9Qw7Lp]\n", &mut out);
        masker.finish(&mut out);
        assert_eq!(out, b"line [***]\n", "a line printed alone");
        assert_eq!(secret_pieces(b"one-line").len(), 1);
    }

    #[test]
    fn a_mounted_file_is_checked_and_kept_out_of_the_environment() {
        let mut credentials = JobCredentials::default();
        let value = || Zeroizing::new("content".to_owned());
        credentials.keep_file("TLS_KEY".into(), "tls/key.pem".into(), value(), true).expect("kept");
        assert!(credentials.is_empty(), "not in the environment");
        let same = credentials.keep_file("OTHER".into(), "tls/key.pem".into(), value(), false).unwrap_err();
        assert!(same.to_string().contains("`TLS_KEY` and `OTHER` are both mounted at `tls/key.pem`"), "{same}");
        for bad in ["../x", "/etc/x", "a//b"] {
            let error = credentials.keep_file("X".into(), bad.into(), value(), false).unwrap_err();
            assert!(error.to_string().contains("cannot be mounted"), "{bad}: {error}");
        }
        assert_eq!(credentials.files().len(), 1);
        assert!(!format!("{credentials:?}").contains("content"), "Debug shows paths, never contents");
    }

    #[test]
    fn files_are_private_and_removed_with_the_credentials() {
        use std::os::unix::fs::PermissionsExt as _;
        let parent = tempfile::tempdir().expect("tempdir");
        let mut credentials = JobCredentials::default();
        let path = credentials
            .write_file(parent.path(), "job/../1", "../AWS_WEB_IDENTITY_TOKEN_FILE", b"secret")
            .expect("written");
        assert!(path.starts_with(parent.path()), "stays under the parent: {}", path.display());
        assert_eq!(std::fs::read(&path).expect("read"), b"secret");
        assert_eq!(std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777, 0o600);
        let dir = path.parent().expect("dir").to_path_buf();
        assert_eq!(std::fs::metadata(&dir).expect("meta").permissions().mode() & 0o777, 0o700);
        drop(credentials);
        assert!(!dir.exists(), "removed when dropped");
    }
}
