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
use crate::audit::AuditLog;
use crate::audit::sinks::{Sink, SinkConfig};
use crate::audit::{LogKey, LogKeyError};
use crate::clock::SharedClock;
use crate::config::Settings;
use crate::exchange::Exchanger;
use crate::exchange::trusted_issuers::TrustedIssuers;
use crate::grpc::listener::server_names;
use crate::http::{self, AppState};
use crate::kek::Kek;
use crate::keys::{KeyRing, KeyRingError};
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::policy::{PolicyEngine, PolicyError};
use crate::runs::Runs;
use crate::store::{Store, StoreError};
use crate::tokens::Minter;

/// How often each replica re-reads keys (to see other replicas' rotations) and checks the schedule.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(30);

/// Why the broker did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
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
    AuditKey(#[from] LogKeyError),
    /// The agent CA cannot be loaded or created.
    #[error(transparent)]
    AgentCa(#[from] crate::agents::ca::CaError),
    /// The agent endpoint cannot be set up.
    #[error(transparent)]
    AgentEndpoint(#[from] crate::grpc::listener::ListenerError),
    /// The HTTP client for issuers' discovery documents could not be built.
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(String),
    /// The GitHub App cannot be used (its private key, its HTTP client).
    #[error("`[vcs.github]`: {0}")]
    Github(crate::vcs::github::api::ApiError),
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
    scheduler: Option<crate::runs::SchedulerSettings>,
}

impl Broker {
    /// Opens the store, loads (or creates) the keys and assembles every part, as `settings` say.
    pub async fn start(settings: &Settings, clock: SharedClock) -> Result<Self, StartError> {
        let core = Core::open(settings, clock).await?;
        let sinks = open_sinks(&settings.audit.sinks)?;
        let minter = core.minter(settings);
        let exchanger = core.exchanger(settings, &minter)?;
        let runs = core.runs(settings);
        let (agents, agent_listener) = core.agents(settings, &runs, exchanger.clone()).await?;
        let sso = core.sso(settings)?;
        let Core { policies, store, log_key, keys, audit, metrics, clock, .. } = core;
        let notifier = Notifier::new(
            &settings.notifications,
            store.clone(),
            audit.clone(),
            Arc::clone(&clock),
            Arc::clone(&metrics),
        )
        .map_err(StartError::HttpClient)?;
        let github = match settings.github.clone() {
            Some(github) => {
                let services = crate::vcs::github::Services {
                    audit: audit.clone(),
                    store: store.clone(),
                    runs: runs.clone(),
                    policies: policies.clone(),
                    external_url: settings.server.external_url.clone(),
                    clock: Arc::clone(&clock),
                };
                Some(crate::vcs::github::Github::new(github, services).map_err(StartError::Github)?)
            }
            None => None,
        };
        let state = AppState {
            sso,
            notifier,
            runs,
            agents,
            minter,
            exchanger,
            clock: Arc::clone(&clock),
            access: Access::new(store.clone(), Arc::clone(&clock)),
            spaces: crate::spaces::Spaces::new(store.clone(), audit.clone(), Arc::clone(&clock)),
            console_sessions: crate::console_sessions::ConsoleSessions::new(
                store.clone(),
                audit.clone(),
                Arc::clone(&clock),
                !settings.server.listen.ip().is_loopback(),
            ),
            github,
            keys,
            store,
            audit,
            log_key,
            sinks: Arc::new(sinks),
            metrics,
            readiness_timeout: Duration::from_secs(2),
            request_timeout: settings.server.request_timeout,
            policies,
        };
        tracing::info!(
            issuer = %settings.server.external_url, database = %state.store.location(),
            signing_key = %state.keys.signer().kid(), "broker started"
        );
        Ok(Self {
            state,
            agent_listener,
            header_read_timeout: settings.server.header_read_timeout,
            replay_leeway: settings.tokens.clock_skew,
            checkpoint_interval: settings.audit.checkpoint_interval,
            scheduler: settings.scheduler,
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
    pub fn runs(&self) -> &Runs {
        &self.state.runs
    }

    /// Console sign-in links (used by `keyward dev`).
    pub fn console_sessions(&self) -> &crate::console_sessions::ConsoleSessions {
        &self.state.console_sessions
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
            let now = self.state.clock_now();
            crate::audit::events::policy_load(&self.state.audit, now, "start", context, engine, None).await;
        }
        let mut background = Background::spawn(&self.state, self.checkpoint_interval, self.replay_leeway);
        let scheduler = self.scheduler.map(|settings| background.schedule_drift_checks(&self.state, settings));
        let (stopping, stop) = tokio::sync::watch::channel(false);
        let shutdown = async move {
            shutdown.await;
            let _ = stopping.send(true);
        };
        let agent_endpoint = self
            .agent_listener
            .take()
            .map(|(listener, names)| spawn_agent_endpoint(listener, names, &self.state, stop));
        let store = self.state.store.clone();
        let app = http::router(self.state);
        http::serve::serve(listener, app, self.header_read_timeout, shutdown).await;
        if let Some(endpoint) = agent_endpoint {
            match endpoint.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::error!(%error, "the agent endpoint failed"),
                Err(error) => tracing::error!(%error, "the agent endpoint panicked"),
            }
        }
        background.stop();
        if let Some(scheduler) = scheduler {
            scheduler.release().await;
        }
        store.close().await;
        tracing::info!("broker stopped");
    }
}

/// What the broker's parts share, opened in order: the policies (before anything is written, so
/// a broken set stops the start cleanly), the store, the audit log's checkpoint key, the agent
/// CA and the signing keys.
struct Core {
    policies: Option<Arc<PolicyEngine>>,
    store: Store,
    log_key: Arc<LogKey>,
    agent_ca: Arc<AgentCa>,
    kek: Arc<Kek>,
    keys: Arc<KeyRing>,
    audit: AuditLog,
    metrics: Arc<Metrics>,
    clock: SharedClock,
}

impl Core {
    async fn open(settings: &Settings, clock: SharedClock) -> Result<Self, StartError> {
        let policies = match &settings.policy {
            Some(policy) => Some(Arc::new(PolicyEngine::load(&policy.dir, policy.evaluation_timeout)?)),
            None => {
                tracing::warn!("no [policy] table: every policy decision will deny");
                None
            }
        };
        let kek = &settings.kek;
        let store = Store::open(&settings.database).await?;
        let log_key = Arc::new(LogKey::load_or_create(&store, kek, &settings.audit.origin, clock.now()).await?);
        let agent_ca =
            Arc::new(AgentCa::load_or_create(&store, kek, &settings.agents.trust_domain, clock.now()).await?);
        let keys = Arc::new(KeyRing::load(store.clone(), kek.clone(), Arc::clone(&clock), settings.keys).await?);
        let audit = AuditLog::start(store.clone());
        let metrics = Arc::new(Metrics::default());
        Ok(Self { policies, store, log_key, agent_ca, kek: Arc::new(kek.clone()), keys, audit, metrics, clock })
    }

    /// Mints by `[tokens]` with the key ring's current signing key.
    fn minter(&self, settings: &Settings) -> Arc<Minter> {
        let url = settings.server.external_url.clone();
        let keys: Arc<KeyRing> = Arc::clone(&self.keys);
        Arc::new(Minter::new(url, settings.tokens.clone(), keys, Arc::clone(&self.clock)))
    }

    /// The token exchange, when any target is configured.
    fn exchanger(&self, settings: &Settings, minter: &Arc<Minter>) -> Result<Option<Arc<Exchanger>>, StartError> {
        if settings.targets.is_empty() {
            return Ok(None);
        }
        let issuers = TrustedIssuers::new(&settings.issuers).map_err(|e| StartError::HttpClient(e.to_string()))?;
        Ok(Some(Arc::new(Exchanger::new(
            &settings.targets,
            Arc::clone(&self.keys),
            Arc::clone(minter),
            self.policies.clone(),
            issuers,
            self.audit.clone(),
            self.store.clone(),
            Arc::clone(&self.clock),
            settings.server.external_url.clone(),
            settings.tokens.clock_skew,
            Arc::clone(&self.metrics),
        ))))
    }

    /// Sign-in for people, when `[sso]` is configured; PKCE verifiers are derived with a key
    /// derived from the KEK, so every replica can finish a sign-in another one began.
    fn sso(&self, settings: &Settings) -> Result<Option<crate::sso::Sso>, StartError> {
        let Some(sso) = &settings.sso else { return Ok(None) };
        let secret = self.kek.derive("keyward sso pkce");
        let (store, audit, clock) = (self.store.clone(), self.audit.clone(), Arc::clone(&self.clock));
        crate::sso::Sso::new(sso.clone(), secret.as_ref(), store, audit, clock)
            .map(Some)
            .map_err(|e| StartError::HttpClient(e.to_string()))
    }

    /// Stacks, runs and their jobs, with the private repositories' credentials.
    fn runs(&self, settings: &Settings) -> Runs {
        let (store, audit, policies) = (self.store.clone(), self.audit.clone(), self.policies.clone());
        Runs::new(store, audit, policies, &settings.targets, Arc::clone(&self.clock), Arc::clone(&self.kek))
            .with_repositories(settings.repositories.clone())
            .with_metrics(Arc::clone(&self.metrics))
    }

    /// The agents, and their endpoint's listener with the names its certificate carries when
    /// `[agents] listen` is set.
    async fn agents(
        &self,
        settings: &Settings,
        runs: &Runs,
        exchanger: Option<Arc<Exchanger>>,
    ) -> Result<(Agents, Option<(TcpListener, Vec<String>)>), StartError> {
        let listener = match settings.agents.listen {
            Some(address) => Some(bind(address).await?),
            None => None,
        };
        let endpoint = match &listener {
            Some(listener) => settings.agents.endpoint(listener.local_addr().map(|a| a.port()).unwrap_or_default()),
            None => String::new(),
        };
        let agent_settings = AgentSettings {
            certificate_lifetime: settings.agents.certificate_lifetime,
            lease: settings.agents.lease,
            poll_interval: settings.agents.poll_interval,
            join_token_max_ttl: settings.agents.join_token_max_ttl,
            endpoint: endpoint.clone(),
            api_url: settings.server.external_url.trim_end_matches('/').to_owned(),
        };
        let (store, audit, ca, clock) =
            (self.store.clone(), self.audit.clone(), Arc::clone(&self.agent_ca), Arc::clone(&self.clock));
        let agents = Agents::new(store, audit, runs.clone(), ca, clock, agent_settings, exchanger);
        let listener = listener.map(|listener| (listener, server_names(&endpoint, &settings.agents.server_names)));
        Ok((agents, listener))
    }
}

/// The audit sinks, each with its delivery client.
fn open_sinks(sinks: &[SinkConfig]) -> Result<Vec<Arc<Sink>>, StartError> {
    sinks.iter().map(|sink| Sink::new(sink).map(Arc::new).map_err(StartError::HttpClient)).collect()
}

/// The tasks that run beside the HTTP server: key maintenance, the audit integrator, sink
/// deliveries, checkpoints, replay-cache pruning, policy reloads on SIGHUP, lease expiry and the
/// drift scheduler.
/// They are aborted when it stops.
struct Background(Vec<tokio::task::JoinHandle<()>>);

impl Background {
    fn spawn(state: &AppState, checkpoint_interval: Duration, replay_leeway: Duration) -> Self {
        let (store, clock) = (&state.store, &state.clock);
        let mut tasks = vec![tokio::spawn(maintain(
            Arc::clone(&state.keys),
            Arc::clone(&state.metrics),
            state.audit.clone(),
            Arc::clone(clock),
        ))];
        tasks.push(tokio::spawn(crate::audit::integrator::run(store.clone(), state.audit.clone())));
        for sink in state.sinks.iter() {
            tasks.push(tokio::spawn(Arc::clone(sink).run(store.clone(), state.audit.committed())));
        }
        let log_key = Arc::clone(&state.log_key);
        tasks.push(tokio::spawn(checkpoint_on_schedule(
            store.clone(),
            log_key,
            Arc::clone(clock),
            checkpoint_interval,
        )));
        tasks.push(tokio::spawn(prune_replay_cache(store.clone(), Arc::clone(clock), replay_leeway)));
        if let Some(engine) = state.policies.clone() {
            let (metrics, audit) = (Arc::clone(&state.metrics), state.audit.clone());
            tasks.push(tokio::spawn(reload_on_sighup(engine, metrics, audit, Arc::clone(clock))));
        }
        tasks.push(tokio::spawn(expire_leases(state.runs.clone(), state.agents.settings().lease)));
        if let Some(notifier) = &state.notifier {
            tasks.push(tokio::spawn(Arc::clone(notifier).scan()));
            tasks.push(tokio::spawn(Arc::clone(notifier).send()));
        }
        if let Some(github) = &state.github {
            tasks.extend(github.spawn());
        }
        Self(tasks)
    }

    /// Runs the drift scheduler beside the rest; returns it, so the caller can release its lease
    /// once the tasks stopped.
    fn schedule_drift_checks(
        &mut self,
        state: &AppState,
        settings: crate::runs::SchedulerSettings,
    ) -> crate::runs::DriftScheduler {
        let scheduler =
            crate::runs::DriftScheduler::new(state.runs.clone(), settings).with_metrics(Arc::clone(&state.metrics));
        self.0.push(tokio::spawn(scheduler.clone().run()));
        scheduler
    }

    fn stop(self) {
        for task in self.0 {
            task.abort();
        }
    }
}

/// Serves the agents' gRPC endpoint until `stop` turns true.
fn spawn_agent_endpoint(
    listener: TcpListener,
    names: Vec<String>,
    state: &AppState,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Result<(), crate::grpc::listener::ListenerError>> {
    tokio::spawn(crate::grpc::listener::serve(
        listener,
        state.agents.clone(),
        names,
        Arc::clone(&state.clock),
        async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        },
    ))
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
                crate::keys::key_rotated(&audit, clock.now(), "schedule", context, &rotation, false).await;
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
async fn expire_leases(runs: Runs, lease: Duration) {
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
