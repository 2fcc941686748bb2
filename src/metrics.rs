//! Broker-wide counters and their Prometheus text rendering. Metric names live here only.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// Why a publish or connection was refused or lost. Label values of `moonwire_drops_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    Pipeline,
    PacketTooLarge,
    Malformed,
    TopicInvalid,
    ConnectionLimit,
    ConnectTimeout,
    KeepAlive,
    HandshakeFailed,
    InternalQueueFull,
    Protocol,
    AuthFailed,
    AclDenied,
    RateLimited,
    /// A delivery whose Message Expiry Interval passed before it was sent.
    Expired,
}

impl DropReason {
    const ALL: [DropReason; 14] = [
        DropReason::Pipeline,
        DropReason::PacketTooLarge,
        DropReason::Malformed,
        DropReason::TopicInvalid,
        DropReason::ConnectionLimit,
        DropReason::ConnectTimeout,
        DropReason::KeepAlive,
        DropReason::HandshakeFailed,
        DropReason::InternalQueueFull,
        DropReason::Protocol,
        DropReason::AuthFailed,
        DropReason::AclDenied,
        DropReason::RateLimited,
        DropReason::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Pipeline => "pipeline",
            DropReason::PacketTooLarge => "packet_too_large",
            DropReason::Malformed => "malformed",
            DropReason::TopicInvalid => "topic_invalid",
            DropReason::ConnectionLimit => "connection_limit",
            DropReason::ConnectTimeout => "connect_timeout",
            DropReason::KeepAlive => "keepalive",
            DropReason::HandshakeFailed => "handshake_failed",
            DropReason::InternalQueueFull => "internal_queue_full",
            DropReason::Protocol => "protocol",
            DropReason::AuthFailed => "auth_failed",
            DropReason::AclDenied => "acl_denied",
            DropReason::RateLimited => "rate_limited",
            DropReason::Expired => "expired",
        }
    }
}

#[derive(Default)]
pub struct Metrics {
    pub connections: AtomicI64,
    pub connections_total: AtomicU64,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    drops: [AtomicU64; DropReason::ALL.len()],
}

impl Metrics {
    pub fn dropped(&self, reason: DropReason, n: u64) {
        self.drops[reason as usize].fetch_add(n, Relaxed);
    }

    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].load(Relaxed)
    }

    /// Prometheus text exposition. The router's figures are sampled by the caller.
    pub fn render(&self, router_queue: usize, logs: crate::router::LogStats) -> String {
        let mut out = String::with_capacity(2048);
        let mut gauge = |name: &str, help: &str, kind: &str, v: i64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        gauge(
            "moonwire_connections",
            "Open client connections.",
            "gauge",
            self.connections.load(Relaxed),
        );
        gauge(
            "moonwire_connections_total",
            "Client connections accepted since start.",
            "counter",
            self.connections_total.load(Relaxed) as i64,
        );
        gauge(
            "moonwire_messages_in_total",
            "PUBLISH packets received from clients.",
            "counter",
            self.messages_in.load(Relaxed) as i64,
        );
        gauge(
            "moonwire_messages_out_total",
            "PUBLISH packets sent to clients.",
            "counter",
            self.messages_out.load(Relaxed) as i64,
        );
        gauge(
            "moonwire_bytes_in_total",
            "Bytes read from client sockets.",
            "counter",
            self.bytes_in.load(Relaxed) as i64,
        );
        gauge(
            "moonwire_bytes_out_total",
            "Bytes written to client sockets.",
            "counter",
            self.bytes_out.load(Relaxed) as i64,
        );
        gauge(
            "moonwire_router_queue_depth",
            "Events waiting in the router's input channel.",
            "gauge",
            router_queue as i64,
        );
        gauge(
            "moonwire_router_log_messages",
            "Messages the router's per-filter logs hold for subscribers that have not read them.",
            "gauge",
            logs.held as i64,
        );
        gauge(
            "moonwire_router_log_bytes",
            "Topic and payload bytes of those messages.",
            "gauge",
            logs.held_bytes as i64,
        );
        gauge(
            "moonwire_router_log_trimmed_total",
            "Log messages freed after every reader had passed them.",
            "counter",
            logs.trimmed as i64,
        );
        let _ = writeln!(
            out,
            "# HELP moonwire_drops_total Publishes and connections refused or lost, by reason.\n# TYPE moonwire_drops_total counter"
        );
        for r in DropReason::ALL {
            let _ = writeln!(
                out,
                "moonwire_drops_total{{reason=\"{}\"}} {}",
                r.as_str(),
                self.drops(r)
            );
        }
        out
    }
}

/// Prometheus text for the blocks engine: per-block counters and latency, per-worker queues.
pub fn render_blocks(snap: &crate::blocks::MetricsSnapshot) -> String {
    use crate::blocks::HistogramSnapshot;
    let mut out = String::with_capacity(4096);
    fn family(out: &mut String, name: &str, help: &str, kind: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    let mut lines = Vec::new();
    type Get = fn(&crate::blocks::BlockCounters) -> u64;
    let counters: [(&str, &str, Get); 6] = [
        (
            "moonwire_block_invocations_total",
            "Handler invocations per block.",
            |c| c.invocations,
        ),
        (
            "moonwire_block_errors_total",
            "Handler errors per block.",
            |c| c.errors,
        ),
        (
            "moonwire_block_timeouts_total",
            "Handler deadline overruns per block.",
            |c| c.timeouts,
        ),
        (
            "moonwire_block_publishes_total",
            "mqtt.publish calls per block.",
            |c| c.publishes,
        ),
        (
            "moonwire_block_hop_refused_total",
            "Publishes refused by the loop guard.",
            |c| c.hop_refused,
        ),
        (
            "moonwire_block_logs_suppressed_total",
            "Log lines dropped by rate limiting.",
            |c| c.logs_suppressed,
        ),
    ];
    for (name, help, get) in counters {
        family(&mut out, name, help, "counter");
        for (block, c) in &snap.blocks {
            let _ = writeln!(out, "{name}{{block=\"{block}\"}} {}", get(c));
        }
    }
    family(
        &mut out,
        "moonwire_block_verdicts_total",
        "Verdicts per block.",
        "counter",
    );
    for (block, c) in &snap.blocks {
        for (v, n) in [
            ("pass", c.pass),
            ("modify", c.modify),
            ("drop", c.drop),
            ("consume", c.consume),
        ] {
            let _ = writeln!(
                out,
                "moonwire_block_verdicts_total{{block=\"{block}\",verdict=\"{v}\"}} {n}"
            );
        }
    }
    let histogram = |out: &mut String, name: &str, labels: &str, h: &HistogramSnapshot| {
        for (le, n) in &h.buckets {
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum.as_secs_f64());
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
    };
    family(
        &mut out,
        "moonwire_block_latency_seconds",
        "Handler latency per block.",
        "histogram",
    );
    for (block, c) in &snap.blocks {
        histogram(
            &mut out,
            "moonwire_block_latency_seconds",
            &format!("block=\"{block}\""),
            &c.latency,
        );
    }
    family(
        &mut out,
        "moonwire_block_worker_queue_depth",
        "Jobs waiting per blocks worker.",
        "gauge",
    );
    for w in &snap.workers {
        let _ = writeln!(
            out,
            "moonwire_block_worker_queue_depth{{worker=\"{}\"}} {}",
            w.worker, w.queue_depth
        );
        lines.push((w.worker, w.after_overflow, w.backpressure_waits));
    }
    family(
        &mut out,
        "moonwire_block_after_overflow_total",
        "after_publish messages skipped because the queue was full.",
        "counter",
    );
    for (w, overflow, _) in &lines {
        let _ = writeln!(
            out,
            "moonwire_block_after_overflow_total{{worker=\"{w}\"}} {overflow}"
        );
    }
    family(
        &mut out,
        "moonwire_block_backpressure_waits_total",
        "Publishers that waited for a full worker queue.",
        "counter",
    );
    for (w, _, waits) in &lines {
        let _ = writeln!(
            out,
            "moonwire_block_backpressure_waits_total{{worker=\"{w}\"}} {waits}"
        );
    }
    family(
        &mut out,
        "moonwire_block_queue_wait_seconds",
        "Time jobs waited in a worker queue.",
        "histogram",
    );
    for w in &snap.workers {
        histogram(
            &mut out,
            "moonwire_block_queue_wait_seconds",
            &format!("worker=\"{}\"", w.worker),
            &w.wait,
        );
    }
    family(
        &mut out,
        "moonwire_block_reloads_total",
        "Hot reloads of blocks by result.",
        "counter",
    );
    let _ = writeln!(
        out,
        "moonwire_block_reloads_total{{result=\"ok\"}} {}",
        snap.reloads_ok
    );
    let _ = writeln!(
        out,
        "moonwire_block_reloads_total{{result=\"failed\"}} {}",
        snap.reloads_failed
    );
    out
}

/// Prometheus text for frames, thumbnails and media storage.
pub fn render_media(m: &crate::media::service::MediaService) -> String {
    use crate::media::assembler::LossReason;
    let mut out = String::with_capacity(1024);
    let s = &m.metrics;
    let pool = m.pool.stats();
    let mut one = |name: &str, help: &str, kind: &str, v: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
        );
    };
    one(
        "moonwire_frames_completed_total",
        "Camera frames completed (whole or reassembled).",
        "counter",
        s.frames_completed.load(Relaxed),
    );
    one(
        "moonwire_reassembly_memory_bytes",
        "Bytes held by partial frames.",
        "gauge",
        m.reassembly_memory() as u64,
    );
    one(
        "moonwire_thumbnails_total",
        "Thumbnails made.",
        "counter",
        s.thumbnails.load(Relaxed),
    );
    one(
        "moonwire_thumbnail_errors_total",
        "Thumbnails that failed (bad image, limits, dropped).",
        "counter",
        s.thumbnail_errors.load(Relaxed),
    );
    one(
        "moonwire_media_stored_total",
        "Frames and thumbnails written to storage.",
        "counter",
        s.stored.load(Relaxed),
    );
    one(
        "moonwire_media_store_errors_total",
        "Failed media writes.",
        "counter",
        s.store_errors.load(Relaxed),
    );
    one(
        "moonwire_media_pool_dropped_total",
        "Thumbnail jobs dropped because a newer frame of the camera was waiting.",
        "counter",
        pool.dropped,
    );
    one(
        "moonwire_media_pool_queued",
        "Thumbnail jobs waiting.",
        "gauge",
        pool.queued,
    );
    let _ = writeln!(
        out,
        "# HELP moonwire_frame_losses_total Frames lost, by reason.\n# TYPE moonwire_frame_losses_total counter"
    );
    for (i, r) in LossReason::ALL.iter().enumerate() {
        let _ = writeln!(
            out,
            "moonwire_frame_losses_total{{reason=\"{}\"}} {}",
            r.as_str(),
            s.losses[i].load(Relaxed)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_drop_reason() {
        let m = Metrics::default();
        m.dropped(DropReason::KeepAlive, 2);
        let logs = crate::router::LogStats {
            held: 3,
            held_bytes: 120,
            trimmed: 9,
        };
        let text = m.render(7, logs);
        assert!(text.contains("moonwire_drops_total{reason=\"keepalive\"} 2"));
        assert!(text.contains("moonwire_router_queue_depth 7"));
        assert!(text.contains("moonwire_router_log_messages 3"));
        assert!(text.contains("moonwire_router_log_bytes 120"));
        assert!(text.contains("moonwire_router_log_trimmed_total 9"));
        assert_eq!(
            text.matches("moonwire_drops_total{").count(),
            DropReason::ALL.len()
        );
    }
}
