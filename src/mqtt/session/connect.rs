//! The CONNECT phase: reading and validating CONNECT, authentication and connect hooks,
//! limits, takeover, the router link, what the store resumes, and the CONNACK; plus the
//! timers that outlive a connection (session expiry, delayed wills).

use super::*;

pub(super) async fn read_connect<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    io: &mut Io<R, W>,
    limits: &SessionLimits,
) -> Result<(Codec, Packet), SessionError> {
    loop {
        match detect_version(&io.rbuf, limits.max_packet_size) {
            Ok(Some(version)) => {
                let codec = Codec::new(version, limits.max_packet_size);
                match codec.decode(&mut io.rbuf) {
                    Ok(Some(frame)) => return Ok((codec, frame.packet)),
                    Ok(None) => {}
                    Err(CodecError::Protocol(why)) if version == Version::V5 => {
                        // A v5 client learns why: CONNACK 0x82, then close [MQTT-4.13.1-1].
                        let ack = ConnAck {
                            session_present: false,
                            code: ConnectReturnCode::ProtocolError,
                        };
                        // The properties did not decode, so the client's maximum is unknown.
                        refuse_connect(io, &codec, ack, why, None).await?;
                        return Err(CodecError::Protocol(why).into());
                    }
                    Err(e) => return Err(e.into()),
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

/// What the CONNECT carried.
pub(super) struct ConnectInfo {
    pub(super) connect: Connect,
    pub(super) props: Option<ConnectProperties>,
    pub(super) will: Option<Will>,
    pub(super) login: Option<Login>,
}

pub(super) async fn run_connected<R, W>(
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
    let max = info
        .props
        .as_ref()
        .and_then(|p| p.max_packet_size)
        .map(|m| m as usize);
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
                max,
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
            max,
        )
        .await;
        return;
    }
    let peer = meta.peer;
    if let Some((code, why)) = connect_violation(&info.will, &info.props, v5) {
        broker.metrics.dropped(DropReason::Protocol, 1);
        if v5 {
            let _ = refuse_connect(&mut io, &codec, refuse(code), why, max).await;
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
            max,
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
            let _ = refuse_connect(&mut io, &codec, refuse(code), &e.to_string(), max).await;
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
            let _ = refuse_connect(&mut io, &codec, ack, &reason, max).await;
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
            max,
        )
        .await;
        return;
    }
    let client_id = connect.client_id.clone();
    let registration = broker.registry.register(&client_id, TAKEOVER_WAIT).await;
    let filters = broker
        .registry
        .restore_filters(&client_id, connect.clean_session);
    let carry = broker.registry.take_carry(&client_id);
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
                max,
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
                max,
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
        rel_sent: HashSet::new(),
        comp_order: VecDeque::new(),
        comp_early: HashSet::new(),
        // What the previous connection left only applies to the router session it left.
        pkids: match carry {
            Some(c) if connected.session_present => resend::Pkids::resume(c),
            _ => Default::default(),
        },
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
        pending: Vec::new(),
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

/// Sends the refusing CONNACK and closes; `max`: the client's Maximum Packet Size, if it sent
/// one, which the reason string must not push the CONNACK past [MQTT-3.2.2-19].
async fn refuse_connect<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    io: &mut Io<R, W>,
    codec: &Codec,
    ack: ConnAck,
    reason: &str,
    max: Option<usize>,
) -> Result<(), SessionError> {
    let props = (codec.version == Version::V5).then(|| ConnAckProperties {
        reason_string: Some(reason.to_string()),
        ..Default::default()
    });
    codec.encode_within(Packet::ConnAck(ack, props), max, &mut io.wbuf)?;
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
    let will_response_topic = will
        .as_ref()
        .and_then(|(_, p)| p.as_ref())
        .and_then(|p| p.response_topic.as_deref());
    if will_response_topic.is_some_and(|t| t.contains(['+', '#'])) {
        // The will is published with it unaltered [MQTT-3.3.2-15]; refused now [MQTT-3.3.2-14].
        return Some((
            ConnectReturnCode::ProtocolError,
            "the will's Response Topic has wildcards",
        ));
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
