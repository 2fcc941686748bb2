//! Wiring: starts the router, the listeners and the HTTP server from a [`Config`], and returns
//! a [`Running`] handle with the bound addresses and a shutdown method.

use crate::config::Config;
use crate::edge::{self, TlsError, Transport};
use crate::metrics::Metrics;
use crate::mqtt::{Broker, Internal, Registry, SessionLimits};
use crate::pipeline::{Pipeline, Stage, Tap, TopicBudgets};
use crate::router::{Router, RouterError, RouterSettings};
use std::net::SocketAddr;
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
}

/// Builder for a broker: config plus extra pipeline stages and taps.
pub struct App {
    cfg: Config,
    stages: Vec<Arc<dyn Stage>>,
    taps: Vec<Arc<dyn Tap>>,
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
}

impl App {
    pub fn new(cfg: Config) -> Self {
        App {
            cfg,
            stages: vec![],
            taps: vec![],
        }
    }

    /// Adds a pipeline stage after the built-in ones.
    pub fn stage(mut self, stage: Arc<dyn Stage>) -> Self {
        self.stages.push(stage);
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
        });
        let internal = Internal::start(&router, metrics.clone(), shutdown.clone()).await?;

        let mut pipeline = Pipeline::new();
        let budgets = TopicBudgets::new(
            cfg.limits
                .topic_payload
                .iter()
                .map(|(f, s)| (f.clone(), s.as_usize())),
        );
        if !budgets.is_empty() {
            pipeline = pipeline.with_stage(Arc::new(budgets));
        }
        for s in self.stages {
            pipeline = pipeline.with_stage(s);
        }
        for t in self.taps {
            pipeline = pipeline.with_tap(t);
        }

        let broker = Arc::new(Broker {
            limits: SessionLimits::from_config(&cfg),
            router,
            pipeline,
            registry: Registry::default(),
            metrics,
            internal,
            shutdown: shutdown.clone(),
            links: AtomicUsize::new(0),
        });
        let tasks = TaskTracker::new();

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
            let acceptor = edge::tls_acceptor(
                &cfg.tls.cert,
                &cfg.tls.key,
                &cfg.tls.client_ca,
                cfg.tls.require_client_cert,
            )?;
            let l = bind("tls.listen", cfg.tls.listen).await?;
            let addr = local_addr(&l, "tls.listen", cfg.tls.listen)?;
            let t = Transport::Tls {
                acceptor,
                handshake_timeout: cfg.tls.handshake_timeout,
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
        })
    }
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
        if tokio::time::timeout(self.grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace period elapsed with connections still open");
        }
    }

    /// A token that, when cancelled, starts the same shutdown.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.broker.shutdown.clone()
    }
}
