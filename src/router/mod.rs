//! The only module that touches `rumqttd`. It starts the router thread, builds one router
//! link per client connection, and re-exports the packet types and codecs the edge speaks.
//!
//! Facts about the router this module hides from the rest of the broker:
//! - `Router::spawn` returns a sender whose item type rumqttd does not export; we keep it
//!   inside closures ([`Router`] fields) instead of naming it.
//! - `LinkBuilder::build` and `LinkTx::send` block the calling thread (bounded channel).
//!   [`Router::connect`] runs on the blocking pool; [`Link::send_batch`] sends directly while
//!   the channel has room and, when it is full, blocks inside `block_in_place` so the
//!   worker's other tasks move to another thread (a current-thread runtime polls instead).
//! - `Publish` keeps `qos` and `pkid` private; [`peek_publish`] reads them from the
//!   raw frame and [`route_publish`] constructs through `Publish::deserialize`.

pub mod protocol {
    //! Packet types and codecs (rumqttd's), re-exported so callers depend on this module only.
    pub use rumqttd::protocol::v4::V4;
    pub use rumqttd::protocol::v5::V5;
    pub use rumqttd::protocol::*;
}

use bytes::{BufMut, BytesMut};
use protocol::{LastWill, Packet, Publish, QoS};
use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::{Notification, RouterConfig};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

/// Errors talking to the router.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("router refused the connection (connection limit or invalid client id)")]
    Refused,
    #[error("router link closed")]
    Closed,
    #[error("router blocking task failed: {0}")]
    Join(String),
}

impl From<LinkError> for RouterError {
    fn from(e: LinkError) -> Self {
        match e {
            LinkError::Recv(_) | LinkError::NotConnectionAck | LinkError::ConnectionAck(_) => {
                RouterError::Refused
            }
            _ => RouterError::Closed,
        }
    }
}

/// Router settings, from `[router]` and `[limits]`.
#[derive(Debug, Clone)]
pub struct RouterSettings {
    pub max_connections: usize,
    pub max_segment_size: usize,
    pub max_segment_count: usize,
    pub max_outgoing_packet_count: u64,
    /// How often the router frees log data every reader has passed; zero never frees it.
    pub trim_interval: Duration,
}

/// What the router's commit logs hold, as of its last trim.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogStats {
    /// Messages held, counted once per filter they matched.
    pub held: u64,
    /// Topic and payload bytes of those messages.
    pub held_bytes: u64,
    /// Messages freed since start.
    pub trimmed: u64,
}

type Factory =
    dyn Fn(&str, bool) -> Result<(LinkTx, LinkRx, Notification), RouterError> + Send + Sync;

/// Handle to the running router thread. Cheap to clone.
#[derive(Clone)]
pub struct Router {
    factory: Arc<Factory>,
    is_full: Arc<dyn Fn() -> bool + Send + Sync>,
    depth: Arc<dyn Fn() -> usize + Send + Sync>,
    log_stats: Arc<rumqttd::LogStats>,
}

/// What the router said when a link connected.
pub struct Connected {
    pub link: Link,
    pub session_present: bool,
}

impl Router {
    /// Starts the router on its own OS thread.
    pub fn start(settings: &RouterSettings) -> Router {
        let log_stats = Arc::new(rumqttd::LogStats::default());
        let config = RouterConfig {
            // One spare slot for the broker's internal link.
            max_connections: settings.max_connections + 1,
            max_outgoing_packet_count: settings.max_outgoing_packet_count,
            max_segment_size: settings.max_segment_size,
            max_segment_count: settings.max_segment_count,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
            // Rounded up, so a sub-millisecond interval still trims rather than never.
            trim_interval_ms: u64::try_from(settings.trim_interval.as_micros().div_ceil(1000))
                .unwrap_or(u64::MAX),
            log_stats: Some(log_stats.clone()),
        };
        let tx = rumqttd::Router::new(0, config).spawn();
        let (full_tx, depth_tx) = (tx.clone(), tx.clone());
        Router {
            factory: Arc::new(move |client_id, clean| {
                // Outgoing topic aliases in the router are keyed by filter and deliver wrong
                // topics, so they stay off; wills are kept and fired by the edge.
                LinkBuilder::new(client_id, tx.clone())
                    .clean_session(clean)
                    .topic_alias_max(0)
                    .build()
                    .map_err(RouterError::from)
            }),
            is_full: Arc::new(move || full_tx.is_full()),
            depth: Arc::new(move || depth_tx.len()),
            log_stats,
        }
    }

    /// What the commit logs hold, as of the router's last trim.
    pub fn log_stats(&self) -> LogStats {
        use std::sync::atomic::Ordering::Relaxed;
        LogStats {
            held: self.log_stats.held.load(Relaxed),
            held_bytes: self.log_stats.held_bytes.load(Relaxed),
            trimmed: self.log_stats.trimmed.load(Relaxed),
        }
    }

    /// Registers a connection with the router. Runs the blocking handshake off the async
    /// workers.
    pub async fn connect(&self, client_id: String, clean: bool) -> Result<Connected, RouterError> {
        let factory = self.factory.clone();
        let (tx, rx, ack) = tokio::task::spawn_blocking(move || factory(&client_id, clean))
            .await
            .map_err(|e| RouterError::Join(e.to_string()))??;
        let session_present = match Option::<Packet>::from(ack) {
            Some(Packet::ConnAck(ack, _)) => ack.session_present,
            _ => return Err(RouterError::Refused),
        };
        Ok(Connected {
            session_present,
            link: Link {
                tx,
                rx,
                router: self.clone(),
                past: std::time::Instant::now(),
            },
        })
    }

    /// Events waiting in the router's input channel.
    pub fn queue_depth(&self) -> usize {
        (self.depth)()
    }

    async fn wait_capacity(&self) {
        // Backpressure without blocking a tokio worker: the router channel is bounded and
        // `LinkTx::send` would block on it when full.
        let mut delay = Duration::from_micros(50);
        while (self.is_full)() {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(5));
        }
    }
}

/// What the router sends a connection.
///
/// Deliveries have their own variant and other packets are boxed: a `Packet` is ~400 bytes
/// (its CONNECT variant), and moving one per delivery through the session's outgoing path
/// was a third of the broker's CPU time in fan-out.
pub enum Outbound {
    /// A message to deliver (properties boxed: most messages have none).
    Publish(Publish, Option<Box<protocol::PublishProperties>>),
    /// Another packet to write to the client (acks, SUBACK, disconnect).
    Packet(Box<Packet>),
    /// The router paused this link; call [`Link::wake`] once the batch is written.
    Unscheduled,
    /// Nothing for the client.
    Nothing,
}

/// One client's connection to the router.
pub struct Link {
    tx: LinkTx,
    rx: LinkRx,
    router: Router,
    /// A deadline already passed, for [`Link::try_recv`] (reading the clock per delivery
    /// showed up in profiles).
    past: std::time::Instant,
}

impl Link {
    /// Hands a batch of packets to the router as one event.
    pub async fn send_batch(&mut self, batch: &mut VecDeque<Packet>) -> Result<(), RouterError> {
        let Some(last) = batch.pop_back() else {
            return Ok(());
        };
        self.tx.buffer().extend(batch.drain(..));
        if !(self.router.is_full)() {
            self.tx.send(last).await?;
            return Ok(());
        }
        // The router is behind. `LinkTx::send` would block this worker thread; on the
        // multi-threaded runtime hand the worker's other tasks away first, elsewhere poll.
        use tokio::runtime::{Handle, RuntimeFlavor};
        let multi =
            Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
        if multi {
            use futures_util::FutureExt;
            let sent = tokio::task::block_in_place(|| self.tx.send(last).now_or_never());
            match sent {
                Some(r) => r.map(|_| ())?,
                None => return Err(RouterError::Closed),
            }
        } else {
            self.router.wait_capacity().await;
            self.tx.send(last).await?;
        }
        Ok(())
    }

    /// Waits for the next thing the router has for this connection.
    pub async fn recv(&mut self) -> Result<Outbound, RouterError> {
        loop {
            if let Some(n) = self.rx.next().await? {
                return Ok(translate(n));
            }
        }
    }

    /// The next thing the router has already queued, without waiting.
    pub fn try_recv(&mut self) -> Result<Option<Outbound>, RouterError> {
        // A deadline already passed takes what is queued and never blocks; cheaper than
        // polling the async `next` once per delivery.
        match self.rx.recv_deadline(self.past) {
            Ok(n) => Ok(n.map(translate)),
            Err(LinkError::RecvTimeout(flume::RecvTimeoutError::Timeout)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Asks the router to resume delivery after an [`Outbound::Unscheduled`].
    pub async fn wake(&self) -> Result<(), RouterError> {
        self.rx.wake().await?;
        Ok(())
    }

    /// Tells the router the connection is gone, so it saves a persistent session and frees the
    /// slot. Without this the router leaks the connection.
    pub async fn disconnect(mut self) {
        let mut batch = VecDeque::from([Packet::Disconnect(
            protocol::Disconnect {
                reason_code: protocol::DisconnectReasonCode::NormalDisconnection,
            },
            None,
        )]);
        let _ = self.send_batch(&mut batch).await;
    }
}

fn translate(n: Notification) -> Outbound {
    match n {
        Notification::Unschedule => Outbound::Unscheduled,
        Notification::Forward(f) => Outbound::Publish(f.publish, f.properties.map(Box::new)),
        other => match Option::<Packet>::from(other) {
            Some(p) => Outbound::Packet(Box::new(p)),
            None => Outbound::Nothing,
        },
    }
}

/// Reads QoS and packet id, which `Publish` keeps private, from a raw PUBLISH frame.
/// Returns `None` when the frame is too short to hold them.
pub fn peek_publish(frame: &[u8]) -> Option<(QoS, u16)> {
    let byte1 = *frame.first()?;
    let qos = protocol::qos((byte1 >> 1) & 0b11)?;
    if qos == QoS::AtMostOnce {
        return Some((qos, 0));
    }
    let mut i = 1;
    loop {
        let b = *frame.get(i)?;
        i += 1;
        if b & 0x80 == 0 || i > 5 {
            break;
        }
    }
    let topic_len = u16::from_be_bytes([*frame.get(i)?, *frame.get(i + 1)?]) as usize;
    let at = i + 2 + topic_len;
    Some((
        qos,
        u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]),
    ))
}

/// Header bit 3 (DUP) of a routed publish, set when the message was published at QoS 0.
/// Publishes enter the router at QoS 0, where DUP means nothing, and the router stores and
/// forwards the bit unchanged, so the subscriber's session can deliver at
/// min(publish QoS, subscription QoS). Clients never see it (the edge clears it on the way out)
/// and cannot forge it (the edge rebuilds every publish it routes).
pub const QOS0_MARK: u8 = 0x08;

/// Prefix of topics and filters whose first byte the router cannot take. rumqttd's topic
/// matcher slices `topic[..1]` and panics (killing the router thread, so routing stops for
/// everyone) when the topic starts with a multi-byte character such as `ü` or `温`. Such names
/// enter the router with this prefix, and a name already starting with it gets a second one,
/// so the mapping is reversible and clients cannot collide with it.
const ESCAPE: u8 = 0x01;

fn needs_escape(name: &[u8]) -> bool {
    name.first().is_some_and(|&b| b >= 0x80 || b == ESCAPE)
}

fn escaped(name: &str) -> std::borrow::Cow<'_, str> {
    if needs_escape(name.as_bytes()) {
        let mut s = String::with_capacity(name.len() + 1);
        s.push(ESCAPE as char);
        s.push_str(name);
        s.into()
    } else {
        name.into()
    }
}

/// A subscription filter as the router must see it (see [`ESCAPE`]); the filter part of a
/// shared subscription is escaped the same way.
pub fn router_filter(filter: &str) -> String {
    if let Some((group, inner)) = filter
        .strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
    {
        return format!("$share/{group}/{}", escaped(inner));
    }
    escaped(filter).into_owned()
}

/// The client's topic of a publish the router delivers (undoes [`ESCAPE`]).
pub fn client_topic(publish: &mut Publish) {
    if publish.topic.first() == Some(&ESCAPE) {
        let _ = publish.topic.split_to(1);
    }
}

/// The form in which a message enters the router: QoS 0, packet id 0, one exact-size buffer,
/// and the [`QOS0_MARK`] when it was published at QoS 0.
pub fn route_publish(topic: &str, payload: &[u8], retain: bool, published_at: QoS) -> Publish {
    let topic = escaped(topic);
    let topic = topic.as_ref();
    let mut o = BytesMut::with_capacity(5 + topic.len() + payload.len());
    let mark = if published_at == QoS::AtMostOnce {
        QOS0_MARK
    } else {
        0
    };
    o.put_u8(0b0011_0000 | retain as u8 | mark);
    o.put_u16(0);
    o.put_u16(topic.len() as u16);
    o.put_slice(topic.as_bytes());
    o.put_slice(payload);
    Publish::deserialize(o.freeze())
}

/// The QoS of a pipeline message's number (values above 2 cannot occur; they mean 2).
pub fn qos_from(n: u8) -> QoS {
    protocol::qos(n.min(2)).unwrap_or(QoS::ExactlyOnce)
}

/// A will held by the edge (the router's own will trigger is private and never fires).
pub type Will = (LastWill, Option<protocol::LastWillProperties>);

#[cfg(test)]
mod tests {
    use super::protocol::Protocol;
    use super::*;

    #[test]
    fn routed_publishes_carry_the_qos0_mark() {
        for (qos, marked) in [(QoS::AtMostOnce, true), (QoS::AtLeastOnce, false)] {
            let p = route_publish("a/b", b"xyz", true, qos);
            assert_eq!(
                (&p.topic[..], &p.payload[..], p.retain),
                (&b"a/b"[..], &b"xyz"[..], true)
            );
            let mut wire = BytesMut::new();
            protocol::V4
                .write(Packet::Publish(p, None), &mut wire)
                .unwrap();
            assert_eq!(wire[0] & QOS0_MARK != 0, marked);
            assert_eq!(peek_publish(&wire), Some((QoS::AtMostOnce, 0)));
        }
        // QoS 1, topic "a/b", packet id 42.
        let wire = [0x32, 0x08, 0, 3, b'a', b'/', b'b', 0, 42, b'x'];
        assert_eq!(peek_publish(&wire), Some((QoS::AtLeastOnce, 42)));
    }

    #[test]
    fn names_the_router_cannot_take_are_escaped_reversibly() {
        for (topic, routed) in [
            ("a/b", "a/b"),
            ("über/x", "\u{1}über/x"),
            ("\u{1}x", "\u{1}\u{1}x"),
        ] {
            let mut p = route_publish(topic, b"", false, QoS::AtLeastOnce);
            assert_eq!(&p.topic[..], routed.as_bytes());
            client_topic(&mut p);
            assert_eq!(&p.topic[..], topic.as_bytes());
        }
        assert_eq!(router_filter("温度/#"), "\u{1}温度/#");
        assert_eq!(router_filter("$share/g/ü/+"), "$share/g/\u{1}ü/+");
        assert_eq!(router_filter("+/x"), "+/x");
    }

    #[test]
    fn peek_rejects_truncated_frames() {
        assert_eq!(peek_publish(&[0x32]), None);
        assert_eq!(peek_publish(&[0x32, 0x05, 0x00, 0x03, b'a']), None);
        assert_eq!(peek_publish(&[0x30, 0x00]), Some((QoS::AtMostOnce, 0)));
        assert_eq!(peek_publish(&[0x36, 0x00]), None);
    }
}
