//! The engine's public face: start, the per-event entry points the broker's pipeline calls,
//! reload, status, metrics and shutdown; and the seams to the broker (`Publisher`,
//! `ConnectInfo`, `ClientInfo`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::oneshot;

use super::chain::shard;
use super::config::{BlockEvent, BlocksConfig, OnError};
use super::error::{BlockError, LoadFailure};
use super::host::{HostExtension, Services};
use super::kv::KvStore;
use super::metrics::{BlockCounters, EngineCounters, MetricsSnapshot, WorkerSnapshot};
use super::plan::{ErrorRecord, Plan, Registry};
use super::watch::Watcher;
use super::worker::{self, Control, Envelope, Job, WorkerHandle};
use crate::pipeline::{DropCode, Message, Verdict};

/// Where block publishes go: the broker re-injects them at pipeline stage 1. Must not block
/// (it is called from a worker thread in the middle of a handler); an `Err` is returned to
/// the script as `false, reason`.
pub trait Publisher: Send + Sync {
    fn publish(&self, msg: Message) -> Result<(), String>;
}

/// A connecting client, as `on_connect` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectInfo {
    pub client_id: String,
    pub username: Option<String>,
    pub peer: SocketAddr,
    /// Subject of the verified TLS client certificate, if any.
    pub cert_subject: Option<String>,
}

/// A connected client, as `on_subscribe` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    pub client_id: String,
    pub username: Option<String>,
    pub peer: Option<SocketAddr>,
}

/// Optional parts of the engine.
#[derive(Default, Clone)]
pub struct EngineOptions {
    /// Extra host namespaces installed in every block state (e.g. `media`).
    pub extensions: Vec<Arc<dyn HostExtension>>,
    /// Keep `kv` in this database (the broker's store) instead of its own file.
    pub kv_database: Option<Arc<redb::Database>>,
}

/// A block as `status()` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockStatus {
    pub name: String,
    pub event: BlockEvent,
    pub topics: Vec<String>,
    pub script: PathBuf,
    /// sha256 of the running source, hex.
    pub version: String,
    pub loaded_at: SystemTime,
    pub last_error: Option<ErrorRecord>,
    pub counters: BlockCounters,
}

/// Reload history, for the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadStatus {
    pub generation: u64,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub last_error: Option<ErrorRecord>,
}

/// What a successful reload changed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReloadReport {
    pub generation: u64,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Source or binding changed.
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
    /// Settings that changed but only take effect after a restart (they were ignored).
    pub restart_required: Vec<String>,
    /// Nothing changed, so no state was rebuilt.
    pub noop: bool,
    pub took: Duration,
}

/// Cheap to clone; every clone drives the same engine.
#[derive(Clone)]
pub struct BlockEngine {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    plan: ArcSwap<Plan>,
    workers: Vec<WorkerHandle>,
    registry: Registry,
    services: Services,
    counters: EngineCounters,
    reload_lock: tokio::sync::Mutex<()>,
    generation: AtomicU64,
    last_reload_error: Mutex<Option<ErrorRecord>>,
    watcher: Mutex<Option<Watcher>>,
    stopped: AtomicBool,
}

impl BlockEngine {
    /// Validates the config, reads and compiles every script on every worker, and starts the
    /// workers and the housekeeping thread (script watcher when `hot_reload`, kv purge). Blocks the calling thread while
    /// scripts compile (milliseconds); call it at startup or from `spawn_blocking`.
    pub fn start(
        cfg: BlocksConfig,
        publisher: Arc<dyn Publisher>,
    ) -> Result<BlockEngine, BlockError> {
        Self::start_with(cfg, publisher, EngineOptions::default())
    }

    pub fn start_with(
        cfg: BlocksConfig,
        publisher: Arc<dyn Publisher>,
        opts: EngineOptions,
    ) -> Result<BlockEngine, BlockError> {
        let registry = Registry::default();
        let plan = Arc::new(Plan::build(cfg, 1, &registry)?);
        let kv = Arc::new(match opts.kv_database {
            Some(db) => KvStore::shared(db)?,
            None => KvStore::open(&plan.config.kv_path)?,
        });
        if let Err(e) = kv.purge_expired() {
            tracing::warn!(target: "moonwire::blocks", "kv purge at start failed: {e}");
        }
        let services = Services {
            publisher,
            kv,
            extensions: opts.extensions.into(),
        };
        let n = plan.config.worker_count();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut workers = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        let mut failure = None;
        for id in 0..n {
            match worker::spawn(id, n, plan.clone(), services.clone(), ready_tx.clone()) {
                Ok((w, t)) => {
                    workers.push(w);
                    threads.push(t);
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        drop(ready_tx);
        let mut failures = Vec::new();
        for _ in 0..threads.len() {
            match ready_rx.recv() {
                Ok((_, Ok(()))) => {}
                Ok((_, Err(f))) => failures.extend(f),
                Err(_) => failure = Some(BlockError::Stopped),
            }
        }
        if !failures.is_empty() {
            failure = Some(BlockError::Load(dedup(failures)));
        }
        if let Some(e) = failure {
            // Closing the queues stops the workers that did start; wait for them so the kv
            // file and the Lua states are released when this returns (a retry can reopen them).
            drop(workers);
            drop(services);
            for t in threads {
                let _ = t.join();
            }
            return Err(e);
        }
        let now = SystemTime::now();
        for b in &plan.blocks {
            let mut st = b
                .record
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            st.version = b.version.clone();
            st.loaded_at = now;
        }
        let inner = Arc::new(Inner {
            plan: ArcSwap::new(plan),
            workers,
            registry,
            services,
            counters: EngineCounters::default(),
            reload_lock: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(1),
            last_reload_error: Mutex::new(None),
            watcher: Mutex::new(None),
            stopped: AtomicBool::new(false),
        });
        let engine = BlockEngine { inner };
        // Always started: besides hot reload it purges expired kv entries.
        let w = Watcher::start(Arc::downgrade(&engine.inner), &engine.inner.plan.load())?;
        *engine
            .inner
            .watcher
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(w);
        Ok(engine)
    }

    pub(crate) fn from_weak(weak: &Weak<Inner>) -> Option<BlockEngine> {
        weak.upgrade().map(|inner| BlockEngine { inner })
    }

    pub(crate) fn kv(&self) -> &KvStore {
        &self.inner.services.kv
    }

    fn worker_for_lane(&self, lane: u64) -> &WorkerHandle {
        &self.inner.workers[shard(lane, self.inner.workers.len())]
    }

    /// Whether any before_publish block is bound to `topic`. A lock-free snapshot read and a
    /// hash lookup (plus a scan of wildcard filters): call it on every publish and skip the
    /// worker hop when it is false.
    pub fn has_before_publish(&self, topic: &str) -> bool {
        self.inner.plan.load().before_index.matches(topic)
    }

    pub fn has_after_publish(&self, topic: &str) -> bool {
        self.inner.plan.load().after_index.matches(topic)
    }

    /// Runs the before_publish chain for `msg` on the worker that owns its client's lane. One
    /// client's messages are processed in the order their futures are first polled. When the
    /// worker queue is full this waits (backpressure, counted). If the engine is gone the
    /// message passes, unless a bound block fails closed (`on_error = "drop"`).
    pub fn before_publish(
        &self,
        msg: Message,
    ) -> impl std::future::Future<Output = Verdict> + Send + 'static {
        let many = self.before_publish_many(vec![msg]);
        async move { many.await.pop().unwrap_or(Verdict::Pass) }
    }

    /// [`before_publish`](Self::before_publish) for a batch, one verdict per message in order.
    /// Messages of one client travel to their worker as one job: a burst read from a socket
    /// costs one queue hand-off and one wake-up, not one per message.
    pub fn before_publish_many(
        &self,
        msgs: Vec<Message>,
    ) -> impl std::future::Future<Output = Vec<Verdict>> + Send + 'static {
        let lent = self.before_publish_lent(msgs);
        async move { lent.await.1 }
    }

    /// [`before_publish_many`](Self::before_publish_many) that gives the messages back: the
    /// workers borrow each job's messages (one shared allocation per job) instead of getting
    /// copies, and the caller keeps routing the originals. A message comes back `None` only if
    /// it was lost with a worker, which cannot happen while the engine runs.
    pub fn before_publish_lent(
        &self,
        msgs: Vec<Message>,
    ) -> impl std::future::Future<Output = (Vec<Option<Message>>, Vec<Verdict>)> + Send + 'static
    {
        let plan = self.inner.plan.load();
        let n = msgs.len();
        let mut verdicts: Vec<Option<Verdict>> = Vec::with_capacity(n);
        let mut kept: Vec<Option<Message>> = Vec::with_capacity(n);
        let mut fail_closed = Vec::with_capacity(n);
        // Jobs in the order their first message appears; a batch from a session has one.
        let mut jobs: Vec<(u64, Vec<usize>, Vec<Message>)> = Vec::new();
        for (i, msg) in msgs.into_iter().enumerate() {
            if !plan.before_index.matches(&msg.topic) {
                fail_closed.push(false);
                verdicts.push(Some(Verdict::Pass));
                kept.push(Some(msg));
                continue;
            }
            fail_closed.push(plan.bound(BlockEvent::BeforePublish).any(|b| {
                b.cfg.on_error == OnError::Drop && b.filters.iter().any(|f| f.matches(&msg.topic))
            }));
            verdicts.push(None);
            kept.push(None);
            let l = worker::lane(&msg.origin.client_id);
            match jobs.iter_mut().find(|(jl, _, _)| *jl == l) {
                Some((_, at, batch)) => {
                    at.push(i);
                    batch.push(msg);
                }
                None => {
                    // Sized for the whole batch: one session's batch is one job.
                    let mut batch = Vec::with_capacity(n - i);
                    batch.push(msg);
                    jobs.push((l, vec![i], batch));
                }
            }
        }
        let sends: Vec<_> = jobs
            .into_iter()
            .map(|(l, at, batch)| {
                let w = self.worker_for_lane(l);
                let (reply, rx) = oneshot::channel();
                let batch = Arc::new(batch);
                let env = Envelope {
                    job: Job::Before {
                        lane: l,
                        msgs: batch.clone(),
                        reply,
                    },
                    enqueued: Instant::now(),
                };
                (w.queue.clone(), w.metrics.clone(), env, rx, at, batch)
            })
            .collect();
        async move {
            let fallback = |i: usize| {
                if fail_closed.get(i).copied().unwrap_or(false) {
                    Verdict::Drop {
                        code: DropCode::Unspecified,
                        reason: "blocks engine unavailable".into(),
                    }
                } else {
                    Verdict::Pass
                }
            };
            let mut waits = Vec::with_capacity(sends.len());
            for (queue, metrics, env, rx, at, batch) in sends {
                let sent = enqueue(&queue, &metrics, env).await;
                waits.push((sent.then_some(rx), at, batch));
            }
            for (rx, at, batch) in waits {
                let got = match rx {
                    Some(rx) => rx.await.unwrap_or_default(),
                    None => Vec::new(),
                };
                // A reply shorter than its batch means the worker stopped part-way.
                let mut got = got.into_iter();
                for &i in &at {
                    let v = got.next().unwrap_or_else(|| fallback(i));
                    if let Some(slot) = verdicts.get_mut(i) {
                        *slot = Some(v);
                    }
                }
                // The worker dropped its share before replying, or with the job; copying is
                // only a safety net.
                let back = Arc::try_unwrap(batch).unwrap_or_else(|shared| (*shared).clone());
                for (i, m) in at.into_iter().zip(back) {
                    if let Some(slot) = kept.get_mut(i) {
                        *slot = Some(m);
                    }
                }
            }
            let verdicts = verdicts
                .into_iter()
                .enumerate()
                .map(|(i, v)| v.unwrap_or_else(|| fallback(i)))
                .collect();
            (kept, verdicts)
        }
    }

    /// Queues `msg` for the after_publish blocks bound to its topic. Never waits: when the
    /// worker's after queue is full the message is skipped and counted (`after_overflow`).
    pub fn after_publish(&self, msg: Message) {
        if !self.has_after_publish(&msg.topic) {
            return;
        }
        let w = self.worker_for_lane(worker::lane(&msg.origin.client_id));
        let env = Envelope {
            job: Job::After { msg },
            enqueued: Instant::now(),
        };
        if let Err(TrySendError::Full(_)) = w.after.try_send(env) {
            w.metrics.after_overflow.fetch_add(1, Relaxed);
        }
    }

    /// Asks the connect blocks; `Err(reason)` refuses the connection.
    pub fn on_connect(
        &self,
        info: ConnectInfo,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send + 'static {
        let client_id = info.client_id.clone();
        let send = self.client_job(BlockEvent::Connect, &client_id, |reply| Job::Connect {
            info,
            reply,
        });
        async move {
            match send {
                Some(send) => send.run().await,
                None => Ok(()),
            }
        }
    }

    /// Asks the subscribe blocks whose filters cover `filter`; `Err(reason)` refuses it.
    pub fn on_subscribe(
        &self,
        client: ClientInfo,
        filter: String,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send + 'static {
        let client_id = client.client_id.clone();
        let send = self.client_job(BlockEvent::Subscribe, &client_id, |reply| Job::Subscribe {
            client,
            filter,
            reply,
        });
        async move {
            match send {
                Some(send) => send.run().await,
                None => Ok(()),
            }
        }
    }

    fn client_job(
        &self,
        event: BlockEvent,
        client_id: &str,
        make: impl FnOnce(oneshot::Sender<Result<(), String>>) -> Job,
    ) -> Option<ClientSend> {
        let plan = self.inner.plan.load();
        let bound = match event {
            BlockEvent::Connect => plan.has_connect,
            _ => plan.has_subscribe,
        };
        if !bound {
            return None;
        }
        let fail_closed = plan.bound(event).any(|b| b.cfg.on_error == OnError::Drop);
        let w = self.worker_for_lane(worker::lane(client_id));
        let (reply, rx) = oneshot::channel();
        Some(ClientSend {
            queue: w.queue.clone(),
            metrics: w.metrics.clone(),
            env: Envelope {
                job: make(reply),
                enqueued: Instant::now(),
            },
            rx,
            fail_closed,
        })
    }

    /// Re-reads every script with the current config and reloads if anything changed
    /// (sources, libraries). What the watcher calls.
    pub async fn reload_scripts(&self) -> Result<ReloadReport, BlockError> {
        let cfg = self.inner.plan.load().config.clone();
        self.reload(cfg).await
    }

    /// Applies a new config: compiles everything in fresh states on every worker first; on
    /// any error the running version stays, the error is counted and shown by `status()` /
    /// `reload_status()`. On success every worker swaps between two jobs.
    pub async fn reload(&self, cfg: BlocksConfig) -> Result<ReloadReport, BlockError> {
        let _serial = self.inner.reload_lock.lock().await;
        let started = Instant::now();
        let result = self.reload_locked(cfg).await;
        match &result {
            Ok(_) => {
                self.inner.counters.reloads_ok.fetch_add(1, Relaxed);
            }
            Err(e) => {
                self.inner.counters.reloads_failed.fetch_add(1, Relaxed);
                let message = e.to_string();
                tracing::warn!(target: "moonwire::blocks", "reload failed, the previous version keeps running: {message}");
                *self
                    .inner
                    .last_reload_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(ErrorRecord {
                    at: SystemTime::now(),
                    message,
                });
                self.note_failure_on_blocks(e);
            }
        }
        result.map(|mut r| {
            r.took = started.elapsed();
            r
        })
    }

    fn note_failure_on_blocks(&self, e: &BlockError) {
        let current = self.inner.plan.load();
        let running = |name: &str| current.blocks.iter().find(|b| b.name() == name);
        match e {
            BlockError::Load(failures) => {
                for f in failures {
                    if let Some(b) = running(&f.block) {
                        b.record.set_error(format!("reload failed: {}", f.message));
                    }
                }
            }
            BlockError::ReadScript { block, .. } => {
                if let Some(b) = running(block) {
                    b.record.set_error(format!("reload failed: {e}"));
                }
            }
            _ => {}
        }
    }

    async fn reload_locked(&self, cfg: BlocksConfig) -> Result<ReloadReport, BlockError> {
        if self.inner.stopped.load(Relaxed) {
            return Err(BlockError::Stopped);
        }
        let generation = self.inner.generation.load(Relaxed) + 1;
        let old = self.inner.plan.load_full();
        let mut new = Plan::build(cfg, generation, &self.inner.registry)?;
        let restart_required = restart_keys(&old.config, &new.config);
        // Keep the running values of settings that need a restart, so status stays truthful.
        new.config.workers = old.config.workers;
        new.config.queue_capacity = old.config.queue_capacity;
        new.config.after_queue_capacity = old.config.after_queue_capacity;
        new.config.kv_path = old.config.kv_path.clone();
        new.config.hot_reload = old.config.hot_reload;
        let mut report = diff(&old, &new);
        report.restart_required = restart_required;
        if report.noop {
            report.generation = old.generation;
            return Ok(report);
        }
        let plan = Arc::new(new);

        let mut pending = Vec::new();
        for w in &self.inner.workers {
            let (reply, rx) = oneshot::channel();
            w.control
                .send(Control::Prepare {
                    plan: plan.clone(),
                    reply,
                })
                .map_err(|_| BlockError::Stopped)?;
            pending.push(rx);
        }
        let mut failures = Vec::new();
        let mut lost = false;
        for rx in pending {
            match rx.await {
                Ok(Ok(())) => {}
                Ok(Err(f)) => failures.extend(f),
                Err(_) => lost = true,
            }
        }
        if lost || !failures.is_empty() {
            for w in &self.inner.workers {
                let _ = w.control.send(Control::Abort { generation });
            }
            return Err(if lost {
                BlockError::Stopped
            } else {
                BlockError::Load(dedup(failures))
            });
        }
        let mut acks = Vec::new();
        for w in &self.inner.workers {
            let (reply, rx) = oneshot::channel();
            w.control
                .send(Control::Commit { generation, reply })
                .map_err(|_| BlockError::Stopped)?;
            acks.push(rx);
        }
        for rx in acks {
            rx.await.map_err(|_| BlockError::Stopped)?;
        }
        self.inner.generation.store(generation, Relaxed);
        let now = SystemTime::now();
        for b in &plan.blocks {
            let mut st = b
                .record
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if st.version != b.version || report.added.contains(&b.cfg.name) {
                st.version = b.version.clone();
                st.loaded_at = now;
                st.last_error = None;
            }
        }
        let names: Vec<&str> = plan.blocks.iter().map(|b| b.name()).collect();
        self.inner.registry.retain(&names);
        self.inner.plan.store(plan.clone());
        if let Some(w) = self
            .inner
            .watcher
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            w.sync_paths(&plan);
        }
        report.generation = generation;
        tracing::info!(
            target: "moonwire::blocks",
            generation,
            added = ?report.added,
            removed = ?report.removed,
            changed = ?report.changed,
            "blocks reloaded"
        );
        Ok(report)
    }

    pub fn status(&self) -> Vec<BlockStatus> {
        let plan = self.inner.plan.load();
        plan.blocks
            .iter()
            .map(|b| {
                let st = b.record.snapshot();
                BlockStatus {
                    name: b.cfg.name.clone(),
                    event: b.cfg.event,
                    topics: b.cfg.topics.clone(),
                    script: b.cfg.script.clone(),
                    version: st.version,
                    loaded_at: st.loaded_at,
                    last_error: st.last_error,
                    counters: b.metrics().snapshot(),
                }
            })
            .collect()
    }

    pub fn reload_status(&self) -> ReloadStatus {
        ReloadStatus {
            generation: self.inner.generation.load(Relaxed),
            reloads_ok: self.inner.counters.reloads_ok.load(Relaxed),
            reloads_failed: self.inner.counters.reloads_failed.load(Relaxed),
            last_error: self
                .inner
                .last_reload_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }

    pub fn metrics(&self) -> MetricsSnapshot {
        let plan = self.inner.plan.load();
        MetricsSnapshot {
            blocks: plan
                .blocks
                .iter()
                .map(|b| (b.cfg.name.clone(), b.metrics().snapshot()))
                .collect(),
            workers: self
                .inner
                .workers
                .iter()
                .enumerate()
                .map(|(i, w)| WorkerSnapshot {
                    worker: i,
                    queue_depth: w.queue.max_capacity() - w.queue.capacity(),
                    queue_capacity: w.queue.max_capacity(),
                    after_queue_depth: w.after.max_capacity() - w.after.capacity(),
                    after_queue_capacity: w.after.max_capacity(),
                    in_flight: w.metrics.in_flight.load(Relaxed),
                    processed: w.metrics.processed.load(Relaxed),
                    backpressure_waits: w.metrics.backpressure_waits.load(Relaxed),
                    after_overflow: w.metrics.after_overflow.load(Relaxed),
                    wait: w.metrics.wait.snapshot(),
                })
                .collect(),
            reloads_ok: self.inner.counters.reloads_ok.load(Relaxed),
            reloads_failed: self.inner.counters.reloads_failed.load(Relaxed),
        }
    }

    /// Stops the watcher and the workers: jobs already taken off the queues finish (up to 5 s),
    /// queued ones resolve to the fallback verdict. Interval blocks stop ticking.
    pub async fn shutdown(&self) {
        if self.inner.stopped.swap(true, Relaxed) {
            return;
        }
        let watcher = self
            .inner
            .watcher
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(watcher);
        let mut acks = Vec::new();
        for w in &self.inner.workers {
            let (reply, rx) = oneshot::channel();
            if w.control.send(Control::Shutdown { reply }).is_ok() {
                acks.push(rx);
            }
        }
        for rx in acks {
            let _ = rx.await;
        }
    }
}

/// A connect/subscribe question on its way to a worker.
struct ClientSend {
    queue: tokio::sync::mpsc::Sender<Envelope>,
    metrics: Arc<super::metrics::WorkerMetrics>,
    env: Envelope,
    rx: oneshot::Receiver<Result<(), String>>,
    fail_closed: bool,
}

impl ClientSend {
    async fn run(self) -> Result<(), String> {
        let ClientSend {
            queue,
            metrics,
            env,
            rx,
            fail_closed,
        } = self;
        let fallback = || {
            if fail_closed {
                Err("blocks engine unavailable".to_owned())
            } else {
                Ok(())
            }
        };
        if !enqueue(&queue, &metrics, env).await {
            return fallback();
        }
        rx.await.unwrap_or_else(|_| fallback())
    }
}

/// Hands a job to a worker; when its queue is full, waits (backpressure, counted). `false`
/// when the worker is gone.
async fn enqueue(
    queue: &tokio::sync::mpsc::Sender<Envelope>,
    metrics: &super::metrics::WorkerMetrics,
    env: Envelope,
) -> bool {
    match queue.try_send(env) {
        Ok(()) => true,
        Err(TrySendError::Full(env)) => {
            metrics.backpressure_waits.fetch_add(1, Relaxed);
            queue.send(env).await.is_ok()
        }
        Err(TrySendError::Closed(_)) => false,
    }
}

fn dedup(mut failures: Vec<LoadFailure>) -> Vec<LoadFailure> {
    let mut seen = std::collections::HashSet::new();
    failures.retain(|f| seen.insert(f.block.clone()));
    failures
}

fn restart_keys(old: &BlocksConfig, new: &BlocksConfig) -> Vec<String> {
    let mut keys = Vec::new();
    if old.worker_count() != new.worker_count() {
        keys.push("workers".into());
    }
    if old.queue_capacity != new.queue_capacity {
        keys.push("queue_capacity".into());
    }
    if old.after_queue_capacity != new.after_queue_capacity {
        keys.push("after_queue_capacity".into());
    }
    if old.kv_path != new.kv_path {
        keys.push("kv_path".into());
    }
    if old.hot_reload != new.hot_reload {
        keys.push("hot_reload".into());
    }
    keys
}

fn diff(old: &Plan, new: &Plan) -> ReloadReport {
    let mut r = ReloadReport::default();
    for b in &new.blocks {
        match old.blocks.iter().find(|o| o.name() == b.name()) {
            None => r.added.push(b.cfg.name.clone()),
            Some(o) if o.version != b.version || o.cfg != b.cfg => {
                r.changed.push(b.cfg.name.clone())
            }
            Some(_) => r.unchanged.push(b.cfg.name.clone()),
        }
    }
    for o in &old.blocks {
        if !new.blocks.iter().any(|b| b.name() == o.name()) {
            r.removed.push(o.cfg.name.clone());
        }
    }
    let settings_same = old.config.max_hops == new.config.max_hops
        && old.config.max_publishes_per_call == new.config.max_publishes_per_call
        && old.config.max_payload == new.config.max_payload
        && old.config.scripts_dir == new.config.scripts_dir;
    r.noop = r.added.is_empty()
        && r.removed.is_empty()
        && r.changed.is_empty()
        && settings_same
        && old.libs_version == new.libs_version
        // The order of bindings is the order of the chain.
        && old.blocks.iter().map(|b| b.name()).eq(new.blocks.iter().map(|b| b.name()));
    r
}
