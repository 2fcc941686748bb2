//! SUBSCRIBE and UNSUBSCRIBE: the edge's checks (filter, ACL, `$` rules, limits, subscribe
//! blocks), the options that need publish metadata, the session's durable filter set, retained
//! deliveries owed after the SUBACK, and what the router is told.

use super::*;

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    pub(super) async fn handle_subscribe(
        &mut self,
        mut sub: Subscribe,
        props: Option<SubscribeProperties>,
    ) {
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
    pub(super) fn persistent_store(&self) -> Option<Arc<crate::store::Store>> {
        self.broker.store.clone().filter(|_| self.router_persistent)
    }

    pub(super) fn handle_unsubscribe(
        &mut self,
        unsub: Unsubscribe,
        props: Option<UnsubscribeProperties>,
    ) {
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
