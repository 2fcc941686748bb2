//! TLS (with and without client certificates), WebSocket and HTTP, with certificates generated
//! in the test.

mod common;

use common::{TestBroker, WAIT, http_get, raw, v4};
use futures_util::{SinkExt, StreamExt};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use std::path::Path;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

struct Pki {
    ca_pem: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "moonwire test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let server_cert = server.signed_by(&server_key, &ca_cert, &ca_key).unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client = CertificateParams::new(vec!["cam-1".to_string()]).unwrap();
    client.distinguished_name.push(DnType::CommonName, "cam-1");
    let client_cert = client.signed_by(&client_key, &ca_cert, &ca_key).unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        server_cert: server_cert.pem(),
        server_key: server_key.serialize_pem(),
        client_cert: client_cert.pem(),
        client_key: client_key.serialize_pem(),
    }
}

fn write(dir: &Path, name: &str, data: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p.to_string_lossy().into_owned()
}

fn tls_options(port: u16, id: &str, pki: &Pki, with_client_cert: bool) -> v4::MqttOptions {
    let mut o = v4::MqttOptions::new(id, "127.0.0.1", port);
    let client_auth = with_client_cert.then(|| {
        (
            pki.client_cert.as_bytes().to_vec(),
            pki.client_key.as_bytes().to_vec(),
        )
    });
    o.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Simple {
            ca: pki.ca_pem.as_bytes().to_vec(),
            alpn: None,
            client_auth,
        },
    ));
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_publish_and_subscribe() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let cert = write(dir.path(), "server.crt", &pki.server_cert);
    let key = write(dir.path(), "server.key", &pki.server_key);
    let b = TestBroker::start_with(|c| {
        c.tls.cert = cert;
        c.tls.key = key;
        c.tls.handshake_timeout = std::time::Duration::from_millis(500);
    })
    .await;
    let tls_port = b.running().tls.expect("tls listener").port();
    let mut sub = v4::connect(tls_options(tls_port, "tls-sub", &pki, false)).await;
    sub.subscribe("secure/#", v4::QoS::AtLeastOnce).await;
    let p = v4::connect(v4::options(b.port(), "plain-pub")).await;
    p.client
        .publish("secure/x", v4::QoS::AtLeastOnce, false, "over tls")
        .await
        .unwrap();
    assert_eq!(&sub.next_publish().await.unwrap().payload[..], b"over tls");

    // Half-open handshakes (TCP connected, nothing sent) do not block the listener.
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(raw::Conn::open(b.running().tls.unwrap()).await);
    }
    let _during = v4::connect(tls_options(tls_port, "tls-during", &pki, false)).await;
    // A client that does not speak TLS at all is dropped without hurting the listener.
    let mut junk = raw::Conn::open(b.running().tls.unwrap()).await;
    junk.send(&raw::connect(4, "not-tls", 30)).await;
    assert!(junk.closed_within(WAIT).await);
    let _again = v4::connect(tls_options(tls_port, "tls-again", &pki, false)).await;
    for mut s in silent {
        assert!(
            s.closed_within(WAIT).await,
            "half-open handshake kept past the timeout"
        );
    }
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_requires_a_client_certificate_from_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let cert = write(dir.path(), "server.crt", &pki.server_cert);
    let key = write(dir.path(), "server.key", &pki.server_key);
    let ca = write(dir.path(), "ca.crt", &pki.ca_pem);
    let b = TestBroker::start_with(|c| {
        c.tls.cert = cert;
        c.tls.key = key;
        c.tls.client_ca = ca;
        c.tls.require_client_cert = true;
    })
    .await;
    let tls_port = b.running().tls.unwrap().port();
    let _ok = v4::connect(tls_options(tls_port, "cam-1", &pki, true)).await;

    let (_c, mut el) = v4::AsyncClient::new(tls_options(tls_port, "no-cert", &pki, false), 10);
    let refused = tokio::time::timeout(WAIT, async {
        loop {
            match el.poll().await {
                Err(e) => return e,
                Ok(v4::Event::Incoming(v4::Packet::ConnAck(_))) => {
                    panic!("connected without a client certificate")
                }
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("refused in time");
    eprintln!("refused as expected: {refused}");
    assert!(
        b.metrics()
            .await
            .contains("moonwire_drops_total{reason=\"handshake_failed\"} 1")
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_clients_talk_to_tcp_clients() {
    let b = TestBroker::start().await;
    let ws = b.running().ws.expect("ws listener");
    let mut req = format!("ws://{ws}/mqtt").into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "mqtt".parse().unwrap());
    let (mut sock, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(
        resp.headers().get("sec-websocket-protocol").unwrap(),
        "mqtt"
    );
    sock.send(Message::Binary(raw::connect(4, "ws-client", 30).into()))
        .await
        .unwrap();
    let connack = tokio::time::timeout(WAIT, sock.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(connack.into_data().to_vec(), vec![0x20, 2, 0, 0]);
    sock.send(Message::Binary(raw::subscribe(4, 1, "ws/in", 0).into()))
        .await
        .unwrap();
    let suback = tokio::time::timeout(WAIT, sock.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(suback.into_data()[0], 0x90);

    let mut tcp = v4::connect(v4::options(b.port(), "tcp-client")).await;
    tcp.subscribe("ws/out", v4::QoS::AtMostOnce).await;
    tcp.client
        .publish("ws/in", v4::QoS::AtMostOnce, false, "to ws")
        .await
        .unwrap();
    let got = tokio::time::timeout(WAIT, sock.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let got = got.into_data();
    assert_eq!(got[0], 0x30);
    assert!(got.ends_with(b"to ws"));
    sock.send(Message::Binary(
        raw::publish(4, b"ws/out", b"from ws", 0, 0).into(),
    ))
    .await
    .unwrap();
    assert_eq!(&tcp.next_publish().await.unwrap().payload[..], b"from ws");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_health_and_metrics() {
    let b = TestBroker::start().await;
    let http = b.running().http.unwrap();
    assert_eq!(http_get(http, "/healthz").await, (200, "ok\n".to_string()));
    let mut p = v4::connect(v4::options(b.port(), "counted")).await;
    p.publish_acked("m/1", false, "12345").await;
    let (status, body) = http_get(http, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("moonwire_connections 1"), "{body}");
    assert!(body.contains("moonwire_messages_in_total 1"), "{body}");
    assert!(body.contains("# TYPE moonwire_router_queue_depth gauge"));
    assert_eq!(http_get(http, "/nope").await.0, 404);
    b.stop().await;
}
