//! Terraform state kept by the broker: each stack's `http` backend (docs/state.md).
//!
//! Why the broker keeps it: a job's directory dies with the job, so without a backend every apply
//! starts from nothing and every drift check finds the whole stack "to add". Kept here, state
//! gets what the rest of a run gets: authorization by the job's lease (a plan reads; only the
//! apply job of the lease holder locks and writes, and only its own stack), every version kept
//! and sealed under the KEK, and every write on the audit log (`state.written`: stack, version,
//! serial, lineage, SHA-256, run, job; never the content).
//!
//! Writes are checked as Terraform's own backends check them, and stricter: the lineage of a
//! stack's state never changes once set (a foreign state is refused), the serial only grows (an
//! older or reused serial is a lost update, refused), and the new version is numbered one past the
//! version the check read, in the same transaction as its audit entry, so two writers racing
//! cannot both succeed.

use aws_lc_rs::{constant_time, digest, hmac};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keyward_proto::claims::Phase;
use keyward_proto::encoding::hex;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{HeldJob, RunError, Runs, run_context};
use crate::audit::{Append, AuditEvent, ChangeError, Context, Kind};
use crate::kek::UnsealError;
use crate::store::state::{self as rows, NewStateVersion};
use crate::store::{StateLockRow, StateVersionRow, StoreError};

/// The largest state version the broker keeps (Terraform state of a few thousand resources is a
/// few MiB).
pub const MAX_STATE_BYTES: usize = 32 * 1024 * 1024;

/// Longest lock ID and lock information accepted.
const MAX_LOCK_ID: usize = 128;
const MAX_LOCK_INFO: usize = 4096;

/// What the jobs' state passwords are derived under (see [`Runs::state_password`]).
const TOKEN_PURPOSE: &str = "keyward state token v1";

/// Why a state request was refused.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The stack keeps its state elsewhere.
    #[error("stack `{0}` does not keep its Terraform state in the broker (managed state is off for it)")]
    NotManaged(String),
    /// No such version.
    #[error("stack `{stack}` has no state version {version}")]
    NoSuchVersion {
        /// The stack.
        stack: String,
        /// The version asked for.
        version: i64,
    },
    /// Nothing kept yet.
    #[error("stack `{0}` has no state yet")]
    NoState(String),
    /// Not Terraform state.
    #[error("not Terraform state: {0}")]
    Malformed(String),
    /// Too large.
    #[error("the state is {0} bytes; the broker keeps at most {MAX_STATE_BYTES} bytes per version")]
    TooLarge(usize),
    /// Another state's lineage.
    #[error(
        "the state's lineage `{offered}` is not stack `{stack}`'s lineage `{kept}`: it is another state, refused (nothing changed)"
    )]
    ForeignLineage {
        /// The stack.
        stack: String,
        /// The lineage sent.
        offered: String,
        /// The lineage kept.
        kept: String,
    },
    /// An older serial: a lost update.
    #[error(
        "the state's serial {offered} is older than serial {kept} kept for stack `{stack}`: writing it would lose an update, refused (nothing changed)"
    )]
    OlderSerial {
        /// The stack.
        stack: String,
        /// The serial sent.
        offered: i64,
        /// The serial kept.
        kept: i64,
    },
    /// The same serial with other content.
    #[error(
        "serial {serial} of stack `{stack}` is already kept with different content: a changed state needs a higher serial, refused (nothing changed)"
    )]
    SerialReused {
        /// The stack.
        stack: String,
        /// The serial.
        serial: i64,
    },
    /// Someone else holds the lock.
    #[error("the state of stack `{stack}` is locked by {} (lock `{}`)", .lock.locked_by, .lock.lock_id)]
    Locked {
        /// The stack.
        stack: String,
        /// The lock held.
        lock: Box<StateLockRow>,
    },
    /// An unlock or write under a lock the caller does not hold.
    #[error("the state of stack `{stack}` is not locked by lock `{lock_id}` of this job")]
    NotLockHolder {
        /// The stack.
        stack: String,
        /// The lock ID given.
        lock_id: String,
    },
    /// A lock request without a usable lock ID.
    #[error(
        "a lock request must carry Terraform's lock information with an `ID` (printable, at most {MAX_LOCK_ID} characters)"
    )]
    BadLockInfo,
    /// A plan job asked to change state.
    #[error("a {0} job only reads its stack's state: locking and writing it are for the run's apply job")]
    ReadOnlyPhase(Phase),
    /// A job asked for another stack's state.
    #[error("this job belongs to stack `{job_stack}`, not `{stack}`")]
    OtherStack {
        /// The job's stack.
        job_stack: String,
        /// The stack asked for.
        stack: String,
    },
    /// Wrong or stale job credentials.
    #[error("these state credentials are not valid: unknown job, a lease that has ended, or a wrong password")]
    BadJobCredentials,
    /// The stored content does not open.
    #[error("version {version} of stack `{stack}`'s state cannot be opened: {source}")]
    Unseal {
        /// The stack.
        stack: String,
        /// The version.
        version: i64,
        /// Why.
        source: UnsealError,
    },
    /// The stored content does not match its digest.
    #[error("version {version} of stack `{stack}`'s state does not match its recorded SHA-256")]
    Digest {
        /// The stack.
        stack: String,
        /// The version.
        version: i64,
    },
    /// A run-level error (unknown stack, the lease).
    #[error(transparent)]
    Run(#[from] RunError),
    /// A guarded write did not hold (someone else wrote or locked meanwhile).
    #[error(transparent)]
    Change(#[from] ChangeError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The fields of Terraform state the broker checks.
#[derive(Debug, Deserialize)]
struct StateHeader {
    version: u64,
    serial: i64,
    lineage: String,
}

/// Terraform's lock information (`LockInfo`), the field the broker needs.
#[derive(Debug, Deserialize)]
struct LockInfo {
    #[serde(rename = "ID")]
    id: String,
}

/// A state version as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StateVersionView {
    /// The stack.
    pub stack: String,
    /// 1, 2, …
    pub version: i64,
    /// Terraform's serial.
    pub serial: i64,
    /// Terraform's lineage.
    pub lineage: String,
    /// SHA-256 of the content, hex.
    pub sha256: String,
    /// Bytes.
    pub size: i64,
    /// `apply`, `push` or `rollback`.
    pub source: String,
    /// The run whose apply wrote it.
    pub run_id: Option<String>,
    /// The job.
    pub job_id: Option<String>,
    /// Who.
    pub written_by: String,
    /// When (Unix seconds).
    pub created_at: i64,
}

impl From<StateVersionRow> for StateVersionView {
    fn from(row: StateVersionRow) -> Self {
        Self {
            stack: row.stack,
            version: row.version,
            serial: row.serial,
            lineage: row.lineage,
            sha256: hex(&row.sha256),
            size: row.size,
            source: row.source,
            run_id: row.run_id,
            job_id: row.job_id,
            written_by: row.written_by,
            created_at: row.created_at,
        }
    }
}

/// A stack's lock as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StateLockView {
    /// Terraform's lock ID.
    pub id: String,
    /// Who: `job:<id>`.
    pub locked_by: String,
    /// The job.
    pub job_id: Option<String>,
    /// Since (Unix seconds).
    pub created_at: i64,
    /// Terraform's lock information.
    pub info: serde_json::Value,
}

impl From<StateLockRow> for StateLockView {
    fn from(row: StateLockRow) -> Self {
        Self {
            id: row.lock_id,
            locked_by: row.locked_by,
            job_id: row.job_id,
            created_at: row.created_at,
            info: serde_json::from_str(&row.info).unwrap_or(serde_json::Value::Null),
        }
    }
}

/// A stack's state as `keyward state show|list` see it.
#[derive(Debug, Clone, Serialize)]
pub struct StateSummary {
    /// The stack.
    pub stack: String,
    /// Whether the broker keeps its state.
    pub managed: bool,
    /// The lock, if held.
    pub lock: Option<StateLockView>,
    /// Every version, newest first.
    pub versions: Vec<StateVersionView>,
}

/// Who writes: a job (its apply, through Terraform) or an operator (`push`, `rollback`).
enum Writer<'a> {
    Job { held: &'a HeldJob, lock_id: Option<&'a str> },
    Operator { name: &'a str, source: &'static str, caller: Box<Context> },
}

/// What the SHA-256 and the version of a sealed state are bound to: a sealed version copied onto
/// another stack's row, or another version number, fails to open.
fn seal_context(stack: &str, version: i64, sha256: &[u8]) -> Vec<u8> {
    format!("keyward state v1\0{stack}\0{version}\0{}", hex(sha256)).into_bytes()
}

/// Reads the header of `content`, refusing what is not Terraform state.
fn header(content: &[u8]) -> Result<StateHeader, StateError> {
    if content.len() > MAX_STATE_BYTES {
        return Err(StateError::TooLarge(content.len()));
    }
    let header: StateHeader = serde_json::from_slice(content)
        .map_err(|e| StateError::Malformed(format!("expected a JSON object with version, serial and lineage: {e}")))?;
    if header.version < 3 {
        return Err(StateError::Malformed(format!(
            "state format version {} is older than Terraform 0.12's",
            header.version
        )));
    }
    if header.serial < 0 {
        return Err(StateError::Malformed("a negative serial".into()));
    }
    if header.lineage.is_empty() || header.lineage.len() > 128 || header.lineage.chars().any(char::is_control) {
        return Err(StateError::Malformed("the lineage must be 1 to 128 printable characters".into()));
    }
    Ok(header)
}

impl Runs {
    /// The password of `job_id`'s lease `fencing_token` for its stack's state backend
    /// (`TF_HTTP_PASSWORD`): an HMAC under a key derived from the KEK, so it is never stored, and
    /// a new lease of the same job gets a new one.
    pub fn state_password(&self, job_id: &str, fencing_token: i64) -> Zeroizing<String> {
        let key = self.kek.derive(TOKEN_PURPOSE);
        let key = hmac::Key::new(hmac::HMAC_SHA256, &*key);
        let tag = hmac::sign(&key, format!("{job_id}\0{fencing_token}").as_bytes());
        Zeroizing::new(URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// The job whose state credentials these are, if its lease is still live.
    pub async fn job_for_state(&self, job_id: &str, password: &str) -> Result<HeldJob, StateError> {
        let job = self.store.job(job_id).await?.ok_or(StateError::BadJobCredentials)?;
        let expected = self.state_password(&job.id, job.fencing_token);
        if constant_time::verify_slices_are_equal(expected.as_bytes(), password.as_bytes()).is_err() {
            return Err(StateError::BadJobCredentials);
        }
        let agent = job.agent_id.clone().ok_or(StateError::BadJobCredentials)?;
        let fencing_token = job.fencing_token;
        self.hold(job, &agent, fencing_token).await.map_err(|error| match error {
            RunError::NotLeaseHolder { .. } | RunError::LeaseExpired { .. } | RunError::UnknownJob(_) => {
                StateError::BadJobCredentials
            }
            other => StateError::Run(other),
        })
    }

    /// Whether the broker keeps `stack`'s state (an unknown stack is an error).
    async fn manages_state(&self, stack: &str) -> Result<(), StateError> {
        match self.store.stack_manages_state(stack).await? {
            None => Err(RunError::UnknownStack(stack.to_owned()).into()),
            Some(false) => Err(StateError::NotManaged(stack.to_owned())),
            Some(true) => Ok(()),
        }
    }

    /// `held`'s own stack, managed: what every job request checks first (the stack was read
    /// with the lease).
    fn job_stack(held: &HeldJob, stack: &str) -> Result<(), StateError> {
        if held.stack.spec.name != stack {
            return Err(StateError::OtherStack { job_stack: held.stack.spec.name.clone(), stack: stack.to_owned() });
        }
        if !held.stack.spec.managed_state {
            return Err(StateError::NotManaged(stack.to_owned()));
        }
        Ok(())
    }

    /// The newest version of `held`'s stack's state for Terraform (`GET`), or `None` before the
    /// first apply. Any phase reads.
    pub async fn job_state(&self, held: &HeldJob, stack: &str) -> Result<Option<Zeroizing<Vec<u8>>>, StateError> {
        Self::job_stack(held, stack)?;
        match self.store.state_version(stack, None).await? {
            None => Ok(None),
            Some(row) => Ok(Some(self.open_state(stack, row.version).await?)),
        }
    }

    /// Version `version` (the newest with `None`) for an operator (`keyward state pull`),
    /// recorded as `state.pulled`: state holds secrets.
    pub async fn pull_state(
        &self,
        stack: &str,
        version: Option<i64>,
        operator: &str,
        caller: Context,
    ) -> Result<(StateVersionView, Zeroizing<Vec<u8>>), StateError> {
        self.store.stack(stack).await?.ok_or_else(|| RunError::UnknownStack(stack.to_owned()))?;
        let row = self.store.state_version(stack, version).await?.ok_or_else(|| match version {
            Some(version) => StateError::NoSuchVersion { stack: stack.to_owned(), version },
            None => StateError::NoState(stack.to_owned()),
        })?;
        let content = self.open_state(stack, row.version).await?;
        let event = AuditEvent::new(Kind::StatePulled, self.clock.now(), operator_context(operator, stack, caller))
            .with("stack", stack)
            .with("version", row.version)
            .with("serial", row.serial)
            .with("sha256", hex(&row.sha256))
            .with_ref("stack", stack);
        self.commit(Append::events(vec![event])).await.map_err(state_error)?;
        Ok((row.into(), content))
    }

    async fn open_state(&self, stack: &str, version: i64) -> Result<Zeroizing<Vec<u8>>, StateError> {
        let sealed = self
            .store
            .sealed_state(stack, version)
            .await?
            .ok_or_else(|| StateError::NoSuchVersion { stack: stack.to_owned(), version })?;
        let content = self
            .kek
            .open(&seal_context(stack, version, &sealed.sha256), &sealed.sealed)
            .map_err(|source| StateError::Unseal { stack: stack.to_owned(), version, source })?;
        if digest::digest(&digest::SHA256, &content).as_ref() != sealed.sha256.as_slice() {
            return Err(StateError::Digest { stack: stack.to_owned(), version });
        }
        Ok(content)
    }

    /// Terraform's `POST` from `held`'s apply: keeps `content` as the stack's next version.
    pub async fn write_job_state(
        &self,
        held: &HeldJob,
        stack: &str,
        content: &[u8],
        lock_id: Option<&str>,
    ) -> Result<Option<StateVersionView>, StateError> {
        if held.job.phase != Phase::Apply {
            return Err(StateError::ReadOnlyPhase(held.job.phase));
        }
        Self::job_stack(held, stack)?;
        self.write_state(stack, content, Writer::Job { held, lock_id }).await
    }

    /// `keyward state push`: an operator imports `content` (an existing state, or a fix). The
    /// same checks as a job's write; refused while a job holds the lock.
    pub async fn push_state(
        &self,
        stack: &str,
        content: &[u8],
        operator: &str,
        caller: Context,
    ) -> Result<Option<StateVersionView>, StateError> {
        self.manages_state(stack).await?;
        self.write_state(stack, content, Writer::Operator { name: operator, source: "push", caller: Box::new(caller) })
            .await
    }

    /// `keyward state rollback`: keeps version `version`'s content again as the newest version,
    /// with the next serial (Terraform refuses a state whose serial went down).
    pub async fn rollback_state(
        &self,
        stack: &str,
        version: i64,
        operator: &str,
        caller: Context,
    ) -> Result<Option<StateVersionView>, StateError> {
        self.manages_state(stack).await?;
        let newest =
            self.store.state_version(stack, None).await?.ok_or_else(|| StateError::NoState(stack.to_owned()))?;
        if self.store.state_version(stack, Some(version)).await?.is_none() {
            return Err(StateError::NoSuchVersion { stack: stack.to_owned(), version });
        }
        let old = self.open_state(stack, version).await?;
        let mut state: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&old)
            .map_err(|e| StateError::Malformed(format!("version {version} is not a JSON object: {e}")))?;
        state.insert("serial".into(), (newest.serial + 1).into());
        let content =
            Zeroizing::new(serde_json::to_vec_pretty(&state).map_err(|e| StateError::Malformed(e.to_string()))?);
        self.write_state(
            stack,
            &content,
            Writer::Operator { name: operator, source: "rollback", caller: Box::new(caller) },
        )
        .await
    }

    /// Checks `content` against the newest version and keeps it as the next one, with its
    /// `state.written` entry, in one transaction. `None`: the same serial and content were
    /// already kept (Terraform persisting an unchanged state), nothing written.
    async fn write_state(
        &self,
        stack: &str,
        content: &[u8],
        writer: Writer<'_>,
    ) -> Result<Option<StateVersionView>, StateError> {
        let header = header(content)?;
        let sha256 = digest::digest(&digest::SHA256, content).as_ref().to_vec();
        let newest = self.store.state_version(stack, None).await?;
        if let Some(kept) = &newest {
            check_successor(stack, kept, &header, &sha256)?;
            if kept.serial == header.serial {
                return Ok(None);
            }
        }
        if let Some(lock) = self.store.state_lock(stack).await? {
            let own = match &writer {
                Writer::Job { held, lock_id } => {
                    lock.job_id.as_deref() == Some(held.job.id.as_str()) && *lock_id == Some(lock.lock_id.as_str())
                }
                Writer::Operator { .. } => false,
            };
            if !own {
                return Err(StateError::Locked { stack: stack.to_owned(), lock: Box::new(lock) });
            }
        }
        let after = newest.as_ref().map_or(0, |kept| kept.version);
        let version = after + 1;
        let now = self.clock.now();
        let sealed = self.kek.seal(&seal_context(stack, version, &sha256), content);
        let (source, run_id, job_id, written_by, context, lock_id, guard) = match writer {
            Writer::Job { held, lock_id } => (
                "apply",
                Some(held.run.id.clone()),
                Some(held.job.id.clone()),
                format!("job:{}", held.job.id),
                run_context(&held.run, &held.stack, held.job.phase, &job_actor(held), Context::default()),
                lock_id,
                Some(held.lease_guard(now)),
            ),
            Writer::Operator { name, source, caller } => {
                (source, None, None, name.to_owned(), operator_context(name, stack, *caller), None, None)
            }
        };
        let row = NewStateVersion {
            stack,
            after,
            serial: header.serial,
            lineage: &header.lineage,
            sha256: sha256.clone(),
            size: i64::try_from(content.len()).unwrap_or(i64::MAX),
            sealed,
            source,
            run_id: run_id.clone(),
            job_id: job_id.clone(),
            written_by: &written_by,
        };
        let mut writes = vec![rows::insert_state_version(row, lock_id, now)];
        writes.extend(guard);
        let mut event = AuditEvent::new(Kind::StateWritten, now, context)
            .with("stack", stack)
            .with("version", version)
            .with("serial", header.serial)
            .with("lineage", header.lineage.as_str())
            .with("sha256", hex(&sha256))
            .with("size", content.len())
            .with("source", source)
            .with("written_by", written_by.as_str())
            .with_ref("stack", stack);
        if let Some(job) = &job_id {
            event = event.with("job_id", job.as_str()).with_ref("job", job);
        }
        self.commit(Append::changes(writes, vec![event])).await.map_err(state_error)?;
        Ok(self.store.state_version(stack, Some(version)).await?.map(StateVersionView::from))
    }

    /// Terraform's `LOCK` from `held`'s apply. `info` is Terraform's lock information (JSON).
    pub async fn lock_job_state(&self, held: &HeldJob, stack: &str, info: &[u8]) -> Result<(), StateError> {
        if held.job.phase != Phase::Apply {
            return Err(StateError::ReadOnlyPhase(held.job.phase));
        }
        Self::job_stack(held, stack)?;
        let lock_id = lock_id(info)?;
        let now = self.clock.now();
        let lock = StateLockRow {
            lock_id: lock_id.clone(),
            info: String::from_utf8_lossy(info).into_owned(),
            job_id: Some(held.job.id.clone()),
            fencing_token: Some(held.job.fencing_token),
            locked_by: format!("job:{}", held.job.id),
            created_at: now,
        };
        let context = run_context(&held.run, &held.stack, held.job.phase, &job_actor(held), Context::default());
        let event = AuditEvent::new(Kind::StateLocked, now, context)
            .with("stack", stack)
            .with("lock_id", lock_id.as_str())
            .with("job_id", held.job.id.as_str())
            .with_ref("stack", stack)
            .with_ref("job", &held.job.id);
        let writes = vec![rows::take_state_lock(stack, &lock), held.lease_guard(now)];
        match self.commit(Append::changes(writes, vec![event])).await {
            Ok(()) => Ok(()),
            Err(RunError::Change(ChangeError::Moved { .. })) => match self.store.state_lock(stack).await? {
                Some(lock) => Err(StateError::Locked { stack: stack.to_owned(), lock: Box::new(lock) }),
                // Released meanwhile: the lease guard is what failed, or a race; Terraform retries.
                None => Err(StateError::BadJobCredentials),
            },
            Err(other) => Err(state_error(other)),
        }
    }

    /// Terraform's `UNLOCK` from `held`'s apply.
    pub async fn unlock_job_state(&self, held: &HeldJob, stack: &str, info: &[u8]) -> Result<(), StateError> {
        if held.job.phase != Phase::Apply {
            return Err(StateError::ReadOnlyPhase(held.job.phase));
        }
        Self::job_stack(held, stack)?;
        let lock_id = lock_id(info)?;
        let now = self.clock.now();
        let context = run_context(&held.run, &held.stack, held.job.phase, &job_actor(held), Context::default());
        let event = AuditEvent::new(Kind::StateUnlocked, now, context)
            .with("stack", stack)
            .with("lock_id", lock_id.as_str())
            .with("by", "job")
            .with_ref("stack", stack)
            .with_ref("job", &held.job.id);
        let writes = vec![rows::release_state_lock(stack, &held.job.id, &lock_id)];
        match self.commit(Append::changes(writes, vec![event])).await {
            Ok(()) => Ok(()),
            Err(RunError::Change(ChangeError::Moved { .. })) => {
                Err(StateError::NotLockHolder { stack: stack.to_owned(), lock_id })
            }
            Err(other) => Err(state_error(other)),
        }
    }

    /// `keyward state unlock`: an operator removes `stack`'s lock (`lock_id`: only if it is still
    /// that lock; `None`: whichever is held). `None` when the stack was not locked.
    pub async fn force_unlock_state(
        &self,
        stack: &str,
        lock_id: Option<&str>,
        operator: &str,
        caller: Context,
    ) -> Result<Option<StateLockView>, StateError> {
        self.store.stack(stack).await?.ok_or_else(|| RunError::UnknownStack(stack.to_owned()))?;
        let Some(lock) = self.store.state_lock(stack).await? else { return Ok(None) };
        if lock_id.is_some_and(|id| id != lock.lock_id) {
            return Err(StateError::NotLockHolder {
                stack: stack.to_owned(),
                lock_id: lock_id.unwrap_or_default().to_owned(),
            });
        }
        let event = AuditEvent::new(Kind::StateUnlocked, self.clock.now(), operator_context(operator, stack, caller))
            .with("stack", stack)
            .with("lock_id", lock.lock_id.as_str())
            .with("by", "operator")
            .with("held_by", lock.locked_by.as_str())
            .with_ref("stack", stack);
        let writes = vec![rows::force_unlock_state(stack, &lock.lock_id)];
        self.commit(Append::changes(writes, vec![event])).await.map_err(state_error)?;
        Ok(Some(lock.into()))
    }

    /// `keyward state list|show`: every version's metadata and the lock.
    pub async fn state_summary(&self, stack: &str) -> Result<StateSummary, StateError> {
        let managed =
            self.store.stack_manages_state(stack).await?.ok_or_else(|| RunError::UnknownStack(stack.to_owned()))?;
        let versions = self.store.state_versions(stack).await?.into_iter().map(StateVersionView::from).collect();
        let lock = self.store.state_lock(stack).await?.map(StateLockView::from);
        Ok(StateSummary { stack: stack.to_owned(), managed, lock, versions })
    }
}

/// Refuses `offered` as the successor of `kept`: another lineage, an older serial, or the same
/// serial with other content.
fn check_successor(
    stack: &str,
    kept: &StateVersionRow,
    offered: &StateHeader,
    sha256: &[u8],
) -> Result<(), StateError> {
    if offered.lineage != kept.lineage {
        return Err(StateError::ForeignLineage {
            stack: stack.to_owned(),
            offered: offered.lineage.clone(),
            kept: kept.lineage.clone(),
        });
    }
    if offered.serial < kept.serial {
        return Err(StateError::OlderSerial { stack: stack.to_owned(), offered: offered.serial, kept: kept.serial });
    }
    if offered.serial == kept.serial && sha256 != kept.sha256.as_slice() {
        return Err(StateError::SerialReused { stack: stack.to_owned(), serial: offered.serial });
    }
    Ok(())
}

/// The lock ID in Terraform's lock information.
fn lock_id(info: &[u8]) -> Result<String, StateError> {
    if info.len() > MAX_LOCK_INFO {
        return Err(StateError::BadLockInfo);
    }
    let info: LockInfo = serde_json::from_slice(info).map_err(|_| StateError::BadLockInfo)?;
    if info.id.is_empty() || info.id.len() > MAX_LOCK_ID || info.id.chars().any(char::is_control) {
        return Err(StateError::BadLockInfo);
    }
    Ok(info.id)
}

fn job_actor(held: &HeldJob) -> String {
    format!("agent:{}", held.job.agent_id.as_deref().unwrap_or_default())
}

fn operator_context(operator: &str, stack: &str, caller: Context) -> Context {
    Context { actor: Some(operator.to_owned()), stack_id: Some(stack.to_owned()), ..caller }
}

/// A guarded write's refusal stays a [`StateError::Change`]; the rest keep their kind.
fn state_error(error: RunError) -> StateError {
    match error {
        RunError::Change(change) => StateError::Change(change),
        RunError::Store(store) => StateError::Store(store),
        other => StateError::Run(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(serial: i64, lineage: &str, sha: u8) -> StateVersionRow {
        StateVersionRow {
            stack: "net".into(),
            version: 3,
            serial,
            lineage: lineage.into(),
            sha256: vec![sha; 32],
            size: 10,
            source: "apply".into(),
            run_id: None,
            job_id: None,
            written_by: "job:j".into(),
            created_at: 0,
        }
    }

    fn offered(serial: i64, lineage: &str) -> StateHeader {
        StateHeader { version: 4, serial, lineage: lineage.into() }
    }

    #[test]
    fn a_successor_keeps_the_lineage_and_never_lowers_the_serial() {
        let kept = kept(5, "L", 1);
        assert!(check_successor("net", &kept, &offered(6, "L"), &[2; 32]).is_ok());
        assert!(check_successor("net", &kept, &offered(5, "L"), &[1; 32]).is_ok(), "the same state again is fine");
        assert!(matches!(
            check_successor("net", &kept, &offered(6, "M"), &[2; 32]),
            Err(StateError::ForeignLineage { .. })
        ));
        assert!(matches!(
            check_successor("net", &kept, &offered(4, "L"), &[2; 32]),
            Err(StateError::OlderSerial { offered: 4, kept: 5, .. })
        ));
        assert!(matches!(
            check_successor("net", &kept, &offered(5, "L"), &[2; 32]),
            Err(StateError::SerialReused { serial: 5, .. })
        ));
    }

    #[test]
    fn only_terraform_state_is_kept() {
        let ok =
            br#"{"version":4,"terraform_version":"1.11.4","serial":1,"lineage":"abc","outputs":{},"resources":[]}"#;
        assert_eq!(header(ok).map(|h| (h.serial, h.lineage)).ok(), Some((1, "abc".to_owned())));
        for bad in [
            &b"not json"[..],
            br#"{"serial":1,"lineage":"abc"}"#,
            br#"{"version":4,"serial":-1,"lineage":"abc"}"#,
            br#"{"version":4,"serial":1,"lineage":""}"#,
            br#"{"version":2,"serial":1,"lineage":"abc"}"#,
            br#"[1,2]"#,
        ] {
            assert!(matches!(header(bad), Err(StateError::Malformed(_))), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_lock_needs_terraforms_lock_id() {
        assert_eq!(
            lock_id(br#"{"ID":"5b1e","Operation":"OperationTypeApply","Who":"x@y"}"#).ok().as_deref(),
            Some("5b1e")
        );
        for bad in [&b"{}"[..], br#"{"ID":""}"#, br#"{"ID":"a\nb"}"#, b"LOCK"] {
            assert!(matches!(lock_id(bad), Err(StateError::BadLockInfo)));
        }
    }

    #[test]
    fn a_sealed_version_is_bound_to_its_stack_number_and_digest() {
        assert_ne!(seal_context("a", 1, &[0; 32]), seal_context("b", 1, &[0; 32]));
        assert_ne!(seal_context("a", 1, &[0; 32]), seal_context("a", 2, &[0; 32]));
        assert_ne!(seal_context("a", 1, &[0; 32]), seal_context("a", 1, &[1; 32]));
    }
}
