//! Messages the edge itself delivers, and the session's side of durability: retained messages
//! after a SUBACK, holding acks until the store committed what they promise, resuming a
//! session the store restored after a restart (subscriptions back into the router, queued
//! messages replayed), and telling the store when the session ends. The edge's own QoS 1/2
//! deliveries use packet ids the router never uses, so their acks are recognised here.

use super::*;
use crate::pipeline::now_ms;
use crate::store::{QueueRecord, Queued, Resume, StoredFilter, Ticket};

/// Read batches whose acks may wait for the store at once; reading pauses beyond.
pub(super) const MAX_COMMITS: usize = 8;

/// The acks of one read batch and the store writes they wait for.
pub(super) struct Commit {
    tickets: VecDeque<Ticket>,
    acks: Vec<Packet>,
    /// PUBACK/PUBREC among `acks`.
    publishes: usize,
}

impl Commit {
    /// Completes when every write is committed. Cancel-safe: finished tickets are dropped, so
    /// a later call waits only for the rest.
    pub(super) async fn wait(&mut self) -> Result<(), SessionError> {
        while let Some(t) = self.tickets.front_mut() {
            t.wait_mut()
                .await
                .map_err(|e| SessionError::Store(e.to_string()))?;
            self.tickets.pop_front();
        }
        Ok(())
    }
}

/// Packet ids at and above this carry the edge's own deliveries; the router numbers its
/// outgoing publishes from 1 to 100, so the two never meet.
const REPLAY_BASE: u16 = 0x8000;
/// Edge deliveries in flight at once (also capped by the client's Receive Maximum).
const REPLAY_WINDOW: usize = 64;

/// A message the edge delivers itself.
pub(super) struct EdgeMessage {
    /// Where it sits in the store's queue (replayed messages), removed once acknowledged.
    key: Option<(Arc<QueueRecord>, u64)>,
    qos: u8,
    retain: bool,
    topic: Bytes,
    payload: Bytes,
    props: Option<PublishProperties>,
}

impl From<Queued> for EdgeMessage {
    fn from(q: Queued) -> Self {
        let m = q.message;
        EdgeMessage {
            key: Some((q.record, q.seq)),
            qos: m.qos.clamp(1, 2),
            retain: false,
            topic: m.publish.topic,
            payload: m.publish.payload,
            props: m.props,
        }
    }
}

/// An edge delivery waiting for its acknowledgement.
struct InFlight {
    key: Option<(Arc<QueueRecord>, u64)>,
    size: u64,
    qos: u8,
    /// PUBREC came (QoS 2); waiting for PUBCOMP.
    released: bool,
}

/// Replayed and retained messages being delivered by the edge.
#[derive(Default)]
pub(super) struct Replay {
    pending: VecDeque<EdgeMessage>,
    inflight: HashMap<u16, InFlight>,
    next_pkid: u16,
    window: usize,
    /// Undelivered messages per store record; the record goes when it reaches 0.
    records: HashMap<Vec<u8>, usize>,
}

impl Replay {
    /// No message from the store is waiting or unacknowledged.
    pub(super) fn is_empty(&self) -> bool {
        self.pending.iter().all(|m| m.key.is_none())
            && self
                .inflight
                .values()
                .all(|e| e.released || e.key.is_none())
    }
}

fn to_router_filter(f: &StoredFilter) -> Filter {
    Filter {
        path: crate::router::router_filter(&f.path),
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
    /// Keeps a routed retained message, and mirrors the publish into the store when it must
    /// survive (retained, or queued for an offline persistent session); its ack waits for the
    /// commit.
    pub(super) fn capture(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: u8,
        retain: bool,
        props: Option<&PublishProperties>,
    ) -> Option<u64> {
        let c = self.broker.capture(topic, payload, qos, retain, props)?;
        self.tickets.push(c.ticket);
        c.seq
    }

    /// The client acknowledged a router delivery that had a stored copy.
    pub(super) fn release_stored(&mut self, pkid: u16) {
        if let (Some(seq), Some(store)) = (self.stored_inflight.remove(&pkid), &self.broker.store) {
            store.delivered(&self.client_id, seq);
        }
    }

    pub(super) fn hold_ack(&mut self, ticket: Option<Ticket>) {
        if let Some(t) = ticket {
            self.tickets.push(t);
        }
    }

    /// Moves this batch's acks behind its store writes (see `Commit`).
    pub(super) fn stage_commit(&mut self) {
        let acks = std::mem::take(&mut self.acks);
        let publishes = acks
            .iter()
            .filter(|a| matches!(a, Packet::PubAck(..) | Packet::PubRec(..)))
            .count();
        self.unacked_staged += publishes;
        self.staged = Some(Commit {
            tickets: std::mem::take(&mut self.tickets).into(),
            acks,
            publishes,
        });
    }

    /// Writes the acks of every committed batch at the front, in order.
    pub(super) async fn write_committed(
        &mut self,
        commits: &mut VecDeque<Commit>,
    ) -> Result<(), SessionError> {
        use futures_util::FutureExt;
        while let Some(c) = commits.front_mut() {
            match c.wait().now_or_never() {
                Some(r) => r?,
                None => break,
            }
            let Some(c) = commits.pop_front() else { break };
            self.unacked_staged = self.unacked_staged.saturating_sub(c.publishes);
            for ack in c.acks {
                self.codec
                    .encode_within(ack, self.client_max_packet, &mut self.io.wbuf)?;
            }
        }
        let n = self.io.flush().await?;
        self.broker.metrics.bytes_out.fetch_add(n as u64, Relaxed);
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
        self.replay.window = REPLAY_WINDOW.min(receive_max.max(1) as usize);
        self.replay.next_pkid = REPLAY_BASE;
        let Some(filters) = resume.restored else {
            return Ok(());
        };
        // One SUBSCRIBE per subscription identifier (it is a per-packet property). Packet id 0
        // is never a client's, so the router's SUBACKs for these are recognisable.
        let mut by_id: Vec<(Option<usize>, Vec<Filter>)> = Vec::new();
        for f in &filters {
            let v5 = self.codec.version == Version::V5;
            self.note_options(
                &f.path,
                v5 && f.no_local,
                f.qos == 2,
                v5 && f.retain_as_published,
            );
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
        link.send_batch(&mut batch).await?;
        if let Some(store) = self.broker.store.clone() {
            let replay = store
                .finish_resume(&self.client_id)
                .await
                .map_err(|e| SessionError::Store(e.to_string()))?;
            for q in &replay {
                *self.replay.records.entry(q.record.key.clone()).or_default() += 1;
            }
            self.replay
                .pending
                .extend(replay.into_iter().map(EdgeMessage::from));
        }
        Ok(())
    }

    /// Queues the retained messages for the filters of a SUBSCRIBE whose SUBACK was just
    /// written [MQTT-3.3.1-6]: at min(published, subscribed) QoS, with the retain flag, with
    /// the subscription identifier, expired ones left out [MQTT-3.3.2-5].
    pub(super) fn release_retained(&mut self, pkid: u16) -> Result<(), SessionError> {
        let Some((filters, id)) = self.pending_retained.remove(&pkid) else {
            return Ok(());
        };
        let now = now_ms();
        let v5 = self.codec.version == Version::V5;
        for (filter, qos) in filters {
            for m in self.broker.retained.matching(&filter) {
                let Some(mut props) = m.props_now(now) else {
                    continue;
                };
                if let (true, Some(id)) = (v5, id) {
                    props
                        .get_or_insert_with(Default::default)
                        .subscription_identifiers
                        .push(id);
                }
                self.replay.pending.push_back(EdgeMessage {
                    key: None,
                    qos: m.qos.min(qos),
                    retain: true,
                    topic: m.topic.clone(),
                    payload: m.payload.clone(),
                    props,
                });
            }
        }
        self.send_replay()
    }

    /// Writes edge deliveries while the window has room (QoS 0 ones need no room).
    pub(super) fn send_replay(&mut self) -> Result<(), SessionError> {
        loop {
            let qos = match self.replay.pending.front() {
                Some(m)
                    if m.qos == 0
                        || (self.replay.inflight.len() < self.replay.window
                            && self.client_inflight < self.client_receive_max) =>
                {
                    m.qos
                }
                _ => break,
            };
            let Some(m) = self.replay.pending.pop_front() else {
                break;
            };
            let mut pkid = 0;
            if qos > 0 {
                pkid = self.replay.next_pkid.max(REPLAY_BASE);
                while self.replay.inflight.contains_key(&pkid) {
                    pkid = pkid.checked_add(1).unwrap_or(REPLAY_BASE);
                }
                self.replay.next_pkid = pkid.checked_add(1).unwrap_or(REPLAY_BASE);
            }
            let (topic, payload) = (&m.topic, &m.payload);
            let mut raw = BytesMut::with_capacity(5 + topic.len() + payload.len());
            raw.extend_from_slice(&[0x30 | (qos << 1) | m.retain as u8]);
            raw.extend_from_slice(&pkid.to_be_bytes());
            raw.extend_from_slice(&(topic.len() as u16).to_be_bytes());
            raw.extend_from_slice(topic);
            raw.extend_from_slice(payload);
            let size = (topic.len() + payload.len()) as u64;
            let publish = Publish::deserialize(raw.freeze());
            self.codec
                .encode(Packet::Publish(publish, m.props), &mut self.io.wbuf)?;
            if qos > 0 {
                let entry = InFlight {
                    key: m.key,
                    size,
                    qos,
                    released: false,
                };
                self.replay.inflight.insert(pkid, entry);
                self.client_inflight += 1;
            }
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
            AckKind::Ack | AckKind::Rec if !entry.released => {
                if let (Some(store), Some((record, seq))) = (&self.broker.store, entry.key.take()) {
                    let left = self.replay.records.get_mut(&record.key).map(|n| {
                        *n = n.saturating_sub(1);
                        *n
                    });
                    let done = left == Some(0);
                    if done {
                        self.replay.records.remove(&record.key);
                    }
                    store.replay_acked(&self.client_id, &record, seq, entry.size, done);
                }
                if kind == AckKind::Rec && entry.qos == 2 {
                    entry.released = true;
                    self.acks.push(Packet::PubRel(
                        PubRel {
                            pkid,
                            reason: PubRelReason::Success,
                        },
                        None,
                    ));
                } else {
                    self.replay.inflight.remove(&pkid);
                    self.client_done();
                }
            }
            AckKind::Comp => {
                self.replay.inflight.remove(&pkid);
                self.client_done();
            }
            _ => {}
        }
        self.send_replay()?;
        Ok(true)
    }

    /// Takes the session offline in the store while the router link still exists, when the
    /// router will keep the session (nothing from the store left to deliver).
    pub(super) fn store_offline_early(&mut self, expiry: u32) {
        if let (Some(store), true, true) = (&self.broker.store, expiry > 0, self.replay.is_empty())
        {
            store.session_disconnected(&self.client_id, expiry, false);
            self.store_offline_done = true;
        }
    }

    /// Tells the store the connection ended. When messages from the store were still being
    /// delivered, the router's session is ended and the store alone owns the offline queue.
    pub(super) async fn store_disconnected(&mut self, expiry: u32) {
        let Some(store) = self.broker.store.clone() else {
            return;
        };
        if self.store_offline_done {
            return;
        }
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
