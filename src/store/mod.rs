//! Durable broker state: retained messages, persistent sessions (subscriptions with their
//! options, expiry), QoS 1/2 messages queued for offline persistent sessions, and incoming
//! QoS 2 packet ids waiting for PUBREL. One redb file, `<storage.data_dir>/moonwire.redb`.
//!
//! The router keeps all of this in memory only. The edge sees every publish before the router
//! does, so it mirrors what must survive into the store and holds the publisher's ack until
//! the write is committed (see [`Ticket`]). At startup the store is read back: retained
//! messages go into the router, sessions become offline sessions owned by the edge, and their
//! queues are replayed to the client when it resumes (docs/ARCHITECTURE.md, "Durability").
//!
//! While a session is offline *and the router also holds it* (the normal case inside one
//! process), the store's copy of its queue is only insurance against a restart: the router
//! delivers on resume and the copy is cleared. After a restart the router holds nothing and
//! the store's queue is what gets delivered.

mod open;
pub mod record;
mod wal;
mod writer;

pub use record::{PendingWill, SessionRecord, StoredFilter, StoredMessage};
pub use writer::Fsync;

use parking_lot::{Mutex, RwLock};
use record::{
    RecordError, batch_entries, client_range, decode_entry, decode_message, qos2_key, split_key,
};
use redb::{Database, ReadableTable, TableHandle};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::Duration;
use tokio::sync::watch;
use writer::{Op, WriterStats};

use crate::pipeline::{filter_matches, now_ms};
use crate::router::protocol::PublishProperties;

mod tables {
    use redb::TableDefinition;
    pub const META: TableDefinition<&str, &str> = TableDefinition::new("moonwire_meta");
    pub const RETAINED: TableDefinition<&str, &[u8]> = TableDefinition::new("retained");
    pub const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
    pub const QUEUE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("queue");
    pub const QOS2: TableDefinition<&[u8], &[u8]> = TableDefinition::new("qos2_incoming");
    /// Queued messages delivered from a record that still holds undelivered ones.
    pub const ACKED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("queue_acked");
}
use tables::*;

const FORMAT: &str = "moonwire-store";
const VERSION: &str = "1";
const FILE_NAME: &str = "moonwire.redb";
/// The write-ahead log of `fsync = "batch"`, next to the database.
const WAL_FILE_NAME: &str = "moonwire.wal";
/// Acknowledgements of a session's stored copies between two trims below its oldest pending one.
const TRIM_EVERY: u64 = 256;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot open the store {path}: {reason} (refusing to start; move the file away to start empty)"
    )]
    Open { path: PathBuf, reason: String },
    #[error(
        "the store {path} is in use by another process (is another moonwire running with the same storage.data_dir?)"
    )]
    Locked { path: PathBuf },
    #[error("{path} is not a moonwire store ({found}); refusing to use it")]
    Foreign { path: PathBuf, found: String },
    #[error("store {path}: corrupt {what}: {reason}")]
    Corrupt {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error("store write failed: {0}")]
    Write(String),
    #[error("store read failed: {0}")]
    Read(String),
    #[error("store writer thread: {0}")]
    Spawn(std::io::Error),
}

/// `[storage]` settings the store uses.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub data_dir: PathBuf,
    pub fsync: Fsync,
    pub fsync_interval: Duration,
    /// Per offline session: queued messages and bytes beyond these are dropped and counted.
    pub max_queued_messages: u64,
    pub max_queued_bytes: u64,
}

/// Completes when the changes it stands for are committed (per the fsync policy).
#[must_use]
pub struct Ticket {
    generation: u64,
    /// `None`: submitted after the store closed.
    done: Option<watch::Receiver<writer::Done>>,
}

impl Ticket {
    pub async fn wait(mut self) -> Result<(), StoreError> {
        self.wait_mut().await
    }

    /// Like [`Ticket::wait`], without consuming: safe to call again after being cancelled.
    pub async fn wait_mut(&mut self) -> Result<(), StoreError> {
        let stopped = || StoreError::Write("store writer stopped".into());
        let Some(done) = self.done.as_mut() else {
            return Err(stopped());
        };
        let g = self.generation;
        // An error means the writer is gone; what it finished before is still there.
        let _ = done.wait_for(|d| d.finished >= g).await;
        let outcome = done.borrow().outcome(g);
        match outcome {
            Some(r) => r.map_err(StoreError::Write),
            None => Err(stopped()),
        }
    }
}

/// Queue accounting of one session, shared between the session table and the offline index.
#[derive(Default)]
pub struct QueueStats {
    pub messages: AtomicU64,
    pub bytes: AtomicU64,
    pub overflow: AtomicU64,
    /// Sequences of messages queued for this session and not yet acknowledged by its client.
    pending: Mutex<std::collections::BTreeSet<u64>>,
    /// Acknowledgements since the last `Op::AckedBelow`.
    acked_since_trim: AtomicU64,
}

/// What capturing a publish produced: the write its ack waits for, and the sequence under
/// which it was queued for offline sessions (carried through the router, see
/// `mqtt::interest`).
pub struct Captured {
    pub ticket: Ticket,
    pub seq: Option<u64>,
}

struct SessionState {
    record: SessionRecord,
    stats: Arc<QueueStats>,
    /// Offline and not held by the router (restored at startup): the store's queue is the
    /// only copy and is delivered on resume.
    store_only: bool,
}

/// Offline persistent sessions by filter, read on every QoS 1/2 publish while any exist.
#[derive(Default)]
struct OfflineIndex {
    exact: HashMap<String, Vec<Target>>,
    wild: Vec<(String, Target)>,
}

#[derive(Clone)]
struct Target {
    client: Arc<str>,
    qos: u8,
    stats: Arc<QueueStats>,
}

impl OfflineIndex {
    fn add(&mut self, client: &Arc<str>, filters: &[StoredFilter], stats: &Arc<QueueStats>) {
        for f in filters {
            // Shared subscriptions deliver to one member of the group; an offline member
            // gets nothing queued (the others receive).
            if f.path.starts_with("$share/") {
                continue;
            }
            let t = Target {
                client: client.clone(),
                qos: f.qos,
                stats: stats.clone(),
            };
            if f.path.contains(['+', '#']) {
                self.wild.push((f.path.clone(), t));
            } else {
                self.exact.entry(f.path.clone()).or_default().push(t);
            }
        }
    }

    fn remove(&mut self, client: &str) {
        self.exact.retain(|_, v| {
            v.retain(|t| &*t.client != client);
            !v.is_empty()
        });
        self.wild.retain(|(_, t)| &*t.client != client);
    }

    fn len(&self) -> usize {
        self.exact.len() + self.wild.len()
    }

    /// Each matching session once, with the highest QoS of its matching filters.
    fn matches(&self, topic: &str) -> Vec<Target> {
        let mut out: Vec<Target> = Vec::new();
        let mut push = |t: &Target| match out.iter_mut().find(|o| o.client == t.client) {
            Some(o) => o.qos = o.qos.max(t.qos),
            None => out.push(t.clone()),
        };
        if let Some(v) = self.exact.get(topic) {
            v.iter().for_each(&mut push);
        }
        for (f, t) in &self.wild {
            if filter_matches(f, topic) {
                push(t);
            }
        }
        out
    }
}

/// What the store had at startup.
pub struct Restored {
    pub retained: Vec<StoredMessage>,
    /// Offline sessions.
    pub sessions: Vec<RestoredSession>,
    pub queued: u64,
}

/// The store record a queued message came from.
#[derive(Debug)]
pub struct QueueRecord {
    pub key: Vec<u8>,
    pub first: u64,
    pub last: u64,
}

/// A queued message read back for delivery.
pub struct Queued {
    pub record: Arc<QueueRecord>,
    pub seq: u64,
    pub message: StoredMessage,
}

/// An offline session read back at startup.
pub struct RestoredSession {
    pub client_id: String,
    pub filters: Vec<StoredFilter>,
    /// Time left until it expires (`None`: never).
    pub expires_in: Option<Duration>,
    pub will: Option<PendingWill>,
}

/// What a connecting client resumes.
#[derive(Default)]
pub struct Resume {
    /// The store held the session and the router does not: the session is present even
    /// though the router says otherwise, and its filters must be subscribed again.
    pub restored: Option<Vec<StoredFilter>>,
    /// Incoming QoS 2 packet ids that were waiting for PUBREL.
    pub qos2: Vec<u16>,
}

pub struct Store {
    path: PathBuf,
    db: Arc<Database>,
    inbox: Arc<writer::Inbox>,
    done: watch::Receiver<writer::Done>,
    settings: StoreSettings,
    sessions: Mutex<HashMap<String, SessionState>>,
    offline: RwLock<OfflineIndex>,
    /// Entries in `offline`, read on every publish without the lock.
    offline_filters: AtomicUsize,
    next_seq: AtomicU64,
    retained: AtomicU64,
    stats: Arc<WriterStats>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Store {
    /// Opens (or creates) the store, reads what it holds, and starts the writer thread.
    pub fn open(settings: StoreSettings) -> Result<(Arc<Store>, Restored), StoreError> {
        let dir = &settings.data_dir;
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.clone(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let existed = std::fs::metadata(&path).is_ok_and(|m| m.len() > 0);
        let open_err = |e: &dyn std::fmt::Display| StoreError::Open {
            path: path.clone(),
            reason: e.to_string(),
        };
        let opened = if existed {
            Database::open(&path)
        } else {
            Database::create(&path)
        };
        let db = match opened {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::Locked { path });
            }
            Err(e) => return Err(open_err(&e)),
        };
        let db = Arc::new(db);
        open::check_format(&db, &path, existed)?;
        let wal = open::replay_wal(&db, &dir.join(WAL_FILE_NAME))?;
        let (restored, sessions, next_seq) = open::load(&db, &path)?;
        let retained = restored.retained.len() as u64;

        let inbox = Arc::new(writer::Inbox::default());
        let (done_tx, done) = watch::channel(writer::Done::default());
        let stats = Arc::new(WriterStats {
            commits: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        });
        let writer = {
            let (db, stats, inbox) = (db.clone(), stats.clone(), inbox.clone());
            let (fsync, interval) = (settings.fsync, settings.fsync_interval);
            let wal = (fsync != Fsync::Always).then_some(wal);
            std::thread::Builder::new()
                .name("moonwire-store".into())
                .spawn(move || writer::run(db, inbox, done_tx, fsync, interval, stats, wal))
                .map_err(StoreError::Spawn)?
        };
        let mut index = OfflineIndex::default();
        for (client, s) in &sessions {
            index.add(&Arc::from(client.as_str()), &s.record.filters, &s.stats);
        }
        let store = Arc::new(Store {
            path,
            db,
            inbox,
            done,
            settings,
            offline_filters: AtomicUsize::new(index.len()),
            offline: RwLock::new(index),
            sessions: Mutex::new(sessions),
            next_seq: AtomicU64::new(next_seq),
            retained: AtomicU64::new(retained),
            stats,
            writer: Mutex::new(Some(writer)),
        });
        Ok((store, restored))
    }

    /// Sends changes to the writer; the ticket completes once they are in redb, so the caller
    /// may read them.
    fn submit(&self, ops: Vec<Op>) -> Ticket {
        self.send(ops, true)
    }

    /// Like `submit`, for changes nobody reads back soon: the ticket completes once they are
    /// durable per the fsync policy, which with the write-ahead log comes before redb has them.
    fn submit_logged(&self, ops: Vec<Op>) -> Ticket {
        self.send(ops, false)
    }

    fn send(&self, ops: Vec<Op>, visible: bool) -> Ticket {
        match self.inbox.submit(ops, visible) {
            Some(generation) => Ticket {
                generation,
                done: Some(self.done.clone()),
            },
            None => Ticket {
                generation: 0,
                done: None,
            },
        }
    }

    /// Records what a routed publish means for the store: a retained message set or
    /// cleared, and a copy queued for each offline persistent session it matches at QoS ≥ 1.
    /// `None` when nothing needed writing (the common case: no cost beyond two loads).
    pub fn capture(
        &self,
        topic: &str,
        payload: &[u8],
        qos: u8,
        retain: bool,
        props: Option<&PublishProperties>,
    ) -> Option<Captured> {
        let queue = qos > 0 && self.offline_filters.load(Relaxed) > 0;
        if !retain && !queue {
            return None;
        }
        // Held until the ops are submitted, so a session changing its subscriptions or coming
        // back (write lock) is ordered against this capture in the writer.
        let index = queue.then(|| self.offline.read());
        let mut targets = index.as_ref().map(|i| i.matches(topic)).unwrap_or_default();
        targets.retain(|t| qos.min(t.qos) > 0);
        if !retain && targets.is_empty() {
            // Persistent sessions exist, none wants this one: nothing to encode or write.
            return None;
        }
        let props = props.cloned().map(crate::mqtt::interest::for_storage);
        let now = now_ms();
        let mut ops = Vec::new();
        let frame = match record::encode_frame(topic, payload, retain, props) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(topic, error = %e, "cannot encode a message for the store");
                return None;
            }
        };
        if retain {
            if payload.is_empty() {
                ops.push(Op::DelRetained(topic.to_string()));
            } else {
                ops.push(Op::PutRetained(
                    topic.to_string(),
                    record::message_record(qos, now, &frame),
                ));
            }
        }
        let mut seq = None;
        if !targets.is_empty() {
            // Shared by every session it is queued for, without a copy.
            let frame = frame.freeze();
            let size = frame.len() as u64;
            for t in targets {
                let q = qos.min(t.qos);
                let s = &t.stats;
                if s.messages.load(Relaxed) >= self.settings.max_queued_messages
                    || s.bytes.load(Relaxed) + size > self.settings.max_queued_bytes
                {
                    s.overflow.fetch_add(1, Relaxed);
                    continue;
                }
                s.messages.fetch_add(1, Relaxed);
                s.bytes.fetch_add(size, Relaxed);
                // One sequence per message, shared by every session it is queued for.
                let n = *seq.get_or_insert_with(|| self.next_seq.fetch_add(1, Relaxed));
                s.pending.lock().insert(n);
                ops.push(Op::Enqueue(t.client.clone(), n, q, now, frame.clone()));
            }
        }
        if ops.is_empty() {
            return None;
        }
        Some(Captured {
            ticket: self.submit_logged(ops),
            seq,
        })
    }

    /// A client connected. `persistent`: its session outlives the connection. Clean start
    /// discards what the store held. Returns what the connection resumes.
    pub async fn session_connected(
        &self,
        client: &str,
        persistent: bool,
        clean: bool,
        expiry: u32,
    ) -> Result<Resume, StoreError> {
        let (ticket, resumed, store_only, filters) = {
            let mut index = self.offline.write();
            let mut sessions = self.sessions.lock();
            let prev = sessions.remove(client);
            let resumed = !clean && prev.is_some();
            // A persistent session stays in the index while connected: what is queued for it
            // is kept until its client acknowledges it, so messages in flight survive a crash
            // too. Removing and re-adding under one lock leaves no gap for a session the
            // store alone holds (restored after a restart).
            index.remove(client);
            let mut ops = Vec::new();
            let (store_only, filters, stats) = match prev {
                Some(p) if resumed => (p.store_only, p.record.filters, p.stats),
                Some(_) => {
                    ops.push(Op::DelSession(client.to_string()));
                    (false, vec![], Arc::default())
                }
                None => (false, vec![], Arc::default()),
            };
            // On an in-process resume the router delivers what it queued; the stored copies
            // stay until the client acknowledges each one (`delivered`), so a crash before
            // that still finds them.
            if persistent || resumed {
                let record = SessionRecord {
                    expiry,
                    disconnected_at_ms: None,
                    filters: filters.clone(),
                    will: None,
                };
                index.add(&Arc::from(client), &record.filters, &stats);
                ops.push(session_op(client, &record));
                sessions.insert(
                    client.to_string(),
                    SessionState {
                        record,
                        stats,
                        store_only: false,
                    },
                );
            }
            self.offline_filters.store(index.len(), Relaxed);
            // Sent while holding the index lock: ordered after every capture before it.
            (self.submit(ops), resumed, store_only, filters)
        };
        ticket.wait().await?;
        let mut resume = Resume::default();
        if resumed {
            resume.qos2 = self.read_qos2(client)?;
        }
        if resumed && store_only {
            resume.restored = Some(filters);
        }
        Ok(resume)
    }

    /// A session restored from the store has its subscriptions in the router again (the
    /// SUBSCRIBE is in the router's queue, ahead of any publish routed from now on): returns
    /// what was queued before, oldest first. Later messages come through the router, tagged
    /// with their store sequence. A message published in between may arrive twice (queued
    /// and routed), none is lost.
    pub async fn finish_resume(&self, client: &str) -> Result<Vec<Queued>, StoreError> {
        let (ticket, boundary) = {
            let _index = self.offline.write();
            // Ordered after every capture before it.
            (self.submit(vec![]), self.next_seq.load(Relaxed))
        };
        ticket.wait().await?;
        let mut queued = self.read_queue(client)?;
        queued.retain(|q| q.seq < boundary);
        Ok(queued)
    }

    /// Subscriptions of a persistent session changed; the new set is stored.
    pub fn set_filters(&self, client: &str, add: &[StoredFilter], remove: &[String]) -> Ticket {
        let mut index = self.offline.write();
        let mut sessions = self.sessions.lock();
        let Some(s) = sessions.get_mut(client) else {
            return self.submit(vec![]);
        };
        let f = &mut s.record.filters;
        f.retain(|x| !remove.contains(&x.path) && !add.iter().any(|a| a.path == x.path));
        f.extend(add.iter().cloned());
        index.remove(client);
        index.add(&Arc::from(client), &s.record.filters, &s.stats);
        self.offline_filters.store(index.len(), Relaxed);
        drop(index);
        let op = session_op(client, &s.record);
        drop(sessions);
        self.submit(vec![op])
    }

    /// A persistent session's client went away. `expiry` 0 ends the session. `store_only`:
    /// the router no longer holds it (the edge ended it), so the store's queue is delivered.
    pub fn session_disconnected(&self, client: &str, expiry: u32, store_only: bool) {
        if expiry == 0 {
            self.session_ended(client);
            return;
        }
        let mut index = self.offline.write();
        let mut sessions = self.sessions.lock();
        let Some(s) = sessions.get_mut(client) else {
            return;
        };
        s.record.expiry = expiry;
        s.record.disconnected_at_ms = Some(now_ms());
        s.store_only = store_only;
        index.remove(client);
        index.add(&Arc::from(client), &s.record.filters, &s.stats);
        self.offline_filters.store(index.len(), Relaxed);
        let op = session_op(client, &s.record);
        drop(sessions);
        drop(self.submit(vec![op]));
    }

    /// Records (or, with `None`, clears) the delayed will of an offline session.
    pub fn set_pending_will(&self, client: &str, will: Option<PendingWill>) {
        let mut sessions = self.sessions.lock();
        let Some(s) = sessions.get_mut(client) else {
            return;
        };
        if s.record.will.is_none() && will.is_none() {
            return;
        }
        s.record.will = will;
        let op = session_op(client, &s.record);
        drop(sessions);
        drop(self.submit(vec![op]));
    }

    /// The session ended (expired, or expiry 0): forget it and its queue.
    pub fn session_ended(&self, client: &str) {
        let mut index = self.offline.write();
        index.remove(client);
        self.offline_filters.store(index.len(), Relaxed);
        if self.sessions.lock().remove(client).is_some() {
            drop(self.submit(vec![Op::DelSession(client.to_string())]));
        }
    }

    /// An incoming QoS 2 publish was accepted and waits for PUBREL.
    pub fn qos2_received(&self, client: &str, pkid: u16) -> Ticket {
        self.submit_logged(vec![Op::PutQos2(qos2_key(client, pkid))])
    }

    pub fn qos2_released(&self, client: &str, pkid: u16) -> Ticket {
        self.submit_logged(vec![Op::DelQos2(qos2_key(client, pkid))])
    }

    /// The client acknowledged a message the router delivered, which carried store sequence
    /// `seq`: its stored copy for this session (if any) is no longer needed. Once nothing is
    /// pending, the session's queue records are removed; while some stay pending, every
    /// `TRIM_EVERY` acknowledgements the records wholly below the oldest pending one are.
    pub fn delivered(&self, client: &str, seq: u64) {
        let sessions = self.sessions.lock();
        let Some(s) = sessions.get(client) else {
            return;
        };
        let mut pending = s.stats.pending.lock();
        if !pending.remove(&seq) {
            return;
        }
        let _ = s
            .stats
            .messages
            .fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(1)));
        let mut trim = false;
        let op = if pending.is_empty() {
            s.stats.messages.store(0, Relaxed);
            s.stats.bytes.store(0, Relaxed);
            Op::ClearQueue(client.to_string())
        } else {
            // A subscriber that never quite catches up never empties its pending set; without
            // trimming, its records and acknowledgement rows would grow for as long as it lags,
            // and every commit would cost more than the last.
            trim = s.stats.acked_since_trim.fetch_add(1, Relaxed) + 1 >= TRIM_EVERY;
            Op::Acked(client.to_string(), seq)
        };
        drop(pending);
        drop(sessions);
        drop(self.submit_logged(vec![op]));
        if trim {
            self.trim_delivered(client);
        }
    }

    /// Drops a session's stored copies below its oldest pending one.
    fn trim_delivered(&self, client: &str) {
        // A capture takes its seq and stages its copy under the index's read lock. With the
        // write lock held, every seq handed out so far is staged and in `pending`, so nothing
        // older than the oldest pending one can still arrive, and the trim is ordered after
        // every copy it could touch.
        let _index = self.offline.write();
        let sessions = self.sessions.lock();
        let Some(s) = sessions.get(client) else {
            return;
        };
        s.stats.acked_since_trim.store(0, Relaxed);
        let Some(&oldest) = s.stats.pending.lock().first() else {
            return;
        };
        drop(self.submit_logged(vec![Op::AckedBelow(client.to_string(), oldest)]));
    }

    /// A replayed message was acknowledged by the client; `record_done` when it was the last
    /// undelivered one of its record.
    pub fn replay_acked(
        &self,
        client: &str,
        record: &QueueRecord,
        seq: u64,
        size: u64,
        record_done: bool,
    ) {
        if let Some(s) = self.sessions.lock().get(client) {
            s.stats.pending.lock().remove(&seq);
            let _ = s
                .stats
                .messages
                .fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(1)));
            let _ = s
                .stats
                .bytes
                .fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(size)));
        }
        let op = if record_done {
            Op::DropRecord(
                record.key.clone(),
                client.to_string(),
                record.first,
                record.last,
            )
        } else {
            Op::Acked(client.to_string(), seq)
        };
        drop(self.submit_logged(vec![op]));
    }

    /// Waits until everything submitted so far is committed.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.submit(vec![]).wait().await
    }

    /// Stops the writer after it committed (and fsynced) everything submitted.
    pub fn close(&self) {
        self.inbox.close();
        if let Some(h) = self.writer.lock().take() {
            let _ = h.join();
        }
    }

    /// Persistent sessions with their queue counters, for `/api/sessions`.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        let sessions = self.sessions.lock();
        let mut out: Vec<SessionInfo> = sessions
            .iter()
            .map(|(c, s)| SessionInfo {
                client_id: c.clone(),
                online: s.record.disconnected_at_ms.is_none(),
                expiry: s.record.expiry,
                filters: s.record.filters.iter().map(|f| f.path.clone()).collect(),
                queued_messages: s.stats.messages.load(Relaxed),
                queued_bytes: s.stats.bytes.load(Relaxed),
                overflow: s.stats.overflow.load(Relaxed),
            })
            .collect();
        out.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        out
    }

    /// Prometheus text for the store.
    pub fn render_metrics(&self) -> String {
        let (n, queued, overflow) = {
            let s = self.sessions.lock();
            let q = s
                .values()
                .map(|x| x.stats.messages.load(Relaxed))
                .sum::<u64>();
            let o = s
                .values()
                .map(|x| x.stats.overflow.load(Relaxed))
                .sum::<u64>();
            (s.len(), q, o)
        };
        let size = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, v: u64| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
            ));
        };
        metric(
            "moonwire_store_bytes",
            "gauge",
            "Size of the store file.",
            size,
        );
        metric(
            "moonwire_store_retained",
            "gauge",
            "Retained messages at startup (the router counts them after).",
            self.retained.load(Relaxed),
        );
        metric(
            "moonwire_store_sessions",
            "gauge",
            "Persistent sessions.",
            n as u64,
        );
        metric(
            "moonwire_store_queued_messages",
            "gauge",
            "Messages queued in the store for offline sessions.",
            queued,
        );
        metric(
            "moonwire_store_queue_overflow_total",
            "counter",
            "Messages not queued because a session's queue was full.",
            overflow,
        );
        metric(
            "moonwire_store_commits_total",
            "counter",
            "Store write transactions.",
            self.stats.commits.load(Relaxed),
        );
        metric(
            "moonwire_store_fsyncs_total",
            "counter",
            "Store commits that were fsynced.",
            self.stats.fsyncs.load(Relaxed),
        );
        metric(
            "moonwire_store_errors_total",
            "counter",
            "Failed store commits.",
            self.stats.errors.load(Relaxed),
        );
        out
    }

    fn read_queue(&self, client: &str) -> Result<Vec<Queued>, StoreError> {
        let read = |e: &dyn std::fmt::Display| StoreError::Read(e.to_string());
        let db = self.db()?;
        let tx = db.begin_read().map_err(|e| read(&e))?;
        let (lo, hi) = client_range(client);
        let mut delivered = std::collections::HashSet::new();
        let acked = tx.open_table(ACKED).map_err(|e| read(&e))?;
        for entry in acked
            .range(lo.as_slice()..hi.as_slice())
            .map_err(|e| read(&e))?
        {
            let (k, _) = entry.map_err(|e| read(&e))?;
            delivered.insert(k.value().to_vec());
        }
        let table = tx.open_table(QUEUE).map_err(|e| read(&e))?;
        let mut out = Vec::new();
        let now = now_ms();
        for entry in table
            .range(lo.as_slice()..hi.as_slice())
            .map_err(|e| read(&e))?
        {
            let (k, v) = entry.map_err(|e| read(&e))?;
            let entries = match batch_entries(v.value()) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(client, error = %e, "skipping a corrupt queue record");
                    continue;
                }
            };
            let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
                continue;
            };
            let record = Arc::new(QueueRecord {
                key: k.value().to_vec(),
                first: first.0,
                last: last.0,
            });
            for (seq, qos, at, frame) in entries {
                if delivered.contains(&record::queue_key(client, seq)) {
                    continue;
                }
                match decode_entry(qos, at, frame) {
                    Ok(mut m) => {
                        if m.age(now) {
                            out.push(Queued {
                                record: record.clone(),
                                seq,
                                message: m,
                            });
                        }
                    }
                    Err(e) => {
                        tracing::warn!(client, error = %e, "skipping a corrupt queued message")
                    }
                }
            }
        }
        Ok(out)
    }

    fn read_qos2(&self, client: &str) -> Result<Vec<u16>, StoreError> {
        let read = |e: &dyn std::fmt::Display| StoreError::Read(e.to_string());
        let db = self.db()?;
        let tx = db.begin_read().map_err(|e| read(&e))?;
        let table = tx.open_table(QOS2).map_err(|e| read(&e))?;
        let (lo, hi) = client_range(client);
        let mut out = Vec::new();
        for entry in table
            .range(lo.as_slice()..hi.as_slice())
            .map_err(|e| read(&e))?
        {
            let (k, _) = entry.map_err(|e| read(&e))?;
            if let Ok((_, &[a, b])) = split_key(k.value()) {
                out.push(u16::from_be_bytes([a, b]));
            }
        }
        Ok(out)
    }

    /// The database, for the blocks' `kv` table (one file for everything durable).
    pub fn database(&self) -> Arc<Database> {
        self.db.clone()
    }

    fn db(&self) -> Result<&Database, StoreError> {
        Ok(&self.db)
    }
}

/// One persistent session, as `/api/sessions` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionInfo {
    pub client_id: String,
    pub online: bool,
    pub expiry: u32,
    pub filters: Vec<String>,
    pub queued_messages: u64,
    pub queued_bytes: u64,
    pub overflow: u64,
}

fn session_op(client: &str, record: &SessionRecord) -> Op {
    // Serialising plain data into a Vec cannot fail.
    let bytes = serde_json::to_vec(record).unwrap_or_default();
    Op::PutSession(client.to_string(), bytes)
}
