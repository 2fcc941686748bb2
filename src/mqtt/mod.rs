//! MQTT sessions at the edge: the broker context every connection shares ([`Broker`]), the
//! client-id registry that handles takeover and keeps edge-side session state, the internal
//! publisher used for wills and broker-originated messages, and the per-connection
//! [`session`] state machine.

pub mod codec;
pub mod interest;
mod internal;
mod packets;
mod rate;
mod registry;
pub mod retained;
pub mod session;

pub use codec::Version;
pub use internal::{INTERNAL_CLIENT_ID, Internal};
pub use registry::Registry;

use crate::auth::Auth;
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
    pub max_connections_per_ip: usize,
    pub publish_rate: u32,
    pub publish_bytes_rate: u64,
    pub publish_burst: u32,
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
            max_connections_per_ip: cfg.limits.max_connections_per_ip,
            publish_rate: cfg.limits.publish_rate,
            publish_bytes_rate: cfg.limits.publish_bytes_rate.0,
            publish_burst: cfg.limits.publish_burst,
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
    pub auth: Arc<Auth>,
    /// The Lua blocks engine, for connect and subscribe hooks and the admin API.
    pub blocks: Option<crate::blocks::BlockEngine>,
    /// Frames and thumbnails: told when a client goes (its partial frames are lost), read by
    /// the HTTP routes.
    pub media: Option<Arc<crate::media::service::MediaService>>,
    /// Open connections per source address, for `limits.max_connections_per_ip`.
    pub per_ip: parking_lot::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    /// Subscription options in use that need publish metadata (No Local, QoS 2, Retain As
    /// Published, see [`interest`]).
    pub interest: Arc<interest::Interests>,
    /// Durable state (retained, persistent sessions); `None` with `storage.persistence = false`.
    pub store: Option<Arc<crate::store::Store>>,
    /// Retained messages (the edge delivers them, not the router; see [`retained`]).
    pub retained: retained::Retained,
}

/// Counts one connection against its source address until dropped.
pub struct IpSlot {
    broker: Arc<Broker>,
    ip: std::net::IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut map = self.broker.per_ip.lock();
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Takes a per-address connection slot, or `None` when that address is at its limit.
pub fn ip_slot(broker: &Arc<Broker>, ip: std::net::IpAddr) -> Option<IpSlot> {
    let max = broker.limits.max_connections_per_ip;
    let mut map = broker.per_ip.lock();
    let n = map.entry(ip).or_insert(0);
    if max > 0 && *n >= max {
        return None;
    }
    *n += 1;
    Some(IpSlot {
        broker: broker.clone(),
        ip,
    })
}

/// What the listener knows about a connection before MQTT starts.
#[derive(Debug, Clone)]
pub struct ConnMeta {
    pub peer: std::net::SocketAddr,
    /// Identity from the TLS client certificate, when `tls.identity` is set.
    pub cert_identity: Option<String>,
    /// Subject of the verified TLS client certificate, if one was presented.
    pub cert_subject: Option<String>,
}

impl Broker {
    /// What a routed publish changes besides delivery: the retained message of its topic, and
    /// the store (retained, queues of offline sessions). `Some` when a store write must finish
    /// before the publish is acknowledged.
    pub fn capture(
        &self,
        topic: &str,
        payload: &[u8],
        qos: u8,
        retain: bool,
        props: Option<&crate::router::protocol::PublishProperties>,
    ) -> Option<crate::store::Captured> {
        if retain {
            let now = crate::pipeline::now_ms();
            self.retained.set(topic, payload, qos, props.cloned(), now);
        }
        self.store
            .as_ref()
            .and_then(|s| s.capture(topic, payload, qos, retain, props))
    }

    /// Publishes a broker-originated message (a will, a block's or the media service's) through
    /// the same pipeline as client publishes.
    pub async fn publish(&self, msg: Message) -> Outcome {
        let outcome = self.pipeline.process(msg).await;
        if let Outcome::Route(m) = &outcome {
            let props = session::props_to_router(&m.props);
            let captured = self.capture(&m.topic, &m.payload, m.qos, m.retain, props.as_ref());
            let mut stored = None;
            if let Some(c) = captured {
                stored = c.seq;
                if let Err(e) = c.ticket.wait().await {
                    tracing::error!(topic = m.topic, error = %e, "store write failed for a broker-originated message");
                }
            }
            if self.pipeline.tapped(&m.topic) {
                self.pipeline.after_publish(m);
            }
            self.internal.send(m.clone(), stored).await;
        }
        outcome
    }
}
