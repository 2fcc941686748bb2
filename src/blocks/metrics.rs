//! Counters and histograms of the engine, updated lock-free on the message path, and the
//! plain snapshot structs the broker renders into Prometheus text.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds (seconds) of the latency and wait-time histogram buckets; `+Inf` is implied.
pub const BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];

#[derive(Debug, Default)]
pub struct Histogram {
    /// Non-cumulative counts; the last slot is `+Inf`.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_ns
            .fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut acc = 0;
        let mut cumulative = Vec::with_capacity(BUCKETS.len());
        for (i, b) in BUCKETS.iter().enumerate() {
            acc += self.counts[i].load(Relaxed);
            cumulative.push((*b, acc));
        }
        let count = acc + self.counts[BUCKETS.len()].load(Relaxed);
        HistogramSnapshot {
            buckets: cumulative,
            count,
            sum: Duration::from_nanos(self.sum_ns.load(Relaxed)),
        }
    }
}

/// Prometheus-shaped: `buckets` are cumulative `(le_seconds, count)`; `count` includes `+Inf`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramSnapshot {
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum: Duration,
}

impl HistogramSnapshot {
    /// Upper bound of the bucket holding quantile `q` (0..=1); `None` when empty or in `+Inf`.
    pub fn quantile_upper_bound(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q * self.count as f64).ceil() as u64;
        self.buckets
            .iter()
            .find(|(_, c)| *c >= rank)
            .map(|(b, _)| *b)
    }
}

/// Per block (by name; survives reloads of the same name).
#[derive(Debug, Default)]
pub struct BlockMetrics {
    pub invocations: AtomicU64,
    pub pass: AtomicU64,
    pub modify: AtomicU64,
    pub drop: AtomicU64,
    pub consume: AtomicU64,
    /// Errors other than timeouts (runtime errors, memory limit, bad return values).
    pub errors: AtomicU64,
    pub timeouts: AtomicU64,
    pub publishes: AtomicU64,
    /// `mqtt.publish` calls refused by the loop guard (`max_hops`).
    pub hop_refused: AtomicU64,
    /// Log lines (script `log.*` and error reports) dropped by the per-block rate limit.
    pub logs_suppressed: AtomicU64,
    pub latency: Histogram,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct BlockCounters {
    pub invocations: u64,
    pub pass: u64,
    pub modify: u64,
    pub drop: u64,
    pub consume: u64,
    pub errors: u64,
    pub timeouts: u64,
    pub publishes: u64,
    pub hop_refused: u64,
    pub logs_suppressed: u64,
    pub latency: HistogramSnapshot,
}

impl BlockMetrics {
    pub fn snapshot(&self) -> BlockCounters {
        BlockCounters {
            invocations: self.invocations.load(Relaxed),
            pass: self.pass.load(Relaxed),
            modify: self.modify.load(Relaxed),
            drop: self.drop.load(Relaxed),
            consume: self.consume.load(Relaxed),
            errors: self.errors.load(Relaxed),
            timeouts: self.timeouts.load(Relaxed),
            publishes: self.publishes.load(Relaxed),
            hop_refused: self.hop_refused.load(Relaxed),
            logs_suppressed: self.logs_suppressed.load(Relaxed),
            latency: self.latency.snapshot(),
        }
    }
}

/// Per worker thread.
#[derive(Debug, Default)]
pub struct WorkerMetrics {
    /// Jobs taken off the queues.
    pub processed: AtomicU64,
    /// Jobs taken off the queues but not finished (waiting behind their topic, or running).
    pub in_flight: AtomicU64,
    /// before_publish/connect/subscribe sends that found the queue full and had to wait.
    pub backpressure_waits: AtomicU64,
    /// after_publish messages not queued because the after queue was full.
    pub after_overflow: AtomicU64,
    /// Time from enqueue until the job started running (queue + per-client wait).
    pub wait: Histogram,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkerSnapshot {
    pub worker: usize,
    pub queue_depth: usize,
    pub queue_capacity: usize,
    pub after_queue_depth: usize,
    pub after_queue_capacity: usize,
    pub in_flight: u64,
    pub processed: u64,
    pub backpressure_waits: u64,
    pub after_overflow: u64,
    pub wait: HistogramSnapshot,
}

/// Engine-wide counters.
#[derive(Debug, Default)]
pub struct EngineCounters {
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
}

/// Everything at once, for the Prometheus exporter.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsSnapshot {
    pub blocks: Vec<(String, BlockCounters)>,
    pub workers: Vec<WorkerSnapshot>,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(10));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(5));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets[0], (0.000_05, 1));
        assert_eq!(s.buckets.last().copied(), Some((1.0, 2)));
        assert_eq!(s.quantile_upper_bound(0.5), Some(0.005));
        assert_eq!(s.quantile_upper_bound(1.0), None);
    }
}
