//! One client connection: CONNECT handling, then the loop that moves packets between the
//! socket and the client's router link, running every PUBLISH through the pipeline first.
//!
//! The edge owns publish acknowledgements: publishes enter the router at QoS 0 (the router
//! delivers at each subscription's QoS), and the session sends PUBACK/PUBREC itself once the
//! pipeline decided and the router took the batch. That keeps acks in order even when a stage
//! drops a message, lets v5 clients see the stage's reason code, and makes the edge the one
//! place that finishes QoS 2 flows (PUBREL → PUBCOMP).

mod durable;
mod outgoing;
mod publish;

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
/// Router notifications written per flush.
const WRITE_BATCH: usize = 512;
/// Topic aliases a v5 client may set towards us (announced in CONNACK).
const TOPIC_ALIAS_MAX: u16 = 64;

/// Serves one accepted connection until it closes.
pub async fn serve<S>(stream: S, meta: ConnMeta, broker: Arc<Broker>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = meta.peer;
    let (reader, writer) = tokio::io::split(stream);
    let mut io = Io {
        reader,
        writer,
        rbuf: BytesMut::new(),
        wbuf: BytesMut::new(),
    };
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
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Io<R, W> {
    async fn fill(&mut self) -> Result<usize, SessionError> {
        if self.rbuf.capacity() - self.rbuf.len() < 512 {
            self.rbuf.reserve(READ_CHUNK);
        }
        match self.reader.read_buf(&mut self.rbuf).await? {
            0 => Err(SessionError::Closed),
            n => Ok(n),
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

async fn read_connect<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    io: &mut Io<R, W>,
    limits: &SessionLimits,
) -> Result<(Codec, Packet), SessionError> {
    loop {
        match detect_version(&io.rbuf, limits.max_packet_size) {
            Ok(Some(version)) => {
                let codec = Codec::new(version, limits.max_packet_size);
                if let Some(frame) = codec.decode(&mut io.rbuf)? {
                    return Ok((codec, frame.packet));
                }
            }
            Ok(None) => {}
            Err(CodecError::UnsupportedVersion(v)) => {
                // Answer in the v3.1.1 format every client version understands [MQTT-3.1.2-2].
                let codec = Codec::new(Version::V311, limits.max_packet_size);
                let ack = ConnAck {
                    session_present: false,
                    code: ConnectReturnCode::RefusedProtocolVersion,
                };
                codec.encode(Packet::ConnAck(ack, None), &mut io.wbuf)?;
                io.flush().await?;
                return Err(CodecError::UnsupportedVersion(v).into());
            }
            Err(e) => return Err(e.into()),
        }
        io.fill().await?;
    }
}

struct ConnectInfo {
    connect: Connect,
    props: Option<ConnectProperties>,
    will: Option<Will>,
    login: Option<Login>,
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
    outgoing_order: VecDeque<(u16, Option<Packet>)>,
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

async fn run_connected<R, W>(
    mut io: Io<R, W>,
    codec: Codec,
    info: ConnectInfo,
    meta: ConnMeta,
    broker: Arc<Broker>,
) where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    let v5 = codec.version == Version::V5;
    let refuse = |code: ConnectReturnCode| ConnAck {
        session_present: false,
        code,
    };
    let mut connect = info.connect;
    let mut assigned = None;
    if connect.client_id.is_empty() {
        if !connect.clean_session {
            let code = ConnectReturnCode::ClientIdentifierNotValid;
            let _ = refuse_connect(
                &mut io,
                &codec,
                refuse(code),
                "empty client id needs clean start",
            )
            .await;
            return;
        }
        connect.client_id = format!("mw-{:016x}", rand::random::<u64>());
        assigned = Some(connect.client_id.clone());
    }
    if !valid_client_id(&connect.client_id) {
        broker.metrics.dropped(DropReason::Protocol, 1);
        let _ = refuse_connect(
            &mut io,
            &codec,
            refuse(ConnectReturnCode::ClientIdentifierNotValid),
            "client id must not contain + # / $ or be reserved",
        )
        .await;
        return;
    }
    let peer = meta.peer;
    if let Some((code, why)) = connect_violation(&info.will, &info.props, v5) {
        broker.metrics.dropped(DropReason::Protocol, 1);
        if v5 {
            let _ = refuse_connect(&mut io, &codec, refuse(code), why).await;
        }
        tracing::debug!(%peer, why, "CONNECT refused");
        return;
    }
    if info
        .props
        .as_ref()
        .is_some_and(|p| p.authentication_method.is_some())
    {
        // No enhanced authentication method is configured [MQTT-4.12.0-1].
        let ack = refuse(ConnectReturnCode::BadAuthenticationMethod);
        let _ = refuse_connect(
            &mut io,
            &codec,
            ack,
            "enhanced authentication is not supported",
        )
        .await;
        return;
    }
    let login = info
        .login
        .as_ref()
        .map(|l| (l.username.as_str(), l.password.as_bytes()));
    let username = match broker
        .auth
        .authenticate(peer.ip(), login, meta.cert_identity.as_deref())
        .await
    {
        Ok(u) => u,
        Err(e) => {
            tracing::info!(%peer, client_id = connect.client_id, error = %e, "connection refused");
            let code = match e {
                AuthError::BadCredentials => ConnectReturnCode::BadUserNamePassword,
                AuthError::NotAuthorized => ConnectReturnCode::NotAuthorized,
            };
            let _ = refuse_connect(&mut io, &codec, refuse(code), &e.to_string()).await;
            return;
        }
    };
    if let Some(engine) = &broker.blocks {
        let info = crate::blocks::ConnectInfo {
            client_id: connect.client_id.clone(),
            username: username.clone(),
            peer,
            cert_subject: meta.cert_subject.clone(),
        };
        if let Err(reason) = engine.on_connect(info).await {
            tracing::info!(%peer, client_id = connect.client_id, reason, "connection refused by a connect block");
            broker.metrics.dropped(DropReason::AuthFailed, 1);
            let ack = refuse(ConnectReturnCode::NotAuthorized);
            let _ = refuse_connect(&mut io, &codec, ack, &reason).await;
            return;
        }
    }
    // Count the link before asking the router: over the limit the router drops the connect
    // silently, so the edge answers instead.
    if broker.links.fetch_add(1, Relaxed) >= broker.limits.max_connections {
        broker.links.fetch_sub(1, Relaxed);
        broker.metrics.dropped(DropReason::ConnectionLimit, 1);
        let code = unavailable(v5);
        let _ = refuse_connect(
            &mut io,
            &codec,
            refuse(code),
            "server connection limit reached",
        )
        .await;
        return;
    }
    let client_id = connect.client_id.clone();
    let registration = broker.registry.register(&client_id, TAKEOVER_WAIT).await;
    let filters = broker
        .registry
        .restore_filters(&client_id, connect.clean_session);
    // Session lifetime. v3.1.1: clean → ends at disconnect, persistent → forever. v5: the
    // Session Expiry Interval (absent = 0) [MQTT-3.1.2-23].
    let expiry = match (&codec.version, &info.props) {
        (Version::V311, _) => {
            if connect.clean_session {
                0
            } else {
                u32::MAX
            }
        }
        (Version::V5, props) => props
            .as_ref()
            .and_then(|p| p.session_expiry_interval)
            .unwrap_or(0),
    };
    // The router's one flag both discards an old session at connect and skips saving at
    // disconnect. A v5 clean start with a session to keep needs both halves separately: end the
    // old session first, then connect persistently.
    let router_clean = connect.clean_session && expiry == 0;
    if connect.clean_session && expiry > 0 {
        end_router_session(&broker, &client_id).await;
    }
    let connected = match broker.router.connect(client_id.clone(), router_clean).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(%peer, client_id, error = %e, "router refused connection");
            broker.links.fetch_sub(1, Relaxed);
            broker.registry.release(&client_id, registration.generation);
            let code = unavailable(v5);
            let _ = refuse_connect(
                &mut io,
                &codec,
                refuse(code),
                "router refused the connection",
            )
            .await;
            return;
        }
    };
    let resume = match &broker.store {
        Some(store) => {
            store
                .session_connected(&client_id, expiry > 0, connect.clean_session, expiry)
                .await
        }
        None => Ok(Default::default()),
    };
    let resume: crate::store::Resume = match resume {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(%peer, client_id, error = %e, "store refused the session");
            connected.link.disconnect().await;
            broker.links.fetch_sub(1, Relaxed);
            broker.registry.release(&client_id, registration.generation);
            let _ = refuse_connect(
                &mut io,
                &codec,
                refuse(unavailable(v5)),
                "store unavailable",
            )
            .await;
            return;
        }
    };
    let props = info.props.unwrap_or(ConnectProperties {
        session_expiry_interval: None,
        receive_maximum: None,
        max_packet_size: None,
        topic_alias_max: None,
        request_response_info: None,
        request_problem_info: None,
        user_properties: vec![],
        authentication_method: None,
        authentication_data: None,
    });
    let ack_props = v5.then(|| ConnAckProperties {
        assigned_client_identifier: assigned,
        max_packet_size: Some(broker.limits.max_packet_size as u32),
        receive_max: Some(broker.limits.receive_maximum),
        retain_available: Some(1),
        topic_alias_max: Some(TOPIC_ALIAS_MAX),
        shared_subscription_available: Some(1),
        wildcard_subscription_available: Some(1),
        ..Default::default()
    });
    let ack = ConnAck {
        session_present: connected.session_present || resume.restored.is_some(),
        code: ConnectReturnCode::Success,
    };
    let receive_max = props.receive_maximum.unwrap_or(u16::MAX);
    let mut link = connected.link;
    let mut session = Session {
        io,
        codec,
        broker: broker.clone(),
        client_id: client_id.clone(),
        username,
        peer,
        rate: RateLimit::new(&broker.limits),
        will: info.will,
        keep_alive: Duration::from_secs(connect.keep_alive as u64),
        expiry,
        router_persistent: !router_clean,
        aliases: HashMap::new(),
        unacked_in_batch: 0,
        outgoing_order: VecDeque::new(),
        no_local: HashSet::new(),
        qos2_subs: HashSet::new(),
        rap_subs: HashSet::new(),
        request_problem_info: props.request_problem_info != Some(0),
        qos2_incoming: HashSet::new(),
        filters,
        pending_suback: HashMap::new(),
        pending_unsuback: HashMap::new(),
        to_router: VecDeque::new(),
        acks: Vec::new(),
        tickets: Vec::new(),
        staged: None,
        unacked_staged: 0,
        replay: Default::default(),
        pending_retained: HashMap::new(),
        internal_subacks: 0,
        store_offline_done: false,
        edge_qos2: HashSet::new(),
        downgraded2: HashSet::new(),
        client_inflight: 0,
        client_receive_max: receive_max.max(1) as usize,
        held: VecDeque::new(),
        client_max_packet: props.max_packet_size.map(|m| m as usize),
        stored_inflight: HashMap::new(),
    };
    broker.metrics.connections.fetch_add(1, Relaxed);
    broker.metrics.connections_total.fetch_add(1, Relaxed);
    tracing::debug!(%peer, client_id, version = ?session.codec.version, "client connected");

    let result = match session.resume(&mut link, resume, receive_max).await {
        Ok(()) => session
            .codec
            .encode(Packet::ConnAck(ack, ack_props), &mut session.io.wbuf)
            .map_err(SessionError::from)
            .and_then(|_| session.send_replay()),
        Err(e) => Err(e),
    };
    let result = match result {
        Ok(_) => match session.io.flush().await {
            Ok(_) => session.run(&mut link, registration.kicked).await,
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    let err = match result {
        Ok(()) => SessionError::Closed,
        Err(e) => e,
    };
    note_failure(&broker, &err);
    session.close(err, link).await;
    broker.registry.release(&client_id, registration.generation);
    broker.links.fetch_sub(1, Relaxed);
    broker.metrics.connections.fetch_sub(1, Relaxed);
    drop(registration.done);
}

/// Publishes a will after `delay` (now when zero), unless its client comes back first
/// [MQTT-3.1.3-9]; clears it from the store once published.
pub fn schedule_will(broker: Arc<Broker>, msg: Message, delay: Duration) {
    let client_id = msg.origin.client_id.clone();
    let cancel = (!delay.is_zero()).then(|| broker.registry.pending_will(&client_id));
    tokio::spawn(async move {
        if let Some(cancel) = cancel {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = broker.shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        broker.publish(msg).await;
        if let Some(store) = &broker.store {
            store.set_pending_will(&client_id, None);
        }
    });
}

/// Ends the offline session of `client_id` after `after`, unless the client comes back first.
pub fn schedule_expiry(broker: Arc<Broker>, client_id: String, after: Duration) {
    let cancel = broker.registry.pending_expiry(&client_id);
    tokio::spawn(async move {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = broker.shutdown.cancelled() => return,
            _ = tokio::time::sleep(after) => {}
        }
        // Only if nobody took the id meanwhile; a client arriving now waits for us.
        if let Some(reg) = broker.registry.register_if_idle(&client_id) {
            end_router_session(&broker, &client_id).await;
            if let Some(store) = &broker.store {
                store.session_ended(&client_id);
            }
            broker.registry.release(&client_id, reg.generation);
            tracing::debug!(client_id, "session expired");
        }
    });
}

/// Ends the router's saved session for `client_id` (if any): connecting with clean start
/// discards it, and a clean link is not saved when it disconnects. Callers hold the client id
/// in the registry, so no real client races with the throwaway link.
pub(super) async fn end_router_session(broker: &Broker, client_id: &str) {
    match broker.router.connect(client_id.to_string(), true).await {
        Ok(c) => c.link.disconnect().await,
        Err(e) => tracing::warn!(client_id, error = %e, "could not end an expired session"),
    }
    broker.registry.restore_filters(client_id, true);
}

async fn refuse_connect<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    io: &mut Io<R, W>,
    codec: &Codec,
    ack: ConnAck,
    reason: &str,
) -> Result<(), SessionError> {
    let props = (codec.version == Version::V5).then(|| ConnAckProperties {
        reason_string: Some(reason.to_string()),
        ..Default::default()
    });
    codec.encode(Packet::ConnAck(ack, props), &mut io.wbuf)?;
    io.flush().await?;
    let _ = io.writer.shutdown().await;
    Ok(())
}

/// "Server unavailable" in each version's vocabulary (v5 0x88, v3.1.1 3).
fn unavailable(v5: bool) -> ConnectReturnCode {
    if v5 {
        ConnectReturnCode::ServerUnavailable
    } else {
        ConnectReturnCode::ServiceUnavailable
    }
}

/// What a well-formed CONNECT may still get wrong: a will topic that is not a topic name
/// [MQTT-3.1.3-11] [MQTT-4.7.3-1], and v5 properties with values the specification forbids
/// (Receive Maximum or Maximum Packet Size 0, Request Problem/Response Information above 1,
/// Authentication Data without a method).
fn connect_violation(
    will: &Option<Will>,
    props: &Option<ConnectProperties>,
    v5: bool,
) -> Option<(ConnectReturnCode, &'static str)> {
    if let Some((will, _)) = will {
        let ok = std::str::from_utf8(&will.topic)
            .is_ok_and(|t| !t.is_empty() && !t.contains(['+', '#', '\0']));
        if !ok {
            let code = if v5 {
                ConnectReturnCode::TopicNameInvalid
            } else {
                ConnectReturnCode::ServiceUnavailable
            };
            return Some((code, "the will topic is not a valid topic name"));
        }
    }
    let p = props.as_ref()?;
    let bad = p.receive_maximum == Some(0)
        || p.max_packet_size == Some(0)
        || p.request_problem_info.is_some_and(|v| v > 1)
        || p.request_response_info.is_some_and(|v| v > 1)
        || (p.authentication_data.is_some() && p.authentication_method.is_none());
    bad.then_some((
        ConnectReturnCode::ProtocolError,
        "a CONNECT property has a value the protocol forbids",
    ))
}

fn valid_client_id(id: &str) -> bool {
    id != INTERNAL_CLIENT_ID && !id.contains(['+', '#', '/', '$']) && !id.contains('\0')
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
        let mut pending: Vec<Pending> = Vec::new();
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
            self.codec.encode(ack, &mut self.io.wbuf)?;
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
            Packet::PubAck(a, _) => {
                let pkid = a.pkid;
                if !self.replay_ack(pkid, durable::AckKind::Ack)? {
                    self.client_acked(pkid, Packet::PubAck(a, None));
                }
                Ok(())
            }
            Packet::PubRec(a, _) => {
                let pkid = a.pkid;
                if !self.replay_ack(pkid, durable::AckKind::Rec)? {
                    self.client_acked(pkid, Packet::PubRec(a, None));
                }
                Ok(())
            }
            Packet::PubComp(a, _) => {
                if !self.replay_ack(a.pkid, durable::AckKind::Comp)? {
                    self.client_done();
                    self.to_router.push_back(Packet::PubComp(a, None));
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

    async fn handle_subscribe(&mut self, mut sub: Subscribe, props: Option<SubscribeProperties>) {
        let mut codes: Vec<Option<SubscribeReasonCode>> = Vec::with_capacity(sub.filters.len());
        let mut accepted = Vec::with_capacity(sub.filters.len());
        let mut news = HashSet::new();
        let v5 = self.codec.version == Version::V5;
        let fail = |v5_code| {
            if v5 {
                v5_code
            } else {
                SubscribeReasonCode::Failure
            }
        };
        let principal = Principal {
            username: self.username.as_deref(),
            client_id: &self.client_id,
            admin: self.broker.auth.is_admin(self.username.as_deref()),
        };
        let acl = self.broker.auth.acl();
        for f in sub.filters.drain(..) {
            let new = !self.filters.contains(&f.path);
            let code =
                if !valid_filter(&f.path) || f.path.len() > self.broker.limits.max_topic_length {
                    Some(fail(SubscribeReasonCode::TopicFilterInvalid))
                } else if !acl.can_subscribe(&principal, &f.path) {
                    self.broker.metrics.dropped(DropReason::AclDenied, 1);
                    Some(fail(SubscribeReasonCode::NotAuthorized))
                } else if f.path.starts_with('$') && !f.path.starts_with("$share/") {
                    // No `$` topics are served yet, and the router refuses such filters.
                    Some(fail(SubscribeReasonCode::TopicFilterInvalid))
                } else if f.path.starts_with("$share/") && !valid_shared(&f.path) {
                    Some(fail(SubscribeReasonCode::TopicFilterInvalid))
                } else if new && self.filters.len() >= self.broker.limits.max_subscriptions {
                    Some(fail(SubscribeReasonCode::QuotaExceeded))
                } else {
                    None
                };
            if code.is_none() {
                if new {
                    news.insert(f.path.clone());
                }
                self.filters.insert(f.path.clone());
                accepted.push(f);
            }
            codes.push(code);
        }
        drop(acl);
        if let Some(engine) = self.broker.blocks.clone() {
            // Subscribe blocks may refuse filters the static checks allowed.
            let mut kept = Vec::with_capacity(accepted.len());
            let mut slots = codes.iter_mut().filter(|c| c.is_none());
            for f in accepted {
                let client = crate::blocks::ClientInfo {
                    client_id: self.client_id.clone(),
                    username: self.username.clone(),
                    peer: Some(self.peer),
                };
                let verdict = engine.on_subscribe(client, f.path.clone()).await;
                let slot = slots.next();
                match verdict {
                    Ok(()) => kept.push(f),
                    Err(reason) => {
                        tracing::debug!(
                            client_id = self.client_id,
                            filter = f.path,
                            reason,
                            "subscribe refused by a block"
                        );
                        self.filters.remove(&f.path);
                        if let Some(slot) = slot {
                            *slot = Some(fail(SubscribeReasonCode::NotAuthorized));
                        }
                    }
                }
            }
            accepted = kept;
        }
        if let Some(store) = self.persistent_store() {
            let id = props.as_ref().and_then(|p| p.id);
            let add: Vec<_> = accepted
                .iter()
                .map(|f| durable::stored_filter(f, id))
                .collect();
            let t = store.set_filters(&self.client_id, &add, &[]);
            self.hold_ack(Some(t));
        }
        for f in &accepted {
            let (no_local, qos2, rap) = (
                v5 && f.nolocal,
                f.qos == QoS::ExactlyOnce,
                v5 && f.preserve_retain,
            );
            self.note_options(&f.path, no_local, qos2, rap);
        }
        if accepted.is_empty() {
            let return_codes = codes.into_iter().flatten().collect();
            self.acks.push(Packet::SubAck(
                SubAck {
                    pkid: sub.pkid,
                    return_codes,
                },
                None,
            ));
            return;
        }
        if codes.iter().any(Option::is_some) {
            self.pending_suback.insert(sub.pkid, codes);
        }
        // Retained messages per Retain Handling [MQTT-3.3.1-9..11]; none for shared
        // subscriptions [MQTT-4.8.2-?] (sent after the SUBACK, see `release_retained`).
        let retained: Vec<(String, u8)> = accepted
            .iter()
            .filter(|f| !f.path.starts_with("$share/"))
            .filter(|f| match f.retain_forward_rule {
                RetainForwardRule::OnEverySubscribe => true,
                RetainForwardRule::OnNewSubscribe => news.contains(&f.path),
                RetainForwardRule::Never => false,
            })
            .map(|f| (f.path.clone(), f.qos as u8))
            .collect();
        if !retained.is_empty() && !self.broker.retained.is_empty() {
            let id = props.as_ref().and_then(|p| p.id);
            self.pending_retained.insert(sub.pkid, (retained, id));
        }
        // The router keeps the first subscription's options for a filter subscribed again;
        // an identical filter must replace them [MQTT-3.8.4-3]. Unsubscribing first, in the
        // same batch, makes the router apply the new ones (its UNSUBACK, packet id 0, is not
        // forwarded).
        let again: Vec<String> = accepted
            .iter()
            .filter(|f| !news.contains(&f.path))
            .map(|f| crate::router::router_filter(&f.path))
            .collect();
        if !again.is_empty() {
            self.to_router.push_back(Packet::Unsubscribe(
                Unsubscribe {
                    pkid: 0,
                    filters: again,
                },
                None,
            ));
        }
        sub.filters = accepted
            .into_iter()
            .map(|mut f| {
                f.path = crate::router::router_filter(&f.path);
                f
            })
            .collect();
        self.to_router.push_back(Packet::Subscribe(sub, props));
    }

    /// Records which options a filter was subscribed with, here and in the broker-wide
    /// `Interests` (a filter subscribed again replaces its options).
    pub(super) fn note_options(&mut self, path: &str, no_local: bool, qos2: bool, rap: bool) {
        let i = &self.broker.interest;
        for (set, counts, wants) in [
            (&mut self.no_local, &i.no_local, no_local),
            (&mut self.qos2_subs, &i.qos2, qos2),
            (&mut self.rap_subs, &i.retain_as_published, rap),
        ] {
            if wants && set.insert(path.to_string()) {
                counts.add(path);
            } else if !wants && set.remove(path) {
                counts.remove(path);
            }
        }
    }

    /// The store, when this session's state outlives the connection.
    fn persistent_store(&self) -> Option<Arc<crate::store::Store>> {
        self.broker.store.clone().filter(|_| self.router_persistent)
    }

    fn handle_unsubscribe(&mut self, unsub: Unsubscribe, props: Option<UnsubscribeProperties>) {
        let mut reasons = Vec::with_capacity(unsub.filters.len());
        let mut expected = 0;
        for f in &unsub.filters {
            self.note_options(f, false, false, false);
            if self.filters.remove(f) {
                expected += 1;
                reasons.push(UnsubAckReason::Success);
            } else {
                reasons.push(UnsubAckReason::NoSubscriptionExisted);
            }
        }
        if let Some(store) = self.persistent_store() {
            let t = store.set_filters(&self.client_id, &[], &unsub.filters);
            self.hold_ack(Some(t));
        }
        if expected == 0 {
            self.acks
                .push(unsuback(unsub.pkid, reasons, self.codec.version));
            return;
        }
        // The router acks each filter it removed, and only those; answer after the last.
        self.pending_unsuback
            .insert(unsub.pkid, (expected, reasons));
        let mut unsub = unsub;
        for f in unsub.filters.iter_mut() {
            *f = crate::router::router_filter(f);
        }
        self.to_router.push_back(Packet::Unsubscribe(unsub, props));
    }
}
