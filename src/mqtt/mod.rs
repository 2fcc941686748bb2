//! MQTT sessions at the edge: the broker context every connection shares ([`Broker`]), the
//! client-id registry that handles takeover and keeps edge-side session state, the internal
//! publisher used for wills and broker-originated messages, and the per-connection
//! [`session`] state machine.

pub mod codec;
mod internal;
mod registry;
pub mod session;

pub use codec::Version;
pub use internal::Internal;
pub use registry::Registry;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::pipeline::{Message, Outcome, Pipeline};
use crate::router::Router;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Limits a session enforces, copied out of the config once.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    pub max_packet_size: usize,
    pub max_topic_length: usize,
    pub max_topic_levels: usize,
    pub max_subscriptions: usize,
    pub receive_maximum: u16,
    pub connect_timeout: Duration,
    pub max_connections: usize,
}

impl SessionLimits {
    pub fn from_config(cfg: &Config) -> Self {
        SessionLimits {
            max_packet_size: cfg.limits.max_packet_size.as_usize(),
            max_topic_length: cfg.limits.max_topic_length,
            max_topic_levels: cfg.limits.max_topic_levels,
            max_subscriptions: cfg.limits.max_subscriptions,
            receive_maximum: cfg.limits.receive_maximum,
            connect_timeout: cfg.mqtt.connect_timeout,
            max_connections: cfg.limits.max_connections,
        }
    }
}

/// Everything a session needs from the broker.
pub struct Broker {
    pub limits: SessionLimits,
    pub router: Router,
    pub pipeline: Pipeline,
    pub registry: Registry,
    pub metrics: Arc<Metrics>,
    pub internal: Internal,
    /// Cancelled when the broker shuts down.
    pub shutdown: CancellationToken,
    /// Live router links of clients, for `limits.max_connections`.
    pub links: AtomicUsize,
}

impl Broker {
    /// Publishes a broker-originated message (a will, a block's or the media service's) through
    /// the same pipeline as client publishes.
    pub async fn publish(&self, msg: Message) -> Outcome {
        let outcome = self.pipeline.process(msg).await;
        if let Outcome::Route(m) = &outcome {
            if self.pipeline.tapped(&m.topic) {
                self.pipeline.after_publish(m);
            }
            self.internal.send(m.clone()).await;
        }
        outcome
    }
}
