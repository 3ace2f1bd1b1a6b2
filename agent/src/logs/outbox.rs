//! Chunks on their way to the broker: cut by the jobs, sent by whichever connection is up, and
//! forgotten only when the broker's receipt says it stored (or refused) them.
//!
//! The outbox is bounded in bytes. A job whose output outruns the broker waits in
//! [`Outbox::push`], which stops it reading its process's pipes, which blocks the process: a
//! flooding or disconnected job slows down; the agent never runs out of memory. Chunks sent on a
//! connection that dies before their receipt are sent again, in order, on the next one.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use tokio::sync::Notify;

use super::chain::Chunk;

/// The default bound on chunks held (sent or not) across all jobs.
pub const DEFAULT_CAPACITY: usize = 8 * 1024 * 1024;

#[derive(Debug, Default)]
struct Queues {
    unsent: VecDeque<Chunk>,
    unacknowledged: VecDeque<Chunk>,
    bytes: usize,
}

/// The agent's chunks in flight.
#[derive(Debug)]
pub struct Outbox {
    queues: Mutex<Queues>,
    capacity: usize,
    /// Chunks are waiting to be sent.
    pub ready: Notify,
    space: Notify,
}

impl Default for Outbox {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl Outbox {
    /// An outbox holding at most about `capacity` bytes of chunk data.
    pub fn new(capacity: usize) -> Self {
        Self { queues: Mutex::new(Queues::default()), capacity, ready: Notify::new(), space: Notify::new() }
    }

    fn queues(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `chunk`, first waiting while the outbox is full.
    pub async fn push(&self, chunk: Chunk) {
        loop {
            let space = self.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            {
                let mut queues = self.queues();
                // A chunk larger than the whole outbox still goes through once it is empty.
                if queues.bytes == 0 || queues.bytes + chunk.data.len() <= self.capacity {
                    queues.bytes += chunk.data.len();
                    queues.unsent.push_back(chunk);
                    break;
                }
            }
            space.await;
        }
        self.ready.notify_one();
    }

    /// Takes the chunks to send now, oldest first; they wait for their receipts.
    pub fn take_unsent(&self) -> Vec<Chunk> {
        let mut queues = self.queues();
        let unsent: Vec<Chunk> = queues.unsent.drain(..).collect();
        queues.unacknowledged.extend(unsent.iter().cloned());
        unsent
    }

    /// The broker answered for chunk `seq` of the lease `fencing_token` of `job_id`.
    pub fn acknowledge(&self, job_id: &str, fencing_token: u64, seq: u64) {
        let mut queues = self.queues();
        let position = queues
            .unacknowledged
            .iter()
            .position(|c| c.seq == seq && c.fencing_token == fencing_token && c.job_id == job_id);
        if let Some(chunk) = position.and_then(|p| queues.unacknowledged.remove(p)) {
            queues.bytes -= chunk.data.len();
            drop(queues);
            self.space.notify_waiters();
        }
    }

    /// A new connection: everything sent without a receipt goes again, before anything newer.
    pub fn resend_unacknowledged(&self) {
        let mut queues = self.queues();
        let resend: Vec<Chunk> = queues.unacknowledged.drain(..).collect();
        for chunk in resend.into_iter().rev() {
            queues.unsent.push_front(chunk);
        }
        if !queues.unsent.is_empty() {
            self.ready.notify_one();
        }
    }

    /// Whether chunks of `job_id` are still unsent or unacknowledged.
    pub fn holds(&self, job_id: &str) -> bool {
        let queues = self.queues();
        queues.unsent.iter().chain(&queues.unacknowledged).any(|c| c.job_id == job_id)
    }

    /// Bytes of chunk data held.
    pub fn bytes(&self) -> usize {
        self.queues().bytes
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future as _;
    use std::task::{Context, Waker};

    use super::*;
    use crate::logs::chain::Chain;

    #[tokio::test]
    async fn a_full_outbox_waits_for_receipts_and_unacknowledged_chunks_go_again() {
        let outbox = Outbox::new(10);
        let mut chain = Chain::new("r", "j", 1);
        outbox.push(chain.append("stdout", vec![b'a'; 8])).await;
        // The job's next push, polled by hand: no clock decides when it may go on.
        let mut blocked = std::pin::pin!(outbox.push(chain.append("stdout", vec![b'b'; 8])));
        let mut context = Context::from_waker(Waker::noop());
        assert!(blocked.as_mut().poll(&mut context).is_pending(), "the second chunk must wait for space");
        let sent = outbox.take_unsent();
        assert_eq!(sent.len(), 1);
        assert!(blocked.as_mut().poll(&mut context).is_pending(), "sending is not a receipt");
        // A reconnection before the receipt: the chunk goes again.
        outbox.resend_unacknowledged();
        let again = outbox.take_unsent();
        assert_eq!(again, sent);
        outbox.acknowledge("j", 1, 0);
        assert!(blocked.as_mut().poll(&mut context).is_ready(), "the receipt makes room at once");
        assert_eq!(outbox.take_unsent().len(), 1);
        assert!(outbox.holds("j"));
        outbox.acknowledge("j", 1, 1);
        assert!(!outbox.holds("j"));
        assert_eq!(outbox.bytes(), 0);
    }
}
