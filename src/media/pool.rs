//! The media worker pool: CPU-heavy media jobs (thumbnails) on their own OS threads, behind a
//! bounded queue that never blocks the submitter.
//!
//! The message path submits and moves on; it gets a [`JobHandle`] to await (or drop) the result.
//! When the queue is full the pool makes room instead of waiting: it drops the oldest pending job
//! of the same camera (a newer frame of that camera supersedes it), or, if that camera has nothing
//! pending, the oldest pending job overall. A dropped job's handle resolves to
//! [`JobError::Dropped`], and every drop is counted ([`PoolStats::dropped`]).
//!
//! Threads are plain `std::thread`s so decoding never occupies a tokio worker. Dropping the pool
//! (or calling [`MediaPool::shutdown`]) stops intake, resolves pending jobs with
//! [`JobError::ShutDown`], lets running jobs finish and joins the threads.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

/// Why the pool refused a job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("media pool is shut down")]
    ShuttingDown,
    #[error("cannot start media worker thread: {0}")]
    Spawn(String),
}

/// Why an accepted job produced no result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// Dropped from a full queue to make room for a newer job.
    #[error("dropped from the full media queue")]
    Dropped,
    /// The pool shut down before the job ran.
    #[error("media pool shut down before the job ran")]
    ShutDown,
    /// The job panicked; the worker thread survived.
    #[error("media job panicked")]
    Panicked,
}

/// Counters for metrics. Monotonic except `queued`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStats {
    /// Jobs accepted by `submit`.
    pub submitted: u64,
    /// Jobs that ran to completion (a panicking job counts in `panicked` instead).
    pub completed: u64,
    /// Jobs dropped from a full queue.
    pub dropped: u64,
    /// Jobs that panicked.
    pub panicked: u64,
    /// Jobs resolved with `ShutDown` because the pool stopped first.
    pub cancelled: u64,
    /// Jobs waiting in the queue right now.
    pub queued: u64,
}

/// The result of a submitted job: a future (`handle.await`), or [`JobHandle::blocking_wait`] from
/// a plain thread. Dropping it does not cancel the job.
#[derive(Debug)]
pub struct JobHandle<R> {
    rx: oneshot::Receiver<Result<R, JobError>>,
}

impl<R> JobHandle<R> {
    /// Waits on the current thread. Must not be called from inside an async runtime.
    pub fn blocking_wait(self) -> Result<R, JobError> {
        self.rx.blocking_recv().unwrap_or(Err(JobError::ShutDown))
    }

    /// The underlying channel, for callers that want to `select!` on it directly.
    pub fn into_receiver(self) -> oneshot::Receiver<Result<R, JobError>> {
        self.rx
    }
}

impl<R> Future for JobHandle<R> {
    type Output = Result<R, JobError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // A sender dropped without a result can only mean the pool went away.
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(JobError::ShutDown)))
    }
}

/// A type-erased job with its result channel, so one queue holds jobs of any result type.
trait Task: Send {
    /// Runs the job, counts the outcome, then sends the result (counted first so a caller that
    /// saw the result also sees it in the stats).
    fn run(self: Box<Self>, counters: &Counters);
    /// Resolves the job without running it.
    fn cancel(self: Box<Self>, why: JobError);
}

struct TaskImpl<F, R> {
    job: F,
    tx: oneshot::Sender<Result<R, JobError>>,
}

impl<F, R> Task for TaskImpl<F, R>
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    fn run(self: Box<Self>, counters: &Counters) {
        let TaskImpl { job, tx } = *self;
        let result = catch_unwind(AssertUnwindSafe(job)).map_err(|_| JobError::Panicked);
        let counter = match result {
            Ok(_) => &counters.completed,
            Err(_) => &counters.panicked,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        // The receiver may be gone (caller lost interest); the result is then simply discarded.
        let _ = tx.send(result);
    }

    fn cancel(self: Box<Self>, why: JobError) {
        let _ = self.tx.send(Err(why));
    }
}

struct Pending {
    camera: String,
    task: Box<dyn Task>,
}

struct State {
    queue: VecDeque<Pending>,
    shutting_down: bool,
}

#[derive(Default)]
struct Counters {
    submitted: AtomicU64,
    completed: AtomicU64,
    dropped: AtomicU64,
    panicked: AtomicU64,
    cancelled: AtomicU64,
}

struct Shared {
    state: Mutex<State>,
    work: Condvar,
    counters: Counters,
}

impl Shared {
    /// The lock is never held while user code runs, so a poisoned lock still holds a consistent
    /// queue; recover it rather than propagate a panic.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A bounded pool of media worker threads. See the module docs for the overflow policy.
pub struct MediaPool {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    capacity: usize,
}

impl MediaPool {
    /// Starts `threads` workers (at least 1) with room for `queue_capacity` pending jobs (at
    /// least 1).
    pub fn new(threads: usize, queue_capacity: usize) -> Result<Self, PoolError> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::with_capacity(queue_capacity.max(1)),
                shutting_down: false,
            }),
            work: Condvar::new(),
            counters: Counters::default(),
        });
        let pool = MediaPool {
            shared,
            threads: Mutex::new(Vec::new()),
            capacity: queue_capacity.max(1),
        };
        for i in 0..threads.max(1) {
            let shared = Arc::clone(&pool.shared);
            let handle = std::thread::Builder::new()
                .name(format!("media-{i}"))
                .spawn(move || worker(&shared))
                .map_err(|e| PoolError::Spawn(e.to_string()))?;
            // On an early return `pool` is dropped, which stops and joins the started threads.
            pool.threads
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(handle);
        }
        Ok(pool)
    }

    /// One thread per available core: the default size.
    pub fn default_threads() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    /// Queues `job` for `camera` and returns at once. A full queue drops the oldest pending job of
    /// `camera`, else the oldest pending job overall, to make room.
    pub fn submit<R, F>(&self, camera: &str, job: F) -> Result<JobHandle<R>, PoolError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let task = Box::new(TaskImpl { job, tx });
        let victim = {
            let mut state = self.shared.lock();
            if state.shutting_down {
                return Err(PoolError::ShuttingDown);
            }
            let victim = if state.queue.len() >= self.capacity {
                let idx = state
                    .queue
                    .iter()
                    .position(|p| p.camera == camera)
                    .unwrap_or(0);
                state.queue.remove(idx)
            } else {
                None
            };
            state.queue.push_back(Pending {
                camera: camera.to_owned(),
                task,
            });
            victim
        };
        self.shared.work.notify_one();
        let c = &self.shared.counters;
        c.submitted.fetch_add(1, Ordering::Relaxed);
        if let Some(victim) = victim {
            c.dropped.fetch_add(1, Ordering::Relaxed);
            // Resolved outside the lock: sending wakes the receiver's task.
            victim.task.cancel(JobError::Dropped);
        }
        Ok(JobHandle { rx })
    }

    pub fn stats(&self) -> PoolStats {
        let c = &self.shared.counters;
        PoolStats {
            submitted: c.submitted.load(Ordering::Relaxed),
            completed: c.completed.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            panicked: c.panicked.load(Ordering::Relaxed),
            cancelled: c.cancelled.load(Ordering::Relaxed),
            queued: self.shared.lock().queue.len() as u64,
        }
    }

    pub fn queue_capacity(&self) -> usize {
        self.capacity
    }

    /// Stops intake, resolves pending jobs with [`JobError::ShutDown`], waits for running jobs and
    /// joins the threads. Idempotent; also run on drop.
    pub fn shutdown(&self) {
        let pending: Vec<Pending> = {
            let mut state = self.shared.lock();
            state.shutting_down = true;
            state.queue.drain(..).collect()
        };
        self.shared.work.notify_all();
        let c = &self.shared.counters;
        c.cancelled
            .fetch_add(pending.len() as u64, Ordering::Relaxed);
        for p in pending {
            p.task.cancel(JobError::ShutDown);
        }
        let threads =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        for t in threads {
            // A worker never panics (jobs are caught), so a join error carries nothing to act on.
            let _ = t.join();
        }
    }
}

impl Drop for MediaPool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn worker(shared: &Shared) {
    loop {
        let next = {
            let mut state = shared.lock();
            loop {
                if let Some(p) = state.queue.pop_front() {
                    break p;
                }
                if state.shutting_down {
                    return;
                }
                state = shared
                    .work
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        };
        next.task.run(&shared.counters);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// Occupies the pool's single worker until the returned sender is used or dropped.
    fn block_worker(pool: &MediaPool) -> (mpsc::Sender<()>, JobHandle<()>) {
        let (started_tx, started_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let h = pool
            .submit("blocker", move || {
                started_tx.send(()).unwrap();
                let _ = release_rx.recv();
            })
            .unwrap();
        started_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        (release_tx, h)
    }

    #[test]
    fn all_jobs_complete_with_their_results() {
        let pool = MediaPool::new(4, 1000).unwrap();
        let handles: Vec<_> = (0..200u64)
            .map(|i| {
                pool.submit(&format!("cam{}", i % 7), move || i * i)
                    .unwrap()
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            assert_eq!(h.blocking_wait(), Ok(i as u64 * i as u64));
        }
        let s = pool.stats();
        assert_eq!(
            (s.submitted, s.completed, s.dropped, s.queued),
            (200, 200, 0, 0)
        );
    }

    #[test]
    fn full_queue_drops_oldest_of_same_camera() {
        let pool = MediaPool::new(1, 3).unwrap();
        let (release, blocker) = block_worker(&pool);
        let a1 = pool.submit("a", || "a1").unwrap();
        let b1 = pool.submit("b", || "b1").unwrap();
        let a2 = pool.submit("a", || "a2").unwrap();
        // Full: [a1, b1, a2]. A new job of camera b drops b1, not the globally older a1.
        let b2 = pool.submit("b", || "b2").unwrap();
        // Full: [a1, a2, b2]. Camera a again: a1 goes.
        let a3 = pool.submit("a", || "a3").unwrap();
        assert_eq!(pool.stats().dropped, 2);
        assert_eq!(pool.stats().queued, 3);
        release.send(()).unwrap();
        assert_eq!(blocker.blocking_wait(), Ok(()));
        assert_eq!(b1.blocking_wait(), Err(JobError::Dropped));
        assert_eq!(a1.blocking_wait(), Err(JobError::Dropped));
        assert_eq!(a2.blocking_wait(), Ok("a2"));
        assert_eq!(b2.blocking_wait(), Ok("b2"));
        assert_eq!(a3.blocking_wait(), Ok("a3"));
        let s = pool.stats();
        assert_eq!((s.submitted, s.completed, s.dropped), (6, 4, 2));
    }

    #[test]
    fn camera_without_pending_job_drops_globally_oldest() {
        let pool = MediaPool::new(1, 2).unwrap();
        let (release, _blocker) = block_worker(&pool);
        let a1 = pool.submit("a", || 1).unwrap();
        let b1 = pool.submit("b", || 2).unwrap();
        let c1 = pool.submit("c", || 3).unwrap();
        assert_eq!(pool.stats().dropped, 1);
        release.send(()).unwrap();
        assert_eq!(a1.blocking_wait(), Err(JobError::Dropped));
        assert_eq!(b1.blocking_wait(), Ok(2));
        assert_eq!(c1.blocking_wait(), Ok(3));
    }

    #[test]
    fn submit_never_blocks_when_full() {
        let pool = MediaPool::new(1, 4).unwrap();
        let (release, _blocker) = block_worker(&pool);
        let start = std::time::Instant::now();
        let handles: Vec<_> = (0..10_000)
            .map(|i| pool.submit("cam", move || i).unwrap())
            .collect();
        assert!(start.elapsed() < Duration::from_secs(5));
        release.send(()).unwrap();
        let results: Vec<_> = handles.into_iter().map(JobHandle::blocking_wait).collect();
        // Only the four newest survive.
        assert_eq!(
            &results[9_996..],
            &[Ok(9_996), Ok(9_997), Ok(9_998), Ok(9_999)]
        );
        assert!(
            results[..9_996]
                .iter()
                .all(|r| *r == Err(JobError::Dropped))
        );
        assert_eq!(pool.stats().dropped, 9_996);
    }

    #[test]
    fn panicking_job_is_reported_and_worker_survives() {
        let pool = MediaPool::new(1, 4).unwrap();
        let bad = pool.submit("cam", || -> u8 { panic!("boom") }).unwrap();
        assert_eq!(bad.blocking_wait(), Err(JobError::Panicked));
        assert_eq!(pool.submit("cam", || 7u8).unwrap().blocking_wait(), Ok(7));
        let s = pool.stats();
        assert_eq!((s.panicked, s.completed), (1, 1));
    }

    #[test]
    fn shutdown_resolves_pending_and_joins() {
        let pool = MediaPool::new(1, 8).unwrap();
        let (release, blocker) = block_worker(&pool);
        let pending = pool.submit("cam", || 1).unwrap();
        std::thread::scope(|s| {
            let stopping = s.spawn(|| pool.shutdown());
            // Once shutdown has drained the queue, let the running job end; shutdown must then
            // return having joined the worker.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while pool.stats().cancelled == 0 {
                assert!(std::time::Instant::now() < deadline);
                std::thread::yield_now();
            }
            release.send(()).unwrap();
            stopping.join().unwrap();
        });
        assert_eq!(blocker.blocking_wait(), Ok(()), "running job finished");
        assert_eq!(pending.blocking_wait(), Err(JobError::ShutDown));
        assert_eq!(
            pool.submit("cam", || 2).unwrap_err(),
            PoolError::ShuttingDown
        );
        assert_eq!(pool.stats().cancelled, 1);
        drop(pool); // second shutdown is a no-op
    }

    #[test]
    fn handle_is_a_future() {
        let pool = MediaPool::new(2, 4).unwrap();
        let h = pool.submit("cam", || String::from("thumb")).unwrap();
        // A minimal executor: poll with a no-op waker until ready.
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut h = std::pin::pin!(h);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Poll::Ready(r) = h.as_mut().poll(&mut cx) {
                assert_eq!(r, Ok(String::from("thumb")));
                break;
            }
            assert!(std::time::Instant::now() < deadline);
            std::thread::yield_now();
        }
    }

    #[test]
    fn minimums_are_one() {
        let pool = MediaPool::new(0, 0).unwrap();
        assert_eq!(pool.queue_capacity(), 1);
        assert_eq!(pool.submit("cam", || 1).unwrap().blocking_wait(), Ok(1));
        assert!(MediaPool::default_threads() >= 1);
    }
}
