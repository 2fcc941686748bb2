//! The single writer thread: every change to the store goes through it, so many concurrent
//! changes become one redb write transaction (group commit) and the fsync policy is applied
//! in one place.

use super::record::{batch_push, batch_start, client_range, queue_key};
use super::tables::{ACKED, QOS2, QUEUE, RETAINED, SESSIONS};
use super::wal::Wal;
use parking_lot::{Condvar, Mutex};
use redb::{Database, Durability, ReadableTable};
use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

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
    Enqueue(Arc<str>, u64, u8, u64, bytes::Bytes),
    /// One message of a record was delivered: (client, seq).
    Acked(String, u64),
    /// Every message of a record was delivered: (record key, client, first and last seq).
    DropRecord(Vec<u8>, String, u64, u64),
    ClearQueue(String),
    /// Every queued message of the client below this seq was delivered: (client, seq). Drops
    /// the records before the one that holds it, and their acknowledgement rows.
    AckedBelow(String, u64),
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
            Op::DelRetained(s)
            | Op::DelSession(s)
            | Op::ClearQueue(s)
            | Op::Acked(s, _)
            | Op::AckedBelow(s, _) => s.len(),
            Op::PutQos2(k) | Op::DelQos2(k) => k.len(),
        }
    }
}

/// Changes submitted and not yet taken by the writer. Submitting is a push under a lock the
/// writer takes only to swap the batch out, and the writer is woken only when the inbox goes
/// from empty to not: a burst of publishes costs one wake-up and one completion per group,
/// not one per message. Everything staged in one generation commits together.
#[derive(Default)]
pub struct Inbox {
    staged: Mutex<Staged>,
    wake: Condvar,
}

struct Staged {
    ops: Vec<Op>,
    /// Something was submitted since the writer last took the batch (possibly no ops: a
    /// waiter that only needs what came before it).
    pending: bool,
    /// A waiter reads the store next, so the changes must be in redb, not only in the log.
    visible: bool,
    /// The generation that what is staged commits in.
    generation: u64,
    closed: bool,
}

impl Default for Staged {
    fn default() -> Self {
        Staged {
            ops: Vec::new(),
            pending: false,
            visible: false,
            generation: 1,
            closed: false,
        }
    }
}

impl Inbox {
    /// Stages changes; returns their generation, or `None` once the store is closed.
    pub fn submit(&self, ops: Vec<Op>, visible: bool) -> Option<u64> {
        let mut s = self.staged.lock();
        if s.closed {
            return None;
        }
        let idle = !s.pending;
        s.ops.extend(ops);
        s.pending = true;
        s.visible |= visible;
        let generation = s.generation;
        drop(s);
        if idle {
            self.wake.notify_one();
        }
        Some(generation)
    }

    /// The writer finishes what is staged, commits durably and stops.
    pub fn close(&self) {
        self.staged.lock().closed = true;
        self.wake.notify_one();
    }
}

/// Failed generations remembered for their tickets.
const FAILURES_KEPT: usize = 64;

/// What the writer has finished, watched by tickets.
#[derive(Default)]
pub struct Done {
    /// Every generation up to this one is finished.
    pub finished: u64,
    /// Recent generations that failed, with why.
    failed: VecDeque<(u64, String)>,
    /// Generations below this may have failed without being remembered.
    forgotten_below: u64,
}

impl Done {
    /// How generation `g` ended; `None` while it is not finished.
    pub fn outcome(&self, g: u64) -> Option<Result<(), String>> {
        if self.finished < g {
            return None;
        }
        if let Some((_, e)) = self.failed.iter().find(|(f, _)| *f == g) {
            return Some(Err(e.clone()));
        }
        if g < self.forgotten_below {
            return Some(Err("store write failed (see the log)".into()));
        }
        Some(Ok(()))
    }

    fn finish(&mut self, g: u64, result: Result<(), String>) {
        self.finished = g;
        if let Err(e) = result {
            self.failed.push_back((g, e));
            if self.failed.len() > FAILURES_KEPT
                && let Some((f, _)) = self.failed.pop_front()
            {
                self.forgotten_below = f + 1;
            }
        }
    }
}

/// Write-ahead log size that forces a durable commit before `fsync_interval` is up.
const WAL_LIMIT: u64 = 64 << 20;
/// redb commits between two durable ones, at most. redb frees the pages a commit replaced
/// only at a durable commit, so the file grows by every page the commits in between touched:
/// bounding their number bounds that growth.
const MAX_NONDURABLE_COMMITS: u32 = 100;
/// Logged operations (and their bytes) that wait to be applied to redb, at most. Applying many
/// groups in one redb commit saves the commit's fixed cost; applying too many at once holds up
/// the acks queued behind the apply (16,384 cut a connected persistent subscriber's throughput
/// by half).
const MAX_DEFERRED_OPS: usize = 1024;
const MAX_DEFERRED_BYTES: usize = 1 << 20;
/// Beyond this many times the limits above, redb has kept failing to apply them: new
/// changes are refused instead of held in memory without end.
const DEFERRED_REFUSE: usize = 4;

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

    fn clear(&mut self, spare: &mut Vec<Vec<Op>>) {
        for group in self.groups.drain(..) {
            recycle(spare, group);
        }
        self.ops = 0;
        self.bytes = 0;
    }
}

/// Keeps a few emptied group buffers of ordinary size for reuse.
fn recycle(spare: &mut Vec<Vec<Op>>, mut group: Vec<Op>) {
    if spare.len() < 4 && group.capacity() <= 4096 {
        group.clear();
        spare.push(group);
    }
}

/// Runs the writer until the inbox is closed.
///
/// With `wal` (`batch` and `never`), a group is finished once the write-ahead log holds it
/// (see `wal.rs`), and applied to redb later, many groups per commit: when a waiter needs to
/// read it (`visible`), when enough has gathered, and durably every `interval` (`batch`
/// only) or when the log or the commits since the last durable one reach their bound.
/// Without it (`always`), every group is one durable commit before it is finished.
pub fn run(
    db: Arc<Database>,
    inbox: Arc<Inbox>,
    done: watch::Sender<Done>,
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
    // Emptied group buffers, handed back to the inbox so staging does not grow a new one.
    let mut spare: Vec<Vec<Op>> = Vec::new();
    loop {
        let (group, visible, generation, closed, submitted) = {
            let mut s = inbox.staged.lock();
            let mut woken = false;
            while !s.pending && !s.closed {
                let wait = if dirty && timed {
                    interval.saturating_sub(last_sync.elapsed())
                } else {
                    Duration::from_secs(3600)
                };
                if inbox.wake.wait_for(&mut s, wait).timed_out() {
                    break;
                }
                woken = true;
            }
            if woken {
                // Woken by the first change of a burst: the threads staging the rest get the
                // CPU first, so the group takes them too (with a core to spare this returns
                // at once). Measured: about a tenth more QoS 1 throughput on two cores.
                drop(s);
                std::thread::yield_now();
                s = inbox.staged.lock();
            }
            let submitted = std::mem::take(&mut s.pending);
            let generation = s.generation;
            if submitted {
                s.generation += 1;
            }
            let group = std::mem::replace(&mut s.ops, spare.pop().unwrap_or_default());
            let visible = std::mem::take(&mut s.visible);
            (group, visible, generation, s.closed, submitted)
        };
        if closed && !submitted {
            if dirty
                && commit(&db, &deferred.groups, Durability::Immediate).is_ok()
                && let Some(log) = wal.as_mut()
            {
                reset(log);
            }
            return;
        }
        let Some(log) = wal.as_mut() else {
            if !submitted {
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
            done.send_modify(|d| d.finish(generation, result));
            recycle(&mut spare, group);
            continue;
        };
        // A long interval must not let the log (and what a restart replays) grow without end.
        let log_full = log.appended() >= WAL_LIMIT || nondurable >= MAX_NONDURABLE_COMMITS;
        let sync_due = dirty && ((timed && last_sync.elapsed() >= interval) || log_full);
        if !submitted && !sync_due {
            continue;
        }
        let logged = if group.is_empty() {
            recycle(&mut spare, group);
            Ok(())
        } else if deferred.full(DEFERRED_REFUSE) {
            Err("the store cannot apply its write-ahead log (see earlier errors)".to_string())
        } else {
            // Finished only once the log holds it: a crash of the process cannot undo a write
            // that reached the OS.
            let r = log.append(&group).map_err(|e| e.to_string());
            if r.is_ok() {
                deferred.push(group);
                dirty = true;
            }
            r
        };
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
                    deferred.clear(&mut spare);
                    stats.fsyncs.fetch_add(1, Relaxed);
                    reset(log);
                    last_sync = Instant::now();
                    dirty = false;
                    nondurable = 0;
                }
                Ok(()) => {
                    deferred.clear(&mut spare);
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
        if submitted {
            let result = match (logged, applied) {
                (Err(e), _) => Err(e),
                (Ok(()), Err(e)) if visible => Err(e),
                _ => Ok(()),
            };
            done.send_modify(|d| d.finish(generation, result));
        }
    }
}

/// Empties the log after a durable commit. A failure only leaves groups that redb already holds
/// (replaying them changes nothing), so it is logged, not fatal.
fn reset(log: &mut Wal) {
    if let Err(e) = log.reset() {
        tracing::warn!(error = %e, path = %log.path().display(), "cannot empty the write-ahead log");
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
                    Op::AckedBelow(c, seq) => {
                        flush(&mut pending, &mut queue, Some(c))?;
                        // Records are keyed by their first seq and hold ascending seqs, so every
                        // record before the last one starting below `seq` is wholly delivered.
                        // That last one may still hold pending messages and stays, with the
                        // acknowledgement rows from its first seq on.
                        let lo = client_range(c).0;
                        let below = queue_key(c, *seq);
                        let last = match queue.range(lo.as_slice()..below.as_slice())?.next_back() {
                            Some(entry) => Some(entry?.0.value().to_vec()),
                            None => None,
                        };
                        if let Some(last) = last {
                            queue.retain_in(lo.as_slice()..last.as_slice(), |_, _| false)?;
                            acked.retain_in(lo.as_slice()..last.as_slice(), |_, _| false)?;
                        }
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

    fn enqueue(client: &Arc<str>, seq: u64) -> Op {
        Op::Enqueue(
            client.clone(),
            seq,
            1,
            0,
            bytes::Bytes::from_static(b"frame"),
        )
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

    fn wait(done: &watch::Receiver<Done>, g: u64) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(r) = done.borrow().outcome(g) {
                return r;
            }
            assert!(Instant::now() < deadline, "generation {g} never finished");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn logged_changes_are_acknowledged_before_redb_has_them_and_applied_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Database::create(dir.path().join("s.redb")).unwrap());
        commit(&db, &[], Durability::Immediate).unwrap();
        let wal_path = dir.path().join("s.wal");
        let (mut wal, _) = Wal::open(&wal_path).unwrap();
        wal.reset().unwrap();
        let inbox = Arc::new(Inbox::default());
        let (done_tx, done) = watch::channel(Done::default());
        let stats = Arc::new(WriterStats {
            commits: 0.into(),
            fsyncs: 0.into(),
            errors: 0.into(),
        });
        let writer = {
            let (db, inbox) = (db.clone(), inbox.clone());
            std::thread::spawn(move || {
                run(
                    db,
                    inbox,
                    done_tx,
                    Fsync::Batch,
                    Duration::from_secs(3600),
                    stats,
                    Some(wal),
                )
            })
        };
        let a: Arc<str> = Arc::from("a");
        let g = inbox.submit(vec![enqueue(&a, 1)], false).unwrap();
        wait(&done, g).unwrap();
        assert!(
            std::fs::metadata(&wal_path).unwrap().len() > 8,
            "the log holds it"
        );
        assert!(queue_records(&db).is_empty(), "redb does not have it yet");

        // A waiter that reads next gets everything before it applied.
        let g = inbox.submit(vec![], true).unwrap();
        wait(&done, g).unwrap();
        assert_eq!(queue_records(&db).len(), 1);

        // Closing commits durably and empties the log; later submissions are refused.
        inbox.submit(vec![enqueue(&a, 2)], false).unwrap();
        inbox.close();
        writer.join().unwrap();
        assert_eq!(queue_records(&db).len(), 2);
        assert_eq!(std::fs::metadata(&wal_path).unwrap().len(), 8);
        assert!(inbox.submit(vec![enqueue(&a, 3)], false).is_none());
    }

    #[test]
    fn a_failed_generation_fails_its_tickets_and_no_other() {
        let mut d = Done::default();
        assert_eq!(d.outcome(1), None);
        d.finish(1, Ok(()));
        d.finish(2, Err("disk full".into()));
        d.finish(3, Ok(()));
        assert_eq!(d.outcome(1), Some(Ok(())));
        assert_eq!(d.outcome(2), Some(Err("disk full".into())));
        assert_eq!(d.outcome(3), Some(Ok(())));
        assert_eq!(d.outcome(4), None);
        // Beyond the failures it remembers, an old generation is reported failed, not ok.
        for g in 4..4 + FAILURES_KEPT as u64 {
            d.finish(g, Err("again".into()));
        }
        assert!(d.outcome(2).is_some_and(|r| r.is_err()));
        assert!(d.outcome(1).is_some_and(|r| r.is_err()));
    }

    fn keys(db: &Database, table: redb::TableDefinition<&[u8], &[u8]>) -> Vec<Vec<u8>> {
        let tx = db.begin_read().unwrap();
        let t = tx.open_table(table).unwrap();
        t.iter()
            .unwrap()
            .map(|e| e.unwrap().0.value().to_vec())
            .collect()
    }

    #[test]
    fn acked_below_drops_only_records_wholly_delivered() {
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("t.redb")).unwrap();
        let groups = vec![
            vec![enqueue(&a, 1), enqueue(&a, 2), enqueue(&b, 2)],
            vec![enqueue(&a, 3), enqueue(&a, 4)],
            vec![enqueue(&a, 5), enqueue(&a, 6)],
            vec![
                Op::Acked("a".into(), 1),
                Op::Acked("a".into(), 2),
                Op::Acked("a".into(), 3),
                Op::Acked("b".into(), 2),
            ],
        ];
        commit(&db, &groups, Durability::Immediate).unwrap();
        assert_eq!(keys(&db, QUEUE).len(), 4);

        // 4 is the oldest pending: the record starting at 1 is wholly delivered, the one
        // starting at 3 still holds 4 and keeps its row for 3.
        let trim = vec![vec![Op::AckedBelow("a".into(), 4)]];
        commit(&db, &trim, Durability::Immediate).unwrap();
        let k = |c: &str, seq| queue_key(c, seq);
        assert_eq!(keys(&db, QUEUE), vec![k("a", 3), k("a", 5), k("b", 2)]);
        assert_eq!(keys(&db, ACKED), vec![k("a", 3), k("b", 2)]);

        // Nothing below the first record: nothing to drop.
        let trim = vec![vec![Op::AckedBelow("a".into(), 3)]];
        commit(&db, &trim, Durability::Immediate).unwrap();
        assert_eq!(keys(&db, QUEUE).len(), 3);
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
