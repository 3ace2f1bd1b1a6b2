//! Prometheus metrics as both the broker and the agent serve them: fixed-bucket histograms of
//! atomics and the text exposition format, written line by line.
//!
//! It imports nothing of either side, so modules low in the broker's layering (the audit writer,
//! the policy engine) can time their work without importing the module that renders it, and the
//! agent's `/metrics` page is written by the same code as the broker's. Buckets are fixed at
//! construction: observing never allocates or locks, and the number of series a histogram adds
//! is known in advance.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds for latencies, in seconds: 1 ms to 10 s.
pub const LATENCY_SECONDS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Upper bounds for waits measured in whole seconds (a job queued until it is leased): 1 s to 1 h.
pub const WAIT_SECONDS: &[f64] = &[1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0];

/// Upper bounds for long phases (a Terraform plan or apply): 1 s to 2 h.
pub const PHASE_SECONDS: &[f64] = &[1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0];

/// Upper bounds for batch sizes (entries per audit group commit).
pub const BATCH_SIZE: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// Counts of observations per bucket, their number and their sum.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One counter per bound (not cumulative: [`Histogram::snapshot`] accumulates).
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    /// The sum's `f64` bits.
    sum: AtomicU64,
}

/// A consistent-enough copy of a histogram, cumulative as the exposition format wants it.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// `(upper bound, observations at or below it)`, ascending; `+Inf` is `count`.
    pub buckets: Vec<(f64, u64)>,
    /// Observations.
    pub count: u64,
    /// Their sum.
    pub sum: f64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending upper bounds).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// Records one observation; a negative or NaN value counts as 0.
    pub fn observe(&self, value: f64) {
        let value = if value.is_nan() || value < 0.0 { 0.0 } else { value };
        if let Some(index) = self.bounds.iter().position(|bound| value <= *bound)
            && let Some(bucket) = self.buckets.get(index)
        {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| Some((f64::from_bits(bits) + value).to_bits()));
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a duration, in seconds.
    pub fn observe_duration(&self, elapsed: Duration) {
        self.observe(elapsed.as_secs_f64());
    }

    /// The counts so far, cumulative.
    pub fn snapshot(&self) -> Snapshot {
        let mut running = 0u64;
        let buckets = self
            .bounds
            .iter()
            .zip(&self.buckets)
            .map(|(bound, bucket)| {
                running = running.saturating_add(bucket.load(Ordering::Relaxed));
                (*bound, running)
            })
            .collect();
        // Read after the buckets, so `count` is never below the last bucket's cumulative count.
        let count = self.count.load(Ordering::Relaxed).max(running);
        Snapshot { buckets, count, sum: f64::from_bits(self.sum.load(Ordering::Relaxed)) }
    }
}

/// The Prometheus text exposition format, written line by line.
#[derive(Debug, Default)]
pub struct Exposition(String);

/// A label value the writer chose (a configured name), escaped as the format requires.
pub fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Exposition {
    /// An empty page with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        Self(String::with_capacity(capacity))
    }

    /// The page written so far.
    pub fn into_text(self) -> String {
        self.0
    }

    /// A metric family's `# HELP` and `# TYPE` lines.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    /// One sample; `labels` is empty or `key="value",…` (values the writer chose, never input).
    pub fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        let _ = if labels.is_empty() {
            writeln!(self.0, "{name} {value}")
        } else {
            writeln!(self.0, "{name}{{{labels}}} {value}")
        };
    }

    /// A histogram's `_bucket` (cumulative, with `+Inf`), `_sum` and `_count` samples.
    pub fn histogram(&mut self, name: &str, labels: &str, snapshot: &Snapshot) {
        let join = if labels.is_empty() { String::new() } else { format!("{labels},") };
        for (bound, count) in &snapshot.buckets {
            self.sample(&format!("{name}_bucket"), &format!("{join}le=\"{bound}\""), count);
        }
        self.sample(&format!("{name}_bucket"), &format!("{join}le=\"+Inf\""), snapshot.count);
        self.sample(&format!("{name}_sum"), labels, snapshot.sum);
        self.sample(&format!("{name}_count"), labels, snapshot.count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_inclusive() {
        let histogram = Histogram::new(&[1.0, 2.0, 4.0]);
        for value in [0.5, 1.0, 3.0, 9.0, -1.0] {
            histogram.observe(value);
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.buckets, vec![(1.0, 3), (2.0, 3), (4.0, 4)]);
        assert_eq!(snapshot.count, 5);
        assert!((snapshot.sum - 13.5).abs() < f64::EPSILON);
    }

    #[test]
    fn a_histogram_renders_cumulative_buckets_sum_and_count() {
        let histogram = Histogram::new(&[1.0, 5.0]);
        histogram.observe(2.5);
        let mut page = Exposition::default();
        page.family("x_seconds", "histogram", "X.");
        page.histogram("x_seconds", &format!("task=\"{}\"", escape("a\"b")), &histogram.snapshot());
        assert_eq!(
            page.into_text(),
            "# HELP x_seconds X.\n# TYPE x_seconds histogram\n\
             x_seconds_bucket{task=\"a\\\"b\",le=\"1\"} 0\nx_seconds_bucket{task=\"a\\\"b\",le=\"5\"} 1\n\
             x_seconds_bucket{task=\"a\\\"b\",le=\"+Inf\"} 1\nx_seconds_sum{task=\"a\\\"b\"} 2.5\n\
             x_seconds_count{task=\"a\\\"b\"} 1\n"
        );
    }
}
