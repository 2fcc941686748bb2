//! The router frees what every subscriber has read: per-filter logs hold only messages some
//! reader still needs (a live subscriber behind, an unacknowledged delivery, an offline
//! persistent session), so memory follows the backlog, not the total traffic.
//! Observed through `/metrics` (`moonwire_router_log_messages`, `..._trimmed_total`).

mod common;

use common::{TestBroker, WAIT, v4};
use std::collections::HashMap;
use std::time::Duration;
use v4::QoS;

const N: usize = 2000;

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
}

/// Waits until the log metrics satisfy `ok(held, trimmed)`; returns the last (held, trimmed).
async fn wait_logs(b: &TestBroker, ok: impl Fn(u64, u64) -> bool) -> (u64, u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = b.metrics().await;
        let seen = (
            metric(&text, "moonwire_router_log_messages"),
            metric(&text, "moonwire_router_log_trimmed_total"),
        );
        if ok(seen.0, seen.1) || tokio::time::Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn publish_all(port: u16, id: &str, topic: &str) {
    let mut p = v4::connect(v4::options(port, id)).await;
    for i in 0..N {
        p.publish_acked(topic, false, format!("{i}")).await;
    }
}

/// Receives `N` publishes and returns their payloads as numbers, in arrival order.
async fn receive_all(c: &mut v4::Client) -> Vec<usize> {
    let mut got = Vec::with_capacity(N);
    while got.len() < N {
        let p = c
            .next_publish()
            .await
            .unwrap_or_else(|| panic!("only {} of {N} messages arrived", got.len()));
        got.push(String::from_utf8_lossy(&p.payload).parse().expect("number"));
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_messages_are_freed_from_the_router_logs() {
    let b = TestBroker::start().await;
    let mut at_most_once = v4::connect(v4::options(b.port(), "mem-q0")).await;
    at_most_once.subscribe("mem/#", QoS::AtMostOnce).await;
    let mut at_least_once = v4::connect(v4::options(b.port(), "mem-q1")).await;
    at_least_once.subscribe("mem/a", QoS::AtLeastOnce).await;

    publish_all(b.port(), "mem-pub", "mem/a").await;
    let expected: Vec<usize> = (0..N).collect();
    assert_eq!(receive_all(&mut at_most_once).await, expected);
    assert_eq!(receive_all(&mut at_least_once).await, expected);

    // Each message was held once per matching filter, and both filters' readers passed it.
    let (held, trimmed) = wait_logs(&b, |held, trimmed| held == 0 && trimmed >= 2 * N as u64).await;
    assert_eq!(
        held, 0,
        "messages still held after every subscriber read them"
    );
    assert!(trimmed >= 2 * N as u64, "only {trimmed} log entries freed");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_persistent_session_keeps_its_messages_until_it_reads_them() {
    let b = TestBroker::start().await;
    let mut opts = v4::options(b.port(), "mem-offline");
    opts.set_clean_session(false);
    let mut dev = v4::connect(opts.clone()).await;
    dev.subscribe("dev/cmd", QoS::AtLeastOnce).await;
    dev.client.disconnect().await.unwrap();
    let _ = tokio::time::timeout(WAIT, dev.task).await;

    publish_all(b.port(), "mem-pub2", "dev/cmd").await;
    // Trims run while the device is away, and keep everything it has not read.
    let (held, _) = wait_logs(&b, |held, _| held == N as u64).await;
    assert_eq!(
        held, N as u64,
        "the offline session's queue is not all held"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (held, _) = wait_logs(&b, |held, _| held == N as u64).await;
    assert_eq!(held, N as u64, "a later trim freed unread messages");

    let mut dev = v4::connect(opts).await;
    assert_eq!(receive_all(&mut dev).await, (0..N).collect::<Vec<_>>());
    let (held, _) = wait_logs(&b, |held, _| held == 0).await;
    assert_eq!(
        held, 0,
        "the queue stayed held after the device acknowledged it"
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_group_messages_are_freed_once_the_group_has_them() {
    let b = TestBroker::start().await;
    let mut members = Vec::new();
    for i in 0..2 {
        let mut m = v4::connect(v4::options(b.port(), &format!("mem-share{i}"))).await;
        m.subscribe("$share/workers/jobs/#", QoS::AtLeastOnce).await;
        members.push(m);
    }
    publish_all(b.port(), "mem-pub3", "jobs/x").await;

    let mut seen: HashMap<usize, usize> = HashMap::new();
    let deadline = tokio::time::Instant::now() + 2 * WAIT;
    while seen.len() < N && tokio::time::Instant::now() < deadline {
        let mut idle = true;
        for m in &mut members {
            while let Ok(p) = m.rx.try_recv() {
                if let v4::Packet::Publish(p) = p {
                    let n: usize = String::from_utf8_lossy(&p.payload).parse().expect("number");
                    *seen.entry(n).or_default() += 1;
                    idle = false;
                }
            }
        }
        if idle {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert_eq!(seen.len(), N, "not every message reached the group");
    assert!(
        seen.values().all(|&c| c == 1),
        "a message reached the group twice"
    );

    let (held, trimmed) = wait_logs(&b, |held, trimmed| held == 0 && trimmed >= N as u64).await;
    assert_eq!(held, 0, "messages still held after the group read them");
    assert!(trimmed >= N as u64, "only {trimmed} log entries freed");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trim_interval_zero_keeps_stock_rumqttd_behaviour() {
    let b = TestBroker::start_with(|c| c.router.trim_interval = Duration::ZERO).await;
    let mut sub = v4::connect(v4::options(b.port(), "mem-stock")).await;
    sub.subscribe("stock/#", QoS::AtLeastOnce).await;
    publish_all(b.port(), "mem-pub4", "stock/a").await;
    assert_eq!(receive_all(&mut sub).await, (0..N).collect::<Vec<_>>());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = b.metrics().await;
    assert_eq!(metric(&text, "moonwire_router_log_trimmed_total"), 0);
    b.stop().await;
}
