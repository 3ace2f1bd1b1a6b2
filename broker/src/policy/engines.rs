//! One evaluation engine per thread and policy set, reused from decision to decision.
//!
//! Cloning the compiled engine for each decision is cheap (0.3 µs), but dropping the clone's
//! evaluation state afterwards and building it again from empty allocations costs ~2.5 µs of a
//! ~35 µs decision (`docs/performance.md`). regorus resets that state at the start of every
//! `eval_rule` (data back to the set's own, rule results and caches cleared), so a reused engine
//! decides exactly as a fresh clone. To keep a failure from leaking into the next decision
//! anyway, an engine is kept only after an evaluation that succeeded: one that errored, ran out of
//! time or panicked is dropped, and the next decision on that thread starts from a fresh clone.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

thread_local! {
    /// The engine this thread last used, with the identity of the set it was cloned from.
    static CACHED: RefCell<Option<(u64, regorus::Engine)>> = const { RefCell::new(None) };
}

/// Identities of loaded policy sets (clones of a set share one: their engines are the same).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh identity for a newly loaded set.
pub(super) fn new_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// Runs `evaluate` on this thread's engine for the set `id` (a clone of `compiled` when the thread
/// has none for it), and keeps the engine for the next decision only if `evaluate` succeeded.
pub(super) fn with_engine<T, E>(
    id: u64,
    compiled: &regorus::Engine,
    evaluate: impl FnOnce(&mut regorus::Engine) -> Result<T, E>,
) -> Result<T, E> {
    // Taken out of the cell for the evaluation: a panic inside drops it rather than leaving it
    // half-used, and a nested decision (none today) would clone its own.
    let cached = CACHED.with(|cell| cell.borrow_mut().take());
    let mut engine = match cached {
        Some((cached_id, engine)) if cached_id == id => engine,
        _ => compiled.clone(),
    };
    let result = evaluate(&mut engine);
    if result.is_ok() {
        CACHED.with(|cell| *cell.borrow_mut() = Some((id, engine)));
    }
    result
}
