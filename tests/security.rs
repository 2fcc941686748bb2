//! Authentication, certificates, ACLs and rate limits through real clients over TCP, TLS and
//! mTLS, with certificates made by `moonwire certs` in a temp dir.

mod common;

use common::{TestBroker, WAIT, raw, test_config, v4};
use moonwire::app::App;
use moonwire::auth::{Access, Rule};
use moonwire::config::{AnonymousPolicy, CertIdentity};
use moonwire::pipeline::{Message, Origin, Outcome, Props};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn moonwire(args: &[&str], stdin: Option<&str>) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_moonwire"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "moonwire {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn connect_login(level: u8, id: &str, user: &str, pass: &str) -> Vec<u8> {
    let mut body = vec![
        0,
        4,
        b'M',
        b'Q',
        b'T',
        b'T',
        level,
        0x02 | 0x80 | 0x40,
        0,
        30,
    ];
    if level == 5 {
        body.push(0);
    }
    for s in [id, user, pass] {
        body.extend_from_slice(&(s.len() as u16).to_be_bytes());
        body.extend_from_slice(s.as_bytes());
    }
    raw::packet(0x10, &body)
}

async fn connack(addr: std::net::SocketAddr, packet: &[u8]) -> (u8, u8) {
    let mut c = raw::Conn::open(addr).await;
    c.send(packet).await;
    let (first, body) = c.read(WAIT).await.expect("CONNACK");
    assert_eq!(first, 0x20);
    (body[0], body[1])
}

fn rule(user: Option<&str>, topic: &str, access: Access) -> Rule {
    Rule {
        user: user.map(str::to_string),
        client_id: None,
        anonymous: false,
        topic: topic.into(),
        access,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_refused_on_a_lan_listener() {
    let b = TestBroker::start_with(|c| c.mqtt.listen = "0.0.0.0:0".parse().unwrap()).await;
    let addr = format!("127.0.0.1:{}", b.port()).parse().unwrap();
    assert_eq!(connack(addr, &raw::connect(4, "anon", 30)).await, (0, 5));
    assert_eq!(connack(addr, &raw::connect(5, "anon", 30)).await.1, 0x87);
    assert!(
        b.metrics()
            .await
            .contains("moonwire_drops_total{reason=\"auth_failed\"} 2")
    );
    b.stop().await;
    // Explicitly allowed.
    let b = TestBroker::start_with(|c| {
        c.mqtt.listen = "0.0.0.0:0".parse().unwrap();
        c.auth.allow_anonymous = AnonymousPolicy::Allow;
    })
    .await;
    let addr = format!("127.0.0.1:{}", b.port()).parse().unwrap();
    assert_eq!(connack(addr, &raw::connect(4, "anon", 30)).await, (0, 0));
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_from_the_users_file() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    let f = users.to_str().unwrap();
    moonwire(&["passwd", f, "alice"], Some("correct horse\n"));
    moonwire(&["passwd", f, "bob"], Some("battery staple\n"));
    let text = std::fs::read_to_string(&users).unwrap();
    assert!(text.contains("alice:$argon2id$"), "{text}");
    assert!(!text.contains("correct horse"));
    let b = TestBroker::start_with(|c| {
        c.auth.users_file = f.to_string();
        c.auth.allow_anonymous = AnonymousPolicy::Deny;
        c.auth.failed_login_delay = Duration::from_millis(300);
    })
    .await;
    assert_eq!(
        connack(b.mqtt, &connect_login(4, "a", "alice", "correct horse")).await,
        (0, 0)
    );
    assert_eq!(
        connack(b.mqtt, &connect_login(5, "a5", "alice", "correct horse"))
            .await
            .1,
        0
    );
    assert_eq!(
        connack(b.mqtt, &connect_login(4, "a", "alice", "wrong")).await,
        (0, 4)
    );
    // The next attempt from this address is slowed down, even with the right password.
    let t = Instant::now();
    assert_eq!(
        connack(b.mqtt, &connect_login(5, "a", "alice", "wrong"))
            .await
            .1,
        0x86
    );
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "no back-off: {:?}",
        t.elapsed()
    );
    assert_eq!(
        connack(b.mqtt, &connect_login(4, "c", "carol", "x")).await,
        (0, 4),
        "unknown user"
    );
    assert_eq!(connack(b.mqtt, &raw::connect(4, "anon", 30)).await, (0, 5));

    // Reloaded on change: bob removed, alice's password changed.
    moonwire(&["passwd", f, "bob", "--delete"], None);
    moonwire(&["passwd", f, "alice"], Some("new one\n"));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if connack(b.mqtt, &connect_login(4, "a", "alice", "new one")).await == (0, 0) {
            break;
        }
        assert!(Instant::now() < deadline, "users file not reloaded");
    }
    assert_eq!(
        connack(b.mqtt, &connect_login(4, "b", "bob", "battery staple")).await,
        (0, 4)
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_confines_publish_subscribe_and_wills() {
    let b = TestBroker::start_with(|c| {
        c.acl = vec![
            rule(None, "cameras/%u/#", Access::ReadWrite),
            rule(Some("dash"), "cameras/+/thumb", Access::Read),
            rule(Some("dash"), "#", Access::Deny),
        ];
    })
    .await;
    // A device publishing outside cameras/%u/#: v5 gets 0x87, v3.1.1 a plain PUBACK; nothing routed.
    let mut dash = raw::Conn::open(b.mqtt).await;
    dash.send(&connect_login(4, "dash", "dash", "")).await;
    dash.read(WAIT).await.unwrap();
    dash.send(&raw::subscribe(4, 1, "cameras/+/thumb", 0)).await;
    assert_eq!(dash.read(WAIT).await.unwrap(), (0x90, vec![0, 1, 0]));
    dash.send(&raw::subscribe(4, 2, "#", 0)).await;
    assert_eq!(
        dash.read(WAIT).await.unwrap(),
        (0x90, vec![0, 2, 0x80]),
        "subscriber trying #"
    );

    let mut cam = raw::Conn::open(b.mqtt).await;
    cam.send(&connect_login(5, "cam1", "cam1", "")).await;
    cam.read(WAIT).await.unwrap();
    cam.send(&raw::publish(5, b"cameras/cam2/thumb", b"forged", 1, 1))
        .await;
    let (first, body) = cam.read(WAIT).await.unwrap();
    assert_eq!((first, &body[..3]), (0x40, &[0u8, 1, 0x87][..]));
    let mut s = Vec::new();
    s.extend(raw::publish(5, b"cameras/cam1/thumb", b"mine", 1, 2));
    cam.send(&s).await;
    assert_eq!(cam.read(WAIT).await.unwrap().1[..2], [0, 2]);
    let (first, body) = dash
        .read(WAIT)
        .await
        .expect("dashboard gets the allowed thumb");
    assert_eq!(first & 0xF0, 0x30);
    assert!(body.ends_with(b"mine"));

    // A v3.1.1 device: denied publish is acked and dropped silently.
    let mut cam4 = raw::Conn::open(b.mqtt).await;
    cam4.send(&connect_login(4, "cam3", "cam3", "")).await;
    cam4.read(WAIT).await.unwrap();
    cam4.send(&raw::publish(4, b"cameras/cam2/thumb", b"forged", 1, 9))
        .await;
    assert_eq!(cam4.read(WAIT).await.unwrap(), (0x40, vec![0, 9]));

    // A will to a forbidden topic is not delivered.
    let mut w = raw::Conn::open(b.mqtt).await;
    let mut conn = connect_login(4, "cam4", "cam4", "");
    conn[9] |= 0x04; // will flag
    let mut body = conn[2..].to_vec();
    // Insert will topic and message after the client id.
    let id_end = 10 + 2 + 4;
    let mut will = Vec::new();
    for s in ["cameras/cam2/thumb", "bye"] {
        will.extend_from_slice(&(s.len() as u16).to_be_bytes());
        will.extend_from_slice(s.as_bytes());
    }
    body.splice(id_end..id_end, will);
    w.send(&raw::packet(0x10, &body)).await;
    assert_eq!(w.read(WAIT).await.unwrap().0, 0x20);
    drop(w);
    assert!(
        dash.read(Duration::from_millis(500)).await.is_none(),
        "forbidden will delivered"
    );
    let m = b.metrics().await;
    assert!(
        m.contains("moonwire_drops_total{reason=\"acl_denied\"} 4"),
        "{m}"
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_publishes_are_checked_against_their_identity() {
    let b = TestBroker::start_with(|c| {
        c.acl = vec![
            rule(Some("block:alerts"), "alerts/#", Access::Write),
            rule(None, "#", Access::Read),
        ];
    })
    .await;
    let mut sub = v4::connect(v4::options(b.port(), "s")).await;
    sub.subscribe("#", v4::QoS::AtMostOnce).await;
    let msg = |topic: &str| Message {
        topic: topic.into(),
        payload: "x".into(),
        qos: 0,
        retain: false,
        props: Props::default(),
        origin: Origin {
            client_id: "block:alerts".into(),
            username: Some("block:alerts".into()),
            hop: 1,
        },
        received_at: 0,
    };
    let broker = &b.running().broker;
    assert!(matches!(
        broker.publish(msg("home/door")).await,
        Outcome::Drop { .. }
    ));
    assert!(matches!(
        broker.publish(msg("alerts/door")).await,
        Outcome::Route(_)
    ));
    assert_eq!(&sub.next_publish().await.unwrap().topic, "alerts/door");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_changes_apply_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl.toml");
    std::fs::write(
        &acl,
        "[[acl]]\ntopic = \"open/#\"\naccess = \"readwrite\"\n",
    )
    .unwrap();
    let b = TestBroker::start_with(|c| c.auth.acl_file = acl.to_string_lossy().into_owned()).await;
    let mut c = raw::Conn::open(b.mqtt).await;
    c.send(&raw::connect(5, "x", 0)).await;
    c.read(WAIT).await.unwrap();
    c.send(&raw::publish(5, b"closed/a", b"1", 1, 1)).await;
    assert_eq!(c.read(WAIT).await.unwrap().1[2], 0x87);
    std::fs::write(&acl, "[[acl]]\ntopic = \"#\"\naccess = \"readwrite\"\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    for pkid in 2.. {
        tokio::time::sleep(Duration::from_millis(200)).await;
        c.send(&raw::publish(5, b"closed/a", b"1", 1, pkid)).await;
        let body = c.read(WAIT).await.unwrap().1;
        if body.len() == 2 || body[2] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "ACL file change not applied");
    }
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_kicks_in_and_recovers() {
    let b = TestBroker::start_with(|c| {
        c.limits.publish_rate = 20;
        c.limits.publish_burst = 1;
    })
    .await;
    let mut c = raw::Conn::open(b.mqtt).await;
    c.send(&raw::connect(5, "chatty", 0)).await;
    c.read(WAIT).await.unwrap();
    let mut burst = Vec::new();
    for i in 1..=30u16 {
        burst.extend(raw::publish(5, b"r/t", b"x", 1, i));
    }
    c.send(&burst).await;
    let mut refused = 0;
    for _ in 0..30 {
        let body = c.read(WAIT).await.unwrap().1;
        if body.len() > 2 && body[2] == 0x97 {
            refused += 1;
        }
    }
    assert!(
        (3..=15).contains(&refused),
        "refused {refused} of 30 at 20/s burst 20"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    c.send(&raw::publish(5, b"r/t", b"x", 1, 99)).await;
    let body = c.read(WAIT).await.unwrap().1;
    assert!(body.len() == 2 || body[2] == 0, "not recovered: {body:?}");
    // Sustained abuse: disconnected with 0x96.
    let mut flood = Vec::new();
    for i in 1..=200u16 {
        flood.extend(raw::publish(5, b"r/t", b"x", 0, i));
    }
    c.send(&flood).await;
    let (first, body) = c.read(WAIT).await.expect("DISCONNECT");
    assert_eq!((first, body[0]), (0xE0, 0x96));
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_address_and_subscription_limits() {
    let b = TestBroker::start_with(|c| {
        c.limits.max_connections_per_ip = 3;
        c.limits.max_subscriptions = 50;
    })
    .await;
    let mut conns = Vec::new();
    for i in 0..3 {
        let mut c = raw::Conn::open(b.mqtt).await;
        c.send(&raw::connect(4, &format!("ip{i}"), 0)).await;
        assert_eq!(c.read(WAIT).await.unwrap().0, 0x20);
        conns.push(c);
    }
    let mut fourth = raw::Conn::open(b.mqtt).await;
    assert!(
        fourth.closed_within(WAIT).await,
        "fourth connection from one address accepted"
    );
    // Thousands of subscriptions: the 51st distinct filter is refused, the rest work.
    let c = &mut conns[0];
    let mut batch = Vec::new();
    for i in 0..60u16 {
        batch.extend(raw::subscribe(4, i + 1, &format!("many/{i}"), 0));
    }
    c.send(&batch).await;
    let mut refused = 0;
    for _ in 0..60 {
        let (first, body) = c.read(WAIT).await.unwrap();
        assert_eq!(first, 0x90);
        if body[2] == 0x80 {
            refused += 1;
        }
    }
    assert_eq!(refused, 10);
    drop(conns);
    b.stop().await;
}

fn write_crl(dir: &Path, revoke_serial: Option<rcgen::SerialNumber>) -> String {
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca.key")).unwrap()).unwrap();
    let ca = rcgen::CertificateParams::from_ca_cert_pem(
        &std::fs::read_to_string(dir.join("ca.crt")).unwrap(),
    )
    .unwrap()
    .self_signed(&ca_key)
    .unwrap();
    let revoked = revoke_serial
        .map(|serial_number| rcgen::RevokedCertParams {
            serial_number,
            revocation_time: rcgen::date_time_ymd(2024, 1, 1),
            reason_code: Some(rcgen::RevocationReason::KeyCompromise),
            invalidity_date: None,
        })
        .into_iter()
        .collect();
    let crl = rcgen::CertificateRevocationListParams {
        this_update: rcgen::date_time_ymd(2024, 1, 1),
        next_update: rcgen::date_time_ymd(2100, 1, 1),
        crl_number: rcgen::SerialNumber::from(vec![1u8]),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&ca, &ca_key)
    .unwrap();
    let path = dir.join("ca.crl");
    std::fs::write(&path, crl.pem().unwrap()).unwrap();
    path.to_string_lossy().into_owned()
}

fn mtls_options(port: u16, id: &str, dir: &Path, device: Option<&str>) -> v4::MqttOptions {
    let mut o = v4::MqttOptions::new(id, "127.0.0.1", port);
    let client_auth = device.map(|d| {
        (
            std::fs::read(dir.join(format!("devices/{d}.crt"))).unwrap(),
            std::fs::read(dir.join(format!("devices/{d}.key"))).unwrap(),
        )
    });
    o.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Simple {
            ca: std::fs::read(dir.join("ca.crt")).unwrap(),
            alpn: None,
            client_auth,
        },
    ));
    o
}

async fn tls_refused(opts: v4::MqttOptions) -> bool {
    let (_c, mut el) = v4::AsyncClient::new(opts, 10);
    tokio::time::timeout(WAIT, async {
        loop {
            match el.poll().await {
                Err(_) => return true,
                Ok(v4::Event::Incoming(v4::Packet::ConnAck(a))) => {
                    return a.code != rumqttc::ConnectReturnCode::Success;
                }
                Ok(_) => {}
            }
        }
    })
    .await
    .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_certificates_identity_and_revocation() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    moonwire(&["certs", "init", "--dir", d, "--host", "broker.lan"], None);
    moonwire(&["certs", "issue", "cam1", "--dir", d], None);
    moonwire(&["certs", "issue", "cam2", "--dir", d], None);
    let crl = write_crl(dir.path(), None);
    let p = |f: &str| dir.path().join(f).to_string_lossy().into_owned();
    let b = TestBroker::start_app(App::new({
        let mut c = test_config();
        c.tls.cert = p("server.crt");
        c.tls.key = p("server.key");
        c.tls.client_ca = p("ca.crt");
        c.tls.require_client_cert = true;
        c.tls.identity = CertIdentity::Cn;
        c.tls.crl = crl.clone();
        c.acl = vec![
            rule(None, "cameras/%u/#", Access::ReadWrite),
            rule(None, "#", Access::Read),
        ];
        c
    }))
    .await;
    let port = b.running().tls.unwrap().port();
    let mut watch = v4::connect(v4::options(b.port(), "watch")).await;
    watch.subscribe("cameras/#", v4::QoS::AtLeastOnce).await;

    // cam1's identity comes from its certificate, whatever username it claims.
    let mut o = mtls_options(port, "cam1", dir.path(), Some("cam1"));
    o.set_credentials("cam2", "irrelevant");
    let mut cam1 = v4::connect(o).await;
    cam1.publish_acked("cameras/cam2/notes", false, "forged")
        .await;
    cam1.publish_acked("cameras/cam1/notes", false, "real")
        .await;
    let got = watch.next_publish().await.unwrap();
    assert_eq!(
        (&got.topic[..], &got.payload[..]),
        ("cameras/cam1/notes", &b"real"[..])
    );

    assert!(
        tls_refused(mtls_options(port, "nocert", dir.path(), None)).await,
        "no client cert accepted"
    );

    // Revoke cam2 (serial read from its certificate) and reload the CRL while running.
    let pem = std::fs::read_to_string(dir.path().join("devices/cam2.crt")).unwrap();
    let der = rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
    let serial = rcgen::SerialNumber::from(parsed.raw_serial().to_vec());
    let _cam2 = v4::connect(mtls_options(port, "cam2", dir.path(), Some("cam2"))).await;
    write_crl(dir.path(), Some(serial));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !tls_refused(mtls_options(port, "cam2b", dir.path(), Some("cam2"))).await {
        assert!(
            Instant::now() < deadline,
            "revoked certificate still accepted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _cam1_again = v4::connect(mtls_options(port, "cam1b", dir.path(), Some("cam1"))).await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lua_block_publishing_to_a_forbidden_topic_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("relay.lua");
    std::fs::write(
        &script,
        r#"return { on_publish = function(msg)
             local ok1 = mqtt.publish("alerts/" .. msg.payload, "from block")
             local ok2 = mqtt.publish("home/forbidden", "from block")
           end }"#,
    )
    .unwrap();
    let mut cfg = test_config();
    cfg.block_engine.scripts_dir = dir.path().to_owned();
    let mut b = moonwire::blocks::BlockConfig::new(
        "relay",
        &script,
        moonwire::blocks::BlockEvent::AfterPublish,
    );
    b.topics = vec!["in/#".into()];
    b.identity = Some("relay-bot".into());
    cfg.blocks = vec![b];
    cfg.acl = vec![
        rule(Some("relay-bot"), "alerts/#", Access::Write),
        rule(None, "in/#", Access::ReadWrite),
        rule(None, "#", Access::Read),
    ];
    let b = TestBroker::start_app(App::new(cfg)).await;
    let mut sub = v4::connect(v4::options(b.port(), "s")).await;
    sub.subscribe("alerts/#", v4::QoS::AtMostOnce).await;
    sub.subscribe("home/#", v4::QoS::AtMostOnce).await;
    let mut p = v4::connect(v4::options(b.port(), "p")).await;
    p.publish_acked("in/x", false, "door").await;
    let got = sub.next_publish().await.expect("allowed block publish");
    assert_eq!(&got.topic, "alerts/door");
    assert!(
        sub.next_publish_within(Duration::from_millis(500))
            .await
            .is_none(),
        "forbidden block publish delivered"
    );
    assert!(
        b.metrics()
            .await
            .contains("moonwire_drops_total{reason=\"acl_denied\"} 1")
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_property_lists_are_bounded_by_the_packet_limit() {
    let b = TestBroker::start_with(|c| {
        c.limits.max_packet_size = moonwire::config::ByteSize(64 * 1024)
    })
    .await;
    let mut sub = v4::connect(v4::options(b.port(), "s")).await;
    sub.subscribe("props/#", v4::QoS::AtMostOnce).await;
    // A v5 PUBLISH with n user properties "k"="v".
    let publish = |n: usize, claimed: Option<usize>| {
        let mut props = Vec::new();
        for _ in 0..n {
            props.extend_from_slice(&[0x26, 0, 1, b'k', 0, 1, b'v']);
        }
        let mut body = vec![0, 7];
        body.extend_from_slice(b"props/x");
        let len = claimed.unwrap_or(props.len());
        let mut v = len;
        loop {
            let mut byte = (v % 128) as u8;
            v /= 128;
            if v > 0 {
                byte |= 0x80;
            }
            body.push(byte);
            if v == 0 {
                break;
            }
        }
        body.extend(props);
        body.extend_from_slice(b"payload");
        raw::packet(0x30, &body)
    };
    let mut c = raw::Conn::open(b.mqtt).await;
    c.send(&raw::connect(5, "props", 0)).await;
    c.read(WAIT).await.unwrap();
    // 8,000 properties (56 KB) fit the limit and are delivered.
    c.send(&publish(8000, None)).await;
    assert_eq!(
        &sub.next_publish().await.expect("delivered").payload[..],
        b"payload"
    );
    // 20,000 do not: the packet is refused before it is read.
    c.send(&publish(20_000, None)).await;
    let (first, body) = c.read(WAIT).await.expect("DISCONNECT");
    assert_eq!((first, body[0]), (0xE0, 0x95));
    // A property length that overruns the packet is malformed.
    let mut c = raw::Conn::open(b.mqtt).await;
    c.send(&raw::connect(5, "liar", 0)).await;
    c.read(WAIT).await.unwrap();
    c.send(&publish(3, Some(5000))).await;
    let (first, body) = c.read(WAIT).await.expect("DISCONNECT");
    assert_eq!((first, body[0]), (0xE0, 0x81));
    // Tens of thousands of SUBSCRIBEs: the default limit (1000) holds, the connection survives.
    let mut s = raw::Conn::open(b.mqtt).await;
    s.send(&raw::connect(4, "greedy", 0)).await;
    s.read(WAIT).await.unwrap();
    let mut burst = Vec::new();
    for i in 0..20_000u32 {
        burst.extend(raw::subscribe(
            4,
            (i % 60_000 + 1) as u16,
            &format!("f/{i}"),
            0,
        ));
    }
    s.send(&burst).await;
    let mut refused = 0;
    for _ in 0..20_000 {
        let (first, body) = s.read(WAIT).await.expect("SUBACK");
        assert_eq!(first, 0x90);
        refused += (body[2] == 0x80) as u32;
    }
    assert_eq!(refused, 19_000);
    b.stop().await;
}
