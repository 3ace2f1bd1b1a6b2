//! Assembling and running the broker: open the store, load keys, serve HTTP, run maintenance.
//!
//! Start-up fails loudly and early: a bad config, an unopenable database, or key material that
//! will not decrypt stops the process before it listens, with a message naming what and where.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::access::{Access, AccessError, ApiTokenSecret};
use crate::agents::ca::AgentCa;
use crate::agents::{AgentSettings, Agents};
use crate::api::{self, AppState};
use crate::audit::AuditLog;
use crate::audit::checkpoint::{CheckpointError, LogKey};
use crate::audit::sinks::Sink;
use crate::clock::SharedClock;
use crate::config::{Config, ConfigError, SinkConfig};
use crate::exchange::Exchanger;
use crate::exchange::issuers::TrustedIssuers;
use crate::grpc::listener::server_names;
use crate::identity::issuer::Issuer;
use crate::identity::kek::Kek;
use crate::identity::keyring::{KeyRing, KeyRingError, KeySettings};
use crate::identity::mint::Minter;
use crate::metrics::Metrics;
use crate::policy::{PolicyEngine, PolicyError};
use crate::store::{Store, StoreError};

/// How often each replica re-reads keys (to see other replicas' rotations) and checks the schedule.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(30);

/// Why the broker did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Configuration problem.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Database problem.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Key material problem.
    #[error(transparent)]
    Keys(#[from] KeyRingError),
    /// Bootstrap token problem.
    #[error(transparent)]
    Access(#[from] AccessError),
    /// The policy set does not load.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The audit log's checkpoint key cannot be loaded or created.
    #[error(transparent)]
    AuditKey(#[from] CheckpointError),
    /// The agent CA cannot be loaded or created.
    #[error(transparent)]
    AgentCa(#[from] crate::agents::ca::CaError),
    /// The agent endpoint cannot be set up.
    #[error(transparent)]
    AgentEndpoint(#[from] crate::grpc::listener::ListenerError),
    /// The HTTP client for issuers' discovery documents could not be built.
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(String),
    /// Could not listen.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address.
        address: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A started (not yet serving) broker.
#[derive(Debug)]
pub struct Broker {
    state: AppState,
    agent_listener: Option<(TcpListener, Vec<String>)>,
    header_read_timeout: Duration,
    replay_leeway: Duration,
    checkpoint_interval: Duration,
}

impl Broker {
    /// Opens the store and loads (or creates) the signing keys.
    pub async fn start(
        config: &Config,
        env: &dyn Fn(&str) -> Option<String>,
        clock: SharedClock,
    ) -> Result<Self, StartError> {
        let kek: Kek = config.kek(env)?;
        // Policies load before anything is written: a broken set stops the start cleanly.
        let policies = match &config.policy {
            Some(policy) => Some(Arc::new(PolicyEngine::load(&policy.dir, policy.evaluation_timeout)?)),
            None => {
                tracing::warn!("no [policy] table: every policy decision will deny");
                None
            }
        };
        let store = Store::open(&config.database(env)?).await?;
        let log_key = Arc::new(LogKey::load_or_create(&store, &kek, &config.audit_origin(), clock.now()).await?);
        let agent_ca = Arc::new(AgentCa::load_or_create(&store, &kek, &config.trust_domain(), clock.now()).await?);
        let settings = KeySettings {
            algorithm: config.keys.algorithm,
            rotation_period: config.keys.rotation_period,
            jwks_max_age: config.keys.jwks_max_age,
            clock_skew: config.tokens.clock_skew,
        };
        let plan_kek = Arc::new(kek.clone());
        let keys = Arc::new(KeyRing::load(store.clone(), kek, Arc::clone(&clock), settings).await?);
        let minter = Arc::new(Minter::new(
            config.server.external_url.clone(),
            config.tokens.clone(),
            Arc::clone(&keys),
            Arc::clone(&clock),
        ));
        let audit = AuditLog::start(store.clone());
        let mut sinks = Vec::with_capacity(config.audit.sinks.len());
        for sink in &config.audit.sinks {
            let secret = match sink {
                SinkConfig::Webhook { .. } => Some(config.sink_secret(sink, env)?),
                SinkConfig::File { .. } => None,
            };
            sinks.push(Arc::new(Sink::new(sink, secret.as_ref()).map_err(StartError::HttpClient)?));
        }
        let issuer = Issuer::new(minter, audit.clone());
        let metrics = Arc::new(Metrics::default());
        let exchanger = if config.targets.is_empty() {
            None
        } else {
            let issuers = TrustedIssuers::new(&config.issuers).map_err(|e| StartError::HttpClient(e.to_string()))?;
            Some(Arc::new(Exchanger::new(
                &config.targets,
                Arc::clone(&keys),
                issuer.clone(),
                policies.clone(),
                issuers,
                audit.clone(),
                store.clone(),
                Arc::clone(&clock),
                config.server.external_url.clone(),
                config.tokens.clock_skew,
                Arc::clone(&metrics),
            )))
        };
        let runs = crate::runs::Runs::new(
            store.clone(),
            audit.clone(),
            policies.clone(),
            &config.targets,
            Arc::clone(&clock),
            plan_kek,
        )
        .with_repositories(config.repository_credentials(env)?);
        let agent_listener = match config.agents.listen {
            Some(address) => Some(bind(address).await?),
            None => None,
        };
        let endpoint = match &agent_listener {
            Some(listener) => config.agents_endpoint(listener.local_addr().map(|a| a.port()).unwrap_or_default()),
            None => String::new(),
        };
        let agents = Agents::new(
            store.clone(),
            audit.clone(),
            runs.clone(),
            Arc::clone(&agent_ca),
            Arc::clone(&clock),
            AgentSettings {
                certificate_lifetime: config.agents.certificate_lifetime,
                lease: config.agents.lease,
                poll_interval: config.agents.poll_interval,
                join_token_max_ttl: config.agents.join_token_max_ttl,
                endpoint: endpoint.clone(),
            },
            exchanger.clone(),
        );
        let agent_listener =
            agent_listener.map(|listener| (listener, server_names(&endpoint, &config.agents.server_names)));
        let state = AppState {
            runs,
            agents,
            issuer,
            exchanger,
            clock: Arc::clone(&clock),
            access: Access::new(store.clone(), clock),
            keys,
            store,
            audit,
            log_key,
            sinks: Arc::new(sinks),
            metrics,
            readiness_timeout: Duration::from_secs(2),
            request_timeout: config.server.request_timeout,
            policies,
        };
        tracing::info!(
            issuer = %config.server.external_url, database = %state.store.location(),
            signing_key = %state.keys.signer().kid(), "broker started"
        );
        Ok(Self {
            state,
            agent_listener,
            header_read_timeout: config.server.header_read_timeout,
            replay_leeway: config.tokens.clock_skew,
            checkpoint_interval: config.audit.checkpoint_interval,
        })
    }

    /// Creates the bootstrap admin token if no API token exists yet.
    pub async fn bootstrap_admin(&self) -> Result<Option<ApiTokenSecret>, StartError> {
        Ok(self.state.access.bootstrap().await?)
    }

    /// Pools and agents (used by `keyward dev`).
    pub fn agents(&self) -> &Agents {
        &self.state.agents
    }

    /// Stacks and runs (used by `keyward dev`).
    pub fn runs(&self) -> &crate::runs::Runs {
        &self.state.runs
    }

    /// Operator token management (used by `keyward dev`).
    pub fn access(&self) -> &Access {
        &self.state.access
    }

    /// Where agents dial, when the agent endpoint listens.
    pub fn agents_endpoint(&self) -> Option<&str> {
        self.agent_listener.as_ref().map(|_| self.state.agents.settings().endpoint.as_str())
    }

    /// The address the agent endpoint is bound to, when it listens.
    pub fn agents_address(&self) -> Option<std::net::SocketAddr> {
        self.agent_listener.as_ref().and_then(|(listener, _)| listener.local_addr().ok())
    }

    /// Serves HTTP on `listener` (and the agent endpoint, when configured) until `shutdown`
    /// completes, running key maintenance, lease expiry and checkpoints alongside.
    pub async fn serve(mut self, listener: TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) {
        if let Some(engine) = &self.state.policies {
            let context = crate::audit::Context::default();
            crate::audit::events::policy_load(
                &self.state.audit,
                self.state.clock_now(),
                "start",
                context,
                engine,
                None,
            )
            .await;
        }
        let maintenance = tokio::spawn(maintain(
            Arc::clone(&self.state.keys),
            Arc::clone(&self.state.metrics),
            self.state.audit.clone(),
            Arc::clone(&self.state.clock),
        ));
        let deliveries: Vec<_> = self
            .state
            .sinks
            .iter()
            .map(|sink| tokio::spawn(Arc::clone(sink).run(self.state.store.clone(), self.state.audit.committed())))
            .collect();
        let checkpoints = tokio::spawn(checkpoint_on_schedule(
            self.state.store.clone(),
            Arc::clone(&self.state.log_key),
            Arc::clone(&self.state.clock),
            self.checkpoint_interval,
        ));
        let pruning = tokio::spawn(prune_replay_cache(
            self.state.store.clone(),
            Arc::clone(&self.state.clock),
            self.replay_leeway,
        ));
        let reloader = self.state.policies.clone().map(|engine| {
            tokio::spawn(reload_on_sighup(
                engine,
                Arc::clone(&self.state.metrics),
                self.state.audit.clone(),
                Arc::clone(&self.state.clock),
            ))
        });
        let (stopping, stop) = tokio::sync::watch::channel(false);
        let shutdown = async move {
            shutdown.await;
            let _ = stopping.send(true);
        };
        let agent_endpoint = self.agent_listener.take().map(|(agent_listener, names)| {
            let mut stop = stop.clone();
            tokio::spawn(crate::grpc::listener::serve(
                agent_listener,
                self.state.agents.clone(),
                names,
                Arc::clone(&self.state.clock),
                async move {
                    let _ = stop.wait_for(|stopped| *stopped).await;
                },
            ))
        });
        let expiry = tokio::spawn(expire_leases(self.state.runs.clone(), self.state.agents.settings().lease));
        let store = self.state.store.clone();
        let app = api::router(self.state);
        api::serve::serve(listener, app, self.header_read_timeout, shutdown).await;
        if let Some(endpoint) = agent_endpoint {
            match endpoint.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::error!(%error, "the agent endpoint failed"),
                Err(error) => tracing::error!(%error, "the agent endpoint panicked"),
            }
        }
        expiry.abort();
        maintenance.abort();
        pruning.abort();
        checkpoints.abort();
        for delivery in deliveries {
            delivery.abort();
        }
        if let Some(reloader) = reloader {
            reloader.abort();
        }
        store.close().await;
        tracing::info!("broker stopped");
    }
}

/// Binds `address`, naming it in the error.
pub async fn bind(address: std::net::SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(address).await.map_err(|source| StartError::Listen { address: address.to_string(), source })
}

async fn maintain(keys: Arc<KeyRing>, metrics: Arc<Metrics>, audit: AuditLog, clock: SharedClock) {
    let mut ticker = tokio::time::interval(MAINTENANCE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        if let Err(error) = keys.refresh().await {
            tracing::error!(%error, "could not refresh signing keys; serving the last good set");
            continue;
        }
        match keys.rotate_if_due().await {
            Ok(Some(rotation)) => {
                metrics.rotation(true);
                let context = crate::audit::Context::default();
                crate::audit::events::key_rotated(&audit, clock.now(), "schedule", context, &rotation, false).await;
            }
            Ok(None) => {}
            Err(error) => {
                metrics.rotation(false);
                tracing::error!(%error, "scheduled key rotation failed; will retry");
            }
        }
    }
}

/// Signs a checkpoint every `interval` when the log grew since the last one.
async fn checkpoint_on_schedule(store: Store, key: Arc<LogKey>, clock: SharedClock, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let latest = match store.latest_checkpoint().await {
            Ok(latest) => latest.map_or(0, |c| c.size),
            Err(error) => {
                tracing::warn!(%error, "could not read the last checkpoint; will retry");
                continue;
            }
        };
        match store.audit_size().await {
            Ok(size) if size > latest => match crate::audit::tree::checkpoint(&store, &key, clock.now()).await {
                Ok(row) => tracing::info!(size = row.size, "signed an audit checkpoint"),
                Err(error) => tracing::warn!(%error, "could not sign an audit checkpoint; will retry"),
            },
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "could not read the audit log size; will retry"),
        }
    }
}

/// Ends job leases whose heartbeats stopped (DESIGN.md §5): a plan is retried, an apply is
/// interrupted. Every replica runs this; a lease ends once (compare-and-set on its fencing token).
async fn expire_leases(runs: crate::runs::Runs, lease: Duration) {
    let period = (lease / 4).max(Duration::from_millis(500));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if let Err(error) = runs.expire_leases().await {
            tracing::warn!(%error, "could not expire job leases; will retry");
        }
    }
}

/// Forgets consumed subject-token IDs once their tokens are past expiry plus the verification
/// leeway: such a token is refused as expired, so its ID no longer needs remembering.
async fn prune_replay_cache(store: Store, clock: SharedClock, leeway: Duration) {
    let mut ticker = tokio::time::interval(MAINTENANCE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let cutoff = clock.now().saturating_sub(i64::try_from(leeway.as_secs()).unwrap_or(i64::MAX)).saturating_sub(1);
        match store.prune_token_ids(cutoff).await {
            Ok(0) => {}
            Ok(pruned) => tracing::debug!(pruned, "forgot expired subject-token IDs"),
            Err(error) => tracing::warn!(%error, "could not prune the replay cache; will retry"),
        }
    }
}

/// Reloads the policy set on every SIGHUP; a failed reload keeps the last good set.
async fn reload_on_sighup(engine: Arc<PolicyEngine>, metrics: Arc<Metrics>, audit: AuditLog, clock: SharedClock) {
    #[cfg(unix)]
    {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGHUP; reload policies with `keyward policy reload`");
                return;
            }
        };
        while hangup.recv().await.is_some() {
            let reloading = Arc::clone(&engine);
            let reloaded =
                tokio::task::spawn_blocking(move || reloading.reload().map(drop).map_err(|e| e.to_string())).await;
            let reloaded = reloaded.unwrap_or_else(|e| Err(e.to_string()));
            metrics.policy_reload(reloaded.is_ok());
            let failure = reloaded.err();
            let context = crate::audit::Context::default();
            crate::audit::events::policy_load(&audit, clock.now(), "signal", context, &engine, failure.as_deref())
                .await;
        }
    }
    #[cfg(not(unix))]
    let _ = (engine, metrics, audit, clock);
}

/// Resolves when the process receives SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the broker");
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
    tracing::info!("shutting down");
}
