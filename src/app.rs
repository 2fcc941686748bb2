//! Wiring: starts the router, the listeners and the HTTP server from a [`Config`], and returns
//! a [`Running`] handle with the bound addresses and a shutdown method.

use crate::auth::{Acl, AclStage, Auth, AuthSettings, Rule, Users, UsersError};
use crate::blocks::broker::{BlocksStage, BlocksTap, QueuePublisher};
use crate::blocks::{BlockEngine, BlockError, EngineOptions, Publisher};
use crate::config::Config;
use crate::edge::{self, TlsError, Transport};
use crate::media::service::{FrameStage, MediaExtension, MediaService};
use crate::metrics::Metrics;
use crate::mqtt::{Broker, Internal, Registry, SessionLimits};
use crate::pipeline::{Pipeline, Stage, Tap, TopicBudgets};
use crate::router::{Router, RouterError, RouterSettings};
use crate::store::{Store, StoreError};
use crate::watch::{FileWatch, watch_file};
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("router: {0}")]
    Router(#[from] RouterError),
    #[error(transparent)]
    Users(#[from] UsersError),
    #[error("acl file {path}: {reason}")]
    AclFile { path: String, reason: String },
    #[error("watching {path}: {source}")]
    Watch { path: String, source: notify::Error },
    #[error("blocks: {0}")]
    Blocks(#[from] BlockError),
    #[error(transparent)]
    Media(#[from] crate::media::service::MediaServiceError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Builder for a broker: config plus extra pipeline stages and taps.
pub struct App {
    cfg: Config,
    /// The config file, watched so ACL changes apply without restart.
    config_path: Option<PathBuf>,
    stages: Vec<Arc<dyn Stage>>,
    taps: Vec<Arc<dyn Tap>>,
    extensions: Vec<Arc<dyn crate::blocks::HostExtension>>,
}

/// A started broker.
pub struct Running {
    pub mqtt: SocketAddr,
    pub tls: Option<SocketAddr>,
    pub ws: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub broker: Arc<Broker>,
    tasks: TaskTracker,
    grace: Duration,
    _watches: Vec<FileWatch>,
}

impl App {
    pub fn new(cfg: Config) -> Self {
        App {
            cfg,
            config_path: None,
            stages: vec![],
            taps: vec![],
            extensions: vec![],
        }
    }

    /// Remembers the config file so that ACL edits in it are applied while running.
    pub fn config_path(mut self, path: Option<PathBuf>) -> Self {
        self.config_path = path;
        self
    }

    /// Adds a pipeline stage after the built-in ones.
    pub fn stage(mut self, stage: Arc<dyn Stage>) -> Self {
        self.stages.push(stage);
        self
    }

    /// Adds a host namespace to every block's Lua state (e.g. a host function for tests or
    /// benchmarks).
    pub fn block_extension(mut self, ext: Arc<dyn crate::blocks::HostExtension>) -> Self {
        self.extensions.push(ext);
        self
    }

    /// Adds an after-publish tap.
    pub fn tap(mut self, tap: Arc<dyn Tap>) -> Self {
        self.taps.push(tap);
        self
    }

    /// Binds every configured listener and starts serving.
    pub async fn start(self) -> Result<Running, AppError> {
        let cfg = self.cfg;
        let shutdown = CancellationToken::new();
        let metrics = Arc::new(Metrics::default());
        let router = Router::start(&RouterSettings {
            max_connections: cfg.limits.max_connections,
            max_segment_size: cfg.router.max_segment_size.as_usize(),
            max_segment_count: cfg.router.max_segment_count,
            max_outgoing_packet_count: cfg.router.max_outgoing_packet_count,
            trim_interval: cfg.router.trim_interval,
        });
        let interest = Arc::new(crate::mqtt::interest::Interests::default());
        let internal =
            Internal::start(&router, metrics.clone(), interest.clone(), shutdown.clone()).await?;
        let (store, restored) = if cfg.storage.persistence {
            let settings = cfg.storage.store_settings();
            let (store, restored) = tokio::task::spawn_blocking(move || Store::open(settings))
                .await
                .map_err(|e| StoreError::Read(e.to_string()))??;
            (Some(store), Some(restored))
        } else {
            (None, None)
        };

        let users = match cfg.auth.users_file.as_str() {
            "" => None,
            f => Some(Users::load(Path::new(f))?),
        };
        let allow_anonymous = cfg.anonymous_allowed();
        if !allow_anonymous && cfg.auth.allow_anonymous == crate::config::AnonymousPolicy::Auto {
            tracing::warn!(
                "a listener is not on loopback: anonymous clients are refused \
                 (set auth.allow_anonymous = true to allow them)"
            );
        }
        let acl = load_acl(&cfg.acl, &cfg.auth.acl_file)?;
        let auth = Arc::new(Auth::new(
            AuthSettings {
                users,
                allow_anonymous,
                failed_login_delay: cfg.auth.failed_login_delay,
                max_failed_login_delay: cfg.auth.max_failed_login_delay,
                max_tracked_ips: cfg.auth.max_tracked_ips,
                acl,
                admins: cfg.auth.admins.clone(),
            },
            metrics.clone(),
        ));
        let (publisher, mut block_publishes) =
            QueuePublisher::new(cfg.block_engine.publish_queue.max(1));
        let media = if cfg.media.enabled {
            Some(MediaService::start(
                cfg.media.settings(),
                &cfg.storage.data_dir,
                publisher.clone(),
            )?)
        } else {
            None
        };
        let blocks = if cfg.blocks.is_empty() {
            None
        } else {
            let bc = cfg.blocks_config();
            let p: Arc<dyn Publisher> = publisher.clone();
            let mut extensions = self.extensions.clone();
            if let Some(m) = &media {
                extensions.push(Arc::new(MediaExtension { media: m.clone() }));
            }
            // kv lives in the store's file unless block_engine.kv_path names another.
            let kv_database = store
                .as_ref()
                .filter(|_| cfg.block_engine.kv_path.is_empty())
                .map(|s| s.database());
            let opts = EngineOptions {
                extensions,
                kv_database,
            };
            // Compiling every script on every worker blocks; keep it off the async workers.
            let engine = tokio::task::spawn_blocking(move || BlockEngine::start_with(bc, p, opts))
                .await
                .map_err(|e| {
                    AppError::Blocks(BlockError::Spawn(std::io::Error::other(e.to_string())))
                })??;
            Some(engine)
        };
        let mut watches = watch_config(&cfg, self.config_path.clone(), &auth, blocks.clone())?;

        // Stage 1 is the ACL: it applies to clients, wills and blocks alike.
        let mut pipeline = Pipeline::new().with_stage(Arc::new(AclStage { auth: auth.clone() }));
        let budgets = TopicBudgets::new(
            cfg.limits
                .topic_payload
                .iter()
                .map(|(f, s)| (f.clone(), s.as_usize())),
        );
        if !budgets.is_empty() {
            pipeline = pipeline.with_stage(Arc::new(budgets));
        }
        if let Some(m) = &media {
            pipeline = pipeline.with_stage(Arc::new(FrameStage { media: m.clone() }));
        }
        if let Some(engine) = &blocks {
            pipeline = pipeline
                .with_stage(Arc::new(BlocksStage {
                    engine: engine.clone(),
                }))
                .with_tap(Arc::new(BlocksTap {
                    engine: engine.clone(),
                }));
        }
        for s in self.stages {
            pipeline = pipeline.with_stage(s);
        }
        for t in self.taps {
            pipeline = pipeline.with_tap(t);
        }

        let tasks = TaskTracker::new();
        let broker = Arc::new(Broker {
            limits: SessionLimits::from_config(&cfg),
            router,
            pipeline,
            registry: Registry::default(),
            metrics,
            internal,
            shutdown: shutdown.clone(),
            links: AtomicUsize::new(0),
            auth,
            blocks,
            media: media.clone(),
            per_ip: Default::default(),
            interest,
            store,
            retained: Default::default(),
        });
        if let Some(restored) = restored {
            restore(&broker, restored);
        }
        {
            // Expired retained messages are never delivered; this frees their memory.
            let broker = broker.clone();
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(60));
                loop {
                    tokio::select! {
                        _ = tick.tick() => broker.retained.purge_expired(crate::pipeline::now_ms()),
                        _ = broker.shutdown.cancelled() => break,
                    }
                }
            });
        }
        if let Some(m) = media {
            // Partial frames idle past the timeout are dropped and reported.
            let every = (cfg.media.frame_timeout / 5)
                .clamp(Duration::from_millis(50), Duration::from_secs(1));
            let stop = shutdown.clone();
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tokio::select! {
                        _ = tick.tick() => m.expire(),
                        _ = stop.cancelled() => break,
                    }
                }
                m.pool.shutdown();
            });
        }
        {
            // Block publishes re-enter the pipeline here, one at a time, in order.
            let broker = broker.clone();
            tasks.spawn(async move {
                loop {
                    let msg = tokio::select! {
                        m = block_publishes.recv() => m,
                        _ = broker.shutdown.cancelled() => None,
                    };
                    let Some(msg) = msg else { break };
                    broker.publish(msg).await;
                }
            });
        }

        let bind = |what: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| AppError::Bind { what, addr, source })
        };

        let l = bind("mqtt.listen", cfg.mqtt.listen).await?;
        let mqtt = local_addr(&l, "mqtt.listen", cfg.mqtt.listen)?;
        tasks.spawn(edge::accept_loop(
            l,
            Transport::Tcp,
            cfg.mqtt.max_connections,
            broker.clone(),
            tasks.clone(),
        ));

        let tls = if cfg.tls.enabled() {
            let t = &cfg.tls;
            let build = {
                let t = t.clone();
                move || {
                    edge::tls_acceptor(&t.cert, &t.key, &t.client_ca, t.require_client_cert, &t.crl)
                }
            };
            let acceptor = Arc::new(ArcSwap::from_pointee(build()?));
            if !t.crl.is_empty() {
                let swap = acceptor.clone();
                let crl = t.crl.clone();
                let w = watch_file(Path::new(&t.crl), move || match build() {
                    Ok(a) => {
                        swap.store(Arc::new(a));
                        tracing::info!(crl, "CRL reloaded");
                    }
                    Err(e) => tracing::error!(crl, error = %e, "CRL reload failed; keeping the previous one"),
                })
                .map_err(|source| AppError::Watch { path: t.crl.clone(), source })?;
                watches.push(w);
            }
            let l = bind("tls.listen", cfg.tls.listen).await?;
            let addr = local_addr(&l, "tls.listen", cfg.tls.listen)?;
            let t = Transport::Tls {
                acceptor,
                handshake_timeout: cfg.tls.handshake_timeout,
                identity: cfg.tls.identity,
            };
            tasks.spawn(edge::accept_loop(
                l,
                t,
                cfg.tls.max_connections,
                broker.clone(),
                tasks.clone(),
            ));
            Some(addr)
        } else {
            None
        };

        let ws = if cfg.ws.enabled {
            let l = bind("ws.listen", cfg.ws.listen).await?;
            let addr = local_addr(&l, "ws.listen", cfg.ws.listen)?;
            let t = Transport::WebSocket {
                handshake_timeout: cfg.ws.handshake_timeout,
            };
            tasks.spawn(edge::accept_loop(
                l,
                t,
                cfg.ws.max_connections,
                broker.clone(),
                tasks.clone(),
            ));
            Some(addr)
        } else {
            None
        };

        let http = if cfg.http.enabled {
            let l = bind("http.listen", cfg.http.listen).await?;
            let addr = local_addr(&l, "http.listen", cfg.http.listen)?;
            let app = crate::http::app(broker.clone());
            let stop = shutdown.clone();
            tasks.spawn(async move {
                let served = axum::serve(l, app)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "http server failed");
                }
            });
            Some(addr)
        } else {
            None
        };

        tracing::info!(%mqtt, ?tls, ?ws, ?http, "moonwire listening");
        Ok(Running {
            mqtt,
            tls,
            ws,
            http,
            broker,
            tasks,
            grace: cfg.shutdown.grace,
            _watches: watches,
        })
    }
}

/// Puts what the store held back before any client connects: retained messages, persistent
/// sessions into the registry (offline, with their expiry timers).
fn restore(broker: &Arc<Broker>, restored: crate::store::Restored) {
    let started = std::time::Instant::now();
    let (retained, sessions) = (restored.retained.len(), restored.sessions.len());
    // Loading already lowered each message expiry interval by the time spent in the store.
    let now = crate::pipeline::now_ms();
    for m in restored.retained {
        let topic = m.topic();
        let payload = &m.publish.payload;
        broker.retained.set(&topic, payload, m.qos, m.props, now);
    }
    for s in restored.sessions {
        let client = s.client_id;
        let paths = s.filters.into_iter().map(|f| f.path).collect();
        broker.registry.save_filters(&client, paths);
        if let Some(will) = s.will {
            match crate::store::record::decode_message(&will.message) {
                Ok(m) => {
                    let msg = crate::pipeline::Message {
                        topic: m.topic(),
                        payload: m.publish.payload.clone(),
                        qos: m.qos,
                        retain: m.publish.retain,
                        props: m
                            .props
                            .map(crate::mqtt::session::props_from_router)
                            .unwrap_or_default(),
                        origin: crate::pipeline::Origin {
                            client_id: client.clone(),
                            username: will.username,
                            hop: 0,
                        },
                        received_at: m.stored_at_ms,
                    };
                    let delay = Duration::from_millis(will.fire_at_ms.saturating_sub(now));
                    crate::mqtt::session::schedule_will(broker.clone(), msg, delay);
                }
                Err(e) => tracing::warn!(client, error = %e, "dropping an unreadable pending will"),
            }
        }
        if let Some(after) = s.expires_in {
            crate::mqtt::session::schedule_expiry(broker.clone(), client, after);
        }
    }
    tracing::info!(
        retained,
        sessions,
        queued = restored.queued,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "restored from the store"
    );
}

/// Reloads the users file, the ACL file, and the config file's ACL rules and blocks when they
/// change.
fn watch_config(
    cfg: &Config,
    config_path: Option<PathBuf>,
    auth: &Arc<Auth>,
    blocks: Option<BlockEngine>,
) -> Result<Vec<FileWatch>, AppError> {
    let runtime = tokio::runtime::Handle::current();
    let mut watches = Vec::new();
    let watch_err = |path: &str| {
        let path = path.to_string();
        move |source| AppError::Watch { path, source }
    };
    if !cfg.auth.users_file.is_empty() {
        let file = cfg.auth.users_file.clone();
        let a = auth.clone();
        watches.push(
                watch_file(Path::new(&cfg.auth.users_file), move || match Users::load(Path::new(&file)) {
                    Ok(u) => {
                        tracing::info!(users = u.len(), file, "users file reloaded");
                        a.set_users(u);
                    }
                    Err(e) => tracing::error!(error = %e, "users file reload failed; keeping the previous one"),
                })
                .map_err(watch_err(&cfg.auth.users_file))?,
            );
    }
    // Either file changing rebuilds the whole rule list: config rules, then file rules.
    let reload_acl = {
        let a = auth.clone();
        let config_path = config_path.clone();
        let fallback = (cfg.acl.clone(), cfg.auth.acl_file.clone());
        move || {
            let (rules, file) = match &config_path {
                Some(p) => match Config::load(Some(p)) {
                    Ok(c) => {
                        if let Some(engine) = &blocks {
                            let (engine, bc) = (engine.clone(), c.blocks_config());
                            runtime.spawn(async move {
                                match engine.reload(bc).await {
                                    Ok(r) => tracing::info!(generation = r.generation, added = ?r.added, removed = ?r.removed, changed = ?r.changed, "blocks reloaded"),
                                    Err(e) => tracing::error!(error = %e, "blocks reload failed; the previous blocks keep running"),
                                }
                            });
                        }
                        (c.acl, c.auth.acl_file)
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "config reload failed; ACL and blocks unchanged");
                        return;
                    }
                },
                None => fallback.clone(),
            };
            match load_acl(&rules, &file) {
                Ok(acl) => {
                    a.set_acl(acl);
                    tracing::info!("ACL reloaded");
                }
                Err(e) => {
                    tracing::error!(error = %e, "ACL reload failed; keeping the previous one")
                }
            }
        }
    };
    let reload_acl = Arc::new(reload_acl);
    if !cfg.auth.acl_file.is_empty() {
        let r = reload_acl.clone();
        watches.push(
            watch_file(Path::new(&cfg.auth.acl_file), move || r())
                .map_err(watch_err(&cfg.auth.acl_file))?,
        );
    }
    if let Some(p) = &config_path {
        let r = reload_acl.clone();
        let shown = p.display().to_string();
        watches.push(watch_file(p, move || r()).map_err(watch_err(&shown))?);
    }
    Ok(watches)
}

/// Config rules followed by the rules of the ACL file (TOML with `[[acl]]` tables).
fn load_acl(rules: &[Rule], file: &str) -> Result<Acl, AppError> {
    let mut all = rules.to_vec();
    if !file.is_empty() {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct AclFile {
            #[serde(default)]
            acl: Vec<Rule>,
        }
        let err = |reason: String| AppError::AclFile {
            path: file.to_string(),
            reason,
        };
        let text = std::fs::read_to_string(file).map_err(|e| err(e.to_string()))?;
        let parsed: AclFile = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        all.extend(parsed.acl);
    }
    Ok(Acl::new(all))
}

fn local_addr(
    l: &TcpListener,
    what: &'static str,
    addr: SocketAddr,
) -> Result<SocketAddr, AppError> {
    l.local_addr()
        .map_err(|source| AppError::Bind { what, addr, source })
}

impl Running {
    /// Stops accepting, disconnects every client (v5: "server shutting down"; wills are not
    /// fired) and waits up to the grace period for connections to finish.
    pub async fn shutdown(self) {
        self.broker.shutdown.cancel();
        self.tasks.close();
        if let Some(engine) = &self.broker.blocks {
            engine.shutdown().await;
        }
        if tokio::time::timeout(self.grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace period elapsed with connections still open");
        }
        if let Some(store) = self.broker.store.clone() {
            // Commits and fsyncs whatever the closing sessions wrote.
            let _ = tokio::task::spawn_blocking(move || store.close()).await;
        }
    }

    /// A token that, when cancelled, starts the same shutdown.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.broker.shutdown.clone()
    }
}
