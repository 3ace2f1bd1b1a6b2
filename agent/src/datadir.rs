//! The agent's data directory: its identity and where it reports to.
//!
//! ```text
//! <data dir>/            0700
//!   agent.json           agent ID, pool, broker URL, gRPC endpoint, certificate expiry
//!   key.pem              0600, the private key (generated here, never sent anywhere)
//!   cert.pem             the current certificate
//!   ca.pem               the agent CA (pinned by the join token's fingerprint)
//! ```
//!
//! Every file is replaced atomically (written beside, then renamed), so a crash mid-renewal
//! leaves the old identity or the new one, never half of each.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What the agent knows about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    /// Its ID (from the broker).
    pub agent_id: String,
    /// Its pool.
    pub pool: String,
    /// The broker's HTTP address it enrolled through.
    pub broker: String,
    /// The gRPC endpoint, `https://host:port`.
    pub endpoint: String,
    /// When the current certificate expires (Unix seconds).
    pub not_after: i64,
    /// When it was issued (Unix seconds), to renew at half-life.
    pub issued_at: i64,
}

/// The identity loaded from disk.
#[derive(Clone)]
pub struct Identity {
    /// The state file.
    pub state: AgentState,
    /// Private key, PEM.
    pub key_pem: zeroize::Zeroizing<String>,
    /// Certificate, PEM.
    pub cert_pem: String,
    /// CA certificate, PEM.
    pub ca_pem: String,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity").field("state", &self.state).finish_non_exhaustive()
    }
}

impl Identity {
    /// When to renew: half-way through the certificate's life.
    pub fn renew_at(&self) -> i64 {
        self.state.issued_at + (self.state.not_after - self.state.issued_at) / 2
    }
}

/// Why the data directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// Not enrolled yet.
    #[error(
        "{0} holds no agent identity; enroll first with `keyward-agent join --broker URL --token T --data-dir {0}`"
    )]
    NotEnrolled(String),
    /// Already enrolled.
    #[error("{0} already holds agent {1}; use another --data-dir, or remove it to enroll again")]
    AlreadyEnrolled(String, String),
    /// Input/output failure.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The state file is not valid.
    #[error("{path}: {message}")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// The data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The directory at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.root
    }

    fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Refuses if an identity is already stored.
    pub fn ensure_empty(&self) -> Result<(), DataDirError> {
        match self.load() {
            Ok(identity) => Err(DataDirError::AlreadyEnrolled(self.display(), identity.state.agent_id)),
            Err(_) => Ok(()),
        }
    }

    fn display(&self) -> String {
        self.root.display().to_string()
    }

    /// Loads the stored identity.
    pub fn load(&self) -> Result<Identity, DataDirError> {
        let state_path = self.file("agent.json");
        if !state_path.exists() {
            return Err(DataDirError::NotEnrolled(self.display()));
        }
        let state_text = read(&state_path)?;
        let state = serde_json::from_str(&state_text)
            .map_err(|e| DataDirError::Corrupt { path: state_path.display().to_string(), message: e.to_string() })?;
        Ok(Identity {
            state,
            key_pem: zeroize::Zeroizing::new(read(&self.file("key.pem"))?),
            cert_pem: read(&self.file("cert.pem"))?,
            ca_pem: read(&self.file("ca.pem"))?,
        })
    }

    /// Stores `identity`: key first, state last, so `agent.json` only ever names files that exist.
    pub fn store(&self, identity: &Identity) -> Result<(), DataDirError> {
        create_private_dir(&self.root)?;
        write_atomic(&self.file("key.pem"), identity.key_pem.as_bytes(), 0o600)?;
        write_atomic(&self.file("cert.pem"), identity.cert_pem.as_bytes(), 0o644)?;
        write_atomic(&self.file("ca.pem"), identity.ca_pem.as_bytes(), 0o644)?;
        let state = serde_json::to_vec_pretty(&identity.state).map_err(|e| DataDirError::Corrupt {
            path: self.file("agent.json").display().to_string(),
            message: e.to_string(),
        })?;
        write_atomic(&self.file("agent.json"), &state, 0o644)
    }
}

fn read(path: &Path) -> Result<String, DataDirError> {
    std::fs::read_to_string(path).map_err(|source| DataDirError::Io { path: path.display().to_string(), source })
}

fn create_private_dir(dir: &Path) -> Result<(), DataDirError> {
    let io = |source| DataDirError::Io { path: dir.display().to_string(), source };
    std::fs::create_dir_all(dir).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    Ok(())
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), DataDirError> {
    let io = |source| DataDirError::Io { path: path.display().to_string(), source };
    let temporary = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    {
        use std::io::Write as _;
        let mut file = options.open(&temporary).map_err(io)?;
        file.write_all(bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    std::fs::rename(&temporary, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_proto::encoding::{pem, pem_der};

    #[test]
    fn an_identity_round_trips_and_the_key_is_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = DataDir::new(dir.path().join("agent"));
        assert!(matches!(data.load(), Err(DataDirError::NotEnrolled(_))));
        let identity = Identity {
            state: AgentState {
                agent_id: "a1".into(),
                pool: "p".into(),
                broker: "http://b".into(),
                endpoint: "https://b:1".into(),
                not_after: 200,
                issued_at: 100,
            },
            key_pem: zeroize::Zeroizing::new("KEY".into()),
            cert_pem: pem("CERTIFICATE", b"cert"),
            ca_pem: pem("CERTIFICATE", b"ca"),
        };
        data.store(&identity).expect("stored");
        let loaded = data.load().expect("loaded");
        assert_eq!(loaded.state, identity.state);
        assert_eq!(loaded.renew_at(), 150);
        assert_eq!(pem_der(&loaded.cert_pem).as_deref(), Some(&b"cert"[..]));
        assert!(matches!(data.ensure_empty(), Err(DataDirError::AlreadyEnrolled(_, _))));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(data.path().join("key.pem")).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(!format!("{loaded:?}").contains("KEY"));
    }
}
