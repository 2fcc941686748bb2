//! The session's side of durability: holding acks until the store committed what they
//! promise, resuming a session the store restored after a restart (subscriptions back into
//! the router, queued messages replayed under packet ids the router never uses), and telling
//! the store when the session ends.

use super::*;
use crate::store::{Resume, StoredFilter, StoredMessage, Ticket};

/// Packet ids at and above this carry replayed messages; the router numbers its outgoing
/// publishes from 1 to 100, so the two never meet.
const REPLAY_BASE: u16 = 0x8000;
/// Replayed messages in flight at once (also capped by the client's Receive Maximum).
const REPLAY_WINDOW: usize = 64;

/// Queued messages from the store being delivered to a resumed session.
#[derive(Default)]
pub(super) struct Replay {
    pending: VecDeque<(Vec<u8>, StoredMessage)>,
    /// Packet id → (store key, frame size, QoS, PUBREC seen).
    inflight: HashMap<u16, (Vec<u8>, u64, u8, bool)>,
    next_pkid: u16,
    window: usize,
}

impl Replay {
    pub(super) fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.inflight.values().all(|e| e.3)
    }
}

fn to_router_filter(f: &StoredFilter) -> Filter {
    Filter {
        path: f.path.clone(),
        qos: qos_from(f.qos),
        nolocal: f.no_local,
        preserve_retain: f.retain_as_published,
        retain_forward_rule: match f.retain_handling {
            1 => RetainForwardRule::OnNewSubscribe,
            2 => RetainForwardRule::Never,
            _ => RetainForwardRule::OnEverySubscribe,
        },
    }
}

pub(super) fn stored_filter(f: &Filter, id: Option<usize>) -> StoredFilter {
    StoredFilter {
        path: f.path.clone(),
        qos: f.qos as u8,
        no_local: f.nolocal,
        retain_as_published: f.preserve_retain,
        retain_handling: match f.retain_forward_rule {
            RetainForwardRule::OnEverySubscribe => 0,
            RetainForwardRule::OnNewSubscribe => 1,
            RetainForwardRule::Never => 2,
        },
        id,
    }
}

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    /// Mirrors a routed publish into the store when it must survive (retained, or queued for
    /// an offline persistent session); its ack waits for the commit.
    pub(super) fn capture(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: u8,
        retain: bool,
        props: Option<&PublishProperties>,
    ) {
        if let Some(t) = self
            .broker
            .store
            .as_ref()
            .and_then(|s| s.capture(topic, payload, qos, retain, props))
        {
            self.tickets.push(t);
        }
    }

    pub(super) fn hold_ack(&mut self, ticket: Option<Ticket>) {
        if let Some(t) = ticket {
            self.tickets.push(t);
        }
    }

    /// Waits for every store write the pending acks depend on.
    pub(super) async fn wait_durable(&mut self) -> Result<(), SessionError> {
        for t in std::mem::take(&mut self.tickets) {
            t.wait()
                .await
                .map_err(|e| SessionError::Store(e.to_string()))?;
        }
        Ok(())
    }

    /// Applies what the store resumed: QoS 2 flows waiting for PUBREL, and for a session the
    /// router lost (restart) its subscriptions and queued messages.
    pub(super) async fn resume(
        &mut self,
        link: &mut Link,
        resume: Resume,
        receive_max: u16,
    ) -> Result<(), SessionError> {
        self.qos2_incoming.extend(resume.qos2);
        self.replay.pending = resume.replay.into();
        self.replay.window = REPLAY_WINDOW.min(receive_max.max(1) as usize);
        self.replay.next_pkid = REPLAY_BASE;
        let Some(filters) = resume.restored else {
            return Ok(());
        };
        // One SUBSCRIBE per subscription identifier (it is a per-packet property). Packet id 0
        // is never a client's, so the router's SUBACKs for these are recognisable.
        let mut by_id: Vec<(Option<usize>, Vec<Filter>)> = Vec::new();
        for f in &filters {
            if f.no_local
                && self.codec.version == Version::V5
                && self.no_local.insert(f.path.clone())
            {
                self.broker.add_no_local(&f.path);
            }
            match by_id.iter_mut().find(|(id, _)| *id == f.id) {
                Some((_, v)) => v.push(to_router_filter(f)),
                None => by_id.push((f.id, vec![to_router_filter(f)])),
            }
        }
        let mut batch = VecDeque::new();
        for (id, filters) in by_id {
            let props = id.map(|id| SubscribeProperties {
                id: Some(id),
                user_properties: vec![],
            });
            batch.push_back(Packet::Subscribe(Subscribe { pkid: 0, filters }, props));
        }
        self.internal_subacks = batch.len();
        // The router sends retained messages for new subscriptions; this session already had
        // them before the restart.
        self.suppress_retained = true;
        link.send_batch(&mut batch).await?;
        Ok(())
    }

    /// Writes replayed messages while the window has room.
    pub(super) fn send_replay(&mut self) -> Result<(), SessionError> {
        while self.replay.inflight.len() < self.replay.window {
            let Some((key, m)) = self.replay.pending.pop_front() else {
                break;
            };
            let qos = m.qos.clamp(1, 2);
            let mut pkid = self.replay.next_pkid;
            while self.replay.inflight.contains_key(&pkid) {
                pkid = pkid.checked_add(1).unwrap_or(REPLAY_BASE);
            }
            self.replay.next_pkid = pkid.checked_add(1).unwrap_or(REPLAY_BASE);
            let topic = &m.publish.topic;
            let payload = &m.publish.payload;
            let mut raw = BytesMut::with_capacity(5 + topic.len() + payload.len());
            raw.extend_from_slice(&[0x30 | (qos << 1)]);
            raw.extend_from_slice(&pkid.to_be_bytes());
            raw.extend_from_slice(&(topic.len() as u16).to_be_bytes());
            raw.extend_from_slice(topic);
            raw.extend_from_slice(payload);
            let size = (topic.len() + payload.len()) as u64;
            let publish = Publish::deserialize(raw.freeze());
            self.codec
                .encode(Packet::Publish(publish, m.props), &mut self.io.wbuf)?;
            self.replay.inflight.insert(pkid, (key, size, qos, false));
        }
        Ok(())
    }

    /// Handles an ack for a replayed message; `false` when the packet id is the router's.
    pub(super) fn replay_ack(&mut self, pkid: u16, kind: AckKind) -> Result<bool, SessionError> {
        if pkid < REPLAY_BASE {
            return Ok(false);
        }
        let Some(entry) = self.replay.inflight.get_mut(&pkid) else {
            return Ok(false);
        };
        match kind {
            AckKind::Ack | AckKind::Rec if !entry.3 => {
                if let Some(store) = &self.broker.store {
                    store.replay_acked(&self.client_id, entry.0.clone(), entry.1);
                }
                if kind == AckKind::Rec && entry.2 == 2 {
                    entry.3 = true;
                    self.acks.push(Packet::PubRel(
                        PubRel {
                            pkid,
                            reason: PubRelReason::Success,
                        },
                        None,
                    ));
                } else {
                    self.replay.inflight.remove(&pkid);
                }
            }
            AckKind::Comp => {
                self.replay.inflight.remove(&pkid);
            }
            _ => {}
        }
        self.send_replay()?;
        Ok(true)
    }

    /// Tells the store the connection ended; returns whether the store now owns the offline
    /// queue alone (messages were still being replayed, so the router session was ended).
    pub(super) async fn store_disconnected(&mut self, expiry: u32) {
        let Some(store) = self.broker.store.clone() else {
            return;
        };
        if expiry == 0 {
            store.session_ended(&self.client_id);
            return;
        }
        // Unfinished replay: those messages exist only in the store, so the store must
        // deliver the whole queue next time, and the router must not deliver a second copy.
        let store_only = !self.replay.is_empty();
        if store_only {
            super::end_router_session(&self.broker, &self.client_id).await;
        }
        store.session_disconnected(&self.client_id, expiry, store_only);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AckKind {
    Ack,
    Rec,
    Comp,
}
