//! A job's log, from the process's pipes to the broker: masked ([`mask`], with the values' escaped forms from [`escaped`]), cut into chunks and
//! hash-chained ([`job`], [`chain`]), held until the broker's receipt ([`outbox`]), and signed
//! with the agent's key as each chunk is sent (DESIGN.md §5, §8.5).

pub mod chain;
pub mod escaped;
pub mod job;
pub mod mask;
pub mod outbox;

pub use chain::{Chunk, Signer};
pub use job::{JobLog, LogSummary, Stream};
pub use mask::{MaskRules, Patterns};
pub use outbox::Outbox;
