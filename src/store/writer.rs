//! The single writer thread: every change to the store goes through it, so many concurrent
//! changes become one redb write transaction (group commit) and the fsync policy is applied
//! in one place.

use super::record::{batch_push, batch_start, client_range, queue_key};
use super::tables::{ACKED, QOS2, QUEUE, RETAINED, SESSIONS};
use super::wal::Wal;
use redb::{Database, Durability};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How commits reach the disk; `storage.fsync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// Every commit is fsynced before anything it holds is acknowledged.
    Always,
    /// Commits reach the OS before the ack (a crash of the broker loses nothing); an fsync
    /// follows within `storage.fsync_interval` (a crash of the machine loses at most that).
    Batch,
    /// Like `Batch` without the interval: the store is fsynced only when its write-ahead log
    /// reaches its bound, and at shutdown.
    Never,
}

/// One change.
pub enum Op {
    PutRetained(String, Vec<u8>),
    DelRetained(String),
    PutSession(String, Vec<u8>),
    /// Removes the session with its queue and QoS 2 state.
    DelSession(String),
    /// Client, seq, QoS, stored at, shared frame. A commit writes all of a client's as one
    /// record keyed by the first seq.
    Enqueue(Arc<str>, u64, u8, u64, Arc<[u8]>),
    /// One message of a record was delivered: (client, seq).
    Acked(String, u64),
    /// Every message of a record was delivered: (record key, client, first and last seq).
    DropRecord(Vec<u8>, String, u64, u64),
    ClearQueue(String),
    PutQos2(Vec<u8>),
    DelQos2(Vec<u8>),
}

impl Op {
    /// Roughly what the op holds in memory, for bounding what waits to be applied.
    fn weight(&self) -> usize {
        32 + match self {
            Op::PutRetained(t, v) | Op::PutSession(t, v) => t.len() + v.len(),
            Op::Enqueue(c, _, _, _, frame) => c.len() + frame.len(),
            Op::DropRecord(k, c, _, _) => k.len() + c.len(),
            Op::DelRetained(s) | Op::DelSession(s) | Op::ClearQueue(s) | Op::Acked(s, _) => s.len(),
            Op::PutQos2(k) | Op::DelQos2(k) => k.len(),
        }
    }
}

/// A group of changes and who waits for them.
pub struct Job {
    pub ops: Vec<Op>,
    pub done: Option<oneshot::Sender<Result<(), String>>>,
    /// The waiter reads the store next, so the changes must be in redb, not only in the log.
    pub visible: bool,
}

/// Write-ahead log size that forces a durable commit before `fsync_interval` is up.
const WAL_LIMIT: u64 = 64 << 20;
/// redb commits between two durable ones, at most. redb frees the pages a commit replaced
/// only at a durable commit, so the file grows by every page the commits in between touched:
/// bounding their number bounds that growth.
const MAX_NONDURABLE_COMMITS: u32 = 100;
/// Logged operations (and their bytes) that wait to be applied to redb, at most. Applying many
/// groups in one redb commit is what makes the log pay: a commit costs far more than the
/// writes in it.
const MAX_DEFERRED_OPS: usize = 16_384;
const MAX_DEFERRED_BYTES: usize = 16 << 20;
/// Beyond this many times the limits above, redb has kept failing to apply them: new
/// changes are refused instead of held in memory without end.
const DEFERRED_REFUSE: usize = 4;

/// Jobs applied in one transaction at most; bounds the latency of the first waiter.
const MAX_GROUP: usize = 2048;

pub struct WriterStats {
    pub commits: std::sync::atomic::AtomicU64,
    pub fsyncs: std::sync::atomic::AtomicU64,
    pub errors: std::sync::atomic::AtomicU64,
}

/// Groups that are in the log and acknowledged but not yet in redb.
#[derive(Default)]
struct Deferred {
    groups: Vec<Vec<Op>>,
    ops: usize,
    bytes: usize,
}

impl Deferred {
    fn push(&mut self, group: Vec<Op>) {
        self.ops += group.len();
        self.bytes += group.iter().map(Op::weight).sum::<usize>();
        self.groups.push(group);
    }

    fn full(&self, times: usize) -> bool {
        self.ops >= MAX_DEFERRED_OPS * times || self.bytes >= MAX_DEFERRED_BYTES * times
    }

    fn clear(&mut self) {
        *self = Deferred::default();
    }
}

/// Runs the writer.
///
/// With `wal` (`batch` and `never`), a group is acknowledged once the write-ahead log holds it
/// (see `wal.rs`), and applied to redb later, many groups per commit: when a waiter needs to
/// read it (`Job::visible`), when enough has gathered, and durably every `interval` (`batch`
/// only) or when the log or the commits since the last durable one reach their bound.
/// Without it (`always`), every group is one durable commit before its acks.
pub fn run(
    db: Arc<Database>,
    rx: Receiver<Job>,
    fsync: Fsync,
    interval: Duration,
    stats: Arc<WriterStats>,
    mut wal: Option<Wal>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let timed = fsync == Fsync::Batch;
    let mut last_sync = Instant::now();
    // Changes not yet durable in redb (in the log, or in non-durable commits).
    let mut dirty = false;
    let mut nondurable = 0u32;
    let mut deferred = Deferred::default();
    let mut jobs: Vec<Job> = Vec::new();
    loop {
        let wait = if dirty && timed {
            interval.saturating_sub(last_sync.elapsed())
        } else {
            Duration::from_secs(3600)
        };
        match rx.recv_timeout(wait) {
            Ok(job) => jobs.push(job),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                if dirty && commit(&db, &deferred.groups, Durability::Immediate).is_ok() {
                    reset(&mut wal);
                }
                return;
            }
        }
        while jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let group: Vec<Op> = jobs
            .iter_mut()
            .flat_map(|j| std::mem::take(&mut j.ops))
            .collect();
        let Some(log) = wal.as_mut() else {
            if jobs.is_empty() {
                continue;
            }
            let result = commit(&db, std::slice::from_ref(&group), Durability::Immediate)
                .map_err(|e| e.to_string());
            stats.commits.fetch_add(1, Relaxed);
            stats.fsyncs.fetch_add(1, Relaxed);
            if let Err(e) = &result {
                stats.errors.fetch_add(1, Relaxed);
                tracing::error!(error = %e, "store commit failed; the affected publishes are not acknowledged");
            }
            for job in jobs.drain(..) {
                if let Some(done) = job.done {
                    let _ = done.send(result.clone());
                }
            }
            continue;
        };
        // A long interval must not let the log (and what a restart replays) grow without end.
        let log_full = log.appended() >= WAL_LIMIT || nondurable >= MAX_NONDURABLE_COMMITS;
        let sync_due = dirty && ((timed && last_sync.elapsed() >= interval) || log_full);
        if jobs.is_empty() && !sync_due {
            continue;
        }
        let logged = if group.is_empty() {
            Ok(())
        } else if deferred.full(DEFERRED_REFUSE) {
            Err("the store cannot apply its write-ahead log (see earlier errors)".to_string())
        } else {
            // Acknowledged only once the log holds it: a crash of the process cannot undo a
            // write that reached the OS.
            let r = log.append(&group).map_err(|e| e.to_string());
            if r.is_ok() {
                deferred.push(group);
                dirty = true;
            }
            r
        };
        let visible = jobs.iter().any(|j| j.visible);
        let mut applied = Ok(());
        if visible || sync_due || deferred.full(1) {
            let durable = sync_due || (timed && dirty && last_sync.elapsed() >= interval);
            let durability = if durable {
                Durability::Immediate
            } else {
                Durability::None
            };
            applied = commit(&db, &deferred.groups, durability).map_err(|e| e.to_string());
            stats.commits.fetch_add(1, Relaxed);
            match &applied {
                Ok(()) if durable => {
                    deferred.clear();
                    stats.fsyncs.fetch_add(1, Relaxed);
                    if let Err(e) = log.reset() {
                        tracing::warn!(error = %e, path = %log.path().display(), "cannot empty the write-ahead log");
                    }
                    last_sync = Instant::now();
                    dirty = false;
                    nondurable = 0;
                }
                Ok(()) => {
                    deferred.clear();
                    nondurable += 1;
                }
                Err(e) => {
                    // What the log holds stays acknowledged and is applied by a later commit.
                    stats.errors.fetch_add(1, Relaxed);
                    tracing::error!(error = %e, "store commit failed; the write-ahead log keeps what it holds for the next attempt");
                }
            }
        }
        if let Err(e) = &logged {
            stats.errors.fetch_add(1, Relaxed);
            tracing::error!(error = %e, "store write failed; the affected publishes are not acknowledged");
        }
        for job in jobs.drain(..) {
            if let Some(done) = job.done {
                let r = match (&logged, &applied) {
                    (Err(e), _) => Err(e.clone()),
                    (Ok(()), Err(e)) if job.visible => Err(e.clone()),
                    _ => Ok(()),
                };
                let _ = done.send(r);
            }
        }
    }
}

/// Empties the log after a durable commit. A failure only leaves groups that redb already holds
/// (replaying them changes nothing), so it is logged, not fatal.
fn reset(wal: &mut Option<Wal>) {
    if let Some(w) = wal.as_mut()
        && let Err(e) = w.reset()
    {
        tracing::warn!(error = %e, path = %w.path().display(), "cannot empty the write-ahead log");
    }
}

/// Applies groups in one redb transaction. Queue records end at group boundaries, so replaying
/// the log group by group writes the same records under the same keys.
pub(super) fn commit(
    db: &Database,
    groups: &[Vec<Op>],
    durability: Durability,
) -> Result<(), Box<redb::Error>> {
    apply(db, groups, durability).map_err(Box::new)
}

// `?` on redb's many error types needs its big umbrella error; it is boxed right away above.
#[allow(clippy::result_large_err)]
fn apply(db: &Database, groups: &[Vec<Op>], durability: Durability) -> Result<(), redb::Error> {
    let mut tx = db.begin_write()?;
    tx.set_durability(durability);
    {
        let mut retained = tx.open_table(RETAINED)?;
        let mut sessions = tx.open_table(SESSIONS)?;
        let mut queue = tx.open_table(QUEUE)?;
        let mut qos2 = tx.open_table(QOS2)?;
        let mut acked = tx.open_table(ACKED)?;
        // Queued messages of the current group, per client, written as one record each.
        let mut pending: HashMap<&str, (Vec<u8>, Vec<u8>)> = HashMap::new();
        let flush = |pending: &mut HashMap<&str, (Vec<u8>, Vec<u8>)>,
                     queue: &mut redb::Table<&[u8], &[u8]>,
                     client: Option<&str>|
         -> Result<(), redb::Error> {
            let keys: Vec<&str> = match client {
                Some(c) => pending.keys().copied().filter(|k| *k == c).collect(),
                None => pending.keys().copied().collect(),
            };
            for k in keys {
                if let Some((key, rec)) = pending.remove(k) {
                    queue.insert(key.as_slice(), rec.as_slice())?;
                }
            }
            Ok(())
        };
        for group in groups {
            for op in group {
                match op {
                    Op::PutRetained(t, v) => {
                        retained.insert(t.as_str(), v.as_slice())?;
                    }
                    Op::DelRetained(t) => {
                        retained.remove(t.as_str())?;
                    }
                    Op::PutSession(c, v) => {
                        sessions.insert(c.as_str(), v.as_slice())?;
                    }
                    Op::DelSession(c) => {
                        flush(&mut pending, &mut queue, Some(c))?;
                        sessions.remove(c.as_str())?;
                        let (lo, hi) = client_range(c);
                        queue.retain_in(lo.as_slice()..hi.as_slice(), |_, _| false)?;
                        qos2.retain_in(lo.as_slice()..hi.as_slice(), |_, _| false)?;
                        acked.retain_in(lo.as_slice()..hi.as_slice(), |_, _| false)?;
                    }
                    Op::Enqueue(client, seq, qos, at, frame) => {
                        let (_, rec) = pending
                            .entry(client)
                            .or_insert_with(|| (queue_key(client, *seq), batch_start()));
                        batch_push(rec, *seq, *qos, *at, frame);
                    }
                    Op::Acked(client, seq) => {
                        acked.insert(queue_key(client, *seq).as_slice(), &[][..])?;
                    }
                    Op::DropRecord(key, client, first, last) => {
                        flush(&mut pending, &mut queue, Some(client))?;
                        queue.remove(key.as_slice())?;
                        let (lo, hi) = (queue_key(client, *first), queue_key(client, *last));
                        acked.retain_in(lo.as_slice()..=hi.as_slice(), |_, _| false)?;
                    }
                    Op::ClearQueue(c) => {
                        flush(&mut pending, &mut queue, Some(c))?;
                        let (lo, hi) = client_range(c);
                        queue.retain_in(lo.as_slice()..hi.as_slice(), |_, _| false)?;
                        acked.retain_in(lo.as_slice()..hi.as_slice(), |_, _| false)?;
                    }
                    Op::PutQos2(k) => {
                        qos2.insert(k.as_slice(), &[][..])?;
                    }
                    Op::DelQos2(k) => {
                        qos2.remove(k.as_slice())?;
                    }
                }
            }
            // Records end with their group (see `commit`).
            flush(&mut pending, &mut queue, None)?;
        }
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::ReadableTable;

    fn enqueue(client: &Arc<str>, seq: u64) -> Op {
        Op::Enqueue(client.clone(), seq, 1, 0, Arc::from(&b"frame"[..]))
    }

    fn queue_records(db: &Database) -> Vec<(Vec<u8>, Vec<u8>)> {
        let tx = db.begin_read().unwrap();
        let t = tx.open_table(QUEUE).unwrap();
        t.iter()
            .unwrap()
            .map(|e| {
                let (k, v) = e.unwrap();
                (k.value().to_vec(), v.value().to_vec())
            })
            .collect()
    }

    #[test]
    fn one_commit_of_many_groups_writes_what_group_by_group_commits_write() {
        // The writer applies many logged groups in one commit; after a crash the log is
        // replayed, and both must leave the same records under the same keys, or a replay
        // over an already-durable commit would queue messages twice.
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let groups = vec![
            vec![enqueue(&a, 1), enqueue(&b, 1), enqueue(&a, 2)],
            vec![enqueue(&a, 3)],
            vec![enqueue(&b, 4), enqueue(&a, 5)],
        ];
        let dir = tempfile::tempdir().unwrap();
        let one = Database::create(dir.path().join("one.redb")).unwrap();
        commit(&one, &groups, Durability::Immediate).unwrap();
        let each = Database::create(dir.path().join("each.redb")).unwrap();
        for g in &groups {
            commit(&each, std::slice::from_ref(g), Durability::Immediate).unwrap();
        }
        let records = queue_records(&one);
        assert_eq!(records.len(), 5, "one record per client per group");
        assert_eq!(records, queue_records(&each));
        // Applying the groups again over the result changes nothing.
        commit(&one, &groups, Durability::Immediate).unwrap();
        assert_eq!(queue_records(&one), records);
    }
}
