//! MQTT 5 session expiry [MQTT-3.1.2-23]: 0 ends the session at disconnect, N seconds keeps it
//! that long, 0xFFFFFFFF forever; DISCONNECT may change it; v3.1.1 is unchanged.

mod common;

use common::{TestBroker, WAIT, raw, v4};
use std::time::Duration;

/// Connects, returns (connection, session present).
async fn connect(
    addr: std::net::SocketAddr,
    id: &str,
    clean: bool,
    expiry: u32,
) -> (raw::Conn, bool) {
    let mut c = raw::Conn::open(addr).await;
    c.send(&raw::connect_v5_expiry(id, clean, expiry)).await;
    let (first, body) = c.read(WAIT).await.expect("CONNACK");
    assert_eq!((first, body[1]), (0x20, 0), "CONNACK success");
    (c, body[0] & 1 == 1)
}

/// Subscribes at QoS 1 and disconnects normally (optionally changing the expiry).
async fn subscribe_and_leave(
    addr: std::net::SocketAddr,
    id: &str,
    expiry: u32,
    new_expiry: Option<u32>,
) {
    // Clean start 0: the router keeps the session unless the edge ends it.
    let (mut c, _) = connect(addr, id, false, expiry).await;
    c.send(&raw::subscribe(5, 1, "exp/#", 1)).await;
    assert_eq!(c.read(WAIT).await.unwrap().0, 0x90);
    match new_expiry {
        None => c.send(&[0xE0, 0x00]).await,
        Some(e) => {
            let mut body = vec![0x00, 5, 0x11];
            body.extend_from_slice(&e.to_be_bytes());
            c.send(&raw::packet(0xE0, &body)).await;
        }
    }
    assert!(c.closed_within(WAIT).await);
}

async fn publish_offline(b: &TestBroker, n: u8) {
    let mut p = v4::connect(v4::options(b.port(), "publisher")).await;
    for i in 0..n {
        p.publish_acked("exp/x", false, vec![i]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_zero_ends_the_session_at_disconnect() {
    let b = TestBroker::start().await;
    subscribe_and_leave(b.mqtt, "e0", 0, None).await;
    publish_offline(&b, 2).await;
    let (mut c, present) = connect(b.mqtt, "e0", false, 0).await;
    assert!(!present, "session must not survive expiry 0");
    assert!(
        c.read(Duration::from_millis(500)).await.is_none(),
        "messages of an ended session"
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_lives_for_its_expiry_interval_and_then_ends() {
    let b = TestBroker::start().await;
    subscribe_and_leave(b.mqtt, "e2", 2, None).await;
    publish_offline(&b, 3).await;
    let (mut c, present) = connect(b.mqtt, "e2", false, 2).await;
    assert!(present, "resumed within the interval");
    for i in 0..3u8 {
        let (first, body) = c.read(WAIT).await.expect("queued message");
        assert_eq!(first & 0xF0, 0x30);
        assert_eq!(*body.last().unwrap(), i);
        let pkid = &body[2 + 5..2 + 5 + 2];
        c.send(&[0x40, 2, pkid[0], pkid[1]]).await;
    }
    c.send(&[0xE0, 0x00]).await;
    assert!(c.closed_within(WAIT).await);
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let (_c, present) = connect(b.mqtt, "e2", false, 2).await;
    assert!(!present, "session outlived its expiry interval");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_expiring_and_changed_at_disconnect() {
    let b = TestBroker::start().await;
    subscribe_and_leave(b.mqtt, "forever", u32::MAX, None).await;
    let (_c, present) = connect(b.mqtt, "forever", false, u32::MAX).await;
    assert!(present);
    // Expiry 60 at CONNECT, 0 at DISCONNECT: the session ends now.
    subscribe_and_leave(b.mqtt, "changed", 60, Some(0)).await;
    let (_c, present) = connect(b.mqtt, "changed", false, 60).await;
    assert!(!present, "DISCONNECT set the expiry to 0");
    // Clean start with an expiry: an old session is discarded, the new one is kept.
    subscribe_and_leave(b.mqtt, "fresh", 60, None).await;
    let (mut c, present) = connect(b.mqtt, "fresh", true, 60).await;
    assert!(!present, "clean start discards the old session");
    c.send(&[0xE0, 0x00]).await;
    assert!(c.closed_within(WAIT).await);
    let (_c, present) = connect(b.mqtt, "fresh", false, 60).await;
    assert!(
        present,
        "the clean-started session was kept for its interval"
    );
    b.stop().await;
}
