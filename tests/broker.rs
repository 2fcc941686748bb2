//! Core MQTT behaviour through real clients: QoS 0/1/2 both ways, retained messages, wills,
//! persistent sessions, takeover, keep alive, client ids, `$` topics, limits.

mod common;

use common::{TestBroker, WAIT, raw, v4, v5};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_0_1_2_round_trip_v311_and_v5() {
    let b = TestBroker::start().await;
    let mut sub4 = v4::connect(v4::options(b.port(), "sub4")).await;
    sub4.subscribe("t/#", v4::QoS::ExactlyOnce).await;
    let (mut sub5, _) = v5::connect(v5::options(b.port(), "sub5")).await;
    sub5.subscribe("t/#", v5::QoS::ExactlyOnce).await;

    let pub4 = v4::connect(v4::options(b.port(), "pub4")).await;
    let (pub5, _) = v5::connect(v5::options(b.port(), "pub5")).await;
    for (i, qos) in [
        v4::QoS::AtMostOnce,
        v4::QoS::AtLeastOnce,
        v4::QoS::ExactlyOnce,
    ]
    .into_iter()
    .enumerate()
    {
        pub4.client
            .publish(format!("t/v4/{i}"), qos, false, vec![i as u8; 3])
            .await
            .unwrap();
    }
    for (i, qos) in [
        v5::QoS::AtMostOnce,
        v5::QoS::AtLeastOnce,
        v5::QoS::ExactlyOnce,
    ]
    .into_iter()
    .enumerate()
    {
        pub5.client
            .publish(format!("t/v5/{i}"), qos, false, vec![i as u8; 5])
            .await
            .unwrap();
    }
    let mut got4 = Vec::new();
    let mut got5 = Vec::new();
    for _ in 0..6 {
        let p = sub4
            .next_publish()
            .await
            .expect("v4 subscriber gets all six");
        got4.push((
            String::from_utf8(p.topic.into_bytes()).unwrap(),
            p.payload.len(),
        ));
        let p = sub5
            .next_publish()
            .await
            .expect("v5 subscriber gets all six");
        got5.push((
            String::from_utf8(p.topic.to_vec()).unwrap(),
            p.payload.len(),
        ));
    }
    got4.sort();
    got5.sort();
    let want: Vec<(String, usize)> = (0..3)
        .map(|i| (format!("t/v4/{i}"), 3))
        .chain((0..3).map(|i| (format!("t/v5/{i}"), 5)))
        .collect();
    assert_eq!(got4, want);
    assert_eq!(got5, want);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_gets_acks_for_qos1_and_qos2() {
    let b = TestBroker::start().await;
    let mut c = raw::Conn::open(b.mqtt).await;
    c.send(&raw::connect(4, "acker", 30)).await;
    assert_eq!(c.read(WAIT).await.unwrap().0, 0x20);
    c.send(&raw::publish(4, b"a/b", b"1", 1, 7)).await;
    assert_eq!(c.read(WAIT).await.unwrap(), (0x40, vec![0, 7]), "PUBACK 7");
    c.send(&raw::publish(4, b"a/b", b"2", 2, 8)).await;
    assert_eq!(c.read(WAIT).await.unwrap(), (0x50, vec![0, 8]), "PUBREC 8");
    c.send(&raw::packet(0x62, &[0, 8])).await;
    assert_eq!(c.read(WAIT).await.unwrap(), (0x70, vec![0, 8]), "PUBCOMP 8");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_resend_before_pubrel_is_delivered_once() {
    let b = TestBroker::start().await;
    let mut sub = v4::connect(v4::options(b.port(), "s")).await;
    sub.subscribe("once", v4::QoS::AtLeastOnce).await;
    let mut c = raw::Conn::open(b.mqtt).await;
    c.send(&raw::connect(4, "p", 30)).await;
    c.read(WAIT).await.unwrap();
    let mut dup = raw::publish(4, b"once", b"x", 2, 3);
    c.send(&dup).await;
    assert_eq!(c.read(WAIT).await.unwrap().0, 0x50);
    dup[0] |= 0x08; // DUP flag
    c.send(&dup).await;
    assert_eq!(c.read(WAIT).await.unwrap().0, 0x50);
    c.send(&raw::packet(0x62, &[0, 3])).await;
    assert_eq!(c.read(WAIT).await.unwrap().0, 0x70);
    assert!(sub.next_publish().await.is_some());
    assert!(
        sub.next_publish_within(Duration::from_millis(500))
            .await
            .is_none(),
        "delivered twice"
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_are_set_and_cleared() {
    let b = TestBroker::start().await;
    let mut p = v4::connect(v4::options(b.port(), "p")).await;
    p.publish_acked("home/door", true, "open").await;
    let mut s1 = v4::connect(v4::options(b.port(), "s1")).await;
    s1.subscribe("home/+", v4::QoS::AtLeastOnce).await;
    let r = s1
        .next_publish()
        .await
        .expect("retained delivered on subscribe");
    assert_eq!(&r.payload[..], b"open");
    assert!(r.retain);
    p.publish_acked("home/door", true, "").await;
    // The clear itself reaches the live subscriber.
    let _ = s1.next_publish().await;
    let mut s2 = v4::connect(v4::options(b.port(), "s2")).await;
    s2.subscribe("home/+", v4::QoS::AtLeastOnce).await;
    assert!(
        s2.next_publish_within(Duration::from_millis(700))
            .await
            .is_none(),
        "cleared retained message still delivered"
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_fires_on_abnormal_close_but_not_on_disconnect() {
    let b = TestBroker::start().await;
    let mut sub = v4::connect(v4::options(b.port(), "watcher")).await;
    sub.subscribe("wills/#", v4::QoS::AtLeastOnce).await;

    let mut c = raw::Conn::open(b.mqtt).await;
    c.send(&raw::connect_with(
        4,
        "dies",
        30,
        true,
        Some(("wills/dies", b"gone")),
    ))
    .await;
    c.read(WAIT).await.unwrap();
    drop(c);
    let w = sub
        .next_publish()
        .await
        .expect("will published on abnormal close");
    assert_eq!(&w.topic, "wills/dies");
    assert_eq!(&w.payload[..], b"gone");

    let mut c = raw::Conn::open(b.mqtt).await;
    c.send(&raw::connect_with(
        4,
        "polite",
        30,
        true,
        Some(("wills/polite", b"gone")),
    ))
    .await;
    c.read(WAIT).await.unwrap();
    c.send(&[0xE0, 0x00]).await;
    assert!(c.closed_within(WAIT).await);
    assert!(
        sub.next_publish_within(Duration::from_millis(700))
            .await
            .is_none(),
        "will fired after DISCONNECT"
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_will_delay_is_cancelled_by_reconnect() {
    let b = TestBroker::start().await;
    let mut sub = v4::connect(v4::options(b.port(), "watcher")).await;
    sub.subscribe("wills/#", v4::QoS::AtLeastOnce).await;
    let mut o = v5::options(b.port(), "delayed");
    let mut will = v5::LastWill::new("wills/delayed", "gone", v5::QoS::AtLeastOnce, false, None);
    will.properties = Some(rumqttc::v5::mqttbytes::v5::LastWillProperties {
        delay_interval: Some(1),
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: vec![],
    });
    o.set_last_will(will);
    let (c, _) = v5::connect(o.clone()).await;
    c.task.abort();
    drop(c);
    // Back within the delay: no will.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (c2, _) = v5::connect(o).await;
    assert!(
        sub.next_publish_within(Duration::from_millis(1500))
            .await
            .is_none(),
        "will fired despite reconnect"
    );
    c2.task.abort();
    drop(c2);
    let w = sub
        .next_publish_within(Duration::from_secs(4))
        .await
        .expect("will after the delay");
    assert_eq!(&w.topic, "wills/delayed");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_gets_messages_queued_while_offline() {
    let b = TestBroker::start().await;
    let mut o = v4::options(b.port(), "sensor-hub");
    o.set_clean_session(false);
    let mut s = v4::connect(o.clone()).await;
    s.subscribe("queue/#", v4::QoS::AtLeastOnce).await;
    s.client.disconnect().await.unwrap();
    let _ = tokio::time::timeout(WAIT, s.task).await;

    let mut p = v4::connect(v4::options(b.port(), "p")).await;
    for i in 0..3u8 {
        p.publish_acked(&format!("queue/{i}"), false, vec![i]).await;
    }

    let (client, mut el) = v4::AsyncClient::new(o, 100);
    let ack = loop {
        if let Ok(v4::Event::Incoming(v4::Packet::ConnAck(a))) = el.poll().await {
            break a;
        }
    };
    assert!(ack.session_present, "session present after reconnect");
    let mut got = Vec::new();
    while got.len() < 3 {
        match tokio::time::timeout(WAIT, el.poll()).await {
            Ok(Ok(v4::Event::Incoming(v4::Packet::Publish(p)))) => got.push(p.payload[0]),
            Ok(Ok(_)) => {}
            other => panic!("queued messages missing: {other:?}, got {got:?}"),
        }
    }
    assert_eq!(got, vec![0, 1, 2]);
    drop(client);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_closes_the_old_connection() {
    let b = TestBroker::start().await;
    let mut sub = v4::connect(v4::options(b.port(), "watcher")).await;
    sub.subscribe("wills/#", v4::QoS::AtLeastOnce).await;
    let mut old = raw::Conn::open(b.mqtt).await;
    old.send(&raw::connect_with(
        5,
        "dup",
        30,
        true,
        Some(("wills/dup", b"taken")),
    ))
    .await;
    assert_eq!(old.read(WAIT).await.unwrap().0, 0x20);
    let (mut new, _) = v5::connect(v5::options(b.port(), "dup")).await;
    let (first, body) = old.read(WAIT).await.expect("DISCONNECT to the old session");
    assert_eq!(first, 0xE0);
    assert_eq!(body[0], 0x8E, "session taken over");
    assert!(old.closed_within(WAIT).await);
    let w = sub
        .next_publish()
        .await
        .expect("will of the taken-over session");
    assert_eq!(&w.payload[..], b"taken");
    // The new session works.
    new.subscribe("x", v5::QoS::AtMostOnce).await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_is_enforced_at_one_and_a_half_times() {
    let b = TestBroker::start().await;
    let mut c = raw::Conn::open(b.mqtt).await;
    c.send(&raw::connect(5, "sleepy", 1)).await;
    c.read(WAIT).await.unwrap();
    let start = std::time::Instant::now();
    let (first, body) = c
        .read(Duration::from_secs(4))
        .await
        .expect("DISCONNECT on keep alive");
    let waited = start.elapsed();
    assert_eq!((first, body[0]), (0xE0, 0x8D));
    assert!(
        waited >= Duration::from_millis(1400),
        "closed too early: {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(3000),
        "closed too late: {waited:?}"
    );

    // PINGREQ keeps a connection alive; keep alive 0 disables the check.
    let mut c = raw::Conn::open(b.mqtt).await;
    c.send(&raw::connect(4, "pinger", 1)).await;
    c.read(WAIT).await.unwrap();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        c.send(&[0xC0, 0x00]).await;
        assert_eq!(c.read(WAIT).await.unwrap().0, 0xD0);
    }
    drop(c);
    let mut z = raw::Conn::open(b.mqtt).await;
    z.send(&raw::connect(4, "forever", 0)).await;
    z.read(WAIT).await.unwrap();
    assert!(!z.closed_within(Duration::from_secs(2)).await);
    let m = b.metrics().await;
    assert!(
        m.contains("moonwire_drops_total{reason=\"keepalive\"} 1"),
        "{m}"
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_client_id_is_assigned_or_refused() {
    let b = TestBroker::start().await;
    let (_c, ack) = v5::connect(v5::options(b.port(), "")).await;
    let id = ack
        .properties
        .and_then(|p| p.assigned_client_identifier)
        .expect("assigned id");
    assert!(id.starts_with("mw-"));

    let mut c = raw::Conn::open(b.mqtt).await;
    c.send(&raw::connect_with(4, "", 30, false, None)).await;
    assert_eq!(
        c.read(WAIT).await.unwrap(),
        (0x20, vec![0, 2]),
        "identifier rejected"
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ids_the_router_cannot_take_are_refused() {
    let b = TestBroker::start().await;
    for id in ["a/b", "a+b", "a#", "$sys", "moonwire.internal"] {
        let mut c = raw::Conn::open(b.mqtt).await;
        c.send(&raw::connect(4, id, 30)).await;
        assert_eq!(c.read(WAIT).await.unwrap(), (0x20, vec![0, 2]), "{id}");
        let mut c = raw::Conn::open(b.mqtt).await;
        c.send(&raw::connect(5, id, 30)).await;
        let (first, body) = c.read(WAIT).await.unwrap();
        assert_eq!((first, body[1]), (0x20, 0x85), "{id}");
    }
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_answers_server_unavailable() {
    let b = TestBroker::start_with(|c| c.limits.max_connections = 2).await;
    let _a = v4::connect(v4::options(b.port(), "a")).await;
    let _b = v4::connect(v4::options(b.port(), "b")).await;
    let mut c = raw::Conn::open(b.mqtt).await;
    c.send(&raw::connect(4, "c", 30)).await;
    assert_eq!(c.read(WAIT).await.unwrap(), (0x20, vec![0, 3]));
    let mut c = raw::Conn::open(b.mqtt).await;
    c.send(&raw::connect(5, "c", 30)).await;
    assert_eq!(c.read(WAIT).await.unwrap().1[1], 0x88);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dollar_topics_do_not_match_leading_wildcards() {
    let b = TestBroker::start().await;
    let mut s = v4::connect(v4::options(b.port(), "s")).await;
    s.subscribe("#", v4::QoS::AtMostOnce).await;
    let p = v4::connect(v4::options(b.port(), "p")).await;
    p.client
        .publish("$internal/x", v4::QoS::AtMostOnce, false, "no")
        .await
        .unwrap();
    p.client
        .publish("plain", v4::QoS::AtMostOnce, false, "yes")
        .await
        .unwrap();
    let got = s.next_publish().await.unwrap();
    assert_eq!(&got.topic, "plain");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_stops_delivery_and_reports_unknown_filters() {
    let b = TestBroker::start().await;
    let mut c = raw::Conn::open(b.mqtt).await;
    c.send(&raw::connect(5, "u", 30)).await;
    c.read(WAIT).await.unwrap();
    c.send(&raw::subscribe(5, 1, "a/b", 0)).await;
    assert_eq!(c.read(WAIT).await.unwrap().0, 0x90);
    // UNSUBSCRIBE a/b and never/subscribed: success then 0x11.
    let mut body = vec![0, 2, 0];
    for f in ["a/b", "never/subscribed"] {
        body.extend_from_slice(&(f.len() as u16).to_be_bytes());
        body.extend_from_slice(f.as_bytes());
    }
    c.send(&raw::packet(0xA2, &body)).await;
    let (first, body) = c.read(WAIT).await.unwrap();
    assert_eq!(first, 0xB0);
    assert_eq!(&body[..], &[0, 2, 0, 0x00, 0x11]);
    let p = v4::connect(v4::options(b.port(), "p")).await;
    p.client
        .publish("a/b", v4::QoS::AtMostOnce, false, "x")
        .await
        .unwrap();
    assert!(c.read(Duration::from_millis(500)).await.is_none());
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_subscriber_never_sees_v5_properties() {
    let b = TestBroker::start().await;
    let mut s = v4::connect(v4::options(b.port(), "old")).await;
    s.subscribe("props", v4::QoS::AtLeastOnce).await;
    let (p, _) = v5::connect(v5::options(b.port(), "new")).await;
    let props = rumqttc::v5::mqttbytes::v5::PublishProperties {
        content_type: Some("application/json".into()),
        user_properties: vec![("k".into(), "v".into())],
        ..Default::default()
    };
    p.client
        .publish_with_properties("props", v5::QoS::AtLeastOnce, false, "{}", props)
        .await
        .unwrap();
    let got = s
        .next_publish()
        .await
        .expect("v3.1.1 subscriber gets the message");
    assert_eq!(&got.payload[..], b"{}");
    // And a v5 subscriber sees the properties.
    let (mut s5, _) = v5::connect(v5::options(b.port(), "new-sub")).await;
    s5.subscribe("props5", v5::QoS::AtLeastOnce).await;
    let props = rumqttc::v5::mqttbytes::v5::PublishProperties {
        content_type: Some("text/plain".into()),
        ..Default::default()
    };
    p.client
        .publish_with_properties("props5", v5::QoS::AtLeastOnce, false, "hi", props)
        .await
        .unwrap();
    let got = s5.next_publish().await.unwrap();
    assert_eq!(
        got.properties.and_then(|p| p.content_type).as_deref(),
        Some("text/plain")
    );
    b.stop().await;
}
