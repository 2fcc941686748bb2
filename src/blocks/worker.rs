//! Worker threads. Each owns a single-threaded tokio runtime with a `LocalSet`, its blocks'
//! Lua states, two bounded queues (before: backpressure; after: drop and count on overflow)
//! and a control channel for reloads and shutdown.
//!
//! Ordering and concurrency: jobs are keyed by the publishing (or connecting) client's lane, a
//! hash of its client id ([`lane`]). The first job of a key starts a local task; later jobs of
//! the same key wait in that key's FIFO until the task finishes the previous one. So one
//! client's messages are strictly sequential (MQTT's ordering guarantee is per client and
//! topic) while a handler parked in an async host call leaves the worker free for other
//! clients. A before_publish job carries a whole read batch of one session, so a burst costs
//! one queue hand-off and one wake-up of the session, not one per message. Jobs held in
//! these FIFOs are bounded too: the worker stops taking from its queues while
//! `queue_capacity + after_queue_capacity` jobs are in flight.
//!
//! Reload protocol: `Prepare` compiles the new set beside the running one; `Commit` swaps it
//! between two jobs (a job picks the current set when it starts, so none runs on a half
//! loaded set and none twice); `Abort` discards it.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::MissedTickBehavior;

use super::chain::{self, BlockSet};
use super::config::BlockEvent;
use super::engine::{ClientInfo, ConnectInfo};
use super::error::{BlockError, LoadFailure};
use super::host::Services;
use super::invoke::{self, ClientView};
use super::metrics::WorkerMetrics;
use super::plan::Plan;
use crate::pipeline::{Message, Verdict};

/// How long shutdown waits for jobs already taken off the queues.
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

pub(crate) enum Job {
    /// Messages of one lane, in order; one verdict per message comes back.
    Before {
        lane: u64,
        /// Lent by the caller, which takes them back after the reply (see
        /// `BlockEngine::before_publish_lent`); declared before `reply` so a dropped job lets
        /// go of them before its caller hears of it.
        msgs: std::sync::Arc<Vec<Message>>,
        reply: oneshot::Sender<Vec<Verdict>>,
    },
    After {
        msg: Message,
    },
    Connect {
        info: ConnectInfo,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Subscribe {
        client: ClientInfo,
        filter: String,
        reply: oneshot::Sender<Result<(), String>>,
    },
}

/// The ordering lane of a client: a hash of its client id. Two clients sharing a lane are
/// merely serialized with each other.
pub(crate) fn lane(client_id: &str) -> u64 {
    chain::fnv(client_id)
}

impl Job {
    fn key(&self) -> (u8, u64) {
        match self {
            Job::Before { lane, .. } => (0, *lane),
            Job::After { msg } => (1, lane(&msg.origin.client_id)),
            Job::Connect { info, .. } => (2, lane(&info.client_id)),
            Job::Subscribe { client, .. } => (2, lane(&client.client_id)),
        }
    }

    /// Messages (or decisions) this job stands for, for the `processed` counter.
    fn weight(&self) -> u64 {
        match self {
            Job::Before { msgs, .. } => msgs.len() as u64,
            _ => 1,
        }
    }
}

pub(crate) struct Envelope {
    pub job: Job,
    pub enqueued: Instant,
}

pub(crate) enum Control {
    Prepare {
        plan: Arc<Plan>,
        reply: oneshot::Sender<Result<(), Vec<LoadFailure>>>,
    },
    Commit {
        generation: u64,
        reply: oneshot::Sender<()>,
    },
    Abort {
        generation: u64,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// The engine's side of a worker.
pub(crate) struct WorkerHandle {
    pub queue: mpsc::Sender<Envelope>,
    pub after: mpsc::Sender<Envelope>,
    pub control: mpsc::UnboundedSender<Control>,
    pub metrics: Arc<WorkerMetrics>,
}

/// Starts worker `id`, which compiles `plan` before taking any job. The result of that first
/// compilation comes back on `ready`.
pub(crate) fn spawn(
    id: usize,
    workers: usize,
    plan: Arc<Plan>,
    services: Services,
    ready: std::sync::mpsc::Sender<(usize, Result<(), Vec<LoadFailure>>)>,
) -> Result<(WorkerHandle, std::thread::JoinHandle<()>), BlockError> {
    let cfg = &plan.config;
    let (queue_tx, queue_rx) = mpsc::channel(cfg.queue_capacity);
    let (after_tx, after_rx) = mpsc::channel(cfg.after_queue_capacity);
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let metrics = Arc::new(WorkerMetrics::default());
    let max_in_flight = cfg.queue_capacity + cfg.after_queue_capacity;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(BlockError::Spawn)?;
    let m = metrics.clone();
    let thread = std::thread::Builder::new()
        .name(format!("blocks-{id}"))
        .spawn(move || {
            let initial = BlockSet::build(plan, &services, id, workers);
            let set = match initial {
                Ok(set) => {
                    let _ = ready.send((id, Ok(())));
                    set
                }
                Err(failures) => {
                    let _ = ready.send((id, Err(failures)));
                    return;
                }
            };
            let worker = Rc::new(Worker {
                id,
                workers,
                services,
                current: RefCell::new(Rc::new(set)),
                prepared: RefCell::new(None),
                chains: RefCell::new(HashMap::new()),
                in_flight: Cell::new(0),
                max_in_flight,
                slot_freed: Notify::new(),
                tickers: RefCell::new(Rc::new(Stop::default())),
                metrics: m,
            });
            let local = tokio::task::LocalSet::new();
            let reply = local.block_on(&runtime, worker.run(queue_rx, after_rx, control_rx));
            // Release the Lua states and services (the kv file) before acknowledging shutdown.
            drop(local);
            drop(runtime);
            if let Some(reply) = reply {
                let _ = reply.send(());
            }
        })
        .map_err(BlockError::Spawn)?;
    let handle = WorkerHandle {
        queue: queue_tx,
        after: after_tx,
        control: control_tx,
        metrics,
    };
    Ok((handle, thread))
}

/// Tells a set's interval tickers to stop.
#[derive(Default)]
struct Stop {
    stopped: Cell<bool>,
    notify: Notify,
}

impl Stop {
    fn stop(&self) {
        self.stopped.set(true);
        self.notify.notify_waiters();
    }
}

struct Worker {
    id: usize,
    workers: usize,
    services: Services,
    current: RefCell<Rc<BlockSet>>,
    prepared: RefCell<Option<(u64, Rc<BlockSet>)>>,
    /// Per key, the jobs waiting for the key's running task.
    chains: RefCell<HashMap<(u8, u64), VecDeque<Envelope>>>,
    in_flight: Cell<usize>,
    max_in_flight: usize,
    slot_freed: Notify,
    tickers: RefCell<Rc<Stop>>,
    metrics: Arc<WorkerMetrics>,
}

impl Worker {
    async fn run(
        self: Rc<Self>,
        mut queue: mpsc::Receiver<Envelope>,
        mut after: mpsc::Receiver<Envelope>,
        mut control: mpsc::UnboundedReceiver<Control>,
    ) -> Option<oneshot::Sender<()>> {
        self.start_tickers();
        let mut shutdown_reply = None;
        loop {
            let room = self.in_flight.get() < self.max_in_flight;
            tokio::select! {
                biased;
                c = control.recv() => match c {
                    Some(Control::Shutdown { reply }) => {
                        shutdown_reply = Some(reply);
                        break;
                    }
                    Some(c) => self.control(c),
                    None => break,
                },
                e = queue.recv(), if room => match e {
                    Some(e) => self.dispatch(e),
                    None => break,
                },
                e = after.recv(), if room => match e {
                    Some(e) => self.dispatch(e),
                    None => break,
                },
                () = self.slot_freed.notified(), if !room => {}
            }
        }
        self.tickers.borrow().stop();
        queue.close();
        after.close();
        // Finish what was already accepted; queued jobs whose reply is dropped resolve to the
        // caller's fallback verdict.
        let deadline = Instant::now() + DRAIN_DEADLINE;
        while self.in_flight.get() > 0 && Instant::now() < deadline {
            let _ =
                tokio::time::timeout(Duration::from_millis(50), self.slot_freed.notified()).await;
        }
        shutdown_reply
    }

    fn control(self: &Rc<Self>, c: Control) {
        match c {
            Control::Prepare { plan, reply } => {
                let generation = plan.generation;
                let result = BlockSet::build(plan, &self.services, self.id, self.workers)
                    .map(|set| *self.prepared.borrow_mut() = Some((generation, Rc::new(set))));
                let _ = reply.send(result);
            }
            Control::Commit { generation, reply } => {
                let prepared = self.prepared.borrow_mut().take();
                if let Some((g, set)) = prepared
                    && g == generation
                {
                    *self.current.borrow_mut() = set;
                    self.tickers.borrow().stop();
                    self.start_tickers();
                }
                let _ = reply.send(());
            }
            Control::Abort { generation } => {
                let mut prepared = self.prepared.borrow_mut();
                if prepared.as_ref().is_some_and(|(g, _)| *g == generation) {
                    *prepared = None;
                }
            }
            Control::Shutdown { .. } => {}
        }
    }

    fn dispatch(self: &Rc<Self>, env: Envelope) {
        self.in_flight.set(self.in_flight.get() + 1);
        self.metrics.in_flight.fetch_add(1, Relaxed);
        let key = env.job.key();
        {
            let mut chains = self.chains.borrow_mut();
            if let Some(waiting) = chains.get_mut(&key) {
                waiting.push_back(env);
                return;
            }
            chains.insert(key, VecDeque::new());
        }
        tokio::task::spawn_local(self.clone().run_key(key, env));
    }

    /// Runs the jobs of one key, one after the other, until its FIFO is empty.
    async fn run_key(self: Rc<Self>, key: (u8, u64), first: Envelope) {
        let mut next = Some(first);
        while let Some(env) = next {
            self.metrics.wait.observe(env.enqueued.elapsed());
            let set = self.current.borrow().clone();
            let weight = env.job.weight();
            process(&set, env.job).await;
            self.metrics.processed.fetch_add(weight, Relaxed);
            self.metrics.in_flight.fetch_sub(1, Relaxed);
            self.in_flight.set(self.in_flight.get() - 1);
            self.slot_freed.notify_one();
            let mut chains = self.chains.borrow_mut();
            next = chains.get_mut(&key).and_then(VecDeque::pop_front);
            if next.is_none() {
                chains.remove(&key);
            }
        }
    }

    fn start_tickers(self: &Rc<Self>) {
        let stop = Rc::new(Stop::default());
        *self.tickers.borrow_mut() = stop.clone();
        let set = self.current.borrow().clone();
        for vm in set.bound(BlockEvent::Interval) {
            let Some(every) = vm.spec.cfg.every else {
                continue;
            };
            let (vm, stop) = (vm.clone(), stop.clone());
            tokio::task::spawn_local(async move {
                let start = tokio::time::Instant::now() + every;
                let mut ticks = tokio::time::interval_at(start, every);
                ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
                while !stop.stopped.get() {
                    tokio::select! {
                        _ = ticks.tick() => {}
                        () = stop.notify.notified() => break,
                    }
                    if stop.stopped.get() {
                        break;
                    }
                    let _ = invoke::on_interval(&vm, None).await;
                }
            });
        }
    }
}

async fn process(set: &BlockSet, job: Job) {
    match job {
        Job::Before { msgs, reply, .. } => {
            let mut verdicts = Vec::with_capacity(msgs.len());
            for msg in msgs.iter() {
                // The caller gave up (e.g. its connection closed): nothing would use the rest.
                if reply.is_closed() {
                    return;
                }
                verdicts.push(chain::before_publish(set, msg).await);
            }
            // Let go of the messages before answering, so the caller gets them back unshared.
            drop(msgs);
            let _ = reply.send(verdicts);
        }
        Job::After { msg } => chain::after_publish(set, msg).await,
        Job::Connect { info, reply } => {
            let view = ClientView {
                client_id: &info.client_id,
                username: info.username.as_deref(),
                peer: Some(info.peer),
                cert_subject: info.cert_subject.as_deref(),
            };
            let _ = reply.send(chain::client(set, &view, None).await);
        }
        Job::Subscribe {
            client,
            filter,
            reply,
        } => {
            let view = ClientView {
                client_id: &client.client_id,
                username: client.username.as_deref(),
                peer: client.peer,
                cert_subject: None,
            };
            let _ = reply.send(chain::client(set, &view, Some(&filter)).await);
        }
    }
}
