//! A worker's compiled set of blocks (one Lua state per block) and the chains that run a
//! message, connection or subscription through every block bound to it, in config order.
//!
//! Chain rules: the blocks are chosen by the message's topic as it entered the chain (a block
//! that rewrites the topic does not change which blocks run after it, nor their
//! `ctx.matches`). A modify feeds the next block; the first drop or consume ends the chain; a
//! failing block applies its `on_error` (pass: continue as if it passed; drop: end the chain
//! with `Drop { Unspecified, "block `name` failed" }`: the script's error text stays in the
//! broker's logs, it is not sent to the device).

use std::rc::Rc;
use std::sync::Arc;

use super::config::{BlockEvent, OnError};
use super::error::LoadFailure;
use super::host::Services;
use super::invoke::{self, ClientView};
use super::plan::Plan;
use super::verdict::Outcome;
use super::vm::BlockVm;
use crate::pipeline::{DropCode, Message, Verdict};

/// FNV-1a: stable and fast on short strings (client ids, block names).
pub(crate) fn fnv(key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Which of `n` workers owns `hash`.
pub(crate) fn shard(hash: u64, n: usize) -> usize {
    usize::try_from(hash % n.max(1) as u64).unwrap_or(0)
}

/// The worker that runs an interval block (exactly one does).
pub(crate) fn interval_owner(block: &str, workers: usize) -> usize {
    shard(fnv(block), workers)
}

pub(crate) struct BlockSet {
    /// Config order. Interval blocks only on their owner worker.
    pub vms: Vec<Rc<BlockVm>>,
}

impl BlockSet {
    /// Compiles every block this worker runs. All failures are reported, not just the first.
    pub fn build(
        plan: Arc<Plan>,
        services: &Services,
        worker: usize,
        workers: usize,
    ) -> Result<Self, Vec<LoadFailure>> {
        let mut vms = Vec::new();
        let mut failures = Vec::new();
        for spec in &plan.blocks {
            if spec.cfg.event == BlockEvent::Interval
                && interval_owner(spec.name(), workers) != worker
            {
                continue;
            }
            match BlockVm::load(
                spec.clone(),
                plan.settings.clone(),
                plan.libs.clone(),
                services,
                worker,
            ) {
                Ok(vm) => vms.push(Rc::new(vm)),
                Err(message) => failures.push(LoadFailure {
                    block: spec.name().to_owned(),
                    script: spec.cfg.script.clone(),
                    message,
                }),
            }
        }
        if failures.is_empty() {
            Ok(BlockSet { vms })
        } else {
            Err(failures)
        }
    }

    pub fn bound(&self, event: BlockEvent) -> impl Iterator<Item = &Rc<BlockVm>> {
        self.vms.iter().filter(move |vm| vm.spec.cfg.event == event)
    }
}

fn failed(vm: &BlockVm) -> Verdict {
    Verdict::Drop {
        code: DropCode::Unspecified,
        reason: format!("block `{}` failed", vm.spec.name()),
    }
}

pub(crate) async fn before_publish(set: &BlockSet, msg: &Message) -> Verdict {
    // Blocks bind to the topic the client published to; a rewrite does not rebind the chain.
    let mut modified: Option<Message> = None;
    for vm in set.bound(BlockEvent::BeforePublish) {
        let Some(matches) = vm.spec.captures(&msg.topic) else {
            continue;
        };
        let current = modified.as_ref().unwrap_or(msg);
        match invoke::on_publish(vm, current, &matches, None).await {
            Ok(Outcome::Pass) => {}
            Ok(Outcome::Modify(m)) => modified = Some(m),
            Ok(Outcome::Drop(reason)) => {
                return Verdict::Drop {
                    code: DropCode::ImplementationSpecific,
                    reason,
                };
            }
            Ok(Outcome::Consume) => return Verdict::Consume,
            Err(_) if vm.spec.cfg.on_error == OnError::Drop => return failed(vm),
            Err(_) => {}
        }
    }
    match modified {
        Some(m) => Verdict::Modify(m),
        None => Verdict::Pass,
    }
}

/// after_publish blocks observe the delivered message; their verdicts change nothing (the
/// message is already routed) and each block sees the message as delivered.
pub(crate) async fn after_publish(set: &BlockSet, msg: Message) {
    for vm in set.bound(BlockEvent::AfterPublish) {
        if let Some(matches) = vm.spec.captures(&msg.topic) {
            let _ = invoke::on_publish(vm, &msg, &matches, None).await;
        }
    }
}

/// Connect or subscribe (when `filter` is given): the first denial wins.
pub(crate) async fn client(
    set: &BlockSet,
    client: &ClientView<'_>,
    filter: Option<&str>,
) -> Result<(), String> {
    let event = if filter.is_some() {
        BlockEvent::Subscribe
    } else {
        BlockEvent::Connect
    };
    for vm in set.bound(event) {
        if let Some(f) = filter
            && !vm.spec.applies_to_subscription(f)
        {
            continue;
        }
        match invoke::on_client(vm, client, filter).await {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => return Err(reason),
            Err(_) if vm.spec.cfg.on_error == OnError::Drop => {
                return Err(format!("block `{}` failed", vm.spec.name()));
            }
            Err(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_is_stable_and_in_range() {
        for n in 1..8 {
            for t in ["a", "home/x/sensors", ""] {
                let s = shard(fnv(t), n);
                assert!(s < n);
                assert_eq!(s, shard(fnv(t), n));
            }
        }
    }
}
