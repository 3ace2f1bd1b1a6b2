//! The agents connected to this broker, and the dispatcher that pushes them jobs.
//!
//! Each open `Work` stream is a session: its agent, pool, free slots, and the jobs it holds
//! (with their fencing tokens). Each pool has one dispatcher task. It wakes when a job is queued
//! here (a [`Signals`](crate::runs::Signals) permit), when one of its agents frees a slot, or every
//! poll interval (jobs queued by another replica); it then leases jobs, oldest first, to its idle
//! agents in turn, one compare-and-set per job, so a hundred idle agents do not stampede the
//! queue. An assignment that cannot be sent (the stream just closed) is handed back at once.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{Notify, mpsc};

use super::AgentSettings;
use crate::runs::tool::Tools;
use crate::runs::{Lease, LeaseEnd, Runs};

/// Most leases one dispatch round makes at once (they share one durable commit).
const LEASE_BATCH: usize = 16;

/// The idle agents one dispatch round offers jobs to, longest idle first: [`LEASE_BATCH`] of
/// them, and past those the longest idle of each tool set not yet among them — so the job only a
/// rarer agent can run (an OpenTofu stack's, say, behind sixteen idle Terraform-only agents) is
/// not left queued while that agent idles.
fn offered(idle: impl Iterator<Item = (String, Tools)>) -> Vec<(String, Tools)> {
    let mut offered: Vec<(String, Tools)> = Vec::new();
    for (agent, tools) in idle {
        if offered.len() < LEASE_BATCH || !offered.iter().any(|(_, seen)| *seen == tools) {
            offered.push((agent, tools));
        }
    }
    offered
}

/// Messages queued to one agent before the stream applies back-pressure.
const OUTBOX: usize = 32;

/// What the broker tells one connected agent, in the order it was queued. The gRPC edge
/// ([`crate::grpc`]) turns each into a protocol message, or a disconnect into the status the
/// agent acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    /// Run this job: the agent holds its lease.
    Assign(Lease),
    /// Stop this job.
    Cancel {
        /// The job.
        job_id: String,
        /// Why, for the job's log.
        reason: String,
    },
    /// Take no new job; finish the ones held.
    Drain {
        /// Why.
        reason: String,
    },
    /// What became of one of the agent's log chunks.
    Receipt(Receipt),
    /// The stream ends here.
    Disconnect(Disconnect),
}

/// The answer to one log chunk: stored (the agent may forget it), or refused and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The chunk's job.
    pub job_id: String,
    /// The lease it was written under.
    pub fencing_token: u64,
    /// Its place in the job's chain.
    pub seq: u64,
    /// `None`: stored; else why it was refused.
    pub refused: Option<String>,
}

/// Why the broker ends an agent's work stream. What the agent does next depends on it: a
/// revoked agent stops for good, every other one reconnects (so the edge must keep them apart).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Disconnect {
    /// A newer connection of the same agent took its place.
    #[error("replaced by a newer connection of this agent")]
    Replaced,
    /// The agent was revoked: its certificate is refused from now on.
    #[error("the agent was revoked")]
    Revoked,
    /// The broker is stopping; the agent reconnects, here or to another replica.
    #[error("the broker is shutting down; reconnect")]
    ShuttingDown,
    /// So many of the stream's log chunks failed verification that the agent is broken or hostile.
    #[error("{0} log chunks failed verification on this stream")]
    BadLogChunks(u32),
}

/// The connected agents. Shared by the gRPC service and the dispatchers.
#[derive(Debug)]
pub struct Hub {
    runs: Runs,
    settings: Arc<AgentSettings>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    sessions: HashMap<String, Session>,
    pools: HashMap<String, PoolQueue>,
    next_session: u64,
}

#[derive(Debug)]
struct Session {
    id: u64,
    pool: String,
    capacity: usize,
    held: HashMap<String, i64>,
    draining: bool,
    /// The tools whose stacks' jobs it takes.
    tools: Tools,
    outbox: mpsc::Sender<Outbound>,
    closed: Arc<Notify>,
}

impl Session {
    fn idle(&self) -> bool {
        !self.draining && self.held.len() < self.capacity
    }
}

impl State {
    /// Puts `agent_id` at the back of its pool's idle queue if it can take a job now, and takes
    /// it out otherwise.
    fn requeue(&mut self, agent_id: &str) {
        self.unidle(agent_id);
        let Some(session) = self.sessions.get(agent_id) else { return };
        if session.idle() {
            let pool = session.pool.clone();
            self.pools.entry(pool).or_default().idle.push_back(agent_id.to_owned());
        }
    }

    /// Takes `agent_id` out of every idle queue.
    fn unidle(&mut self, agent_id: &str) {
        for queue in self.pools.values_mut() {
            queue.idle.retain(|a| a != agent_id);
        }
    }

    /// Forgets `agent_id`'s session.
    fn remove(&mut self, agent_id: &str) -> Option<Session> {
        self.unidle(agent_id);
        self.sessions.remove(agent_id)
    }
}

#[derive(Debug, Default)]
struct PoolQueue {
    idle: VecDeque<String>,
    wake: Arc<Notify>,
}

/// A registered session; dropping it deregisters (only itself, never a newer session of the
/// same agent).
#[derive(Debug)]
pub struct SessionGuard {
    hub: Arc<Hub>,
    agent_id: String,
    session: u64,
    /// Notified when the hub cuts this session (revocation, replacement).
    pub closed: Arc<Notify>,
    /// The session's stream, for answers that must wait for room rather than be dropped (log
    /// receipts: dropping one would leave the agent's chunk in its outbox).
    pub outbox: mpsc::Sender<Outbound>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mut state = self.hub.lock();
        if state.sessions.get(&self.agent_id).is_some_and(|s| s.id == self.session) {
            state.remove(&self.agent_id);
            tracing::info!(agent_id = %self.agent_id, "agent disconnected");
        }
    }
}

/// What to do about a job an agent says it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// Renew its lease with this fencing token.
    Renew(i64),
    /// The session does not hold it: tell the agent to stop.
    Unknown,
}

impl Hub {
    /// An empty hub leasing through `runs`.
    pub fn new(runs: Runs, settings: Arc<AgentSettings>) -> Self {
        Self { runs, settings, state: Mutex::new(State::default()) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a session for `agent_id` in `pool`, holding `held` (job → fencing token) from
    /// an earlier connection. An older session of the same agent is cut.
    pub fn register(
        self: &Arc<Self>,
        agent_id: &str,
        pool: &str,
        capacity: usize,
        held: HashMap<String, i64>,
        draining: bool,
        tools: Tools,
    ) -> (SessionGuard, mpsc::Receiver<Outbound>) {
        let (outbox, inbox) = mpsc::channel(OUTBOX);
        let closed = Arc::new(Notify::new());
        let start_dispatcher;
        let id;
        {
            let mut state = self.lock();
            state.next_session += 1;
            id = state.next_session;
            let session = Session {
                id,
                pool: pool.to_owned(),
                capacity,
                held,
                draining,
                tools,
                outbox: outbox.clone(),
                closed: Arc::clone(&closed),
            };
            if let Some(old) = state.sessions.insert(agent_id.to_owned(), session) {
                let _ = old.outbox.try_send(Outbound::Disconnect(Disconnect::Replaced));
                old.closed.notify_one();
            }
            start_dispatcher = !state.pools.contains_key(pool);
            state.pools.entry(pool.to_owned()).or_default().wake.notify_one();
            state.requeue(agent_id);
        }
        if start_dispatcher {
            tokio::spawn(Arc::clone(self).dispatch(pool.to_owned()));
        }
        tracing::info!(agent_id, pool, capacity, "agent connected");
        (SessionGuard { hub: Arc::clone(self), agent_id: agent_id.to_owned(), session: id, closed, outbox }, inbox)
    }

    /// Whether `agent_id` has a stream open here.
    pub fn is_connected(&self, agent_id: &str) -> bool {
        self.lock().sessions.contains_key(agent_id)
    }

    /// How many agents have a stream open here.
    pub fn connected(&self) -> usize {
        self.lock().sessions.len()
    }

    /// What to do about `job_id`, which the agent says it runs.
    pub fn held(&self, agent_id: &str, job_id: &str) -> Held {
        let state = self.lock();
        match state.sessions.get(agent_id).and_then(|s| s.held.get(job_id)) {
            Some(token) => Held::Renew(*token),
            None => Held::Unknown,
        }
    }

    /// The agent finished (or lost) `job_id`: free its slot.
    pub fn release(&self, agent_id: &str, job_id: &str) {
        let mut state = self.lock();
        let Some(session) = state.sessions.get_mut(agent_id) else { return };
        if session.held.remove(job_id).is_none() {
            return;
        }
        let pool = session.pool.clone();
        state.requeue(agent_id);
        if let Some(queue) = state.pools.get(&pool) {
            queue.wake.notify_one();
        }
    }

    /// Sends `message` to `agent_id` if it is connected here.
    fn send(&self, agent_id: &str, message: Outbound) -> bool {
        let outbox = self.lock().sessions.get(agent_id).map(|s| s.outbox.clone());
        outbox.is_some_and(|outbox| outbox.try_send(message).is_ok())
    }

    /// Tells `agent_id` to stop `job_id`.
    pub fn cancel(&self, agent_id: &str, job_id: &str, reason: &str) {
        if self.send(agent_id, Outbound::Cancel { job_id: job_id.to_owned(), reason: reason.to_owned() }) {
            tracing::info!(agent_id, job_id, reason, "cancellation sent");
        }
        self.release(agent_id, job_id);
    }

    /// Marks `agent_id` draining and tells it so.
    pub fn drain(&self, agent_id: &str, reason: &str) {
        {
            let mut state = self.lock();
            let Some(session) = state.sessions.get_mut(agent_id) else { return };
            if session.draining {
                return;
            }
            session.draining = true;
            state.requeue(agent_id);
        }
        self.send(agent_id, Outbound::Drain { reason: reason.to_owned() });
    }

    /// Cuts `agent_id`'s stream at once (revocation).
    pub fn cut(&self, agent_id: &str, why: Disconnect) {
        let mut state = self.lock();
        if let Some(session) = state.remove(agent_id) {
            tracing::warn!(agent_id, reason = %why, "agent stream cut");
            let _ = session.outbox.try_send(Outbound::Disconnect(why));
            session.closed.notify_one();
        }
    }

    /// Ends every stream (the broker is stopping): agents reconnect, to this broker when it is
    /// back or to another replica. Leases are untouched; heartbeats on the new stream renew them.
    pub fn close_all(&self) {
        let mut state = self.lock();
        for (_, session) in state.sessions.drain() {
            let _ = session.outbox.try_send(Outbound::Disconnect(Disconnect::ShuttingDown));
            session.closed.notify_one();
        }
        for queue in state.pools.values_mut() {
            queue.idle.clear();
        }
    }

    /// Forwards cancellations raised by the run lifecycle to the agents that hold the jobs.
    pub async fn forward_cancellations(self: Arc<Self>) {
        let mut cancellations = self.runs.signals().cancellations();
        loop {
            match cancellations.recv().await {
                Ok(canceled) => self.cancel(&canceled.agent_id, &canceled.job_id, &canceled.reason),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "cancellations missed; agents learn of them at their next heartbeat");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// The dispatcher of `pool`: runs for the life of the process.
    async fn dispatch(self: Arc<Self>, pool: String) {
        let queued = self.runs.signals().pool(&pool);
        let freed = Arc::clone(&self.lock().pools.entry(pool.clone()).or_default().wake);
        let mut ticker = tokio::time::interval(self.settings.poll_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.dispatch_round(&pool).await;
            tokio::select! {
                () = queued.notified() => {}
                () = freed.notified() => {}
                _ = ticker.tick() => {}
            }
        }
    }

    /// Leases queued jobs to idle agents until one of the two runs out, up to [`LEASE_BATCH`]
    /// leases at a time.
    async fn dispatch_round(&self, pool: &str) {
        loop {
            let agents: Vec<(String, Tools)> = {
                let state = self.lock();
                let idle = state.pools.get(pool).map(|queue| queue.idle.iter()).into_iter().flatten();
                let tools =
                    |agent: &String| state.sessions.get(agent).map_or(Tools::TERRAFORM, |session| session.tools);
                offered(idle.map(|agent| (agent.clone(), tools(agent))))
            };
            if agents.is_empty() {
                return;
            }
            let leases = match self.runs.lease_capable(pool, &agents, self.settings.lease).await {
                // Nothing leasable now: wait for a signal, a freed slot or the next tick.
                Ok(Some(leases)) if leases.is_empty() => return,
                Ok(Some(leases)) => leases,
                Ok(None) => return,
                Err(error) => {
                    tracing::warn!(%error, pool, "could not lease jobs; will retry");
                    return;
                }
            };
            for (agent, lease) in leases {
                if !self.deliver(&agent, &lease) {
                    self.hand_back(&lease, &agent).await;
                }
            }
        }
    }

    /// Records the lease on the session and sends the assignment; false if it could not be sent.
    fn deliver(&self, agent_id: &str, lease: &Lease) -> bool {
        let mut state = self.lock();
        let Some(session) = state.sessions.get_mut(agent_id) else { return false };
        if session.outbox.try_send(Outbound::Assign(lease.clone())).is_err() {
            return false;
        }
        session.held.insert(lease.job_id.clone(), lease.fencing_token);
        state.requeue(agent_id);
        tracing::info!(agent_id, run_id = %lease.run_id, job_id = %lease.job_id, phase = %lease.phase, "job assigned");
        true
    }

    async fn hand_back(&self, lease: &Lease, agent_id: &str) {
        self.lock().unidle(agent_id);
        let job = match self.runs.job_row(&lease.job_id).await {
            Ok(job) => job,
            Err(error) => {
                tracing::warn!(%error, job_id = %lease.job_id, "undelivered job left to lease expiry");
                return;
            }
        };
        if let Err(error) = self.runs.end_lease(&job, LeaseEnd::Undelivered).await {
            tracing::warn!(%error, job_id = %lease.job_id, "undelivered job left to lease expiry");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runs::tool::Tool;

    fn idle(terraform_only: usize, then: &[(&str, Tools)]) -> Vec<(String, Tools)> {
        let mut idle: Vec<(String, Tools)> =
            (0..terraform_only).map(|i| (format!("tf-{i}"), Tools::TERRAFORM)).collect();
        idle.extend(then.iter().map(|(name, tools)| ((*name).to_owned(), *tools)));
        idle
    }

    #[test]
    fn a_round_offers_a_batch_and_the_first_agent_of_each_other_tool_set_behind_it() {
        let tofu: Tools = [Tool::Tofu].into_iter().collect();
        let picked = offered(idle(40, &[("tofu-1", tofu), ("tofu-2", tofu), ("both", Tools::ANY)]).into_iter());
        let names: Vec<&str> = picked.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names.len(), LEASE_BATCH + 2, "{names:?}");
        assert_eq!(names[..LEASE_BATCH], (0..LEASE_BATCH).map(|i| format!("tf-{i}")).collect::<Vec<_>>());
        assert_eq!(names[LEASE_BATCH..], ["tofu-1", "both"]);
    }

    #[test]
    fn a_small_pool_is_offered_whole_in_order() {
        let tofu: Tools = [Tool::Tofu].into_iter().collect();
        let all = idle(3, &[("tofu-1", tofu), ("tofu-2", tofu)]);
        assert_eq!(offered(all.clone().into_iter()), all);
    }
}
