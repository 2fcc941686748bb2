//! The broker's own router link, used for wills and messages that blocks and the media
//! service publish. It has a reserved client id that clients may not use.

use crate::metrics::{DropReason, Metrics};
use crate::pipeline::Message;
use crate::router::protocol::Packet;
use crate::router::{Outbound, Router, RouterError, qos_from, route_publish};
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Client id of the internal link.
pub const INTERNAL_CLIENT_ID: &str = "moonwire.internal";

const QUEUE: usize = 4096;

/// Sends broker-originated messages to the router.
#[derive(Clone)]
pub struct Internal {
    tx: mpsc::Sender<(Message, Option<u64>)>,
    metrics: Arc<Metrics>,
}

impl Internal {
    /// Connects the internal link and spawns its task.
    pub async fn start(
        router: &Router,
        metrics: Arc<Metrics>,
        interest: Arc<super::interest::Interests>,
        shutdown: CancellationToken,
    ) -> Result<Internal, RouterError> {
        let mut link = router
            .connect(INTERNAL_CLIENT_ID.to_string(), true)
            .await?
            .link;
        let (tx, mut rx) = mpsc::channel::<(Message, Option<u64>)>(QUEUE);
        tokio::spawn(async move {
            let mut batch = VecDeque::new();
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    m = rx.recv() => {
                        let Some((m, stored)) = m else { break };
                        batch.push_back(to_packet(&m, stored, &interest));
                        while let Ok((m, stored)) = rx.try_recv() {
                            batch.push_back(to_packet(&m, stored, &interest));
                        }
                        if link.send_batch(&mut batch).await.is_err() {
                            break;
                        }
                    }
                    out = link.recv() => match out {
                        Ok(Outbound::Unscheduled) => { let _ = link.wake().await; }
                        Ok(_) => {}
                        Err(_) => break,
                    },
                }
            }
            link.disconnect().await;
        });
        Ok(Internal { tx, metrics })
    }

    /// Queues a routed message; waits when the queue is full (backpressure on the publisher).
    /// `stored`: its sequence in the store's offline queues, if it was queued there.
    pub async fn send(&self, msg: Message, stored: Option<u64>) {
        if self.tx.send((msg, stored)).await.is_err() {
            self.metrics.dropped(DropReason::InternalQueueFull, 1);
        }
    }
}

fn to_packet(m: &Message, stored: Option<u64>, interest: &super::interest::Interests) -> Packet {
    // Into the router everything goes at QoS 0 and unretained: the edge owns
    // acknowledgements and retained messages; the router delivers at each subscription's QoS.
    let publish = route_publish(&m.topic, &m.payload, false, qos_from(m.qos));
    let mut props = super::session::props_to_router(&m.props);
    let origin = Some(m.origin.client_id.as_str()).filter(|_| m.origin.hop == 0);
    interest.tag(&mut props, &m.topic, origin, m.qos, m.retain, stored);
    Packet::Publish(publish, props)
}
