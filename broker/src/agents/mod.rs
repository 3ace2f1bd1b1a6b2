//! Private worker agents: pools, one-time join tokens, enrollment, certificates, revocation, and
//! the sessions of the agents connected here (DESIGN.md §5).
//!
//! Every agent has its own short-lived mTLS identity from the agent CA ([`ca`]), revocable one
//! agent at a time, as SPIRE does, instead of one pool-wide secret. Enrollment trades a one-time
//! join token ([`join`]) and a CSR for a certificate; every later call presents the certificate,
//! and the agent's identity is read from it, never from a message field. Connected agents are
//! tracked and fed jobs by the [`hub`]; what their work streams' messages do (hello, heartbeat,
//! a job's end) is [`work`]. The gRPC edge that speaks the protocol and terminates TLS is
//! [`crate::grpc`]; nothing here builds a status code, and a stream the broker ends carries a
//! [`hub::Disconnect`] reason that the edge turns into one.
//!
//! Every change here (a pool, a join token issued or used, an enrollment, a renewal, a drain, a
//! revocation) is a guarded write committed with its audit entry.

pub mod ca;
pub mod credentials;
mod error;
pub mod hub;
pub mod join;
pub mod uploads;
pub mod work;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

pub use self::error::{AgentError, JoinTokenRefusal};

use self::ca::{AgentCa, CaError, Issued};
use self::hub::{Disconnect, Hub};
use self::join::JoinToken;
use crate::audit::{Append, AuditEvent, AuditLog, Committed, Context, Kind};
use crate::clock::SharedClock;
use crate::exchange::Exchanger;
use crate::joblogs::Logs;
use crate::runs::{LeaseEnd, Runs, valid_name};
use crate::store::agents::NewAgent;
use crate::store::{self, AgentRow, JoinTokenRow, Store, StoreError};

/// Longest host name an agent may report.
const MAX_HOSTNAME: usize = 253;
/// Longest version string an agent may report.
const MAX_VERSION: usize = 64;
/// Largest CSR accepted.
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// Agent settings from `[agents]`.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// Agent certificate lifetime.
    pub certificate_lifetime: Duration,
    /// Job lease length.
    pub lease: Duration,
    /// How often dispatchers look for jobs other replicas queued.
    pub poll_interval: Duration,
    /// Longest join-token lifetime.
    pub join_token_max_ttl: Duration,
    /// Where agents dial (`https://host:port`).
    pub endpoint: String,
    /// The broker's HTTP API as jobs reach it (its external URL): Terraform's state backend.
    pub api_url: String,
}

/// A pool as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolView {
    /// Name.
    pub name: String,
    /// The space it belongs to.
    pub space: String,
    /// Creation time.
    pub created_at: i64,
    /// Who created it.
    pub created_by: String,
}

/// A join token, the one time it is shown.
#[derive(Clone, Serialize)]
pub struct IssuedJoinToken {
    /// Token ID (for the record; not a secret).
    pub id: String,
    /// The pool it enrolls into.
    pub pool: String,
    /// The token.
    pub token: String,
    /// When it stops working.
    pub expires_at: i64,
}

impl std::fmt::Debug for IssuedJoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedJoinToken")
            .field("id", &self.id)
            .field("pool", &self.pool)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// An agent as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentView {
    /// Agent ID.
    pub id: String,
    /// Pool.
    pub pool: String,
    /// Its SPIFFE ID.
    pub spiffe_id: String,
    /// `active`, `draining` or `revoked`.
    pub state: String,
    /// Host name it reported.
    pub hostname: String,
    /// Version it reported.
    pub version: String,
    /// Current certificate's serial.
    pub serial: String,
    /// Current certificate's expiry.
    pub not_after: i64,
    /// Enrollment time.
    pub enrolled_at: i64,
    /// Last time a broker heard from it, to the minute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen_at: Option<i64>,
    /// Revocation time and who revoked it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<i64>,
    /// Who revoked it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_by: Option<String>,
    /// Whether it has a work stream open to this broker.
    pub connected: bool,
    /// The Terraform version it reported, if it has Terraform.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub terraform_version: Option<String>,
    /// How it isolates jobs, as it reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub isolation: Option<String>,
    /// The tools it reported and their versions (`{"terraform": "1.11.4", "tofu": "1.8.0"}`);
    /// absent for an agent older than tool reports (it runs Terraform alone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tools: Option<std::collections::BTreeMap<String, String>>,
}

/// What an enrolling agent sends.
#[derive(Clone)]
pub struct Enrollment {
    /// The join token text.
    pub join_token: String,
    /// DER CSR.
    pub csr: Vec<u8>,
    /// Its host name.
    pub hostname: String,
    /// Its version.
    pub version: String,
    /// Where it connected from.
    pub remote_addr: Option<String>,
}

impl std::fmt::Debug for Enrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrollment")
            .field("hostname", &self.hostname)
            .field("version", &self.version)
            .field("remote_addr", &self.remote_addr)
            .finish_non_exhaustive()
    }
}

/// A certificate handed to an agent.
#[derive(Debug, Clone)]
pub struct Certified {
    /// Agent ID.
    pub agent_id: String,
    /// Pool.
    pub pool: String,
    /// Certificate, DER.
    pub certificate: Vec<u8>,
    /// Expiry.
    pub not_after: i64,
}

/// What an agent needs before it enrolls: where to dial and the CA to check against its join
/// token's fingerprint. Public information.
#[derive(Debug, Clone, Serialize)]
pub struct Bootstrap {
    /// `https://host:port` of the gRPC endpoint.
    pub endpoint: String,
    /// The agent CA certificate, PEM.
    pub ca_certificate: String,
    /// Its SHA-256, hex.
    pub ca_fingerprint: String,
    /// The SPIFFE trust domain.
    pub trust_domain: String,
}

/// The agents service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Agents {
    store: Store,
    audit: AuditLog,
    runs: Runs,
    ca: Arc<AgentCa>,
    clock: SharedClock,
    settings: Arc<AgentSettings>,
    hub: Arc<Hub>,
    exchanger: Option<Arc<Exchanger>>,
    logs: Logs,
}

impl Agents {
    /// The service; `runs` leases jobs, `ca` signs certificates, `exchanger` (when targets are
    /// configured) issues jobs' credentials.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        audit: AuditLog,
        runs: Runs,
        ca: Arc<AgentCa>,
        clock: SharedClock,
        settings: AgentSettings,
        exchanger: Option<Arc<Exchanger>>,
    ) -> Self {
        let settings = Arc::new(settings);
        let hub = Arc::new(Hub::new(runs.clone(), Arc::clone(&settings)));
        let logs = Logs::new(store.clone(), audit.clone(), Arc::clone(&clock), ca.certificate_pem());
        Self { store, audit, runs, ca, clock, settings, hub, exchanger, logs }
    }

    /// Jobs' logs.
    pub fn logs(&self) -> &Logs {
        &self.logs
    }

    /// The live connections.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// The agent CA.
    pub fn ca(&self) -> &Arc<AgentCa> {
        &self.ca
    }

    /// The settings.
    pub fn settings(&self) -> &AgentSettings {
        &self.settings
    }

    /// The runs service the agents' jobs belong to.
    pub(crate) fn runs(&self) -> &Runs {
        &self.runs
    }

    /// What agents fetch before enrolling.
    pub fn bootstrap(&self) -> Bootstrap {
        Bootstrap {
            endpoint: self.settings.endpoint.clone(),
            ca_certificate: self.ca.certificate_pem(),
            ca_fingerprint: self.ca.fingerprint(),
            trust_domain: self.ca.trust_domain().to_owned(),
        }
    }

    /// Creates the pool `name` in `space` (which the caller checked exists).
    pub async fn create_pool(
        &self,
        name: &str,
        space: &str,
        who: &str,
        caller: Context,
    ) -> Result<PoolView, AgentError> {
        if !valid_name(name) {
            return Err(AgentError::BadPoolName(name.to_owned()));
        }
        let now = self.clock.now();
        let write = store::agents::create_pool(name, space, who, now);
        let context = Context { actor: Some(who.to_owned()), ..caller };
        let event = AuditEvent::new(Kind::PoolCreated, now, context)
            .with("pool", name)
            .with("space", space)
            .with_ref("pool", name);
        self.commit(Append::changes(vec![write], vec![event])).await?;
        Ok(PoolView { name: name.to_owned(), space: space.to_owned(), created_at: now, created_by: who.to_owned() })
    }

    /// Every pool.
    pub async fn pools(&self) -> Result<Vec<PoolView>, AgentError> {
        Ok(self
            .store
            .pools()
            .await?
            .into_iter()
            .map(|p| PoolView { name: p.name, space: p.space, created_at: p.created_at, created_by: p.created_by })
            .collect())
    }

    /// Issues a one-time join token for `pool`, valid for `ttl`.
    pub async fn join_token(
        &self,
        pool: &str,
        ttl: Duration,
        who: &str,
        caller: Context,
    ) -> Result<IssuedJoinToken, AgentError> {
        if ttl < Duration::from_secs(1) || ttl > self.settings.join_token_max_ttl {
            return Err(AgentError::JoinTokenTtl { max: self.settings.join_token_max_ttl });
        }
        if self.store.pool(pool).await?.is_none() {
            return Err(unknown_pool(pool));
        }
        let token = JoinToken::generate(&self.ca.fingerprint())
            .ok_or_else(|| AgentError::Ca(CaError::Sign("no randomness for a join token".to_owned())))?;
        let id = uuid::Uuid::now_v7().to_string();
        let now = self.clock.now();
        let expires_at = now.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX));
        let write = store::agents::issue_join_token(&id, pool, token.hash(), expires_at, who, now);
        let context = Context { actor: Some(who.to_owned()), ..caller };
        let event = AuditEvent::new(Kind::JoinTokenCreated, now, context)
            .with("join_token_id", id.as_str())
            .with("pool", pool)
            .with("expires_at", expires_at)
            .with_ref("pool", pool);
        self.commit(Append::changes(vec![write], vec![event])).await?;
        Ok(IssuedJoinToken { id, pool: pool.to_owned(), token: token.expose(), expires_at })
    }

    /// Enrolls an agent: checks the join token (known, unused, unexpired, for this CA), signs
    /// its CSR, and consumes the token in the same transaction that records the agent.
    ///
    /// Refusals for a token that exists are audited; a token that was never issued is only
    /// logged, so unauthenticated callers cannot grow the audit log.
    pub async fn enroll(&self, enrollment: Enrollment) -> Result<Certified, AgentError> {
        check_reported(&enrollment.hostname, &enrollment.version)?;
        let now = self.clock.now();
        let row = self.admit(&enrollment, now).await?;
        let agent_id = uuid::Uuid::now_v7().to_string();
        let lifetime = self.lifetime_secs();
        let issued = match self.ca.issue_agent(&enrollment.csr, &row.pool, &agent_id, lifetime, now) {
            Ok(issued) => issued,
            Err(error) => {
                let error = AgentError::from(error);
                self.refuse_enrollment(&row.id, &row.pool, &enrollment, &error).await;
                return Err(error);
            }
        };
        self.record_enrollment(&row, &enrollment, &agent_id, &issued, now).await?;
        tracing::info!(%agent_id, pool = %row.pool, hostname = %enrollment.hostname, "agent enrolled");
        Ok(Certified { agent_id, pool: row.pool, certificate: issued.der, not_after: issued.not_after })
    }

    /// The join token `enrollment` presents, if it is known, unused, unexpired and for this CA,
    /// and the CSR is of a size to read. A refusal of a known token is audited.
    async fn admit(&self, enrollment: &Enrollment, now: i64) -> Result<JoinTokenRow, AgentError> {
        let token = JoinToken::parse(&enrollment.join_token).ok_or(JoinTokenRefusal::NotValid)?;
        let Some(row) = self.store.join_token(&token.hash()).await? else {
            tracing::warn!(remote = ?enrollment.remote_addr, "enrollment with an unknown join token refused");
            return Err(JoinTokenRefusal::NotValid.into());
        };
        let problem = if row.used_at.is_some() {
            Some(JoinTokenRefusal::Used.into())
        } else if row.expires_at <= now {
            Some(JoinTokenRefusal::Expired.into())
        } else if token.fingerprint() != self.ca.fingerprint() {
            Some(JoinTokenRefusal::OtherCa.into())
        } else if enrollment.csr.len() > MAX_CSR_BYTES {
            Some(AgentError::CsrTooLarge)
        } else {
            None
        };
        match problem {
            Some(problem) => {
                self.refuse_enrollment(&row.id, &row.pool, enrollment, &problem).await;
                Err(problem)
            }
            None => Ok(row),
        }
    }

    /// Records agent `agent_id` with its certificate `issued` and consumes the join token `row`,
    /// in one transaction with the `agent.enrolled` entry. A token another enrollment consumed
    /// meanwhile is refused as used.
    async fn record_enrollment(
        &self,
        row: &JoinTokenRow,
        enrollment: &Enrollment,
        agent_id: &str,
        issued: &Issued,
        now: i64,
    ) -> Result<(), AgentError> {
        let agent = NewAgent {
            id: agent_id,
            pool: &row.pool,
            hostname: &enrollment.hostname,
            version: &enrollment.version,
            serial: &issued.serial,
            not_after: issued.not_after,
        };
        let writes = vec![store::agents::use_join_token(&row.id, agent_id, now), store::agents::enroll(&agent, now)];
        let context = Context {
            actor: Some(format!("agent:{agent_id}")),
            remote_addr: enrollment.remote_addr.clone(),
            ..Context::default()
        };
        let event = AuditEvent::new(Kind::AgentEnrolled, now, context)
            .with("agent_id", agent_id)
            .with("pool", row.pool.as_str())
            .with("spiffe_id", self.ca.spiffe_id(&row.pool, agent_id))
            .with("serial", issued.serial.as_str())
            .with("not_after", issued.not_after)
            .with("hostname", enrollment.hostname.as_str())
            .with("version", enrollment.version.as_str())
            .with("join_token_id", row.id.as_str())
            .with_ref("agent", agent_id)
            .with_ref("pool", &row.pool);
        match self.audit.append(Append::changes(writes, vec![event])).await? {
            Committed::Recorded(_) => Ok(()),
            // Another enrollment consumed the token between our read and our write.
            Committed::Refused(_) => Err(JoinTokenRefusal::Used.into()),
            Committed::Replayed => Err(StoreError::Append("unexpected replay outcome".to_owned()).into()),
        }
    }

    async fn refuse_enrollment(&self, token_id: &str, pool: &str, enrollment: &Enrollment, why: &AgentError) {
        let now = self.clock.now();
        let context = Context { remote_addr: enrollment.remote_addr.clone(), ..Context::default() };
        let event = AuditEvent::new(Kind::AgentEnrollRefused, now, context)
            .with("join_token_id", token_id)
            .with("pool", pool)
            .with("hostname", enrollment.hostname.as_str())
            .with("reason", why.to_string())
            .with_ref("pool", pool);
        if let Err(error) = self.audit.append(Append::events(vec![event])).await {
            tracing::error!(%error, "could not record a refused enrollment");
        }
        tracing::warn!(pool, reason = %why, "enrollment refused");
    }

    /// The agent a verified client certificate names, if it exists, belongs to the pool the
    /// certificate says and is not revoked.
    pub async fn authenticate(&self, certificate: &[u8]) -> Result<AgentRow, AgentError> {
        let (pool, agent_id) =
            ca::agent_identity(certificate, self.ca.trust_domain()).ok_or(AgentError::NoAgentInCertificate)?;
        let agent = self.store.agent(&agent_id).await?.ok_or_else(|| AgentError::NotEnrolled(agent_id.clone()))?;
        if agent.pool != pool {
            return Err(AgentError::WrongPool { agent: agent_id, pool });
        }
        if agent.state == "revoked" {
            return Err(AgentError::Revoked(agent_id));
        }
        Ok(agent)
    }

    /// Renews `agent`'s certificate over the key in `csr`.
    pub async fn renew(&self, agent: &AgentRow, csr: &[u8]) -> Result<Certified, AgentError> {
        if csr.len() > MAX_CSR_BYTES {
            return Err(AgentError::CsrTooLarge);
        }
        let now = self.clock.now();
        let issued = self.ca.issue_agent(csr, &agent.pool, &agent.id, self.lifetime_secs(), now)?;
        let write = store::agents::renew(&agent.id, &issued.serial, issued.not_after, now);
        let context = Context { actor: Some(format!("agent:{}", agent.id)), ..Context::default() };
        let event = AuditEvent::new(Kind::AgentRenewed, now, context)
            .with("agent_id", agent.id.as_str())
            .with("pool", agent.pool.as_str())
            .with("serial", issued.serial.as_str())
            .with("previous_serial", agent.serial.as_str())
            .with("not_after", issued.not_after)
            .with_ref("agent", &agent.id);
        self.commit(Append::changes(vec![write], vec![event])).await?;
        Ok(Certified {
            agent_id: agent.id.clone(),
            pool: agent.pool.clone(),
            certificate: issued.der,
            not_after: issued.not_after,
        })
    }

    /// Agents, of one pool or all.
    pub async fn list(&self, pool: Option<&str>) -> Result<Vec<AgentView>, AgentError> {
        Ok(self.store.agents(pool).await?.into_iter().map(|row| self.view(row)).collect())
    }

    /// The agent `id`.
    pub async fn get(&self, id: &str) -> Result<AgentView, AgentError> {
        Ok(self.view(self.agent_row(id).await?))
    }

    /// Revokes agent `id`: from now on its certificate is refused on every call, its open stream
    /// is cut, and its leases end (a plan fails, an apply is interrupted).
    pub async fn revoke(&self, id: &str, who: &str, caller: Context) -> Result<AgentView, AgentError> {
        let agent = self.agent_row(id).await?;
        if agent.state == "revoked" {
            return Err(AgentError::AlreadyRevoked(id.to_owned()));
        }
        let now = self.clock.now();
        let write = store::agents::revoke(id, who, now);
        let context = Context { actor: Some(who.to_owned()), ..caller };
        let event = AuditEvent::new(Kind::AgentRevoked, now, context)
            .with("agent_id", id)
            .with("pool", agent.pool.as_str())
            .with("serial", agent.serial.as_str())
            .with_ref("agent", id);
        self.commit(Append::changes(vec![write], vec![event])).await?;
        self.hub.cut(id, Disconnect::Revoked);
        let ended = self.runs.end_leases_of(id, LeaseEnd::Revoked).await?;
        tracing::warn!(agent_id = id, by = who, leases_ended = ended, "agent revoked");
        self.get(id).await
    }

    /// Tells agent `id` to drain: it finishes what it runs and is given nothing new.
    pub async fn drain(&self, id: &str, who: &str, caller: Context) -> Result<AgentView, AgentError> {
        let agent = self.agent_row(id).await?;
        if agent.state != "active" {
            return Err(AgentError::NotActive { agent: id.to_owned(), state: agent.state });
        }
        self.record_draining(id, who, "operator", caller).await?;
        self.hub.drain(id, &format!("drained by {who}"));
        self.get(id).await
    }

    /// Records that agent `id` is draining on its own (SIGTERM).
    pub async fn draining_by_itself(&self, agent: &AgentRow) -> Result<(), AgentError> {
        if agent.state != "active" {
            return Ok(());
        }
        self.record_draining(&agent.id, &format!("agent:{}", agent.id), "agent shutting down", Context::default()).await
    }

    /// Moves an active agent to `draining`, with its audit entry.
    async fn record_draining(&self, id: &str, who: &str, reason: &str, caller: Context) -> Result<(), AgentError> {
        let write = store::agents::drain(id);
        let context = Context { actor: Some(who.to_owned()), ..caller };
        let event = AuditEvent::new(Kind::AgentDraining, self.clock.now(), context)
            .with("agent_id", id)
            .with("reason", reason)
            .with_ref("agent", id);
        self.commit(Append::changes(vec![write], vec![event])).await
    }

    async fn agent_row(&self, id: &str) -> Result<AgentRow, AgentError> {
        self.store.agent(id).await?.ok_or_else(|| AgentError::UnknownAgent(id.to_owned()))
    }

    fn view(&self, row: AgentRow) -> AgentView {
        AgentView {
            spiffe_id: self.ca.spiffe_id(&row.pool, &row.id),
            connected: self.hub.is_connected(&row.id),
            id: row.id,
            pool: row.pool,
            state: row.state,
            hostname: row.hostname,
            version: row.version,
            serial: row.serial,
            not_after: row.not_after,
            enrolled_at: row.enrolled_at,
            last_seen_at: row.last_seen_at,
            revoked_at: row.revoked_at,
            revoked_by: row.revoked_by,
            terraform_version: row.terraform_version,
            isolation: row.isolation,
            // Written by this broker from bounded input; a row it cannot read shows no tools.
            tools: row.tools.and_then(|text| serde_json::from_str(&text).ok()),
        }
    }

    fn lifetime_secs(&self) -> i64 {
        i64::try_from(self.settings.certificate_lifetime.as_secs()).unwrap_or(3600)
    }

    async fn commit(&self, append: Append) -> Result<(), AgentError> {
        Ok(self.audit.append(append).await?.into_change()?)
    }
}

fn unknown_pool(pool: &str) -> AgentError {
    AgentError::UnknownPool(pool.to_owned())
}

fn check_reported(hostname: &str, version: &str) -> Result<(), AgentError> {
    let printable = |text: &str| text.chars().all(|c| c.is_ascii_graphic());
    if hostname.is_empty() || hostname.len() > MAX_HOSTNAME || !printable(hostname) {
        return Err(AgentError::BadHostname);
    }
    if version.is_empty() || version.len() > MAX_VERSION || !printable(version) {
        return Err(AgentError::BadVersion);
    }
    Ok(())
}
