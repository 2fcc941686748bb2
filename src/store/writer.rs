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
    /// Commits reach the OS before the ack; the OS decides when they reach the disk.
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

/// A group of changes and who waits for them.
pub struct Job {
    pub ops: Vec<Op>,
    pub done: Option<oneshot::Sender<Result<(), String>>>,
}

/// Write-ahead log size that forces a durable commit before `fsync_interval` is up.
const WAL_LIMIT: u64 = 64 << 20;
/// Logged commits that force a durable one. redb frees the pages a commit replaced only at a
/// durable commit, so the file grows by every page the logged commits in between touched:
/// bounding their number bounds that growth (and the replay after a crash).
const MAX_LOGGED_COMMITS: u32 = 100;

/// Jobs applied in one transaction at most; bounds the latency of the first waiter.
const MAX_GROUP: usize = 2048;

pub struct WriterStats {
    pub commits: std::sync::atomic::AtomicU64,
    pub fsyncs: std::sync::atomic::AtomicU64,
    pub errors: std::sync::atomic::AtomicU64,
}

/// Runs the writer. With `wal` (batch mode), commits between the interval's durable ones are
/// redb `None` commits backed by the write-ahead log (see `wal.rs`).
pub fn run(
    db: Arc<Database>,
    rx: Receiver<Job>,
    fsync: Fsync,
    interval: Duration,
    stats: Arc<WriterStats>,
    mut wal: Option<Wal>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut last_sync = Instant::now();
    let mut dirty = false;
    let mut jobs: Vec<Job> = Vec::new();
    loop {
        let wait = if dirty && fsync == Fsync::Batch {
            interval.saturating_sub(last_sync.elapsed())
        } else {
            Duration::from_secs(3600)
        };
        match rx.recv_timeout(wait) {
            Ok(job) => jobs.push(job),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                if dirty && commit(&db, &[], Durability::Immediate).is_ok() {
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
        // A long interval must not let the log (and what a restart replays) grow without end.
        let log_full = wal
            .as_ref()
            .is_some_and(|w| w.appended() >= WAL_LIMIT || w.entries() >= MAX_LOGGED_COMMITS);
        let sync_due =
            fsync == Fsync::Batch && dirty && (last_sync.elapsed() >= interval || log_full);
        if jobs.is_empty() && !sync_due {
            continue;
        }
        let durability = match fsync {
            Fsync::Always => Durability::Immediate,
            Fsync::Batch if sync_due || last_sync.elapsed() >= interval => Durability::Immediate,
            Fsync::Batch if wal.is_some() => Durability::None,
            _ => Durability::Eventual,
        };
        let mut result = commit(&db, &jobs, durability).map_err(|e| e.to_string());
        if result.is_ok() {
            if matches!(durability, Durability::None) {
                // Acknowledged only once the log holds it: a crash loses the None commit.
                if let Some(w) = wal.as_mut() {
                    let ops = jobs.iter().flat_map(|j| j.ops.iter());
                    result = w.append(ops).map_err(|e| e.to_string());
                }
            } else if matches!(durability, Durability::Immediate) {
                reset(&mut wal);
            }
        }
        stats.commits.fetch_add(1, Relaxed);
        if let Err(e) = &result {
            stats.errors.fetch_add(1, Relaxed);
            tracing::error!(error = %e, "store commit failed; the affected publishes are not acknowledged");
        }
        if matches!(durability, Durability::Immediate) {
            stats.fsyncs.fetch_add(1, Relaxed);
            last_sync = Instant::now();
            dirty = false;
        } else {
            dirty = true;
        }
        for job in jobs.drain(..) {
            if let Some(done) = job.done {
                let _ = done.send(result.clone());
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

pub(super) fn commit(
    db: &Database,
    jobs: &[Job],
    durability: Durability,
) -> Result<(), Box<redb::Error>> {
    apply(db, jobs, durability).map_err(Box::new)
}

// `?` on redb's many error types needs its big umbrella error; it is boxed right away above.
#[allow(clippy::result_large_err)]
fn apply(db: &Database, jobs: &[Job], durability: Durability) -> Result<(), redb::Error> {
    let mut tx = db.begin_write()?;
    tx.set_durability(durability);
    {
        let mut retained = tx.open_table(RETAINED)?;
        let mut sessions = tx.open_table(SESSIONS)?;
        let mut queue = tx.open_table(QUEUE)?;
        let mut qos2 = tx.open_table(QOS2)?;
        let mut acked = tx.open_table(ACKED)?;
        // Queued messages of this commit, per client, written as one record each.
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
        for op in jobs.iter().flat_map(|j| j.ops.iter()) {
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
        flush(&mut pending, &mut queue, None)?;
    }
    tx.commit()?;
    Ok(())
}
