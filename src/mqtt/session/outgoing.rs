//! The outgoing half of a session — what the router sends a client — and how a session ends.

use super::resend::{Carry, Owed, Shown};
use super::*;
use bytes::BufMut;

/// A router QoS 1/2 delivery whose ack the router has not had yet (it takes acks only in the
/// order it sent the publishes).
pub(super) struct Delivery {
    /// The router's packet id.
    pkid: u16,
    /// The ack to hand the router once every earlier one went.
    ack: Option<Packet>,
    /// What the client was sent, for a resend after a reconnect (persistent sessions; `None`
    /// for deliveries the edge finished itself).
    shown: Option<Shown>,
}

/// What the edge does with one delivery, decided from its metadata.
#[derive(Debug, Default)]
pub(super) struct Fate {
    /// Not for this client (own message on No Local).
    withhold: bool,
    /// The QoS it was published at, when the metadata says (QoS 1 on a QoS 2 subscription).
    published_qos: Option<u8>,
    /// Its sequence in the store's offline queues, when it was queued there.
    stored: Option<u64>,
    /// Topic and payload as the router's log holds them (persistent sessions), to recognise
    /// the message when the router sends it again after a reconnect.
    msg: Option<(Bytes, Bytes)>,
    /// When the message expires (Unix ms), from the metadata.
    expires_at: Option<u64>,
}

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    pub(super) async fn handle_outgoing(
        &mut self,
        link: &mut Link,
        first: Outbound,
    ) -> Result<(), SessionError> {
        let mut next = Some(first);
        let mut unscheduled = false;
        let mut written = 0;
        let mut publishes = 0u64;
        while let Some(out) = next.take() {
            match out {
                Outbound::Unscheduled => unscheduled = true,
                Outbound::Nothing => {}
                Outbound::Publish(publish, props) => {
                    publishes += 1;
                    self.deliver(publish, props);
                }
                Outbound::Packet(p) => self.write_control(*p).await?,
            }
            written += 1;
            if written < WRITE_BATCH {
                next = link.try_recv()?;
            }
        }
        self.broker
            .metrics
            .messages_out
            .fetch_add(publishes, Relaxed);
        // Acks the edge gave on the client's behalf that are now in order.
        link.send_batch(&mut self.to_router).await?;
        let n = self.io.flush().await?;
        self.broker.metrics.bytes_out.fetch_add(n as u64, Relaxed);
        if unscheduled {
            link.wake().await?;
        }
        Ok(())
    }

    /// Writes a packet other than a delivery, as `outgoing_packet` adjusts it.
    async fn write_control(&mut self, p: Packet) -> Result<(), SessionError> {
        let Some(p) = self.outgoing_packet(p) else {
            return Ok(());
        };
        let max = self.client_max_packet;
        if let Packet::Disconnect(..) = p {
            self.codec.encode_within(p, max, &mut self.io.wbuf)?;
            self.io.flush().await?;
            return Err(SessionError::Protocol("router disconnected the client"));
        }
        let suback = match &p {
            Packet::SubAck(a, _) => Some(a.pkid),
            _ => None,
        };
        if let Err(e) = self.codec.encode_within(p, max, &mut self.io.wbuf) {
            tracing::warn!(client_id = self.client_id, error = %e, "dropping unencodable packet");
        } else if let Some(pkid) = suback {
            self.release_retained(pkid)?;
        }
        Ok(())
    }

    /// Writes one delivery to the client (or withholds it; see `settle_outgoing_publish`).
    /// The message is moved once, into the encoder.
    fn deliver(&mut self, mut publish: Publish, props: Option<Box<PublishProperties>>) {
        let mut props = props.map(|p| *p);
        crate::router::client_topic(&mut publish);
        let mut fate = self.take_meta(&mut publish, &mut props);
        if self.router_persistent {
            fate.msg = Some((publish.topic.clone(), publish.payload.clone()));
        }
        if let Some(at) = fate.expires_at {
            let now = crate::pipeline::now_ms();
            if at > now {
                // The remaining interval, rounded up so it never reads as already expired
                // [MQTT-3.3.2-6].
                let left = u32::try_from((at - now).div_ceil(1000)).unwrap_or(u32::MAX);
                props
                    .get_or_insert_with(Default::default)
                    .message_expiry_interval = Some(left);
            } else if !fate.msg.as_ref().is_some_and(|m| self.pkids.carries(m)) {
                // Expired before onward delivery started [MQTT-3.3.2-5]; a resend of one the
                // client was already sent still goes out [MQTT-4.3.3-7].
                self.broker.metrics.dropped(DropReason::Expired, 1);
                fate.withhold = true;
            }
        }
        let start = self.io.wbuf.len();
        match self.codec.encode_publish(publish, props, &mut self.io.wbuf) {
            Ok(_) => self.settle_outgoing_publish(start, fate),
            Err(e) => {
                tracing::warn!(client_id = self.client_id, error = %e, "dropping unencodable publish");
            }
        }
    }

    /// Removes the reserved properties from a publish and decides what they mean for this
    /// session: its own message on a No Local subscription [MQTT-3.8.3-3], the retain flag for
    /// Retain As Published [MQTT-3.3.1-12], and the published QoS [MQTT-3.8.4-8].
    fn take_meta(&self, publish: &mut Publish, props: &mut Option<PublishProperties>) -> Fate {
        let mut fate = Fate::default();
        if props.is_none() {
            // Nothing reserved can be on it; the common case costs nothing more.
            return fate;
        }
        let meta = crate::mqtt::interest::take_meta(props);
        if meta == Default::default() {
            return fate;
        }
        let topic = std::str::from_utf8(&publish.topic).unwrap_or_default();
        let matches = |set: &HashSet<String>| {
            set.iter().any(|f| {
                crate::pipeline::filter_matches(crate::mqtt::interest::matched_filter(f), topic)
            })
        };
        fate.withhold =
            meta.origin.as_deref() == Some(self.client_id.as_str()) && matches(&self.no_local);
        if meta.retain && matches(&self.rap_subs) {
            publish.retain = true;
        }
        fate.published_qos = meta.qos;
        fate.stored = meta.stored;
        fate.expires_at = meta.expires_at;
        fate
    }

    /// Looks at a publish just encoded at `start` in the write buffer: clears the QoS-0 mark,
    /// delivers at min(published, subscribed) QoS [MQTT-3.8.4-8], withholds what must not
    /// reach the client (its own message on No Local, expired, larger than the client's
    /// Maximum Packet Size [MQTT-3.1.2-25]) completing the flow with the router in its place,
    /// holds QoS 1/2 publishes beyond the client's Receive Maximum [MQTT-3.3.4-9], and records
    /// the ack order the router expects.
    fn settle_outgoing_publish(&mut self, start: usize, fate: Fate) {
        let buf = &mut self.io.wbuf;
        let Some(&byte1) = buf.get(start) else { return };
        let marked = byte1 & QOS0_MARK != 0;
        if marked {
            buf[start] &= !QOS0_MARK;
        }
        let qos = (byte1 >> 1) & 0b11;
        let too_big = self
            .client_max_packet
            .is_some_and(|max| buf.len() - start > max);
        if too_big {
            self.broker.metrics.dropped(DropReason::PacketTooLarge, 1);
        }
        let withhold = fate.withhold || too_big;
        if qos == 0 {
            if withhold {
                buf.truncate(start);
            }
            return;
        }
        // Fixed header: byte 1, then the remaining length (1–4 bytes).
        let mut hlen = 1;
        let mut rlen = 0usize;
        while let Some(&b) = buf.get(start + hlen) {
            rlen |= ((b & 0x7F) as usize) << (7 * (hlen - 1));
            hlen += 1;
            if b & 0x80 == 0 || hlen > 4 {
                break;
            }
        }
        let body = start + hlen;
        let (Some(&t0), Some(&t1)) = (buf.get(body), buf.get(body + 1)) else {
            return;
        };
        let pk_at = body + 2 + u16::from_be_bytes([t0, t1]) as usize;
        let (Some(&p0), Some(&p1)) = (buf.get(pk_at), buf.get(pk_at + 1)) else {
            return;
        };
        let pkid = u16::from_be_bytes([p0, p1]);
        if let Some(seq) = fate.stored {
            self.stored_inflight.insert(pkid, seq);
        }
        if withhold {
            buf.truncate(start);
            self.complete_for_client(pkid, qos);
            self.release_stored(pkid);
            return;
        }
        if marked {
            // Published at QoS 0: rewrite as QoS 0 (same topic, properties and payload, no
            // packet id) and finish the router's flow in the client's place.
            let rest = buf.split_off(start);
            buf.put_u8(0x30 | (rest[0] & 0x01));
            let mut n = rlen - 2;
            loop {
                let mut b = (n % 128) as u8;
                n /= 128;
                if n > 0 {
                    b |= 0x80;
                }
                buf.put_u8(b);
                if n == 0 {
                    break;
                }
            }
            buf.extend_from_slice(&rest[hlen..pk_at - start]);
            buf.extend_from_slice(&rest[pk_at - start + 2..]);
            self.complete_for_client(pkid, qos);
            self.release_stored(pkid);
            return;
        }
        let assigned = self.pkids.assign(pkid, fate.msg.as_ref());
        let client_pkid = assigned.client_pkid;
        match assigned.owed {
            Some(Owed::Nothing) => {
                // Acknowledged by the client on an earlier connection.
                buf.truncate(start);
                self.complete_for_client(pkid, qos);
                self.release_stored(pkid);
                return;
            }
            Some(Owed::PubRel) => {
                // The client sent PUBREC on an earlier connection: it is owed the PUBREL
                // [MQTT-4.4.0-1], and the router the PUBREC.
                buf.truncate(start);
                let rel = Packet::PubRel(
                    PubRel {
                        pkid: client_pkid,
                        reason: PubRelReason::Success,
                    },
                    None,
                );
                if let Err(e) = self.codec.encode(rel, &mut self.io.wbuf) {
                    tracing::warn!(client_id = self.client_id, error = %e, "dropping unencodable PUBREL");
                }
                self.rel_sent.insert(pkid);
                self.client_inflight += 1;
                let ack = PubRec {
                    pkid,
                    reason: PubRecReason::Success,
                };
                self.queue_delivery(pkid, client_pkid, Some(Packet::PubRec(ack, None)), fate.msg);
                self.release_stored(pkid);
                self.release_acks();
                return;
            }
            Some(Owed::Publish) => {
                // A resend [MQTT-3.3.1-1].
                buf[start] |= 0x08;
            }
            None => {}
        }
        if client_pkid != pkid {
            buf[pk_at..pk_at + 2].copy_from_slice(&client_pkid.to_be_bytes());
        }
        if qos == 2 && fate.published_qos == Some(1) {
            // Published at QoS 1 to a QoS 2 subscription: the client gets QoS 1; its PUBACK
            // becomes the router's PUBREC.
            buf[start] = (buf[start] & !0b0110) | 0b0010;
            self.downgraded2.insert(pkid);
        }
        if self.client_inflight >= self.client_receive_max {
            let held = buf.split_off(start).freeze();
            self.held.push_back(held);
        } else {
            self.client_inflight += 1;
        }
        self.queue_delivery(pkid, client_pkid, None, fate.msg);
    }

    /// Records a delivery the client was sent in the router's ack order, with what a resend
    /// after a reconnect needs (`msg`, persistent sessions only).
    fn queue_delivery(
        &mut self,
        pkid: u16,
        client_pkid: u16,
        ack: Option<Packet>,
        msg: Option<(Bytes, Bytes)>,
    ) {
        let shown = msg.map(|(topic, payload)| Shown {
            client_pkid,
            topic,
            payload,
        });
        self.outgoing_order.push_back(Delivery { pkid, ack, shown });
    }

    /// The edge finishes the router's QoS 1/2 flow for a delivery the client did not get as
    /// such (withheld, or sent at QoS 0): PUBACK, or PUBREC then PUBCOMP when the router's
    /// PUBREL comes.
    fn complete_for_client(&mut self, pkid: u16, qos: u8) {
        let ack = if qos == 2 {
            self.edge_qos2.insert(pkid);
            Packet::PubRec(
                PubRec {
                    pkid,
                    reason: PubRecReason::Success,
                },
                None,
            )
        } else {
            Packet::PubAck(
                PubAck {
                    pkid,
                    reason: PubAckReason::Success,
                },
                None,
            )
        };
        self.outgoing_order.push_back(Delivery {
            pkid,
            ack: Some(ack),
            shown: None,
        });
        self.release_acks();
    }

    /// A QoS 1/2 delivery finished on the client's side: room for a held publish.
    pub(super) fn client_done(&mut self) {
        self.client_inflight = self.client_inflight.saturating_sub(1);
        while self.client_inflight < self.client_receive_max {
            let Some(p) = self.held.pop_front() else {
                break;
            };
            self.io.wbuf.extend_from_slice(&p);
            self.client_inflight += 1;
        }
    }

    /// The client acknowledged an outgoing publish (under its packet id `client_pkid`; `ack`
    /// carries the router's); hand acks to the router in its order.
    pub(super) fn client_acked(&mut self, client_pkid: u16, ack: Packet) {
        let ack = match ack {
            Packet::PubAck(a, _) if self.downgraded2.remove(&a.pkid) => {
                self.edge_qos2.insert(a.pkid);
                Packet::PubRec(
                    PubRec {
                        pkid: a.pkid,
                        reason: PubRecReason::Success,
                    },
                    None,
                )
            }
            Packet::PubRec(a, _) if !self.edge_qos2.contains(&a.pkid) => {
                if matches!(
                    a.reason,
                    PubRecReason::Success | PubRecReason::NoMatchingSubscribers
                ) {
                    // PUBREL at once [MQTT-4.3.3-4] (v5) [MQTT-4.3.3-1] (3.1.1): the router's
                    // own PUBREL only comes once it has this PUBREC, which may wait behind
                    // acks the client still owes for earlier deliveries.
                    self.rel_sent.insert(a.pkid);
                    self.acks.push(Packet::PubRel(
                        PubRel {
                            pkid: client_pkid,
                            reason: PubRelReason::Success,
                        },
                        None,
                    ));
                } else {
                    // A refusal ends the flow [MQTT-4.3.3-4]: no PUBREL for the client; the
                    // edge answers the router's.
                    self.edge_qos2.insert(a.pkid);
                }
                Packet::PubRec(a, None)
            }
            other => other,
        };
        let pkid = match &ack {
            Packet::PubAck(a, _) => a.pkid,
            Packet::PubRec(a, _) => a.pkid,
            _ => return,
        };
        if matches!(ack, Packet::PubAck(..)) || self.edge_qos2.contains(&pkid) {
            self.client_done();
        }
        // PUBACK, or PUBREC for QoS 2: the client has the message.
        self.release_stored(pkid);
        match self
            .outgoing_order
            .iter_mut()
            .find(|d| d.pkid == pkid && d.ack.is_none())
        {
            Some(entry) => entry.ack = Some(ack),
            // Not ours to order (e.g. resent after a reconnect): the router judges it.
            None => self.to_router.push_back(ack),
        }
        self.release_acks();
    }

    /// The client sent PUBCOMP for a router delivery (by the router's packet id). The router
    /// takes PUBCOMPs in the order it got the PUBRECs, and only after the PUBREC.
    pub(super) fn client_completed(&mut self, pkid: u16) {
        self.client_done();
        if let Some(entry) = self
            .comp_order
            .iter_mut()
            .find(|(p, done)| *p == pkid && !done)
        {
            entry.1 = true;
            self.release_comps();
        } else if self.rel_sent.contains(&pkid) {
            // Its PUBREC still waits in `outgoing_order`.
            self.comp_early.insert(pkid);
        } else {
            // Not ours to order: the router judges it.
            self.to_router.push_back(Packet::PubComp(
                PubComp {
                    pkid,
                    reason: PubCompReason::Success,
                },
                None,
            ));
        }
    }

    fn release_acks(&mut self) {
        while matches!(self.outgoing_order.front(), Some(d) if d.ack.is_some()) {
            let Some(Delivery { ack: Some(ack), .. }) = self.outgoing_order.pop_front() else {
                break;
            };
            if let Packet::PubRec(rec, _) = &ack {
                // The router now owes a PUBREL and takes a PUBCOMP, in this order.
                let done = self.comp_early.remove(&rec.pkid);
                self.comp_order.push_back((rec.pkid, done));
            }
            self.to_router.push_back(ack);
        }
        self.release_comps();
    }

    /// The edge completes a QoS 2 flow towards the router in the client's place.
    fn router_completed(&mut self, pkid: u16) {
        if let Some(entry) = self
            .comp_order
            .iter_mut()
            .find(|(p, done)| *p == pkid && !done)
        {
            entry.1 = true;
        }
        self.release_comps();
    }

    fn release_comps(&mut self) {
        while let Some(&(pkid, true)) = self.comp_order.front() {
            self.comp_order.pop_front();
            let reason = PubCompReason::Success;
            self.to_router
                .push_back(Packet::PubComp(PubComp { pkid, reason }, None));
        }
    }

    /// What this connection leaves for the next one of the session (see `resend`).
    pub(super) fn carry(&self) -> Carry {
        let mut carry = Carry::default();
        // Publishes held for the client's Receive Maximum are the newest unacknowledged ones;
        // the client never saw them, so they are plain deliveries next time.
        let mut unsent = self.held.len();
        let mut owed = Vec::new();
        for d in self.outgoing_order.iter().rev() {
            let Some(shown) = &d.shown else { continue };
            let what = match &d.ack {
                None if unsent > 0 => {
                    unsent -= 1;
                    continue;
                }
                None => Owed::Publish,
                Some(Packet::PubRec(..))
                    if self.rel_sent.contains(&d.pkid) && !self.comp_early.contains(&d.pkid) =>
                {
                    Owed::PubRel
                }
                Some(_) => Owed::Nothing,
            };
            owed.push((shown, what));
        }
        for (shown, what) in owed.into_iter().rev() {
            carry.push(shown, what);
        }
        for &(pkid, done) in &self.comp_order {
            let client =
                (!done && !self.edge_qos2.contains(&pkid)).then(|| self.pkids.client_pkid(pkid));
            carry.push_rel(pkid, client);
        }
        carry
    }

    /// Adjusts what the router sends before it reaches the client.
    fn outgoing_packet(&mut self, p: Packet) -> Option<Packet> {
        match p {
            Packet::SubAck(mut ack, props) => {
                if ack.pkid == 0 && self.internal_subacks > 0 {
                    // For a subscription restored from the store (see `durable`).
                    self.internal_subacks -= 1;
                    return None;
                }
                if let Some(codes) = self.pending_suback.remove(&ack.pkid) {
                    let mut routed = ack.return_codes.into_iter();
                    ack.return_codes = codes
                        .into_iter()
                        .map(|c| {
                            c.or_else(|| routed.next())
                                .unwrap_or(SubscribeReasonCode::Failure)
                        })
                        .collect();
                }
                Some(Packet::SubAck(ack, props))
            }
            Packet::UnsubAck(ack, _) => {
                let (left, _) = self.pending_unsuback.get_mut(&ack.pkid)?;
                *left -= 1;
                if *left > 0 {
                    return None;
                }
                let (_, reasons) = self.pending_unsuback.remove(&ack.pkid)?;
                Some(unsuback(ack.pkid, reasons, self.codec.version))
            }
            // The edge sent the client its PUBREL already (see `client_acked`).
            Packet::PubRel(rel, _) if self.rel_sent.remove(&rel.pkid) => None,
            Packet::PubRel(rel, _) if self.edge_qos2.remove(&rel.pkid) => {
                // A QoS 2 delivery the edge completed for the client.
                self.router_completed(rel.pkid);
                None
            }
            Packet::PubRel(mut rel, props) => {
                // A PUBREL the router resends for a flow of an earlier connection (or one it
                // was handed unordered): its PUBCOMP comes before any of this connection's.
                let pkid = rel.pkid;
                self.comp_order.push_back((pkid, false));
                match self.pkids.resent_rel(pkid) {
                    Some(None) => {
                        self.router_completed(pkid);
                        None
                    }
                    Some(Some(client_pkid)) => {
                        rel.pkid = client_pkid;
                        Some(Packet::PubRel(rel, props))
                    }
                    None => Some(Packet::PubRel(rel, props)),
                }
            }
            // Acks for client publishes and pings are the edge's job (see module docs).
            Packet::PubAck(..) | Packet::PubRec(..) | Packet::PubComp(..) | Packet::PingResp(_) => {
                None
            }
            other => Some(other),
        }
    }

    /// Ends the session: tells a v5 client why, fires the will when the close was abnormal,
    /// and hands the link back to the router.
    pub(super) async fn close(mut self, why: SessionError, link: Link) {
        let v5 = self.codec.version == Version::V5;
        let (reason, fire_will) = match &why {
            SessionError::Shutdown => (Some(DisconnectReasonCode::ServerShuttingDown), false),
            SessionError::TakenOver => (Some(DisconnectReasonCode::SessionTakenOver), true),
            SessionError::KeepAlive => (Some(DisconnectReasonCode::KeepAliveTimeout), true),
            SessionError::ClientDisconnect { with_will, .. } => (None, *with_will),
            SessionError::Codec(CodecError::TooLarge { .. }) => {
                (Some(DisconnectReasonCode::PacketTooLarge), true)
            }
            SessionError::Codec(CodecError::Auth | CodecError::Protocol(_)) => {
                (Some(DisconnectReasonCode::ProtocolError), true)
            }
            SessionError::Codec(_) => (Some(DisconnectReasonCode::MalformedPacket), true),
            SessionError::Protocol(_) => (Some(DisconnectReasonCode::ProtocolError), true),
            SessionError::TopicInvalid(_) => (Some(DisconnectReasonCode::TopicNameInvalid), true),
            SessionError::RateAbuse => (Some(DisconnectReasonCode::MessageRateTooHigh), true),
            SessionError::TopicAliasInvalid => {
                (Some(DisconnectReasonCode::TopicAliasInvalid), true)
            }
            SessionError::ReceiveMaximumExceeded => {
                (Some(DisconnectReasonCode::ReceiveMaximumExceeded), true)
            }
            _ => (None, true),
        };
        tracing::debug!(client_id = self.client_id, reason = %why, "session closing");
        if let (true, Some(code)) = (v5, reason) {
            let props = self.request_problem_info.then(|| DisconnectProperties {
                session_expiry_interval: None,
                reason_string: Some(why.to_string()),
                user_properties: vec![],
                server_reference: None,
            });
            let _ = self.codec.encode_within(
                Packet::Disconnect(Disconnect { reason_code: code }, props),
                self.client_max_packet,
                &mut self.io.wbuf,
            );
            let _ = tokio::time::timeout(Duration::from_secs(1), self.io.flush()).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.io.writer.shutdown()).await;
        // Offline in the store before the router link goes: a publish in between is then
        // queued durably as well as by the router (the copy is cleared on resume).
        if self.router_persistent && !matches!(why, SessionError::TakenOver) {
            self.store_offline_early(self.closing_expiry(&why));
        }
        link.disconnect().await;
        // After a takeover the new session owns the client id and may already be sending
        // chunks; its partial frames must survive the old session's close.
        if let (Some(media), false) = (&self.broker.media, matches!(why, SessionError::TakenOver)) {
            media.device_gone(&self.client_id);
        }
        let all: HashSet<String> = self
            .no_local
            .iter()
            .chain(&self.qos2_subs)
            .chain(&self.rap_subs)
            .cloned()
            .collect();
        for f in all {
            self.note_options(&f, false, false, false);
        }
        self.end_or_keep_session(&why).await;
        if let (true, Some(will)) = (fire_will, self.will.take()) {
            self.fire_will(will);
        }
    }

    /// The session expiry interval in force as the connection ends.
    pub(super) fn closing_expiry(&self, why: &SessionError) -> u32 {
        match why {
            // A v5 client may change the interval when it leaves, but not from 0 [MQTT-3.14.2-2].
            SessionError::ClientDisconnect {
                expiry: Some(e), ..
            } if self.expiry > 0 => *e,
            _ => self.expiry,
        }
    }

    /// Applies the session expiry: end the router's session now (0), keep it (never), or keep
    /// it and end it later unless the client comes back. After a takeover the session lives on
    /// in the new connection.
    async fn end_or_keep_session(&mut self, why: &SessionError) {
        if !self.router_persistent {
            if let Some(store) = &self.broker.store {
                store.session_ended(&self.client_id);
            }
            return;
        }
        if matches!(why, SessionError::TakenOver) {
            self.broker
                .registry
                .save_filters(&self.client_id, std::mem::take(&mut self.filters));
            self.broker
                .registry
                .save_carry(&self.client_id, self.carry());
            return;
        }
        let expiry = self.closing_expiry(why);
        self.store_disconnected(expiry).await;
        if expiry == 0 {
            super::end_router_session(&self.broker, &self.client_id).await;
            return;
        }
        self.broker
            .registry
            .save_filters(&self.client_id, std::mem::take(&mut self.filters));
        // After an unfinished replay the router's session was ended (`store_disconnected`):
        // it re-sends nothing, so there is nothing to carry.
        if self.replay.is_empty() {
            self.broker
                .registry
                .save_carry(&self.client_id, self.carry());
        }
        if expiry == u32::MAX {
            return;
        }
        super::schedule_expiry(
            self.broker.clone(),
            self.client_id.clone(),
            Duration::from_secs(expiry as u64),
        );
    }

    fn fire_will(&self, (will, props): Will) {
        let delay = props.as_ref().and_then(|p| p.delay_interval).unwrap_or(0);
        let msg = Message {
            topic: String::from_utf8_lossy(&will.topic).into_owned(),
            payload: will.message.clone(),
            qos: will.qos as u8,
            retain: will.retain,
            props: props.map(will_props).unwrap_or_default(),
            origin: Origin {
                client_id: self.client_id.clone(),
                username: self.username.clone(),
                hop: 0,
            },
            received_at: now_ms(),
        };
        // A delayed will of a session that outlives the connection survives a restart.
        if let (true, Some(store)) = (delay > 0 && self.router_persistent, &self.broker.store) {
            let props = props_to_router(&msg.props);
            if let Ok(frame) =
                crate::store::record::encode_frame(&msg.topic, &msg.payload, msg.retain, props)
            {
                let will = crate::store::PendingWill {
                    message: crate::store::record::message_record(msg.qos, msg.received_at, &frame),
                    fire_at_ms: msg.received_at + delay as u64 * 1000,
                    username: self.username.clone(),
                };
                store.set_pending_will(&self.client_id, Some(will));
            }
        }
        super::schedule_will(self.broker.clone(), msg, Duration::from_secs(delay as u64));
    }
}
