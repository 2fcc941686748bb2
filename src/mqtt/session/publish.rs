//! The incoming publish path of a session: checks, the fast path, the pipeline for the
//! publishes of one read batch, and the acknowledgements.

use super::*;

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    /// Runs the pipeline for the pending publishes concurrently; applies outcomes in order.
    pub(super) async fn run_pending(&mut self, pending: &mut Vec<Pending>) {
        if pending.is_empty() {
            return;
        }
        let broker = self.broker.clone();
        let metas: Vec<(QoS, u16, bool)> =
            pending.iter().map(|p| (p.qos, p.pkid, p.tapped)).collect();
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(pending.len());
        let mut wanted = Vec::with_capacity(pending.len());
        for p in pending.drain(..) {
            if p.wants {
                outcomes.push(None);
                wanted.push(p.msg);
            } else {
                outcomes.push(Some(Outcome::Route(p.msg)));
            }
        }
        if !wanted.is_empty() {
            let mut decided = broker.pipeline.process_batch(wanted).await.into_iter();
            for slot in outcomes.iter_mut().filter(|o| o.is_none()) {
                *slot = decided.next();
            }
        }
        let outcomes = outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(crate::pipeline::no_verdict));
        for ((qos, pkid, tapped), outcome) in metas.into_iter().zip(outcomes) {
            let refused = match outcome {
                Outcome::Route(m) => {
                    let p = route_publish(&m.topic, &m.payload, false, qos_from(m.qos));
                    let mut props = props_to_router(&m.props);
                    let stored =
                        self.capture(&m.topic, &m.payload, m.qos, m.retain, props.as_ref());
                    let own = m.origin.hop == 0 && m.origin.client_id == self.client_id;
                    self.tag(&mut props, &m.topic, own, m.qos, m.retain, stored);
                    self.to_router.push_back(Packet::Publish(p, props));
                    if tapped {
                        broker.pipeline.after_publish(&m);
                    }
                    None
                }
                Outcome::Drop { code, reason } => {
                    broker.metrics.dropped(DropReason::Pipeline, 1);
                    Some((code, reason))
                }
                Outcome::Consume => None,
            };
            self.ack_publish(qos, pkid, refused);
        }
    }

    pub(super) fn check_topic(&self, topic: &[u8]) -> Result<(), SessionError> {
        let Ok(topic) = std::str::from_utf8(topic) else {
            return Err(SessionError::TopicInvalid("not UTF-8"));
        };
        if topic.is_empty() {
            return Err(SessionError::TopicInvalid("empty"));
        }
        if topic.contains(['+', '#', '\0']) {
            return Err(SessionError::TopicInvalid(
                "wildcards or NUL in a topic name",
            ));
        }
        if topic.len() > self.broker.limits.max_topic_length {
            return Err(SessionError::TopicInvalid(
                "longer than limits.max_topic_length",
            ));
        }
        if topic.split('/').count() > self.broker.limits.max_topic_levels {
            return Err(SessionError::TopicInvalid(
                "deeper than limits.max_topic_levels",
            ));
        }
        Ok(())
    }

    /// The checks every publish gets; decides whether it takes the fast path (no stage wants
    /// it), goes through the pipeline, or was already answered.
    pub(super) fn admit_publish(
        &mut self,
        publish: Publish,
        props: Option<PublishProperties>,
        qos: QoS,
        pkid: u16,
    ) -> Result<Admit, SessionError> {
        let mut publish = publish;
        if props
            .as_ref()
            .is_some_and(|p| !p.subscription_identifiers.is_empty())
        {
            return Err(SessionError::Protocol(
                "a PUBLISH from a client carries a Subscription Identifier [MQTT-3.3.4-6]",
            ));
        }
        if props
            .as_ref()
            .and_then(|p| p.response_topic.as_deref())
            .is_some_and(|t| t.contains(['+', '#']))
        {
            // Forwarded unaltered [MQTT-3.3.2-15], it would make our PUBLISH break the rule.
            return Err(SessionError::Protocol(
                "a Response Topic with wildcards [MQTT-3.3.2-14]",
            ));
        }
        let alias = props.as_ref().and_then(|p| p.topic_alias);
        if publish.topic.is_empty() && alias.is_none() && self.codec.version == Version::V5 {
            return Err(SessionError::Protocol(
                "empty topic name without a topic alias [MQTT-3.3.2-8]",
            ));
        }
        if let Some(alias) = alias {
            // Resolved before any stage sees the topic [MQTT-3.3.2-7..12].
            if alias == 0 || alias > TOPIC_ALIAS_MAX {
                return Err(SessionError::TopicAliasInvalid);
            }
            if publish.topic.is_empty() {
                publish.topic = self
                    .aliases
                    .get(&alias)
                    .cloned()
                    .ok_or(SessionError::Protocol("topic alias used before it was set"))?;
            } else {
                // A copy: the topic is a view into the socket read buffer.
                self.aliases
                    .insert(alias, Bytes::copy_from_slice(&publish.topic));
            }
        }
        self.check_topic(&publish.topic)?;
        let utf8_declared = props
            .as_ref()
            .is_some_and(|p| p.payload_format_indicator == Some(1));
        if utf8_declared && std::str::from_utf8(&publish.payload).is_err() {
            let refused = (
                DropCode::PayloadFormatInvalid,
                "payload format indicator says UTF-8, the payload is not".to_string(),
            );
            return Ok(Admit::Answer(qos, pkid, Some(refused)));
        }
        if qos == QoS::ExactlyOnce && self.qos2_incoming.contains(&pkid) {
            // A resend before PUBREL: acknowledge again, deliver once [MQTT-4.3.3-9].
            return Ok(Admit::Answer(qos, pkid, None));
        }
        if qos != QoS::AtMostOnce {
            // Unacknowledged QoS 1/2 publishes: those of this batch (acked when it ends) and
            // QoS 2 ones waiting for PUBREL, against the Receive Maximum we announced.
            self.unacked_in_batch += 1;
            let in_flight = self.unacked_in_batch + self.unacked_staged + self.qos2_incoming.len();
            if self.codec.version == Version::V5
                && in_flight > self.broker.limits.receive_maximum as usize
            {
                return Err(SessionError::ReceiveMaximumExceeded);
            }
        }
        if !self.rate.admit(publish.payload.len())? {
            self.broker.metrics.dropped(DropReason::RateLimited, 1);
            let refused = (
                DropCode::QuotaExceeded,
                "publish rate limit exceeded".to_string(),
            );
            return Ok(Admit::Answer(qos, pkid, Some(refused)));
        }
        let topic = std::str::from_utf8(&publish.topic).unwrap_or_default();
        let wants = self.broker.pipeline.wants(topic, publish.payload.len());
        let tapped = self.broker.pipeline.tapped(topic);
        if wants || tapped {
            if qos == QoS::ExactlyOnce {
                // Claimed now, so a resend in the same batch is recognised as one.
                self.qos2_incoming.insert(pkid);
            }
            let msg = self.message(&publish, props, qos);
            return Ok(Admit::Pipeline(Pending {
                msg,
                qos,
                pkid,
                wants,
                tapped,
            }));
        }
        // Fast path: no stage cares. One copy detaches the message from the read buffer.
        let p = route_publish(topic, &publish.payload, false, qos);
        let mut props = props.map(strip_alias);
        let stored = self.capture(
            topic,
            &publish.payload,
            qos as u8,
            publish.retain,
            props.as_ref(),
        );
        self.tag(&mut props, topic, true, qos as u8, publish.retain, stored);
        Ok(Admit::Routed(Packet::Publish(p, props), (qos, pkid)))
    }

    /// Removes reserved properties a client sent and adds the metadata subscriptions need
    /// (see `mqtt::interest`); `own`: the message is this client's (for No Local).
    pub(super) fn tag(
        &self,
        props: &mut Option<PublishProperties>,
        topic: &str,
        own: bool,
        qos: u8,
        retain: bool,
        stored: Option<u64>,
    ) {
        let client = own.then_some(self.client_id.as_str());
        self.broker
            .interest
            .tag(props, topic, client, qos, retain, stored);
    }

    /// Queues the PUBACK/PUBREC for a decided publish (nothing for QoS 0).
    pub(super) fn ack_publish(&mut self, qos: QoS, pkid: u16, refused: Option<(DropCode, String)>) {
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                let ack = self.puback(pkid, refused);
                self.acks.push(ack);
            }
            QoS::ExactlyOnce => {
                // A v5 refusal (reason ≥ 0x80) ends the flow; otherwise wait for PUBREL.
                if refused.is_some() && self.codec.version == Version::V5 {
                    self.qos2_incoming.remove(&pkid);
                } else {
                    self.qos2_incoming.insert(pkid);
                    // Durable before PUBREC, so a resend after a restart is still known.
                    let t = self
                        .persistent_store()
                        .map(|s| s.qos2_received(&self.client_id, pkid));
                    self.hold_ack(t);
                }
                let props = self
                    .reason_props(&refused)
                    .map(|reason_string| PubRecProperties {
                        reason_string: Some(reason_string),
                        user_properties: vec![],
                    });
                let reason = match pubrec(pkid, refused.map(|(c, _)| c)) {
                    Packet::PubRec(a, _) => a,
                    _ => PubRec {
                        pkid,
                        reason: PubRecReason::UnspecifiedError,
                    },
                };
                self.acks.push(Packet::PubRec(reason, props));
            }
        }
    }

    pub(super) fn reason_props(&self, refused: &Option<(DropCode, String)>) -> Option<String> {
        match refused {
            Some((_, reason)) if self.request_problem_info && self.codec.version == Version::V5 => {
                Some(reason.clone())
            }
            _ => None,
        }
    }

    pub(super) fn puback(&self, pkid: u16, refused: Option<(DropCode, String)>) -> Packet {
        let props = self.reason_props(&refused).map(|r| PubAckProperties {
            reason_string: Some(r),
            user_properties: vec![],
        });
        let reason = match refused.map(|(c, _)| c) {
            // v3.1.1 has no negative PUBACK; the message is dropped and acked [as mosquitto].
            _ if self.codec.version == Version::V311 => PubAckReason::Success,
            None => PubAckReason::Success,
            Some(DropCode::Unspecified) => PubAckReason::UnspecifiedError,
            Some(DropCode::ImplementationSpecific) => PubAckReason::ImplementationSpecificError,
            Some(DropCode::NotAuthorized) => PubAckReason::NotAuthorized,
            Some(DropCode::TopicNameInvalid) => PubAckReason::TopicNameInvalid,
            // 0x95 is not a PUBACK code; an over-budget payload is a quota matter.
            Some(DropCode::QuotaExceeded | DropCode::PacketTooLarge) => PubAckReason::QuotaExceeded,
            Some(DropCode::PayloadFormatInvalid) => PubAckReason::PayloadFormatInvalid,
        };
        Packet::PubAck(PubAck { pkid, reason }, props)
    }

    pub(super) fn message(
        &self,
        publish: &Publish,
        props: Option<PublishProperties>,
        qos: QoS,
    ) -> Message {
        Message {
            topic: String::from_utf8_lossy(&publish.topic).into_owned(),
            payload: Bytes::copy_from_slice(&publish.payload),
            qos: qos as u8,
            retain: publish.retain,
            props: props
                .map(|mut p| {
                    // Stages never see (or copy) an origin a client tried to forge.
                    p.user_properties
                        .retain(|(k, _)| !k.starts_with(crate::mqtt::interest::RESERVED_PREFIX));
                    props_from_router(p)
                })
                .unwrap_or_default(),
            origin: Origin {
                client_id: self.client_id.clone(),
                username: self.username.clone(),
                hop: 0,
            },
            received_at: now_ms(),
        }
    }
}
