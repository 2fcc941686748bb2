//! Plugs the engine into the broker: a pipeline stage for `before_publish`, a tap for
//! `after_publish`, and the publisher through which `mqtt.publish` re-enters the pipeline.

use super::BlockEngine;
use crate::pipeline::{BatchFuture, Message, Stage, Step, Tap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use tokio::sync::mpsc;

/// Pipeline stage 4: the `before_publish` blocks bound to the topic, in config order.
pub struct BlocksStage {
    pub engine: BlockEngine,
}

impl Stage for BlocksStage {
    fn name(&self) -> &'static str {
        "blocks"
    }

    fn wants(&self, topic: &str, _: usize) -> bool {
        self.engine.has_before_publish(topic)
    }

    fn process(&self, msg: &Message) -> Step {
        Step::Later(Box::pin(self.engine.before_publish(msg.clone())))
    }

    fn process_many(&self, msgs: Vec<Message>) -> Result<BatchFuture, Vec<Message>> {
        let lent = self.engine.before_publish_lent(msgs);
        Ok(Box::pin(async move {
            let (msgs, verdicts) = lent.await;
            msgs.into_iter().zip(verdicts).collect()
        }))
    }
}

/// After routing: hands the message to the `after_publish` blocks (never waits).
pub struct BlocksTap {
    pub engine: BlockEngine,
}

impl Tap for BlocksTap {
    fn wants(&self, topic: &str) -> bool {
        self.engine.has_after_publish(topic)
    }

    fn published(&self, msg: &Message) {
        self.engine.after_publish(msg.clone());
    }
}

/// `mqtt.publish` from a block: queued without blocking the Lua worker, then run through the
/// whole pipeline (ACL with the block's identity, limits, blocks at hop+1) by one task, which
/// keeps a block's publishes in order.
pub struct QueuePublisher {
    tx: mpsc::Sender<Message>,
    pub overflow: AtomicU64,
}

impl QueuePublisher {
    pub fn new(capacity: usize) -> (Arc<QueuePublisher>, mpsc::Receiver<Message>) {
        let (tx, rx) = mpsc::channel(capacity);
        (
            Arc::new(QueuePublisher {
                tx,
                overflow: AtomicU64::new(0),
            }),
            rx,
        )
    }
}

impl super::Publisher for QueuePublisher {
    fn publish(&self, msg: Message) -> Result<(), String> {
        self.tx.try_send(msg).map_err(|e| {
            self.overflow.fetch_add(1, Relaxed);
            match e {
                mpsc::error::TrySendError::Full(_) => "broker publish queue is full".to_string(),
                mpsc::error::TrySendError::Closed(_) => "broker is shutting down".to_string(),
            }
        })
    }
}
