//! MQTT 5.0 server requirements checked statement by statement (IDs from the OASIS
//! specification). Each test names the statements it covers; `docs/CONFORMANCE.md` maps them.
//! Wider coverage is tracked in the conformance issue.

mod common;

use common::{TestBroker, WAIT, raw, v5};
use rumqttc::v5::mqttbytes::v5::{PublishProperties, SubscribeProperties};
use std::time::Duration;

/// v5 PUBLISH with raw property bytes.
fn publish_props(topic: &[u8], props: &[u8], payload: &[u8], qos: u8, pkid: u16) -> Vec<u8> {
    let mut body = (topic.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(topic);
    if qos > 0 {
        body.extend_from_slice(&pkid.to_be_bytes());
    }
    body.push(props.len() as u8);
    body.extend_from_slice(props);
    body.extend_from_slice(payload);
    raw::packet(0x30 | (qos << 1), &body)
}

async fn v5_conn(b: &TestBroker, id: &str) -> (raw::Conn, Vec<u8>) {
    let mut c = raw::Conn::open(b.mqtt).await;
    c.send(&raw::connect(5, id, 0)).await;
    let (first, body) = c.read(WAIT).await.unwrap();
    assert_eq!(first, 0x20);
    (c, body)
}

/// [MQTT-3.2.2-17] Topic Alias Maximum announced; [MQTT-3.3.2-8] [MQTT-3.3.2-10]
/// [MQTT-3.3.2-12] aliases set and used by the client are resolved before routing;
/// [MQTT-3.3.2-9] 0 or above the maximum is a protocol error (0x94).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_aliases_from_the_client() {
    let b = TestBroker::start().await;
    let (mut sub, _) = v5::connect(v5::options(b.port(), "s")).await;
    sub.subscribe("alias/#", v5::QoS::AtLeastOnce).await;
    let (mut c, connack) = v5_conn(&b, "aliaser").await;
    assert!(
        connack.windows(3).any(|w| w == [0x22, 0, 64]),
        "Topic Alias Maximum 64: {connack:?}"
    );
    c.send(&publish_props(b"alias/one", &[0x23, 0, 1], b"first", 1, 1))
        .await;
    c.send(&publish_props(b"", &[0x23, 0, 1], b"second", 1, 2))
        .await;
    for _ in 0..2 {
        assert_eq!(c.read(WAIT).await.unwrap().0, 0x40);
    }
    for want in [&b"first"[..], b"second"] {
        let p = sub.next_publish().await.unwrap();
        assert_eq!((&p.topic[..], &p.payload[..]), (&b"alias/one"[..], want));
    }
    for (alias, code) in [(0u16, 0x94u8), (65, 0x94)] {
        let (mut c, _) = v5_conn(&b, "bad-alias").await;
        let a = alias.to_be_bytes();
        c.send(&publish_props(b"alias/x", &[0x23, a[0], a[1]], b"x", 0, 0))
            .await;
        let (first, body) = c.read(WAIT).await.unwrap();
        assert_eq!((first, body[0]), (0xE0, code), "alias {alias}");
    }
    let (mut c, _) = v5_conn(&b, "unknown-alias").await;
    c.send(&publish_props(b"", &[0x23, 0, 9], b"x", 0, 0)).await;
    let (first, body) = c.read(WAIT).await.unwrap();
    assert_eq!((first, body[0]), (0xE0, 0x82));
    b.stop().await;
}

/// [MQTT-3.3.2-4] A payload declared UTF-8 that is not is refused with 0x99.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_format_indicator_is_validated() {
    let b = TestBroker::start().await;
    let (mut c, _) = v5_conn(&b, "pfi").await;
    c.send(&publish_props(b"pfi/x", &[0x01, 1], &[0xFF, 0xFE], 1, 1))
        .await;
    let (first, body) = c.read(WAIT).await.unwrap();
    assert_eq!((first, &body[..3]), (0x40, &[0u8, 1, 0x99][..]));
    c.send(&publish_props(
        b"pfi/x",
        &[0x01, 1],
        "héllo".as_bytes(),
        1,
        2,
    ))
    .await;
    let (first, body) = c.read(WAIT).await.unwrap();
    assert!(
        first == 0x40 && (body.len() == 2 || body[2] == 0),
        "valid UTF-8 accepted: {body:?}"
    );
    b.stop().await;
}

/// [MQTT-4.12.0-1] Enhanced authentication without a configured method: CONNACK 0x8C.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enhanced_authentication_is_refused_cleanly() {
    let b = TestBroker::start().await;
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 30];
    let method = b"SCRAM-SHA-1";
    body.push(3 + method.len() as u8);
    body.push(0x15);
    body.extend_from_slice(&(method.len() as u16).to_be_bytes());
    body.extend_from_slice(method);
    body.extend_from_slice(&[0, 1, b'a']);
    let mut c = raw::Conn::open(b.mqtt).await;
    c.send(&raw::packet(0x10, &body)).await;
    let (first, body) = c.read(WAIT).await.unwrap();
    assert_eq!((first, body[1]), (0x20, 0x8C));
    // An AUTH packet after CONNECT is a protocol error.
    let (mut c, _) = v5_conn(&b, "auth-later").await;
    c.send(&[0xF0, 0x00]).await;
    let (first, body) = c.read(WAIT).await.unwrap();
    assert_eq!((first, body[0]), (0xE0, 0x82));
    b.stop().await;
}

/// [MQTT-3.3.2-15] [MQTT-3.3.2-16] [MQTT-3.3.2-17] [MQTT-3.3.2-18] [MQTT-3.3.2-20]
/// Response Topic, Correlation Data, User Properties (in order) and Content Type reach the
/// subscriber unchanged; [MQTT-3.3.4-3] the Subscription Identifier is added.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn properties_pass_through_and_subscription_identifiers() {
    let b = TestBroker::start().await;
    let (mut sub, _) = v5::connect(v5::options(b.port(), "s")).await;
    sub.client
        .subscribe_with_properties(
            "req/#",
            v5::QoS::AtLeastOnce,
            SubscribeProperties {
                id: Some(7),
                user_properties: vec![],
            },
        )
        .await
        .unwrap();
    while !matches!(sub.next().await, Some(v5::Packet::SubAck(_))) {}
    let (p, _) = v5::connect(v5::options(b.port(), "p")).await;
    let props = PublishProperties {
        response_topic: Some("resp/1".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"\x00\x01corr")),
        user_properties: vec![
            ("b".into(), "2".into()),
            ("a".into(), "1".into()),
            ("b".into(), "3".into()),
        ],
        content_type: Some("application/json".into()),
        ..Default::default()
    };
    p.client
        .publish_with_properties("req/x", v5::QoS::AtLeastOnce, false, "{}", props)
        .await
        .unwrap();
    let got = sub.next_publish().await.unwrap().properties.unwrap();
    assert_eq!(got.response_topic.as_deref(), Some("resp/1"));
    assert_eq!(got.correlation_data.as_deref(), Some(&b"\x00\x01corr"[..]));
    assert_eq!(
        got.user_properties,
        vec![
            ("b".to_string(), "2".to_string()),
            ("a".into(), "1".into()),
            ("b".into(), "3".into())
        ]
    );
    assert_eq!(got.content_type.as_deref(), Some("application/json"));
    assert_eq!(got.subscription_identifiers, vec![7]);
    b.stop().await;
}

/// [MQTT-4.8.2-1] [MQTT-4.8.2-2] Shared subscriptions: each message goes to one member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscriptions_split_the_messages() {
    let b = TestBroker::start().await;
    let (mut a, _) = v5::connect(v5::options(b.port(), "a")).await;
    a.subscribe("$share/workers/jobs/#", v5::QoS::AtLeastOnce)
        .await;
    let (mut c, _) = v5::connect(v5::options(b.port(), "c")).await;
    c.subscribe("$share/workers/jobs/#", v5::QoS::AtLeastOnce)
        .await;
    let (p, _) = v5::connect(v5::options(b.port(), "p")).await;
    for i in 0..10u8 {
        p.client
            .publish("jobs/x", v5::QoS::AtLeastOnce, false, vec![i])
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    for sub in [&mut a, &mut c] {
        while let Ok(Some(m)) =
            tokio::time::timeout(Duration::from_millis(700), sub.next_publish()).await
        {
            seen.push(m.payload[0]);
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        (0..10).collect::<Vec<u8>>(),
        "each job exactly once across the group"
    );
    b.stop().await;
}

/// [MQTT-3.3.4-9] More unacknowledged QoS 1/2 publishes than our Receive Maximum: DISCONNECT 0x93.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_maximum_is_enforced() {
    let b = TestBroker::start_with(|c| c.limits.receive_maximum = 5).await;
    let (mut c, connack) = v5_conn(&b, "greedy").await;
    assert!(
        connack.windows(3).any(|w| w == [0x21, 0, 5]),
        "Receive Maximum 5 announced: {connack:?}"
    );
    // Five QoS 2 publishes without PUBREL are allowed …
    for i in 1..=5u16 {
        c.send(&publish_props(b"rm/x", &[], b"x", 2, i)).await;
        assert_eq!(c.read(WAIT).await.unwrap().0, 0x50);
    }
    // … a sixth is not.
    c.send(&publish_props(b"rm/x", &[], b"x", 2, 6)).await;
    let (first, body) = c.read(WAIT).await.unwrap();
    assert_eq!((first, body[0]), (0xE0, 0x93));
    // Completing the flows keeps a client within the limit indefinitely.
    let (mut c, _) = v5_conn(&b, "polite").await;
    for i in 1..=20u16 {
        c.send(&publish_props(b"rm/x", &[], b"x", 2, i)).await;
        assert_eq!(c.read(WAIT).await.unwrap().0, 0x50);
        c.send(&raw::packet(0x62, &i.to_be_bytes())).await;
        assert_eq!(c.read(WAIT).await.unwrap().0, 0x70);
    }
    b.stop().await;
}

/// [MQTT-3.8.4-8] (v5) and [MQTT-3.8.4-6] (v3.1.1): delivered QoS is min(publish QoS,
/// subscription QoS). QoS 0 publishes reach a QoS 1 subscriber at QoS 0, interleaved with
/// QoS 1 publishes that it acknowledges — well past the router's in-flight window of 100,
/// which would stall if the acks the edge gives on the client's behalf were out of order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_is_downgraded_to_the_publish_qos() {
    let b = TestBroker::start().await;
    for level in [4u8, 5] {
        let mut sub = raw::Conn::open(b.mqtt).await;
        sub.send(&raw::connect(level, &format!("down{level}"), 0))
            .await;
        sub.read(WAIT).await.unwrap();
        sub.send(&raw::subscribe(level, 1, "down/#", 1)).await;
        assert_eq!(sub.read(WAIT).await.unwrap().0, 0x90);
        let mut publisher = raw::Conn::open(b.mqtt).await;
        publisher
            .send(&raw::connect(4, &format!("downpub{level}"), 0))
            .await;
        publisher.read(WAIT).await.unwrap();
        let n = 300u16;
        let mut burst = Vec::new();
        for i in 0..n {
            let qos = (i % 2) as u8; // even: QoS 0, odd: QoS 1
            burst.extend(raw::publish(4, b"down/x", &i.to_be_bytes(), qos, i + 1));
        }
        publisher.send(&burst).await;
        for i in 0..n {
            let (first, body) = sub
                .read(WAIT)
                .await
                .unwrap_or_else(|| panic!("message {i} of {n} (v{level})"));
            let qos = (first >> 1) & 3;
            assert_eq!(first & 0x08, 0, "no DUP on a first delivery");
            assert_eq!(
                qos,
                (i % 2) as u8,
                "message {i}: min(publish, subscription) QoS"
            );
            let tlen = u16::from_be_bytes([body[0], body[1]]) as usize;
            let mut at = 2 + tlen;
            if qos == 1 {
                let pkid = [body[at], body[at + 1]];
                sub.send(&[0x40, 2, pkid[0], pkid[1]]).await;
                at += 2;
            }
            if level == 5 {
                at += 1 + body[at] as usize;
            }
            assert_eq!(&body[at..], &i.to_be_bytes(), "payload of message {i}");
        }
    }
    b.stop().await;
}

/// [MQTT-3.8.3-3] No Local: a client's own publishes are not delivered to its No Local
/// subscription (QoS 0 and 1), others' are, and no subscriber ever sees the internal origin
/// property the broker uses for this, even if a client tries to send it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_local_subscriptions_skip_own_messages() {
    let b = TestBroker::start().await;
    let (mut me, _) = v5_conn(&b, "me").await;
    // SUBSCRIBE nl/# with options QoS 1 | No Local.
    let mut body = vec![0, 1, 0];
    body.extend_from_slice(&4u16.to_be_bytes());
    body.extend_from_slice(b"nl/#");
    body.push(0x01 | 0x04);
    me.send(&raw::packet(0x82, &body)).await;
    assert_eq!(me.read(WAIT).await.unwrap().0, 0x90);
    let (mut watcher, _) = v5::connect(v5::options(b.port(), "watcher")).await;
    watcher.subscribe("nl/#", v5::QoS::AtLeastOnce).await;

    // Own publishes at QoS 0 and 1, one carrying a forged origin property.
    let forged = [
        0x26, 0, 16, 0, b'm', b'o', b'o', b'n', b'w', b'i', b'r', b'e', b'-', b'o', b'r', b'i',
        b'g', b'i', b'n', 0, 5, b'o', b't', b'h', b'e', b'r',
    ];
    me.send(&publish_props(b"nl/a", &[], b"own0", 0, 0)).await;
    me.send(&publish_props(b"nl/a", &forged, b"own1", 1, 1))
        .await;
    assert_eq!(me.read(WAIT).await.unwrap().0, 0x40, "PUBACK for own QoS 1");
    // Someone else's publish reaches it.
    let (other, _) = v5::connect(v5::options(b.port(), "other")).await;
    other
        .client
        .publish("nl/b", v5::QoS::AtLeastOnce, false, "theirs")
        .await
        .unwrap();
    let (first, body) = me.read(WAIT).await.expect("the other client's message");
    assert_eq!(first & 0xF0, 0x30);
    assert!(
        body.ends_with(b"theirs"),
        "own messages were delivered: {body:?}"
    );
    // The watcher (no No Local) gets all three, none with the internal property.
    for want in [&b"own0"[..], b"own1", b"theirs"] {
        let p = watcher.next_publish().await.unwrap();
        assert_eq!(&p.payload[..], want);
        let users = p.properties.map(|p| p.user_properties).unwrap_or_default();
        assert!(
            users.iter().all(|(k, _)| !k.contains("moonwire-origin")),
            "{users:?}"
        );
    }
    // After unsubscribing, no origin is attached any more (nothing to skip).
    b.stop().await;
}

/// [MQTT-3.3.1-6] [MQTT-3.3.1-8] every retained message matching a new subscription is sent,
/// with the retain flag, however many there are (rumqttd's router stops at its in-flight
/// window of 100–200); [MQTT-3.8.4-8]-style downgrade: at min(published, granted) QoS;
/// [MQTT-3.3.1-10] [MQTT-3.3.1-11] an empty retained payload clears without being stored;
/// [MQTT-3.3.4-3] the subscription identifier is on retained deliveries too; live copies of
/// retained publishes reach existing subscribers with the flag cleared [MQTT-3.3.1-9].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_matching_retained_message_is_delivered() {
    let b = TestBroker::start().await;
    let (mut live, _) = v5::connect(v5::options(b.port(), "live")).await;
    live.subscribe("ha/#", v5::QoS::AtMostOnce).await;
    let (p, _) = v5::connect(v5::options(b.port(), "p")).await;
    const N: usize = 600;
    for i in 0..N {
        let qos = if i.is_multiple_of(2) {
            v5::QoS::AtLeastOnce
        } else {
            v5::QoS::AtMostOnce
        };
        p.client
            .publish(format!("ha/dev{i:03}/config"), qos, true, format!("{i}"))
            .await
            .unwrap();
    }
    p.client
        .publish("ha/dev000/config", v5::QoS::AtLeastOnce, true, "")
        .await
        .unwrap();
    // Live copies carry no retain flag.
    let first = live.next_publish().await.unwrap();
    assert!(!first.retain, "live delivery of a retained publish");
    // Wait until the clear went through (it is the last publish).
    let mut seen = 1;
    while seen < N + 1 {
        live.next_publish().await.expect("live copies");
        seen += 1;
    }
    let (mut s, _) = v5::connect(v5::options(b.port(), "s")).await;
    let props = SubscribeProperties {
        id: Some(9),
        user_properties: vec![],
    };
    s.client
        .subscribe_with_properties("ha/+/config", v5::QoS::AtLeastOnce, props)
        .await
        .unwrap();
    let mut got = std::collections::HashMap::new();
    while got.len() < N - 1 {
        let p = s.next_publish().await.expect("all retained messages");
        assert!(p.retain, "retained delivery has the flag");
        let i: usize = std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
        let want = if i.is_multiple_of(2) {
            v5::QoS::AtLeastOnce
        } else {
            v5::QoS::AtMostOnce
        };
        assert_eq!(p.qos, want, "message {i} at min(published, granted)");
        let ids = p.properties.map(|p| p.subscription_identifiers);
        assert_eq!(ids, Some(vec![9]), "subscription identifier on {i}");
        assert!(got.insert(i, ()).is_none(), "{i} delivered twice");
    }
    assert!(!got.contains_key(&0), "the cleared topic is not retained");
    assert!(
        s.next_publish_within(Duration::from_millis(300))
            .await
            .is_none(),
        "nothing beyond the {} retained messages",
        N - 1
    );
}

/// [MQTT-3.3.1-9] Retain Handling 0 sends retained messages on every subscribe,
/// [MQTT-3.3.1-10] 1 only when the subscription is new, [MQTT-3.3.1-11] 2 never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_handling_options() {
    let b = TestBroker::start().await;
    let (p, _) = v5::connect(v5::options(b.port(), "p")).await;
    p.client
        .publish("rh/t", v5::QoS::AtLeastOnce, true, "kept")
        .await
        .unwrap();
    let (mut s, _) = v5::connect(v5::options(b.port(), "s")).await;
    // Make sure the retained publish landed before subscribing.
    s.subscribe("rh/t", v5::QoS::AtMostOnce).await;
    assert!(s.next_publish().await.is_some_and(|m| m.retain));
    let sub = |rh: u8, pkid: u16| {
        let mut body = pkid.to_be_bytes().to_vec();
        body.push(0); // no properties
        body.extend_from_slice(&4u16.to_be_bytes());
        body.extend_from_slice(b"rh/t");
        body.push(rh << 4);
        raw::packet(0x82, &body)
    };
    let (mut c, _) = v5_conn(&b, "rh").await;
    // (retain handling, expect a retained message): 1 on a new subscription sends, 1 again
    // (existing) does not, 0 on the existing one sends, 2 never sends.
    for (i, (rh, expect)) in [(1u8, true), (1, false), (0, true), (2, false)]
        .into_iter()
        .enumerate()
    {
        c.send(&sub(rh, i as u16 + 1)).await;
        let (first, _) = c.read(WAIT).await.expect("SUBACK");
        assert_eq!(first, 0x90, "SUBACK for retain handling {rh}");
        let next = c.read(Duration::from_millis(300)).await;
        match (expect, next) {
            (true, Some((f, body))) => {
                assert_eq!(f & 0xF1, 0x31, "retained PUBLISH for rh={rh}");
                assert!(body.ends_with(b"kept"));
            }
            (false, None) => {}
            (e, n) => panic!("retain handling {rh} (step {i}): expected {e}, got {n:?}"),
        }
    }
}

/// v5 CONNECT with raw properties (clean start, keep alive 0).
fn connect_props(id: &str, props: &[u8]) -> Vec<u8> {
    let mut body = vec![
        0,
        4,
        b'M',
        b'Q',
        b'T',
        b'T',
        5,
        0x02,
        0,
        0,
        props.len() as u8,
    ];
    body.extend_from_slice(props);
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id.as_bytes());
    raw::packet(0x10, &body)
}

/// v5 SUBSCRIBE of one filter with raw options byte.
fn subscribe_opts(pkid: u16, filter: &str, options: u8) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    body.push(0);
    body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
    body.extend_from_slice(filter.as_bytes());
    body.push(options);
    raw::packet(0x82, &body)
}

async fn raw_v5(b: &TestBroker, id: &str, props: &[u8]) -> raw::Conn {
    let mut c = raw::Conn::open(b.mqtt).await;
    c.send(&connect_props(id, props)).await;
    let (first, body) = c.read(WAIT).await.expect("CONNACK");
    assert_eq!((first, body[1]), (0x20, 0), "CONNACK: {body:?}");
    c
}

async fn raw_subscribe(c: &mut raw::Conn, filter: &str, options: u8) {
    c.send(&subscribe_opts(1, filter, options)).await;
    let (first, body) = c.read(WAIT).await.expect("SUBACK");
    assert_eq!(first, 0x90, "SUBACK: {body:?}");
    assert!(
        *body.last().unwrap() < 0x80,
        "subscription refused: {body:?}"
    );
}

/// Packet id of a v5 QoS > 0 PUBLISH body.
fn publish_pkid(body: &[u8]) -> u16 {
    let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
    u16::from_be_bytes([body[2 + tl], body[3 + tl]])
}

/// [MQTT-3.3.4-9] [MQTT-3.3.4-8]: the server never has more unacknowledged QoS 1/2 publishes
/// to a client than the client's Receive Maximum; the rest follow as acks free room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_maximum_towards_the_client() {
    let b = TestBroker::start().await;
    // Receive Maximum 2.
    let mut c = raw_v5(&b, "slow", &[0x21, 0, 2]).await;
    raw_subscribe(&mut c, "rm/t", 1).await;
    let (p, _) = v5::connect(v5::options(b.port(), "p")).await;
    for i in 0..6 {
        p.client
            .publish("rm/t", v5::QoS::AtLeastOnce, false, format!("{i}"))
            .await
            .unwrap();
    }
    let mut got = vec![];
    for _ in 0..2 {
        let (first, body) = c.read(WAIT).await.expect("first two");
        assert_eq!(first & 0xF0, 0x30);
        got.push(publish_pkid(&body));
    }
    assert!(
        c.read(Duration::from_millis(400)).await.is_none(),
        "a third publish before any PUBACK"
    );
    let mut seen = 2;
    while seen < 6 {
        let pkid = got.remove(0);
        c.send(&raw::packet(0x40, &pkid.to_be_bytes())).await;
        let (first, body) = c.read(WAIT).await.expect("one more per PUBACK");
        assert_eq!(first & 0xF0, 0x30);
        assert!(body.ends_with(format!("{seen}").as_bytes()), "in order");
        got.push(publish_pkid(&body));
        seen += 1;
    }
}

/// [MQTT-3.1.2-25] a packet larger than the client's Maximum Packet Size is not sent (and the
/// flow with the router goes on: later messages arrive).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_maximum_packet_size_is_respected() {
    let b = TestBroker::start().await;
    let mut c = raw_v5(&b, "small", &[0x27, 0, 0, 0, 64]).await;
    raw_subscribe(&mut c, "mp/t", 1).await;
    let (p, _) = v5::connect(v5::options(b.port(), "p")).await;
    for (i, size) in [(0, 10), (1, 500), (2, 10), (3, 500), (4, 10)] {
        p.client
            .publish("mp/t", v5::QoS::AtLeastOnce, false, vec![b'0' + i; size])
            .await
            .unwrap();
    }
    for want in [b'0', b'2', b'4'] {
        let (first, body) = c.read(WAIT).await.expect("small messages");
        assert_eq!(first & 0xF0, 0x30);
        assert!(body.len() < 64, "packet within the client's maximum");
        assert_eq!(*body.last().unwrap(), want);
        c.send(&raw::packet(0x40, &publish_pkid(&body).to_be_bytes()))
            .await;
    }
    assert!(c.read(Duration::from_millis(300)).await.is_none());
}

/// [MQTT-3.8.4-8] a QoS 1 publish reaches a QoS 2 subscription at QoS 1; a QoS 2 publish at
/// QoS 2. [MQTT-3.8.3-3] No Local also holds for QoS 2 deliveries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_subscriptions_get_min_qos_and_no_local() {
    let b = TestBroker::start().await;
    let (mut s, _) = v5::connect(v5::options(b.port(), "s")).await;
    s.subscribe("q2/t", v5::QoS::ExactlyOnce).await;
    let (p, _) = v5::connect(v5::options(b.port(), "p")).await;
    for (qos, payload) in [
        (v5::QoS::AtLeastOnce, "one"),
        (v5::QoS::ExactlyOnce, "two"),
        (v5::QoS::AtLeastOnce, "three"),
    ] {
        p.client.publish("q2/t", qos, false, payload).await.unwrap();
    }
    for (qos, payload) in [
        (v5::QoS::AtLeastOnce, "one"),
        (v5::QoS::ExactlyOnce, "two"),
        (v5::QoS::AtLeastOnce, "three"),
    ] {
        let m = s.next_publish().await.expect("delivery");
        assert_eq!((m.qos, &m.payload[..]), (qos, payload.as_bytes()));
    }
    // No Local at QoS 2: the own message is withheld, the router flow still completes.
    let mut c = raw_v5(&b, "nl2", &[]).await;
    raw_subscribe(&mut c, "q2/own", 0x02 | 0x04).await;
    for i in 0..3u16 {
        c.send(&raw::publish(5, b"q2/own", b"mine", 2, i + 1)).await;
        let (first, _) = c.read(WAIT).await.expect("PUBREC");
        assert_eq!(first, 0x50);
        c.send(&raw::packet(0x62, &(i + 1).to_be_bytes())).await;
        let (first, _) = c.read(WAIT).await.expect("PUBCOMP");
        assert_eq!(first, 0x70);
    }
    p.client
        .publish("q2/own", v5::QoS::ExactlyOnce, false, "theirs")
        .await
        .unwrap();
    let (first, body) = c.read(WAIT).await.expect("the other client's message");
    assert_eq!(first & 0xF6, 0x34, "QoS 2 PUBLISH");
    assert!(body.ends_with(b"theirs"), "own messages withheld: {body:?}");
}

/// [MQTT-3.3.2-5] a message whose expiry passed while it waited is not delivered;
/// [MQTT-3.3.2-6] otherwise the interval is lowered by the time it waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_expiry_while_queued() {
    let b = TestBroker::start().await;
    let mut o = v5::options(b.port(), "exp");
    o.set_clean_start(false);
    o.set_connect_properties(rumqttc::v5::mqttbytes::v5::ConnectProperties {
        session_expiry_interval: Some(600),
        ..Default::default()
    });
    let (mut s, _) = v5::connect(o.clone()).await;
    s.subscribe("exp/t", v5::QoS::AtLeastOnce).await;
    s.client.disconnect().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (p, _) = v5::connect(v5::options(b.port(), "p")).await;
    for (payload, expiry) in [("short", 1u32), ("long", 60)] {
        let props = PublishProperties {
            message_expiry_interval: Some(expiry),
            ..Default::default()
        };
        p.client
            .publish_with_properties("exp/t", v5::QoS::AtLeastOnce, false, payload, props)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let (mut s, ack) = v5::connect(o).await;
    assert!(ack.session_present);
    let m = s.next_publish().await.expect("the unexpired message");
    assert_eq!(&m.payload[..], b"long", "the expired one is dropped");
    let left = m.properties.and_then(|p| p.message_expiry_interval);
    assert!(
        matches!(left, Some(57..=58)),
        "expiry lowered by the wait: {left:?}"
    );
    // The session goes on serving.
    p.client
        .publish("exp/t", v5::QoS::AtLeastOnce, false, "after")
        .await
        .unwrap();
    let m = s.next_publish().await.expect("live message after the drop");
    assert_eq!(&m.payload[..], b"after");
}

/// [MQTT-3.3.1-12] Retain As Published 1 keeps the retain flag on live deliveries;
/// [MQTT-3.3.1-13] 0 clears it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_as_published() {
    let b = TestBroker::start().await;
    let mut rap = raw_v5(&b, "rap", &[]).await;
    raw_subscribe(&mut rap, "rap/t", 0x08).await;
    let mut plain = raw_v5(&b, "plain", &[]).await;
    raw_subscribe(&mut plain, "rap/t", 0).await;
    let (p, _) = v5::connect(v5::options(b.port(), "p")).await;
    p.client
        .publish("rap/t", v5::QoS::AtMostOnce, true, "r")
        .await
        .unwrap();
    p.client
        .publish("rap/t", v5::QoS::AtMostOnce, false, "n")
        .await
        .unwrap();
    for (c, flags) in [(&mut rap, [1u8, 0]), (&mut plain, [0, 0])] {
        for f in flags {
            let (first, _) = c.read(WAIT).await.expect("live delivery");
            assert_eq!(first & 0xF0, 0x30);
            assert_eq!(first & 1, f, "retain flag");
        }
    }
}
