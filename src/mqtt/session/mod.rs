//! One client connection: CONNECT handling, then the loop that moves packets between the
//! socket and the client's router link, running every PUBLISH through the pipeline first.
//!
//! The edge owns publish acknowledgements: publishes enter the router at QoS 0 (the router
//! delivers at each subscription's QoS), and the session sends PUBACK/PUBREC itself once the
//! pipeline decided and the router took the batch. That keeps acks in order even when a stage
//! drops a message, lets v5 clients see the stage's reason code, and makes the edge the one
//! place that finishes QoS 2 flows (PUBREL → PUBCOMP).

mod connect;
use connect::{ConnectInfo, end_router_session, read_connect, run_connected};
pub use connect::{schedule_expiry, schedule_will};
mod durable;
mod outgoing;
mod publish;
mod resend;
mod subscribe;
pub(crate) use resend::Carry;

use super::codec::{Codec, CodecError, Version, detect_version};
use super::internal::INTERNAL_CLIENT_ID;
pub use super::packets::{props_from_router, props_to_router};
use super::packets::{pubrec, strip_alias, unsuback, valid_shared, will_props};
use super::rate::RateLimit;
use super::{Broker, ConnMeta, SessionLimits};
use crate::auth::{AuthError, Principal};
use crate::metrics::DropReason;
use crate::pipeline::{DropCode, Message, Origin, Outcome, now_ms, valid_filter};
use crate::router::protocol::*;
use crate::router::{Link, Outbound, QOS0_MARK, RouterError, Will, qos_from, route_publish};
use bytes::{Bytes, BytesMut};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// Why a session ended; decides the DISCONNECT reason and whether the will fires.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("client closed the connection")]
    Closed,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    #[error("topic name invalid: {0}")]
    TopicInvalid(&'static str),
    #[error("no CONNECT within the connect timeout")]
    ConnectTimeout,
    #[error("keep alive expired")]
    KeepAlive,
    #[error("session taken over by a new connection")]
    TakenOver,
    #[error("broker shutting down")]
    Shutdown,
    #[error("client sent DISCONNECT")]
    ClientDisconnect {
        with_will: bool,
        /// A new session expiry interval sent with a v5 DISCONNECT.
        expiry: Option<u32>,
    },
    #[error("router: {0}")]
    Router(#[from] RouterError),
    #[error("publish rate limit exceeded persistently")]
    RateAbuse,
    #[error("topic alias 0 or above the announced maximum")]
    TopicAliasInvalid,
    #[error("more unacknowledged QoS 1/2 publishes than the announced Receive Maximum")]
    ReceiveMaximumExceeded,
    #[error("store: {0}")]
    Store(String),
}

/// Filters with their granted QoS, and the subscription identifier, of one SUBSCRIBE.
type RetainedOwed = (Vec<(String, u8)>, Option<usize>);

/// How long a new session waits for the one it takes over to close.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);
/// Read buffer size; grows only for larger packets and shrinks back when idle.
const READ_CHUNK: usize = 4096;
/// Read size until a read fills its space: a device that only sends a small packet now and
/// then (most of them, once connected) holds this much instead of `READ_CHUNK`.
const READ_SMALL: usize = 512;
/// Router notifications written per flush.
const WRITE_BATCH: usize = 512;
/// Topic aliases a v5 client may set towards us (announced in CONNACK).
const TOPIC_ALIAS_MAX: u16 = 64;
/// Largest pending-publish buffer a session keeps between read batches.
const PENDING_KEEP: usize = 64;

/// Serves one accepted connection until it closes.
pub async fn serve<S>(stream: S, meta: ConnMeta, broker: Arc<Broker>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = meta.peer;
    let (reader, writer) = tokio::io::split(stream);
    let mut io = Io::new(reader, writer);
    let connect = tokio::select! {
        r = tokio::time::timeout(broker.limits.connect_timeout, read_connect(&mut io, &broker.limits)) => match r {
            Ok(r) => r,
            Err(_) => Err(SessionError::ConnectTimeout),
        },
        _ = broker.shutdown.cancelled() => Err(SessionError::Shutdown),
    };
    let (codec, packet) = match connect {
        Ok(c) => c,
        Err(e) => {
            note_failure(&broker, &e);
            tracing::debug!(%peer, error = %e, "connection closed before CONNECT completed");
            let _ = io.writer.shutdown().await;
            return;
        }
    };
    let Packet::Connect(connect, props, will, will_props, login) = packet else {
        return;
    };
    let ctx = ConnectInfo {
        connect,
        props,
        will: will.map(|w| (w, will_props)),
        login,
    };
    run_connected(io, codec, ctx, meta, broker).await;
}

fn note_failure(broker: &Broker, e: &SessionError) {
    let reason = match e {
        SessionError::ConnectTimeout => DropReason::ConnectTimeout,
        SessionError::Codec(CodecError::TooLarge { .. }) => DropReason::PacketTooLarge,
        SessionError::Codec(CodecError::Protocol(_)) => DropReason::Protocol,
        SessionError::Codec(_) => DropReason::Malformed,
        SessionError::Protocol(_) => DropReason::Protocol,
        SessionError::TopicInvalid(_) => DropReason::TopicInvalid,
        SessionError::KeepAlive => DropReason::KeepAlive,
        SessionError::RateAbuse => DropReason::RateLimited,
        _ => return,
    };
    broker.metrics.dropped(reason, 1);
}

struct Io<R, W> {
    reader: R,
    writer: W,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Some read filled all the space it had: this connection sends more than small packets.
    busy: bool,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Io<R, W> {
    fn new(reader: R, writer: W) -> Self {
        Io {
            reader,
            writer,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            busy: false,
        }
    }

    async fn fill(&mut self) -> Result<usize, SessionError> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_SMALL {
            self.rbuf
                .reserve(if self.busy { READ_CHUNK } else { READ_SMALL });
        }
        let space = self.rbuf.capacity() - self.rbuf.len();
        match self.reader.read_buf(&mut self.rbuf).await? {
            0 => Err(SessionError::Closed),
            n => {
                // Sticky: a stream switches to full-size reads at its first full read and
                // stays there.
                self.busy |= n >= space;
                Ok(n)
            }
        }
    }

    async fn flush(&mut self) -> Result<usize, SessionError> {
        let n = self.wbuf.len();
        if n > 0 {
            self.writer.write_all(&self.wbuf).await?;
            self.writer.flush().await?;
            self.wbuf.clear();
            if self.wbuf.capacity() > 64 * 1024 {
                self.wbuf = BytesMut::new();
            }
        }
        Ok(n)
    }

    /// Gives back a large read buffer once a big packet has been consumed, so idle
    /// connections stay small.
    fn shrink(&mut self) {
        if self.rbuf.is_empty() && self.rbuf.capacity() > 4 * READ_CHUNK {
            self.rbuf = BytesMut::new();
        }
    }
}

/// Per-connection state after CONNECT.
struct Session<R, W> {
    io: Io<R, W>,
    codec: Codec,
    broker: Arc<Broker>,
    client_id: String,
    username: Option<String>,
    peer: std::net::SocketAddr,
    will: Option<Will>,
    keep_alive: Duration,
    /// Seconds the session outlives the connection: 0 ends it at disconnect, `u32::MAX`
    /// never (v3.1.1 persistent sessions).
    expiry: u32,
    /// Whether the router keeps this link's session after it disconnects.
    router_persistent: bool,
    /// Topic aliases the client set (v5), at most `TOPIC_ALIAS_MAX`.
    aliases: HashMap<u16, Bytes>,
    /// QoS 1/2 publishes of the current read batch, not yet acknowledged.
    unacked_in_batch: usize,
    /// Filters this (v5) session subscribed with No Local.
    no_local: HashSet<String>,
    /// Filters subscribed at QoS 2 (QoS 1 publishes are delivered at QoS 1 on them).
    qos2_subs: HashSet<String>,
    /// Filters subscribed with Retain As Published (v5).
    rap_subs: HashSet<String>,
    /// Outgoing QoS 1/2 publishes in the order the router sent them, with the ack to hand back
    /// once known. The router accepts acks only in that order, and some are the edge's own
    /// (messages delivered at a lower QoS than the subscription's).
    outgoing_order: VecDeque<outgoing::Delivery>,
    /// Router QoS 2 deliveries whose PUBREL the edge sent the client on its PUBREC, without
    /// waiting for the router's (which is then not forwarded).
    rel_sent: HashSet<u16>,
    /// Router QoS 2 deliveries whose PUBREC the router has, in that order (the order it takes
    /// PUBCOMPs in), and whether their PUBCOMP may go.
    comp_order: VecDeque<(u16, bool)>,
    /// PUBCOMPs from the client whose PUBREC still waits in `outgoing_order`.
    comp_early: HashSet<u16>,
    /// Packet ids as the client knows them, and resends after a reconnect (see `resend`).
    pkids: resend::Pkids,
    request_problem_info: bool,
    /// Incoming QoS 2 packet ids between PUBREC and PUBREL.
    qos2_incoming: HashSet<u16>,
    /// Filters this session is subscribed to (for UNSUBACK codes and limits).
    filters: HashSet<String>,
    /// SUBSCRIBEs forwarded to the router with some filters refused by the edge: the codes to
    /// merge into the router's SUBACK, by position.
    pending_suback: HashMap<u16, Vec<Option<SubscribeReasonCode>>>,
    /// UNSUBSCRIBEs waiting for the router's per-filter acks: (acks still expected, reasons).
    pending_unsuback: HashMap<u16, (usize, Vec<UnsubAckReason>)>,
    /// Packets for the router from the current read batch.
    to_router: VecDeque<Packet>,
    /// Acks to write once `to_router` has been handed over.
    acks: Vec<Packet>,
    rate: RateLimit,
    /// Store writes the acks in `acks` wait for.
    tickets: Vec<crate::store::Ticket>,
    /// The batch just read, when its acks must wait for the store (taken by `run`).
    staged: Option<durable::Commit>,
    /// QoS 1/2 publishes in staged batches, not yet acknowledged (Receive Maximum).
    unacked_staged: usize,
    /// Queued messages the store restored, being delivered.
    replay: durable::Replay,
    /// Retained deliveries owed once the SUBACK of a SUBSCRIBE (by packet id) is written:
    /// (filter, granted QoS) pairs and the subscription identifier.
    pending_retained: HashMap<u16, RetainedOwed>,
    /// SUBACKs the router owes for restored subscriptions (packet id 0), to swallow.
    internal_subacks: usize,
    /// The store already has this session offline (see `store_offline_early`).
    store_offline_done: bool,
    /// Router QoS 2 deliveries the edge finishes itself (withheld or sent at a lower QoS):
    /// the router's PUBREL for them is answered here.
    edge_qos2: HashSet<u16>,
    /// Router QoS 2 deliveries sent to the client at QoS 1 (published at QoS 1).
    downgraded2: HashSet<u16>,
    /// QoS 1/2 deliveries the client has not finished, against its Receive Maximum.
    client_inflight: usize,
    client_receive_max: usize,
    /// Encoded publishes waiting for room under the client's Receive Maximum.
    held: VecDeque<Bytes>,
    /// The client's Maximum Packet Size (v5).
    client_max_packet: Option<usize>,
    /// Router deliveries in flight whose messages also sit in the store's queue for this
    /// session: packet id → store sequence, released when the client acknowledges.
    stored_inflight: HashMap<u16, u64>,
    /// The pipeline's pending publishes of a read batch; kept between batches so a busy
    /// session does not regrow it (its elements are large) on every read.
    pending: Vec<Pending>,
}

/// What `admit_publish` decided.
enum Admit {
    /// Fast path: the packet for the router and the (QoS, packet id) to acknowledge.
    Routed(Packet, (QoS, u16)),
    /// Needs the pipeline (or taps).
    Pipeline(Pending),
    /// Answered without routing (duplicate QoS 2, rate limited): (QoS, packet id, refusal).
    Answer(QoS, u16, Option<(DropCode, String)>),
    /// Not a publish.
    Other(Packet),
}

/// A publish waiting for its pipeline verdict.
struct Pending {
    msg: Message,
    qos: QoS,
    pkid: u16,
    wants: bool,
    tapped: bool,
}

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    async fn run(
        &mut self,
        link: &mut Link,
        mut kicked: tokio::sync::oneshot::Receiver<()>,
    ) -> Result<(), SessionError> {
        let broker = self.broker.clone();
        // Keep alive 0 disables the check; otherwise 1.5× [MQTT-3.1.2-24].
        let grace = self.keep_alive.mul_f32(1.5);
        let far = Duration::from_secs(86400 * 365);
        let keepalive = tokio::time::sleep(if grace.is_zero() { far } else { grace });
        tokio::pin!(keepalive);
        // Created once: registering a fresh waiter on the shared token every iteration would
        // serialise all sessions on the token's lock.
        let shutdown = broker.shutdown.cancelled();
        tokio::pin!(shutdown);
        // Read batches whose acks wait for the store, oldest first. The next batch is read
        // and routed meanwhile, so one commit's latency does not stall the client.
        let mut commits: VecDeque<durable::Commit> = VecDeque::new();
        loop {
            let (can_read, behind) = (commits.len() < durable::MAX_COMMITS, !commits.is_empty());
            tokio::select! {
                biased;
                _ = &mut shutdown => return Err(SessionError::Shutdown),
                _ = &mut kicked => return Err(SessionError::TakenOver),
                r = async {
                    match commits.front_mut() {
                        Some(c) => c.wait().await,
                        None => std::future::pending().await,
                    }
                }, if behind => {
                    r?;
                    self.write_committed(&mut commits).await?;
                }
                r = self.io.fill(), if can_read => {
                    let n = r?;
                    broker.metrics.bytes_in.fetch_add(n as u64, Relaxed);
                    if !grace.is_zero() {
                        keepalive.as_mut().reset(Instant::now() + grace);
                    }
                    self.handle_incoming(link, behind).await?;
                    if let Some(c) = self.staged.take() {
                        commits.push_back(c);
                    }
                    self.io.shrink();
                }
                out = link.recv() => {
                    self.handle_outgoing(link, out?).await?;
                }
                _ = &mut keepalive => return Err(SessionError::KeepAlive),
            }
        }
    }

    /// Decodes every complete packet in the read buffer, then hands the batch to the router
    /// and writes the acks.
    async fn handle_incoming(
        &mut self,
        link: &mut Link,
        behind_commits: bool,
    ) -> Result<(), SessionError> {
        let mut publishes = 0u64;
        self.unacked_in_batch = 0;
        let mut outcome = Ok(());
        // Publishes that pipeline stages want are started together and finished in order, so
        // a batch bound to a Lua block costs one worker round trip, not one per message.
        let mut pending = std::mem::take(&mut self.pending);
        loop {
            let frame = match self.codec.decode(&mut self.io.rbuf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    outcome = Err(e.into());
                    break;
                }
            };
            let step = match frame.packet {
                Packet::Publish(publish, props) => {
                    publishes += 1;
                    let (qos, pkid) = frame.publish_meta.unwrap_or((QoS::AtMostOnce, 0));
                    self.admit_publish(publish, props, qos, pkid)
                }
                packet => Ok(Admit::Other(packet)),
            };
            let step = match step {
                Ok(Admit::Pipeline(p)) => {
                    pending.push(p);
                    continue;
                }
                Ok(step) => step,
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            };
            self.run_pending(&mut pending).await;
            let applied = match step {
                Admit::Routed(packet, ack) => {
                    self.to_router.push_back(packet);
                    self.ack_publish(ack.0, ack.1, None);
                    Ok(())
                }
                Admit::Answer(qos, pkid, refused) => {
                    self.ack_publish(qos, pkid, refused);
                    Ok(())
                }
                Admit::Other(packet) => self.handle_packet(packet).await,
                Admit::Pipeline(_) => Ok(()),
            };
            if let Err(e) = applied {
                outcome = Err(e);
                break;
            }
        }
        self.run_pending(&mut pending).await;
        if pending.capacity() <= PENDING_KEEP {
            self.pending = pending;
        }
        self.broker
            .metrics
            .messages_in
            .fetch_add(publishes, Relaxed);
        // Whatever was accepted before an error still reaches the router and gets its ack,
        // once the store holds what the ack promises (and after earlier batches' acks).
        link.send_batch(&mut self.to_router).await?;
        if !self.tickets.is_empty() || behind_commits {
            self.stage_commit();
            return outcome;
        }
        for ack in self.acks.drain(..) {
            self.codec
                .encode_within(ack, self.client_max_packet, &mut self.io.wbuf)?;
        }
        let n = self.io.flush().await?;
        self.broker.metrics.bytes_out.fetch_add(n as u64, Relaxed);
        outcome
    }

    async fn handle_packet(&mut self, packet: Packet) -> Result<(), SessionError> {
        match packet {
            Packet::PubRel(pubrel, _) => {
                // The edge finished every incoming QoS 2 flow itself (see module docs).
                let reason = if self.qos2_incoming.remove(&pubrel.pkid) {
                    let t = self
                        .persistent_store()
                        .map(|s| s.qos2_released(&self.client_id, pubrel.pkid));
                    self.hold_ack(t);
                    PubCompReason::Success
                } else {
                    PubCompReason::PacketIdentifierNotFound
                };
                self.acks.push(Packet::PubComp(
                    PubComp {
                        pkid: pubrel.pkid,
                        reason,
                    },
                    None,
                ));
                Ok(())
            }
            Packet::PubAck(mut a, _) => {
                let pkid = a.pkid;
                if !self.replay_ack(pkid, durable::AckKind::Ack)? {
                    a.pkid = self.pkids.router_pkid(pkid, true);
                    self.client_acked(pkid, Packet::PubAck(a, None));
                }
                Ok(())
            }
            Packet::PubRec(mut a, _) => {
                let pkid = a.pkid;
                if !self.replay_ack(pkid, durable::AckKind::Rec)? {
                    // A refusal ends the flow; otherwise PUBCOMP comes under the same id.
                    let ends = !matches!(
                        a.reason,
                        PubRecReason::Success | PubRecReason::NoMatchingSubscribers
                    );
                    a.pkid = self.pkids.router_pkid(pkid, ends);
                    self.client_acked(pkid, Packet::PubRec(a, None));
                }
                Ok(())
            }
            Packet::PubComp(a, _) => {
                if !self.replay_ack(a.pkid, durable::AckKind::Comp)? {
                    let pkid = self.pkids.router_pkid(a.pkid, true);
                    self.client_completed(pkid);
                }
                Ok(())
            }
            Packet::Subscribe(sub, props) => {
                if self.codec.version == Version::V5
                    && sub
                        .filters
                        .iter()
                        .any(|f| f.nolocal && f.path.starts_with("$share/"))
                {
                    return Err(SessionError::Protocol(
                        "No Local on a shared subscription [MQTT-3.8.3-4]",
                    ));
                }
                self.handle_subscribe(sub, props).await;
                Ok(())
            }
            Packet::Unsubscribe(unsub, props) => {
                self.handle_unsubscribe(unsub, props);
                Ok(())
            }
            Packet::PingReq(_) => {
                self.acks.push(Packet::PingResp(PingResp));
                Ok(())
            }
            Packet::Disconnect(d, props) => Err(SessionError::ClientDisconnect {
                expiry: props.and_then(|p| p.session_expiry_interval),
                with_will: d.reason_code == DisconnectReasonCode::DisconnectWithWillMessage,
            }),
            Packet::Connect(..) => Err(SessionError::Protocol("second CONNECT")),
            _ => Err(SessionError::Protocol("packet a client must not send")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn reads_stay_small_until_a_read_fills_its_space() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let (reader, writer) = tokio::io::split(server);
        let mut io = Io::new(reader, writer);

        // A device's small packets: the buffer stays at the small size.
        for _ in 0..3 {
            client.write_all(&[0xC0, 0x00]).await.unwrap();
            assert_eq!(io.fill().await.unwrap(), 2);
            let _ = io.rbuf.split();
        }
        assert!(!io.busy);
        assert!(io.rbuf.capacity() <= READ_SMALL, "{}", io.rbuf.capacity());

        // A burst fills the small read; from then on reads are full size.
        client.write_all(&[0u8; 3 * READ_CHUNK]).await.unwrap();
        assert_eq!(io.fill().await.unwrap(), io.rbuf.len());
        assert!(io.busy);
        let _ = io.rbuf.split();
        let n = io.fill().await.unwrap();
        assert!(n > READ_SMALL, "read {n} bytes after the switch");
    }
}
