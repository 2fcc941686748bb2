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
}

impl DropReason {
    const ALL: [DropReason; 13] = [
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
    drops: [AtomicU64; 13],
}

impl Metrics {
    pub fn dropped(&self, reason: DropReason, n: u64) {
        self.drops[reason as usize].fetch_add(n, Relaxed);
    }

    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].load(Relaxed)
    }

    /// Prometheus text exposition. `router_queue` is sampled by the caller.
    pub fn render(&self, router_queue: usize) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_drop_reason() {
        let m = Metrics::default();
        m.dropped(DropReason::KeepAlive, 2);
        let text = m.render(7);
        assert!(text.contains("moonwire_drops_total{reason=\"keepalive\"} 2"));
        assert!(text.contains("moonwire_router_queue_depth 7"));
        assert_eq!(
            text.matches("moonwire_drops_total{").count(),
            DropReason::ALL.len()
        );
    }
}
