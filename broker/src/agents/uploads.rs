//! How many bytes of saved plans each agent may have in flight on this broker at once.
//!
//! `SubmitPlan` holds a whole plan (its file and its JSON) in memory before judging it. Bounding
//! one stream is not enough: an agent opening many streams at once could make the broker hold
//! many plans and run it out of memory. So each agent has one budget, the size of the largest
//! plan the broker accepts; its streams draw on it as their parts arrive and give it back when
//! they end. A part that does not fit is refused at once rather than awaited, so a stream never
//! waits on another agent's, or on one the same agent keeps open.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Bytes in flight per agent ID.
type InFlight = Arc<Mutex<HashMap<String, usize>>>;

/// Every agent's plan uploads on this broker.
#[derive(Debug)]
pub struct PlanUploads {
    per_agent: usize,
    in_flight: InFlight,
}

/// A part did not fit in the agent's budget.
#[derive(Debug, thiserror::Error)]
#[error(
    "this agent already has {in_flight} bytes of saved plans in flight on this broker, and this part of {part} \
     bytes would exceed its {limit}-byte budget; an agent sends its plans one at a time"
)]
pub struct OverBudget {
    in_flight: usize,
    part: usize,
    limit: usize,
}

impl PlanUploads {
    /// At most `per_agent` bytes of plans in flight per agent.
    pub fn new(per_agent: usize) -> Self {
        Self { per_agent, in_flight: InFlight::default() }
    }

    /// An upload by `agent_id`; what it takes is given back when it is dropped.
    pub fn start(&self, agent_id: &str) -> Upload {
        Upload { agent_id: agent_id.to_owned(), held: 0, limit: self.per_agent, in_flight: Arc::clone(&self.in_flight) }
    }

    /// Bytes `agent_id`'s uploads hold now.
    pub fn held_by(&self, agent_id: &str) -> usize {
        lock(&self.in_flight).get(agent_id).copied().unwrap_or(0)
    }
}

/// One stream's share of its agent's budget.
#[derive(Debug)]
pub struct Upload {
    agent_id: String,
    held: usize,
    limit: usize,
    in_flight: InFlight,
}

impl Upload {
    /// Takes `bytes` more from the agent's budget, or refuses if they do not fit.
    pub fn take(&mut self, bytes: usize) -> Result<(), OverBudget> {
        let mut in_flight = lock(&self.in_flight);
        let agent = in_flight.entry(self.agent_id.clone()).or_insert(0);
        match agent.checked_add(bytes).filter(|total| *total <= self.limit) {
            Some(total) => {
                *agent = total;
                self.held += bytes;
                Ok(())
            }
            None => Err(OverBudget { in_flight: *agent, part: bytes, limit: self.limit }),
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        let mut in_flight = lock(&self.in_flight);
        if let Some(agent) = in_flight.get_mut(&self.agent_id) {
            *agent = agent.saturating_sub(self.held);
            if *agent == 0 {
                in_flight.remove(&self.agent_id);
            }
        }
    }
}

/// The map, even if a thread panicked holding it (its counts are still whole numbers).
fn lock(in_flight: &InFlight) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
    in_flight.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agents_streams_share_one_budget_and_give_it_back() {
        let uploads = PlanUploads::new(100);
        let mut first = uploads.start("a1");
        let mut second = uploads.start("a1");
        first.take(60).unwrap();
        second.take(40).unwrap();
        let refused = second.take(1).unwrap_err().to_string();
        assert!(refused.contains("already has 100 bytes") && refused.contains("100-byte budget"), "{refused}");
        assert_eq!(uploads.held_by("a1"), 100, "a refused part takes nothing");

        // Another agent has its own budget.
        let mut other = uploads.start("a2");
        other.take(100).unwrap();

        drop(first);
        assert_eq!(uploads.held_by("a1"), 40);
        second.take(60).unwrap();
        drop(second);
        drop(other);
        assert!(lock(&uploads.in_flight).is_empty(), "nothing is left behind for agents with nothing in flight");
    }

    #[test]
    fn one_part_larger_than_the_budget_is_refused() {
        let uploads = PlanUploads::new(10);
        let mut upload = uploads.start("a1");
        assert!(upload.take(11).is_err());
        assert!(upload.take(usize::MAX).is_err(), "no overflow");
        upload.take(10).unwrap();
    }
}
