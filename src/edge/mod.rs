//! Listeners: TCP, TLS (rustls) and WebSocket. Each accept loop limits its connections with a
//! semaphore whose permit lives as long as the connection, backs off on accept errors, and
//! runs handshakes inside the connection's own task so a slow client never stalls the loop.

mod tls;
mod ws;

pub use tls::{TlsError, tls_acceptor};

use crate::config::CertIdentity;
use crate::metrics::DropReason;
use crate::mqtt::{Broker, ConnMeta, ip_slot, session};
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

/// The transport a listener speaks on top of TCP.
#[derive(Clone)]
pub enum Transport {
    Tcp,
    Tls {
        /// Swapped when the CRL file changes.
        acceptor: Arc<ArcSwap<TlsAcceptor>>,
        handshake_timeout: Duration,
        identity: CertIdentity,
    },
    WebSocket {
        handshake_timeout: Duration,
    },
}

impl Transport {
    fn name(&self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls { .. } => "tls",
            Transport::WebSocket { .. } => "ws",
        }
    }
}

/// Accepts connections until the broker shuts down.
pub async fn accept_loop(
    listener: TcpListener,
    transport: Transport,
    max_connections: usize,
    broker: Arc<Broker>,
    tasks: TaskTracker,
) {
    let permits = Arc::new(Semaphore::new(max_connections));
    let mut backoff = Duration::from_millis(1);
    loop {
        let accepted = tokio::select! {
            _ = broker.shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                backoff = Duration::from_millis(1);
                a
            }
            Err(e) => {
                // Usually EMFILE: wait for connections to close instead of spinning.
                tracing::warn!(listener = transport.name(), error = %e, "accept failed, backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            broker.metrics.dropped(DropReason::ConnectionLimit, 1);
            tracing::debug!(%peer, listener = transport.name(), "listener connection limit reached");
            continue;
        };
        let Some(slot) = ip_slot(&broker, peer.ip()) else {
            broker.metrics.dropped(DropReason::ConnectionLimit, 1);
            tracing::debug!(%peer, "per-address connection limit reached");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let broker = broker.clone();
        let transport = transport.clone();
        tasks.spawn(async move {
            handle(stream, peer, transport, broker).await;
            drop(slot);
            drop(permit);
        });
    }
}

async fn handle(stream: TcpStream, peer: SocketAddr, transport: Transport, broker: Arc<Broker>) {
    let meta = ConnMeta {
        peer,
        cert_identity: None,
        cert_subject: None,
    };
    match transport {
        Transport::Tcp => session::serve(stream, meta, broker).await,
        Transport::Tls {
            acceptor,
            handshake_timeout,
            identity,
        } => {
            let acceptor = acceptor.load_full();
            let tls = tokio::select! {
                r = tokio::time::timeout(handshake_timeout, acceptor.accept(stream)) => r,
                _ = broker.shutdown.cancelled() => return,
            };
            match tls {
                Ok(Ok(s)) => {
                    let cert = s.get_ref().1.peer_certificates().and_then(|c| c.first());
                    let meta = ConnMeta {
                        cert_identity: cert.and_then(|c| tls::identity(c, identity)),
                        cert_subject: cert.and_then(tls::subject),
                        ..meta
                    };
                    session::serve(s, meta, broker).await
                }
                Ok(Err(e)) => handshake_failed(&broker, peer, "tls", &e.to_string()),
                Err(_) => handshake_failed(&broker, peer, "tls", "handshake timed out"),
            }
        }
        Transport::WebSocket { handshake_timeout } => {
            serve_ws(stream, meta, handshake_timeout, broker).await
        }
    }
}

async fn serve_ws<S>(stream: S, meta: ConnMeta, timeout: Duration, broker: Arc<Broker>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ws = tokio::select! {
        r = tokio::time::timeout(timeout, ws::accept(stream)) => r,
        _ = broker.shutdown.cancelled() => return,
    };
    match ws {
        Ok(Ok(s)) => session::serve(s, meta, broker).await,
        Ok(Err(e)) => handshake_failed(&broker, meta.peer, "ws", &e.to_string()),
        Err(_) => handshake_failed(&broker, meta.peer, "ws", "handshake timed out"),
    }
}

fn handshake_failed(broker: &Broker, peer: SocketAddr, kind: &str, why: &str) {
    broker.metrics.dropped(DropReason::HandshakeFailed, 1);
    tracing::debug!(%peer, kind, why, "handshake failed");
}
