//! MQTT 5.0 and 3.1.1 server conformance, chapter by chapter (statement ids from the OASIS
//! specifications). Each test's doc comment lists the statements it checks; ids whose number
//! means something different in the two versions are marked (v5) or (3.1.1).
//! `docs/CONFORMANCE.md` maps every id to its test and status; the last test here keeps the
//! two in step.
//!
//! A test the broker does not pass stays, marked `#[ignore = "fails: …"]` with what it does
//! instead. Assertions follow the specification, not the broker.

mod common;

use common::{TestBroker, WAIT, raw};
use std::time::{Duration, Instant};

/// How long to watch for something that must not arrive.
const QUIET: Duration = Duration::from_millis(400);

// ---------------------------------------------------------------------------------------------
// Encoding and decoding
// ---------------------------------------------------------------------------------------------

/// Length-prefixed (two-byte) string or binary data.
fn s(out: &mut Vec<u8>, v: &[u8]) {
    out.extend_from_slice(&(v.len() as u16).to_be_bytes());
    out.extend_from_slice(v);
}

fn vbi(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

/// Reads a variable byte integer; (value, bytes used).
fn read_vbi(b: &[u8]) -> (usize, usize) {
    let (mut v, mut mult) = (0usize, 1usize);
    for (i, x) in b.iter().enumerate() {
        v += (*x & 0x7F) as usize * mult;
        mult *= 128;
        if x & 0x80 == 0 {
            return (v, i + 1);
        }
    }
    panic!("truncated variable byte integer: {b:?}");
}

/// A property section: length, then the properties.
fn props(p: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    vbi(p.len(), &mut out);
    out.extend_from_slice(p);
    out
}

/// Decoded v5 properties, in order: (id, value bytes; strings without their length).
type Props = Vec<(u8, Vec<u8>)>;

/// Parses a property section at the start of `b`; returns the properties and bytes used.
fn parse_props(b: &[u8]) -> (Props, usize) {
    let (len, n) = read_vbi(b);
    let mut i = n;
    let end = n + len;
    let mut out = Vec::new();
    while i < end {
        let id = b[i];
        i += 1;
        let take = |i: &mut usize, k: usize| {
            let v = b[*i..*i + k].to_vec();
            *i += k;
            v
        };
        let val = match id {
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => take(&mut i, 1),
            0x13 | 0x21 | 0x22 | 0x23 => take(&mut i, 2),
            0x02 | 0x11 | 0x18 | 0x27 => take(&mut i, 4),
            0x0B => {
                let (_, k) = read_vbi(&b[i..]);
                take(&mut i, k)
            }
            0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1A | 0x1C | 0x1F => {
                let l = u16::from_be_bytes([b[i], b[i + 1]]) as usize;
                i += 2;
                take(&mut i, l)
            }
            0x26 => {
                let l = u16::from_be_bytes([b[i], b[i + 1]]) as usize;
                let mut v = take(&mut i, 2 + l);
                let l2 = u16::from_be_bytes([b[i], b[i + 1]]) as usize;
                v.extend(take(&mut i, 2 + l2));
                v
            }
            other => panic!("unknown property 0x{other:02X} in {b:?}"),
        };
        out.push((id, val));
    }
    (out, end)
}

fn prop(p: &Props, id: u8) -> Option<&[u8]> {
    p.iter().find(|(i, _)| *i == id).map(|(_, v)| &v[..])
}

/// A CONNECT: protocol name, level, flags, keep alive, v5 properties (`None` for 3.1.1) and the
/// already encoded payload.
fn connect_raw(
    name: &[u8],
    level: u8,
    flags: u8,
    ka: u16,
    pr: Option<&[u8]>,
    payload: &[u8],
) -> Vec<u8> {
    let mut body = Vec::new();
    s(&mut body, name);
    body.push(level);
    body.push(flags);
    body.extend_from_slice(&ka.to_be_bytes());
    if let Some(p) = pr {
        body.extend(props(p));
    }
    body.extend_from_slice(payload);
    raw::packet(0x10, &body)
}

/// A v5 CONNECT with clean start, keep alive 0, the given properties and client id.
fn connect_v5(id: &[u8], pr: &[u8]) -> Vec<u8> {
    let mut payload = Vec::new();
    s(&mut payload, id);
    connect_raw(b"MQTT", 5, 0x02, 0, Some(pr), &payload)
}

/// Payload of a CONNECT: client id, then an optional will (v5 will properties, topic,
/// message), then optional user name and password.
fn connect_payload(
    level: u8,
    id: &[u8],
    will: Option<(&[u8], &[u8], &[u8])>,
    user: Option<&[u8]>,
    pass: Option<&[u8]>,
) -> Vec<u8> {
    let mut p = Vec::new();
    s(&mut p, id);
    if let Some((wp, t, m)) = will {
        if level == 5 {
            p.extend(props(wp));
        }
        s(&mut p, t);
        s(&mut p, m);
    }
    if let Some(u) = user {
        s(&mut p, u);
    }
    if let Some(pw) = pass {
        s(&mut p, pw);
    }
    p
}

/// A v5 PUBLISH with raw properties.
fn publish_v5(
    topic: &[u8],
    pr: &[u8],
    payload: &[u8],
    qos: u8,
    retain: bool,
    pkid: u16,
) -> Vec<u8> {
    let mut body = Vec::new();
    s(&mut body, topic);
    if qos > 0 {
        body.extend_from_slice(&pkid.to_be_bytes());
    }
    body.extend(props(pr));
    body.extend_from_slice(payload);
    raw::packet(0x30 | (qos << 1) | retain as u8, &body)
}

/// A 3.1.1 PUBLISH.
fn publish_v4(topic: &[u8], payload: &[u8], qos: u8, retain: bool, pkid: u16) -> Vec<u8> {
    let mut p = raw::publish(4, topic, payload, qos, pkid);
    p[0] |= retain as u8;
    p
}

/// SUBSCRIBE with several (filter, options) pairs and v5 properties (`None` for 3.1.1).
fn subscribe_raw(pkid: u16, pr: Option<&[u8]>, filters: &[(&[u8], u8)]) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    if let Some(p) = pr {
        body.extend(props(p));
    }
    for (f, o) in filters {
        s(&mut body, f);
        body.push(*o);
    }
    raw::packet(0x82, &body)
}

/// UNSUBSCRIBE of several filters (`v5` adds an empty property section).
fn unsubscribe_raw(pkid: u16, v5: bool, filters: &[&[u8]]) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    if v5 {
        body.push(0);
    }
    for f in filters {
        s(&mut body, f);
    }
    raw::packet(0xA2, &body)
}

/// A received PUBLISH.
#[derive(Debug)]
struct Pub {
    qos: u8,
    retain: bool,
    dup: bool,
    topic: Vec<u8>,
    pkid: u16,
    props: Props,
    payload: Vec<u8>,
}

fn parse_publish(level: u8, first: u8, body: &[u8]) -> Pub {
    assert_eq!(first & 0xF0, 0x30, "not a PUBLISH: {first:#x} {body:?}");
    let qos = (first >> 1) & 3;
    let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
    let topic = body[2..2 + tl].to_vec();
    let mut i = 2 + tl;
    let mut pkid = 0;
    if qos > 0 {
        pkid = u16::from_be_bytes([body[i], body[i + 1]]);
        i += 2;
    }
    let mut pr = Vec::new();
    if level == 5 {
        let (p, n) = parse_props(&body[i..]);
        pr = p;
        i += n;
    }
    Pub {
        qos,
        retain: first & 1 == 1,
        dup: first & 8 == 8,
        topic,
        pkid,
        props: pr,
        payload: body[i..].to_vec(),
    }
}

// ---------------------------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------------------------

/// A v5 CONNACK: (acknowledge flags, reason code, properties).
fn parse_connack(body: &[u8]) -> (u8, u8, Props) {
    let (p, _) = if body.len() > 2 {
        parse_props(&body[2..])
    } else {
        (Vec::new(), 0)
    };
    (body[0], body[1], p)
}

/// Sends `connect`; expects a successful CONNACK and returns the connection and its body.
async fn open_with(b: &TestBroker, connect: &[u8]) -> (raw::Conn, Vec<u8>) {
    let mut c = raw::Conn::open(b.mqtt).await;
    c.send(connect).await;
    let (first, body) = c.read(WAIT).await.expect("CONNACK");
    assert_eq!(first, 0x20, "CONNACK expected: {first:#x} {body:?}");
    assert_eq!(body[1], 0, "connection refused: {body:?}");
    (c, body)
}

/// v5 connection with clean start and no properties.
async fn open5(b: &TestBroker, id: &str) -> raw::Conn {
    open_with(b, &connect_v5(id.as_bytes(), &[])).await.0
}

/// 3.1.1 connection with clean session, keep alive 0.
async fn open4(b: &TestBroker, id: &str) -> raw::Conn {
    open_with(b, &raw::connect(4, id, 0)).await.0
}

/// Reads every packet until the broker closes; `Err` if it is still open after `WAIT`.
async fn try_until_closed(c: &mut raw::Conn) -> Result<Vec<(u8, Vec<u8>)>, String> {
    let mut got = Vec::new();
    loop {
        match c.read(WAIT).await {
            Some(p) => got.push(p),
            None => {
                if c.closed_within(Duration::from_millis(50)).await {
                    return Ok(got);
                }
                return Err(format!("connection still open; got {got:x?}"));
            }
        }
    }
}

async fn until_closed(c: &mut raw::Conn) -> Vec<(u8, Vec<u8>)> {
    try_until_closed(c).await.unwrap_or_else(|e| panic!("{e}"))
}

/// The broker must refuse this v5 CONNECT: close, after at most a CONNACK whose reason code is
/// in `codes`, with Session Present 0 [MQTT-3.2.2-6] and never a DISCONNECT [MQTT-3.14.0-1].
/// Returns the reason code if a CONNACK came.
async fn try_refused_v5(c: &mut raw::Conn, codes: &[u8]) -> Result<Option<u8>, String> {
    let got = try_until_closed(c).await?;
    if got.len() > 1 {
        return Err(format!("more than one packet before the close: {got:x?}"));
    }
    let Some((first, body)) = got.into_iter().next() else {
        return Ok(None);
    };
    if first != 0x20 {
        return Err(format!(
            "only a CONNACK may precede the close: {first:#x} {body:x?}"
        ));
    }
    let (flags, code, _) = parse_connack(&body);
    if flags != 0 || !codes.contains(&code) {
        return Err(format!(
            "CONNACK flags {flags:#x} reason {code:#x}, want 0 and one of {codes:x?}"
        ));
    }
    Ok(Some(code))
}

async fn refused_v5(c: &mut raw::Conn, codes: &[u8]) -> Option<u8> {
    try_refused_v5(c, codes)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The broker must refuse this 3.1.1 CONNECT: close, after at most a CONNACK with a return code
/// in `codes` (empty: no return code applies, so no CONNACK at all [MQTT-3.2.2-6] (3.1.1)) and
/// session present 0 [MQTT-3.2.2-4] (3.1.1).
async fn try_refused_v4(c: &mut raw::Conn, codes: &[u8]) -> Result<Option<u8>, String> {
    let got = try_until_closed(c).await?;
    if got.len() > 1 {
        return Err(format!("more than one packet before the close: {got:x?}"));
    }
    let Some((first, body)) = got.into_iter().next() else {
        return Ok(None);
    };
    if first != 0x20 || body.len() != 2 || body[0] != 0 || !codes.contains(&body[1]) {
        return Err(format!(
            "got {first:#x} {body:x?}; want close after nothing or CONNACK [0, {codes:x?}]"
        ));
    }
    Ok(Some(body[1]))
}

async fn refused_v4(c: &mut raw::Conn, codes: &[u8]) -> Option<u8> {
    try_refused_v4(c, codes)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Sends `connect` on a new connection and checks it is refused (v5 or 3.1.1 by `level`); the
/// outcome is pushed onto `fails` with `what` so one test can report every failing case.
async fn check_refused(
    b: &TestBroker,
    level: u8,
    what: &str,
    connect: &[u8],
    codes: &[u8],
    fails: &mut Vec<String>,
) {
    let mut c = raw::Conn::open(b.mqtt).await;
    c.send(connect).await;
    let r = if level == 5 {
        try_refused_v5(&mut c, codes).await
    } else {
        try_refused_v4(&mut c, codes).await
    };
    if let Err(e) = r {
        fails.push(format!("{what}: {e}"));
    }
}

/// After a malformed packet or protocol error the broker closes [MQTT-4.13.1-1], sending at
/// most a DISCONNECT with a reason code in `codes` (v5) first. Returns that code.
async fn try_closed_v5(c: &mut raw::Conn, codes: &[u8]) -> Result<Option<u8>, String> {
    let got = try_until_closed(c).await?;
    let mut code = None;
    for (first, body) in got {
        let r = body.first().copied().unwrap_or(0);
        if first != 0xE0 || !codes.contains(&r) {
            return Err(format!(
                "got {first:#x} {body:x?}; want close after at most DISCONNECT {codes:x?}"
            ));
        }
        code = Some(r);
    }
    Ok(code)
}

async fn closed_v5(c: &mut raw::Conn, codes: &[u8]) -> Option<u8> {
    try_closed_v5(c, codes)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A 3.1.1 connection must be closed with nothing sent.
async fn closed_v4(c: &mut raw::Conn) {
    let got = until_closed(c).await;
    assert!(
        got.is_empty(),
        "nothing may be sent before the close: {got:x?}"
    );
}

/// PINGREQ answered by PINGRESP: the connection is open and the broker is listening.
async fn alive(c: &mut raw::Conn) -> bool {
    c.send(&[0xC0, 0]).await;
    matches!(c.read(WAIT).await, Some((0xD0, b)) if b.is_empty())
}

/// Reads the next PUBLISH (skipping nothing else: any other packet fails).
async fn next_pub(c: &mut raw::Conn, level: u8) -> Pub {
    let (first, body) = c.read(WAIT).await.expect("PUBLISH");
    parse_publish(level, first, &body)
}

/// SUBSCRIBE one v5 filter and return the SUBACK reason code.
async fn sub5(c: &mut raw::Conn, filter: &str, options: u8) -> u8 {
    c.send(&subscribe_raw(
        7,
        Some(&[]),
        &[(filter.as_bytes(), options)],
    ))
    .await;
    let (first, body) = c.read(WAIT).await.expect("SUBACK");
    assert_eq!(
        (first, &body[..2]),
        (0x90, &[0u8, 7][..]),
        "SUBACK: {body:x?}"
    );
    *body.last().unwrap()
}

/// SUBSCRIBE one 3.1.1 filter and return the SUBACK return code.
async fn sub4(c: &mut raw::Conn, filter: &str, qos: u8) -> u8 {
    c.send(&raw::subscribe(4, 7, filter, qos)).await;
    let (first, body) = c.read(WAIT).await.expect("SUBACK");
    assert_eq!((first, body.len()), (0x90, 3), "SUBACK: {body:x?}");
    body[2]
}

const ERR: &[u8] = &[0x81, 0x82];

// =============================================================================================
// 1–2 Data representation
// =============================================================================================

/// [MQTT-1.5.5-1] (v5) the broker encodes the Remaining Length of what it sends in the fewest
/// bytes: deliveries whose remaining length lands on either side of 127/128 and 16383/16384,
/// at QoS 1 and at QoS 0 (published at QoS 0 to a QoS 1 subscription, which the edge rewrites).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remaining_lengths_are_minimal_variable_byte_integers() {
    let b = TestBroker::start().await;
    let mut s = open5(&b, "vbi-s").await;
    assert_eq!(sub5(&mut s, "vbi/#", 1).await, 1);
    let mut p = open5(&b, "vbi-p").await;
    // v5 delivery of `vbi/x` at QoS 1 without properties: 2 + 5 topic, 2 packet id, 1 property
    // length, then the payload; QoS 0 drops the packet id.
    let overhead = 10;
    let mut lengths = Vec::new();
    for qos in [1u8, 0] {
        for target in [127usize, 16383] {
            for rlen in target - 3..=target + 3 {
                let payload = vec![b'v'; rlen + 2 * (1 - qos as usize) - overhead];
                p.send(&publish_v5(b"vbi/x", &[], &payload, qos, false, 1))
                    .await;
                if qos == 1 {
                    assert_eq!(p.read(WAIT).await.map(|(f, _)| f), Some(0x40));
                }
                let (hlen, wire) = s.read_wire(WAIT).await.expect("delivery");
                let m = parse_publish(5, wire[0], &wire[hlen..]);
                assert_eq!((m.qos, m.payload.len()), (qos, payload.len()));
                if m.qos == 1 {
                    s.send(&raw::packet(0x40, &m.pkid.to_be_bytes())).await;
                }
                let (value, used) = read_vbi(&wire[1..]);
                let minimal = match value {
                    0..=127 => 1,
                    128..=16383 => 2,
                    16384..=2_097_151 => 3,
                    _ => 4,
                };
                assert_eq!(
                    (used, value),
                    (minimal, wire.len() - hlen),
                    "QoS {qos}: remaining length {value} in {used} bytes"
                );
                lengths.push(value);
            }
        }
    }
    for edge in [127, 128, 16383, 16384] {
        assert!(lengths.contains(&edge), "{edge} not covered: {lengths:?}");
    }
    b.stop().await;
}

// =============================================================================================
// 3.1 CONNECT
// =============================================================================================

/// [MQTT-3.1.0-1] the first packet must be CONNECT: a PUBLISH, PINGREQ, SUBSCRIBE or AUTH
/// first closes the connection with nothing sent [MQTT-3.2.0-1].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_packet_must_be_connect() {
    let b = TestBroker::start().await;
    for first in [
        raw::publish(4, b"a/b", b"x", 0, 0),
        vec![0xC0, 0],
        raw::subscribe(4, 1, "a/b", 0),
        vec![0xF0, 0],
    ] {
        let mut c = raw::Conn::open(b.mqtt).await;
        c.send(&first).await;
        closed_v4(&mut c).await;
    }
    b.stop().await;
}

/// [MQTT-3.1.0-2] a second CONNECT is a protocol error: v5 DISCONNECT 0x82 (or close), 3.1.1
/// close; [MQTT-3.2.0-2] never a second CONNACK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_connect_closes_the_connection() {
    let b = TestBroker::start().await;
    let mut c = open5(&b, "twice5").await;
    c.send(&connect_v5(b"twice5", &[])).await;
    closed_v5(&mut c, &[0x82]).await;
    let mut c = open4(&b, "twice4").await;
    c.send(&raw::connect(4, "twice4", 0)).await;
    closed_v4(&mut c).await;
    b.stop().await;
}

/// [MQTT-3.1.2-1] a wrong protocol name ("MQTX", or 3.1's "MQIsdp" at level 4/5) is not
/// processed as MQTT: no successful CONNACK, the connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_protocol_name_is_refused() {
    let b = TestBroker::start().await;
    for (name, level) in [
        (&b"MQTX"[..], 5u8),
        (b"MQTX", 4),
        (b"MQIsdp", 4),
        (b"mqtt", 5),
    ] {
        let mut c = raw::Conn::open(b.mqtt).await;
        let pr: Option<&[u8]> = if level == 5 { Some(&[]) } else { None };
        c.send(&connect_raw(
            name,
            level,
            0x02,
            0,
            pr,
            &connect_payload(level, b"n", None, None, None),
        ))
        .await;
        if level == 5 {
            refused_v5(&mut c, &[0x81, 0x82, 0x84]).await;
        } else {
            refused_v4(&mut c, &[0x01]).await;
        }
    }
    b.stop().await;
}

/// [MQTT-3.1.2-2] an unsupported protocol level: CONNACK 0x84 (v5) / 0x01 (3.1.1) or close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_protocol_level_is_refused() {
    let b = TestBroker::start().await;
    for level in [3u8, 6, 0] {
        let mut c = raw::Conn::open(b.mqtt).await;
        c.send(&connect_raw(
            b"MQTT",
            level,
            0x02,
            0,
            None,
            &connect_payload(4, b"lvl", None, None, None),
        ))
        .await;
        let got = until_closed(&mut c).await;
        assert!(got.len() <= 1, "{got:x?}");
        if let Some((first, body)) = got.first() {
            assert_eq!(*first, 0x20, "level {level}: {body:x?}");
            assert!(
                matches!(body[..], [0, 0x01] | [0, 0x84, ..]),
                "level {level}: {body:x?}"
            );
        }
    }
    b.stop().await;
}

/// [MQTT-3.1.2-3] the reserved CONNECT flag (bit 0) set, v5: closed, after at most CONNACK 0x81.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_connect_flag_closes_v5() {
    let b = TestBroker::start().await;
    let mut c = raw::Conn::open(b.mqtt).await;
    c.send(&connect_raw(
        b"MQTT",
        5,
        0x03,
        0,
        Some(&[]),
        &connect_payload(5, b"r5", None, None, None),
    ))
    .await;
    refused_v5(&mut c, &[0x81]).await;
    b.stop().await;
}

/// [MQTT-3.1.2-3] the reserved CONNECT flag set, 3.1.1: closed without CONNACK (no return code
/// applies, [MQTT-3.2.2-6] (3.1.1)).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_connect_flag_closes_v311() {
    let b = TestBroker::start().await;
    let mut c = raw::Conn::open(b.mqtt).await;
    c.send(&connect_raw(
        b"MQTT",
        4,
        0x03,
        0,
        None,
        &connect_payload(4, b"r4", None, None, None),
    ))
    .await;
    refused_v4(&mut c, &[]).await;
    b.stop().await;
}

/// [MQTT-3.1.2-11] (v5) will flag 0 with will QoS set, [MQTT-3.1.2-13] (v5) will flag 0 with
/// will retain set, [MQTT-3.1.2-12] (v5) will QoS 3: each CONNECT is refused (CONNACK 0x81/0x82
/// at most, then close).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_flag_violations_are_refused_v5() {
    let b = TestBroker::start().await;
    let mut fails = Vec::new();
    let plain = connect_payload(5, b"w5", None, None, None);
    let will = connect_payload(5, b"w5", Some((&[], b"will/t", b"bye")), None, None);
    for (what, flags, payload) in [
        ("will flag 0, will QoS 1", 0x02 | 0x08, &plain),
        ("will flag 0, will QoS 2", 0x02 | 0x10, &plain),
        ("will flag 0, will retain 1", 0x02 | 0x20, &plain),
        ("will QoS 3", 0x02 | 0x04 | 0x18, &will),
    ] {
        let c = connect_raw(b"MQTT", 5, flags, 0, Some(&[]), payload);
        check_refused(&b, 5, what, &c, ERR, &mut fails).await;
    }
    assert!(fails.is_empty(), "{fails:#?}");
    b.stop().await;
}

/// [MQTT-3.1.2-11] [MQTT-3.1.2-13] (3.1.1) will flag 0 with will QoS set, [MQTT-3.1.2-15]
/// (3.1.1) will flag 0 with will retain set, [MQTT-3.1.2-14] (3.1.1) will QoS 3: closed without
/// CONNACK (no return code applies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_flag_violations_are_refused_v311() {
    let b = TestBroker::start().await;
    let mut fails = Vec::new();
    let plain = connect_payload(4, b"w4", None, None, None);
    let will = connect_payload(4, b"w4", Some((&[], b"will/t", b"bye")), None, None);
    for (what, flags, payload) in [
        ("will flag 0, will QoS 1", 0x02 | 0x08, &plain),
        ("will flag 0, will QoS 2", 0x02 | 0x10, &plain),
        ("will flag 0, will retain 1", 0x02 | 0x20, &plain),
        ("will QoS 3", 0x02 | 0x04 | 0x18, &will),
    ] {
        let c = connect_raw(b"MQTT", 4, flags, 0, None, payload);
        check_refused(&b, 4, what, &c, &[], &mut fails).await;
    }
    assert!(fails.is_empty(), "{fails:#?}");
    b.stop().await;
}

/// [MQTT-3.1.2-22] (3.1.1) the password flag without the user name flag: refused (CONNACK 0x04
/// at most, then close).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_without_user_name_is_refused_v311() {
    let b = TestBroker::start().await;
    let mut c = raw::Conn::open(b.mqtt).await;
    c.send(&connect_raw(
        b"MQTT",
        4,
        0x42,
        0,
        None,
        &connect_payload(4, b"pw4", None, None, Some(b"secret")),
    ))
    .await;
    refused_v4(&mut c, &[0x04]).await;
    b.stop().await;
}

/// [MQTT-3.1.2-19] (3.1.1) / [MQTT-3.1.2-17] (v5) user name flag set but no user name in the
/// payload: malformed, refused. In v5 a password alone is allowed (§3.1.2.9): not a protocol
/// error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_name_flag_without_user_name_is_malformed() {
    let b = TestBroker::start().await;
    let mut fails = Vec::new();
    let c = connect_raw(
        b"MQTT",
        4,
        0x82,
        0,
        None,
        &connect_payload(4, b"u4", None, None, None),
    );
    check_refused(
        &b,
        4,
        "3.1.1 user name flag, no user name",
        &c,
        &[],
        &mut fails,
    )
    .await;
    let c = connect_raw(
        b"MQTT",
        5,
        0x82,
        0,
        Some(&[]),
        &connect_payload(5, b"u5", None, None, None),
    );
    check_refused(
        &b,
        5,
        "v5 user name flag, no user name",
        &c,
        ERR,
        &mut fails,
    )
    .await;
    // v5: password without user name is well-formed; the broker may still refuse it for
    // authentication reasons, but not as malformed.
    let mut c = raw::Conn::open(b.mqtt).await;
    c.send(&connect_raw(
        b"MQTT",
        5,
        0x42,
        0,
        Some(&[]),
        &connect_payload(5, b"pw5", None, None, Some(b"x")),
    ))
    .await;
    match c.read(WAIT).await {
        Some((0x20, body)) if !ERR.contains(&body[1]) => {}
        other => fails.push(format!(
            "v5 password alone treated as malformed: {other:x?}"
        )),
    }
    assert!(fails.is_empty(), "{fails:#?}");
    b.stop().await;
}

/// [MQTT-1.5.4-1] (v5) / [MQTT-1.5.3-1] (3.1.1) ill-formed UTF-8 (bad bytes, an encoded
/// surrogate) and [MQTT-1.5.4-2] (v5) / [MQTT-1.5.3-2] (3.1.1) U+0000 in the client id:
/// refused [MQTT-3.1.3-4] (CONNACK 0x81/0x82/0x85 or 0x02 at most, then close).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_client_id_is_refused() {
    let b = TestBroker::start().await;
    let mut fails = Vec::new();
    for (what, id) in [
        ("bytes ff fe", &b"id\xff\xfe"[..]),
        ("surrogate U+D800", b"id\xed\xa0\x80"),
        ("U+0000", b"id\x00x"),
    ] {
        let c = connect_raw(
            b"MQTT",
            5,
            0x02,
            0,
            Some(&[]),
            &connect_payload(5, id, None, None, None),
        );
        check_refused(
            &b,
            5,
            &format!("v5 {what}"),
            &c,
            &[0x81, 0x82, 0x85],
            &mut fails,
        )
        .await;
        let c = connect_raw(
            b"MQTT",
            4,
            0x02,
            0,
            None,
            &connect_payload(4, id, None, None, None),
        );
        check_refused(&b, 4, &format!("3.1.1 {what}"), &c, &[0x02], &mut fails).await;
    }
    assert!(fails.is_empty(), "{fails:#?}");
    b.stop().await;
}

/// [MQTT-3.1.3-5] client ids of 1–23 characters from 0-9a-zA-Z are accepted (both versions);
/// [MQTT-3.1.3-3] the client id is the first payload field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_alphanumeric_client_ids_are_accepted() {
    let b = TestBroker::start().await;
    for id in [
        "a",
        "Z9",
        "abcdefghijklmnopqrstuvw",
        "0123456789ABCDEFGHIJKLM",
    ] {
        let mut c = open5(&b, id).await;
        assert!(alive(&mut c).await);
        let mut c = open4(&b, id).await;
        assert!(alive(&mut c).await);
    }
    b.stop().await;
}

/// §3.1.2.11: properties of CONNECT. A duplicated Session Expiry Interval, Receive Maximum,
/// Maximum Packet Size, Topic Alias Maximum, Request Problem/Response Information or
/// Authentication Method, Receive Maximum 0, Maximum Packet Size 0 and Request Problem
/// Information 2 are protocol errors (CONNACK 0x82 at most, then close) [MQTT-4.13.1-1];
/// §3.1.3.2: so is a duplicated will property (Will Delay Interval, Message Expiry Interval).
/// User Property may repeat (accepted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_property_protocol_errors() {
    let b = TestBroker::start().await;
    let mut fails = Vec::new();
    for (what, pr) in [
        (
            "two Session Expiry Interval",
            &[0x11, 0, 0, 0, 10, 0x11, 0, 0, 0, 20][..],
        ),
        ("two Receive Maximum", &[0x21, 0, 10, 0x21, 0, 20]),
        (
            "two Maximum Packet Size",
            &[0x27, 0, 0, 4, 0, 0x27, 0, 0, 4, 0],
        ),
        ("two Topic Alias Maximum", &[0x22, 0, 5, 0x22, 0, 5]),
        ("two Request Problem Information", &[0x17, 1, 0x17, 1]),
        ("two Request Response Information", &[0x19, 0, 0x19, 0]),
        (
            "two Authentication Method",
            &[0x15, 0, 1, b'x', 0x15, 0, 1, b'x'],
        ),
        ("Receive Maximum 0", &[0x21, 0, 0]),
        ("Maximum Packet Size 0", &[0x27, 0, 0, 0, 0]),
        ("Request Problem Information 2", &[0x17, 2]),
        ("Request Response Information 2", &[0x19, 2]),
    ] {
        check_refused(&b, 5, what, &connect_v5(b"dup", pr), &[0x82], &mut fails).await;
    }
    for (what, wp) in [
        (
            "two Will Delay Interval",
            &[0x18, 0, 0, 0, 1, 0x18, 0, 0, 0, 1][..],
        ),
        (
            "two will Message Expiry Interval",
            &[0x02, 0, 0, 0, 9, 0x02, 0, 0, 0, 9],
        ),
    ] {
        let p = connect_payload(5, b"dupw", Some((wp, b"will/t", b"x")), None, None);
        let c = connect_raw(b"MQTT", 5, 0x06, 0, Some(&[]), &p);
        check_refused(&b, 5, what, &c, &[0x82], &mut fails).await;
    }
    let up = [0x26, 0, 1, b'k', 0, 1, b'1', 0x26, 0, 1, b'k', 0, 1, b'2'];
    let (mut c, _) = open_with(&b, &connect_v5(b"ups", &up)).await;
    assert!(alive(&mut c).await);
    assert!(fails.is_empty(), "{fails:#?}");
    b.stop().await;
}

/// §2.2.2.2: an unknown property id, or a property not valid in CONNECT (Topic Alias,
/// Subscription Identifier, Server Keep Alive) is malformed: refused (CONNACK 0x81/0x82 at
/// most, then close) [MQTT-4.13.1-1].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_or_misplaced_connect_properties_are_refused() {
    let b = TestBroker::start().await;
    let mut fails = Vec::new();
    for (what, pr) in [
        ("unknown property 0x7F", &[0x7F, 0][..]),
        ("Topic Alias in CONNECT", &[0x23, 0, 1]),
        ("Subscription Identifier in CONNECT", &[0x0B, 1]),
        ("Server Keep Alive in CONNECT", &[0x13, 0, 10]),
    ] {
        check_refused(&b, 5, what, &connect_v5(b"prop", pr), ERR, &mut fails).await;
    }
    assert!(fails.is_empty(), "{fails:#?}");
    b.stop().await;
}

/// [MQTT-4.7.0-1] the will topic is a topic name: wildcards in it refuse the connection (v5
/// CONNACK 0x81/0x82/0x90 at most; 3.1.1 close); [MQTT-4.7.3-1] an empty will topic too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_topic_must_be_a_valid_topic_name() {
    let b = TestBroker::start().await;
    let mut fails = Vec::new();
    for topic in [&b"will/+"[..], b"will/#", b""] {
        let p = connect_payload(5, b"wt5", Some((&[], topic, b"x")), None, None);
        let c = connect_raw(b"MQTT", 5, 0x06, 0, Some(&[]), &p);
        check_refused(
            &b,
            5,
            &format!("v5 {topic:?}"),
            &c,
            &[0x81, 0x82, 0x90],
            &mut fails,
        )
        .await;
        let p = connect_payload(4, b"wt4", Some((&[], topic, b"x")), None, None);
        let c = connect_raw(b"MQTT", 4, 0x06, 0, None, &p);
        check_refused(&b, 4, &format!("3.1.1 {topic:?}"), &c, &[], &mut fails).await;
    }
    assert!(fails.is_empty(), "{fails:#?}");
    b.stop().await;
}

/// [MQTT-3.1.2-22] (v5) / [MQTT-3.1.2-24] (3.1.1): with keep alive 1 and silence, the broker
/// closes after 1.5 s (not before 1 s, well before 3 s); v5 may send DISCONNECT 0x8D first.
/// [MQTT-3.1.2-21] (v5) it announces no Server Keep Alive, so the client's value is in force.
/// Keep alive 0 turns the mechanism off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_expiry_and_server_keep_alive() {
    let b = TestBroker::start().await;
    let mut payload = Vec::new();
    s(&mut payload, b"ka5");
    let (mut c5, ack) = open_with(&b, &connect_raw(b"MQTT", 5, 0x02, 1, Some(&[]), &payload)).await;
    let (_, _, pr) = parse_connack(&ack);
    assert_eq!(
        prop(&pr, 0x13),
        None,
        "no Server Keep Alive expected: {pr:x?}"
    );
    let (mut c4, _) = open_with(&b, &raw::connect(4, "ka4", 1)).await;
    let mut c0 = open4(&b, "ka0").await;
    let t0 = Instant::now();
    let (r5, r4) = tokio::join!(
        async {
            let r = closed_v5(&mut c5, &[0x8D]).await;
            (r, t0.elapsed())
        },
        async {
            closed_v4(&mut c4).await;
            t0.elapsed()
        }
    );
    for took in [r5.1, r4] {
        assert!(
            took >= Duration::from_millis(1000) && took < Duration::from_millis(3000),
            "closed after {took:?}"
        );
    }
    assert!(alive(&mut c0).await, "keep alive 0 never expires");
    b.stop().await;
}

/// [MQTT-3.1.2-9] with the will flag set, the will properties (v5), will topic and will payload
/// must be in the payload: a CONNECT without them is malformed and refused (v5: CONNACK
/// 0x81/0x82 at most; 3.1.1: no CONNACK), never accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_flag_without_will_fields_is_malformed() {
    let b = TestBroker::start().await;
    let mut fails = Vec::new();
    for level in [5u8, 4] {
        let mut only_id = Vec::new();
        s(&mut only_id, b"wf");
        let mut no_payload = only_id.clone();
        if level == 5 {
            no_payload.push(0);
        }
        s(&mut no_payload, b"will/t");
        let mut cases = vec![
            ("nothing after the client id", only_id),
            ("no will payload", no_payload),
        ];
        if level == 5 {
            let mut props_only = Vec::new();
            s(&mut props_only, b"wf");
            props_only.push(0);
            cases.push(("will properties only", props_only));
        }
        for (what, payload) in cases {
            let pr: Option<&[u8]> = (level == 5).then_some(&[][..]);
            let c = connect_raw(b"MQTT", level, 0x02 | 0x04, 0, pr, &payload);
            let codes = if level == 5 { ERR } else { &[] };
            check_refused(
                &b,
                level,
                &format!("v{level} {what}"),
                &c,
                codes,
                &mut fails,
            )
            .await;
        }
    }
    assert!(fails.is_empty(), "{fails:#?}");
    b.stop().await;
}

/// [MQTT-3.1.3-10] (v5) the will's User Properties reach subscribers in the order the CONNECT
/// gave them (several, with a repeated key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_user_properties_keep_their_order() {
    let b = TestBroker::start().await;
    let mut w = open5(&b, "wup-watch").await;
    assert_eq!(sub5(&mut w, "wup/#", 0).await, 0);
    let pairs: [(&[u8], &[u8]); 4] = [(b"k", b"1"), (b"a", b"2"), (b"k", b"3"), (b"z", b"4")];
    let mut wp = Vec::new();
    for (k, v) in pairs {
        wp.push(0x26);
        s(&mut wp, k);
        s(&mut wp, v);
    }
    let p = connect_payload(5, b"wup", Some((&wp, b"wup/t", b"bye")), None, None);
    let (c, _) = open_with(&b, &connect_raw(b"MQTT", 5, 0x02 | 0x04, 0, Some(&[]), &p)).await;
    drop(c);
    let m = next_pub(&mut w, 5).await;
    assert_eq!(&m.topic[..], b"wup/t");
    let got: Vec<Vec<u8>> = m
        .props
        .iter()
        .filter(|(id, _)| *id == 0x26)
        .map(|(_, v)| v.clone())
        .collect();
    let want: Vec<Vec<u8>> = pairs
        .iter()
        .map(|(k, v)| {
            let mut e = Vec::new();
            s(&mut e, k);
            s(&mut e, v);
            e
        })
        .collect();
    assert_eq!(got, want, "will user properties in order");
    b.stop().await;
}

/// Ill-formed UTF-8 (bytes ff, an encoded surrogate) in CONNECT strings is malformed
/// [MQTT-1.5.4-1] (v5): in a User Property name or value [MQTT-1.5.7-1] (v5) of CONNECT or of the
/// will, in the will topic [MQTT-3.1.3-11] (v5) / [MQTT-3.1.3-10] (3.1.1), in the user name
/// [MQTT-3.1.3-12] (v5) / [MQTT-3.1.3-11] (3.1.1). Each CONNECT is refused (v5: CONNACK
/// 0x81/0x82, or 0x90 for the will topic, at most; 3.1.1: no CONNACK) and no will is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_connect_strings_is_refused() {
    let b = TestBroker::start().await;
    let mut w = open5(&b, "iuc-watch").await;
    assert_eq!(sub5(&mut w, "#", 0).await, 0);
    let mut fails = Vec::new();
    for (bad_what, bad) in [("ff", &b"x\xff"[..]), ("U+D800", b"x\xed\xa0\x80")] {
        let up = |k: &[u8], v: &[u8]| {
            let mut p = vec![0x26];
            s(&mut p, k);
            s(&mut p, v);
            p
        };
        let will = |wp: &[u8], t: &[u8], level| {
            connect_payload(level, b"iuc", Some((wp, t, b"x")), None, None)
        };
        let user = |level| connect_payload(level, b"iuc", None, Some(bad), None);
        // (what, CONNECT properties, flags, payload, accepted CONNACK codes)
        type Case<'a> = (&'a str, Vec<u8>, u8, Vec<u8>, &'a [u8]);
        let v5: [Case; 6] = [
            (
                "user property name",
                up(bad, b"v"),
                0x02,
                connect_payload(5, b"iuc", None, None, None),
                ERR,
            ),
            (
                "user property value",
                up(b"k", bad),
                0x02,
                connect_payload(5, b"iuc", None, None, None),
                ERR,
            ),
            (
                "will user property name",
                vec![],
                0x06,
                will(&up(bad, b"v"), b"iuc/w", 5),
                ERR,
            ),
            (
                "will user property value",
                vec![],
                0x06,
                will(&up(b"k", bad), b"iuc/w", 5),
                ERR,
            ),
            (
                "will topic",
                vec![],
                0x06,
                will(&[], bad, 5),
                &[0x81, 0x82, 0x90],
            ),
            ("user name", vec![], 0x82, user(5), ERR),
        ];
        for (what, pr, flags, payload, codes) in v5 {
            let c = connect_raw(b"MQTT", 5, flags, 0, Some(&pr), &payload);
            let what = format!("v5 {what} {bad_what}");
            check_refused(&b, 5, &what, &c, codes, &mut fails).await;
        }
        for (what, flags, payload) in [
            ("will topic", 0x06, will(&[], bad, 4)),
            ("user name", 0x82, user(4)),
        ] {
            let c = connect_raw(b"MQTT", 4, flags, 0, None, &payload);
            check_refused(
                &b,
                4,
                &format!("3.1.1 {what} {bad_what}"),
                &c,
                &[],
                &mut fails,
            )
            .await;
        }
    }
    if let Some((first, body)) = w.read(QUIET).await {
        fails.push(format!("something was published: {first:#x} {body:x?}"));
    }
    assert!(fails.is_empty(), "{fails:#?}");
    b.stop().await;
}

// =============================================================================================
// 3.2 CONNACK
// =============================================================================================

/// [MQTT-3.1.3-6] [MQTT-3.1.3-7] (v5) [MQTT-3.2.2-16] (v5) an empty client id with clean start
/// gets a new, unique Assigned Client Identifier in CONNACK; [MQTT-3.1.3-6] (3.1.1) 3.1.1 with
/// clean session is accepted, [MQTT-3.1.3-8] (3.1.1) without clean session refused with 0x02.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigned_client_identifier() {
    let b = TestBroker::start().await;
    let (mut ids, mut conns) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        // Both stay connected: the second id must differ from one in use.
        let (c, ack) = open_with(&b, &connect_v5(b"", &[])).await;
        conns.push(c);
        let (_, _, pr) = parse_connack(&ack);
        let id = prop(&pr, 0x12)
            .expect("Assigned Client Identifier")
            .to_vec();
        assert!(!id.is_empty() && std::str::from_utf8(&id).is_ok());
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1], "assigned ids are unique");
    // A client id the client chose gets no Assigned Client Identifier.
    let (_c, ack) = open_with(&b, &connect_v5(b"chosen", &[])).await;
    assert_eq!(prop(&parse_connack(&ack).2, 0x12), None);
    let (mut c, ack) = open_with(&b, &raw::connect(4, "", 0)).await;
    assert_eq!(ack, vec![0, 0]);
    assert!(alive(&mut c).await);
    let mut c = raw::Conn::open(b.mqtt).await;
    c.send(&raw::connect_with(4, "", 0, false, None)).await;
    assert_eq!(refused_v4(&mut c, &[0x02]).await, Some(0x02));
    b.stop().await;
}

/// Session Present: [MQTT-3.2.2-2] (v5) / [MQTT-3.2.2-1] (3.1.1) clean start → 0 even when a
/// session existed; [MQTT-3.2.2-3] (v5) / [MQTT-3.2.2-2] (3.1.1) resumed session → 1;
/// [MQTT-3.2.2-3] (3.1.1) no stored session → 0; [MQTT-3.1.2-4] (v5) / [MQTT-3.1.2-6] (3.1.1)
/// clean start discards the old session (its subscription is gone); [MQTT-3.2.2-1] reserved
/// acknowledge flag bits are 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_present_flag() {
    let b = TestBroker::start().await;
    // 3.1.1
    let (mut c, ack) = open_with(&b, &raw::connect_with(4, "sp4", 0, false, None)).await;
    assert_eq!(ack, vec![0, 0], "no stored session");
    assert_eq!(sub4(&mut c, "sp4/t", 1).await, 1);
    c.send(&[0xE0, 0]).await;
    until_closed(&mut c).await;
    let (mut c, ack) = open_with(&b, &raw::connect_with(4, "sp4", 0, false, None)).await;
    assert_eq!(ack, vec![1, 0], "stored session resumed");
    c.send(&[0xE0, 0]).await;
    until_closed(&mut c).await;
    let (mut c, ack) = open_with(&b, &raw::connect_with(4, "sp4", 0, true, None)).await;
    assert_eq!(ack, vec![0, 0], "clean session");
    c.send(&[0xE0, 0]).await;
    until_closed(&mut c).await;
    let (mut c, ack) = open_with(&b, &raw::connect_with(4, "sp4", 0, false, None)).await;
    assert_eq!(
        ack,
        vec![0, 0],
        "the clean session discarded the stored one"
    );
    // Its subscription is gone too.
    let mut p = open4(&b, "sp4p").await;
    p.send(&publish_v4(b"sp4/t", b"x", 1, false, 1)).await;
    assert_eq!(p.read(WAIT).await.unwrap().0, 0x40);
    assert_eq!(
        c.read(QUIET).await,
        None,
        "no delivery to a discarded subscription"
    );

    // v5 with a session expiry
    let (mut c, ack) = open_with(&b, &raw::connect_v5_expiry("sp5", false, 60)).await;
    assert_eq!(parse_connack(&ack).0, 0);
    c.send(&[0xE0, 0]).await;
    until_closed(&mut c).await;
    let (mut c, ack) = open_with(&b, &raw::connect_v5_expiry("sp5", false, 60)).await;
    assert_eq!(parse_connack(&ack).0, 1, "resumed");
    c.send(&[0xE0, 0]).await;
    until_closed(&mut c).await;
    let (_c, ack) = open_with(&b, &raw::connect_v5_expiry("sp5", true, 60)).await;
    assert_eq!(parse_connack(&ack).0, 0, "clean start");
    b.stop().await;
}

/// CONNACK properties describe the server truthfully: Maximum QoS absent (QoS 2 supported),
/// Retain/Wildcard/Subscription Identifier/Shared Subscription Available absent or 1
/// (§3.2.2.3); [MQTT-3.1.2-28] no Response Information unless requested; [MQTT-3.2.2-1]
/// reserved flag bits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connack_properties_describe_the_server() {
    let b = TestBroker::start().await;
    let (_c, ack) = open_with(&b, &connect_v5(b"props", &[])).await;
    let (flags, _, pr) = parse_connack(&ack);
    assert_eq!(flags, 0);
    assert_eq!(prop(&pr, 0x24), None, "Maximum QoS: {pr:x?}");
    for id in [0x25, 0x28, 0x29, 0x2A] {
        assert!(
            matches!(prop(&pr, id), None | Some([1])),
            "property {id:#x}: {pr:x?}"
        );
    }
    assert_eq!(prop(&pr, 0x1A), None, "Response Information not requested");
    let (_c, ack) = open_with(&b, &connect_v5(b"props0", &[0x19, 0])).await;
    assert_eq!(
        prop(&parse_connack(&ack).2, 0x1A),
        None,
        "Request Response Information 0"
    );
    b.stop().await;
}

/// [MQTT-3.1.2-29] with Request Problem Information 0 the broker sends no Reason String or User
/// Property on anything but PUBLISH, CONNACK and DISCONNECT: a refused PUBACK (0x99) and a
/// failed SUBACK carry none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_problem_information_zero() {
    let b = TestBroker::start().await;
    let (mut c, _) = open_with(&b, &connect_v5(b"rpi", &[0x17, 0])).await;
    c.send(&publish_v5(b"rpi/x", &[0x01, 1], &[0xFF], 1, false, 1))
        .await;
    let (first, body) = c.read(WAIT).await.unwrap();
    assert_eq!((first, body[2]), (0x40, 0x99));
    if body.len() > 3 {
        let (pr, _) = parse_props(&body[3..]);
        assert!(
            prop(&pr, 0x1F).is_none() && prop(&pr, 0x26).is_none(),
            "PUBACK {pr:x?}"
        );
    }
    c.send(&subscribe_raw(3, Some(&[]), &[(b"bad/#/x", 0)]))
        .await;
    let (first, body) = c.read(WAIT).await.unwrap();
    assert_eq!(first, 0x90);
    let (pr, n) = parse_props(&body[2..]);
    assert!(pr.is_empty(), "SUBACK properties {pr:x?}");
    assert!(body[2 + n] >= 0x80, "bad filter refused: {body:x?}");
    b.stop().await;
}

/// The packet read must be of type `first` and at most `max` bytes long: its body, or why not.
fn within(
    what: &str,
    wire: Option<(usize, Vec<u8>)>,
    first: u8,
    max: usize,
    fails: &mut Vec<String>,
) -> Vec<u8> {
    match wire {
        Some((hlen, w)) if w[0] == first => {
            if w.len() > max {
                fails.push(format!("{what}: {} bytes > {max}: {w:x?}", w.len()));
            }
            w[hlen..].to_vec()
        }
        other => {
            fails.push(format!("{what}: want {first:#x}, got {other:x?}"));
            Vec::new()
        }
    }
}

/// No Reason String or User Property that would take a packet past the client's Maximum Packet
/// Size: a refused CONNACK [MQTT-3.2.2-19] [MQTT-3.2.2-20] (v5), a refused PUBACK
/// [MQTT-3.4.2-2] [MQTT-3.4.2-3] and PUBREC [MQTT-3.5.2-2] [MQTT-3.5.2-3], the PUBREL
/// [MQTT-3.6.2-2] [MQTT-3.6.2-3] and PUBCOMP [MQTT-3.7.2-2] [MQTT-3.7.2-3] of QoS 2 flows, a
/// failed SUBACK [MQTT-3.9.2-1] [MQTT-3.9.2-2], an UNSUBACK [MQTT-3.11.2-1] [MQTT-3.11.2-2]
/// and the server's DISCONNECT [MQTT-3.14.2-3] [MQTT-3.14.2-4] all fit in the client's 32
/// bytes. The packets still come, with their reason codes; nothing follows a DISCONNECT
/// [MQTT-3.14.4-1], also when it has no properties (Request Problem Information 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn problem_information_fits_the_client_maximum_packet_size() {
    const MAX: usize = 32;
    let max_prop = [0x27, 0, 0, 0, MAX as u8];
    let b = TestBroker::start().await;
    let mut f = Vec::new();
    // CONNACK refusing a will topic with a wildcard.
    let p = connect_payload(5, b"mps-c", Some((&[], b"mps/+", b"x")), None, None);
    let mut c = raw::Conn::open(b.mqtt).await;
    c.send(&connect_raw(b"MQTT", 5, 0x06, 0, Some(&max_prop), &p))
        .await;
    let body = within(
        "refused CONNACK",
        c.read_wire(WAIT).await,
        0x20,
        MAX,
        &mut f,
    );
    assert!(
        body.get(1).is_some_and(|c| *c >= 0x80),
        "refused: {body:x?}"
    );
    // A subscriber and a publisher, both with the small maximum.
    let (mut sub, _) = open_with(&b, &connect_v5(b"mps-s", &max_prop)).await;
    assert_eq!(sub5(&mut sub, "mps/#", 2).await, 2);
    let (mut c, _) = open_with(&b, &connect_v5(b"mps-p", &max_prop)).await;
    c.send(&publish_v5(b"mps/x", &[0x01, 1], &[0xFF], 1, false, 1))
        .await;
    let body = within("PUBACK", c.read_wire(WAIT).await, 0x40, MAX, &mut f);
    assert_eq!(body.get(2), Some(&0x99), "PUBACK {body:x?}");
    c.send(&publish_v5(b"mps/x", &[0x01, 1], &[0xFF], 2, false, 2))
        .await;
    let body = within("PUBREC", c.read_wire(WAIT).await, 0x50, MAX, &mut f);
    assert_eq!(body.get(2), Some(&0x99), "PUBREC {body:x?}");
    c.send(&raw::packet(0x62, &[0, 9])).await;
    let body = within("PUBCOMP", c.read_wire(WAIT).await, 0x70, MAX, &mut f);
    assert_eq!(body.get(..2), Some(&[0u8, 9][..]), "PUBCOMP {body:x?}");
    c.send(&publish_v5(b"mps/x", &[], b"q2", 2, false, 3)).await;
    within("PUBREC", c.read_wire(WAIT).await, 0x50, MAX, &mut f);
    c.send(&raw::packet(0x62, &[0, 3])).await;
    within("PUBCOMP", c.read_wire(WAIT).await, 0x70, MAX, &mut f);
    let m = next_pub(&mut sub, 5).await;
    sub.send(&raw::packet(0x50, &m.pkid.to_be_bytes())).await;
    within("PUBREL", sub.read_wire(WAIT).await, 0x62, MAX, &mut f);
    sub.send(&raw::packet(0x70, &m.pkid.to_be_bytes())).await;
    c.send(&subscribe_raw(4, Some(&[]), &[(b"mps/#/bad", 1)]))
        .await;
    let body = within("SUBACK", c.read_wire(WAIT).await, 0x90, MAX, &mut f);
    assert!(body.last().is_some_and(|c| *c >= 0x80), "SUBACK {body:x?}");
    c.send(&unsubscribe_raw(5, true, &[b"mps/none"])).await;
    within("UNSUBACK", c.read_wire(WAIT).await, 0xB0, MAX, &mut f);
    // Topic alias 0: DISCONNECT 0x94.
    c.send(&publish_v5(b"mps/x", &[0x23, 0, 0], b"x", 0, false, 0))
        .await;
    let body = within("DISCONNECT", c.read_wire(WAIT).await, 0xE0, MAX, &mut f);
    assert_eq!(body.first(), Some(&0x94), "DISCONNECT {body:x?} {f:?}");
    assert_eq!(
        c.rest(WAIT).await,
        Vec::<u8>::new(),
        "nothing after DISCONNECT"
    );
    // Without problem information the DISCONNECT carries its reason code alone.
    let (mut c, _) = open_with(&b, &connect_v5(b"mps-0", &[0x17, 0])).await;
    c.send(&publish_v5(b"mps/x", &[0x23, 0, 0], b"x", 0, false, 0))
        .await;
    let body = within("DISCONNECT", c.read_wire(WAIT).await, 0xE0, MAX, &mut f);
    assert_eq!(body.first(), Some(&0x94), "DISCONNECT {body:x?}");
    assert_eq!(
        c.rest(WAIT).await,
        Vec::<u8>::new(),
        "nothing after DISCONNECT"
    );
    assert!(f.is_empty(), "{f:#?}");
    b.stop().await;
}

// =============================================================================================
// 3.3 PUBLISH, 3.4–3.7 PUBACK, PUBREC, PUBREL, PUBCOMP
// =============================================================================================

/// [MQTT-3.3.1-4] a PUBLISH with QoS 3 is malformed: closed (v5: DISCONNECT 0x81/0x82 at most).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_qos_3_closes() {
    let b = TestBroker::start().await;
    let mut c = open5(&b, "q3v5").await;
    c.send(&publish_v5(b"q3/x", &[], b"x", 3, false, 1)).await;
    closed_v5(&mut c, ERR).await;
    let mut c = open4(&b, "q3v4").await;
    c.send(&publish_v4(b"q3/x", b"x", 3, false, 1)).await;
    closed_v4(&mut c).await;
    b.stop().await;
}

/// Runs each (what, v5 packet, 3.1.1 packet) on fresh connections and collects every case that
/// does not end in a close (v5: after at most DISCONNECT 0x81/0x82; 3.1.1: with nothing sent).
async fn check_closes(b: &TestBroker, cases: Vec<(&str, Vec<u8>, Vec<u8>)>) -> Vec<String> {
    let mut fails = Vec::new();
    for (what, p5, p4) in cases {
        let mut c = open5(b, "closes5").await;
        c.send(&p5).await;
        if let Err(e) = try_closed_v5(&mut c, ERR).await {
            fails.push(format!("v5 {what}: {e}"));
        }
        let mut c = open4(b, "closes4").await;
        c.send(&p4).await;
        match try_until_closed(&mut c).await {
            Ok(got) if got.is_empty() => {}
            Ok(got) => fails.push(format!("3.1.1 {what}: sent {got:x?} before closing")),
            Err(e) => fails.push(format!("3.1.1 {what}: {e}")),
        }
    }
    fails
}

/// [MQTT-2.2.1-3] (v5) / [MQTT-2.3.1-1] (3.1.1) a PUBLISH with QoS > 0 needs a non-zero packet
/// identifier: packet id 0 is a protocol error and closes the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_packet_id_zero_closes() {
    let b = TestBroker::start().await;
    let fails = check_closes(
        &b,
        vec![
            (
                "PUBLISH QoS 1",
                publish_v5(b"p0/x", &[], b"x", 1, false, 0),
                publish_v4(b"p0/x", b"x", 1, false, 0),
            ),
            (
                "PUBLISH QoS 2",
                publish_v5(b"p0/x", &[], b"x", 2, false, 0),
                publish_v4(b"p0/x", b"x", 2, false, 0),
            ),
        ],
    )
    .await;
    assert!(fails.is_empty(), "{fails:#?}");
    b.stop().await;
}

/// [MQTT-2.2.1-3] (v5) / [MQTT-2.3.1-1] (3.1.1) SUBSCRIBE and UNSUBSCRIBE need a non-zero packet
/// identifier: packet id 0 is a protocol error and closes the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_packet_id_zero_closes() {
    let b = TestBroker::start().await;
    let fails = check_closes(
        &b,
        vec![
            (
                "SUBSCRIBE",
                subscribe_raw(0, Some(&[]), &[(b"p0/x", 0)]),
                subscribe_raw(0, None, &[(b"p0/x", 0)]),
            ),
            (
                "UNSUBSCRIBE",
                unsubscribe_raw(0, true, &[b"p0/x"]),
                unsubscribe_raw(0, false, &[b"p0/x"]),
            ),
        ],
    )
    .await;
    assert!(fails.is_empty(), "{fails:#?}");
    b.stop().await;
}

/// Topic names in PUBLISH: [MQTT-3.3.2-2] [MQTT-4.7.0-1] no wildcards, [MQTT-4.7.3-1] at least
/// one character (v5: unless a Topic Alias is given), [MQTT-4.7.3-2] no U+0000,
/// [MQTT-3.3.2-1] [MQTT-1.5.4-1] (v5) [MQTT-1.5.3-1] (3.1.1) well-formed UTF-8. 3.1.1
/// publishers are closed with nothing sent; nothing is routed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_topic_names_close_v311() {
    let b = TestBroker::start().await;
    let mut watch = open4(&b, "watch").await;
    assert_eq!(sub4(&mut watch, "#", 0).await, 0);
    for (i, topic) in [
        &b"t/+"[..],
        b"t/#",
        b"+",
        b"",
        b"t/\0",
        b"t/\xff",
        b"t/\xed\xa0\x80",
    ]
    .into_iter()
    .enumerate()
    {
        let mut c = open4(&b, &format!("bad{i}")).await;
        c.send(&publish_v4(topic, b"x", 0, false, 0)).await;
        closed_v4(&mut c).await;
    }
    assert_eq!(watch.read(QUIET).await, None, "nothing routed");
    b.stop().await;
}

/// v5: a zero-length topic name without a Topic Alias is a protocol error (§3.3.2.1,
/// [MQTT-4.7.3-1]): DISCONNECT 0x82 at most, then close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_topic_without_alias_is_a_protocol_error_v5() {
    let b = TestBroker::start().await;
    let mut c = open5(&b, "empty").await;
    c.send(&publish_v5(b"", &[], b"x", 1, false, 1)).await;
    closed_v5(&mut c, &[0x82]).await;
    b.stop().await;
}

/// [MQTT-3.3.4-6] a PUBLISH from a client must not carry a Subscription Identifier: protocol
/// error (DISCONNECT 0x82 at most, then close).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_publish_with_subscription_identifier_is_a_protocol_error() {
    let b = TestBroker::start().await;
    let mut c = open5(&b, "subid").await;
    c.send(&publish_v5(b"si/x", &[0x0B, 5], b"x", 1, false, 1))
        .await;
    closed_v5(&mut c, &[0x82]).await;
    b.stop().await;
}

/// §3.3.2.3: a single-occurrence PUBLISH property (Message Expiry Interval, Content Type,
/// Topic Alias) given twice is a protocol error (DISCONNECT 0x82 at most, then close); User
/// Property may repeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_publish_properties_are_a_protocol_error() {
    let b = TestBroker::start().await;
    for pr in [
        &[0x02, 0, 0, 0, 9, 0x02, 0, 0, 0, 9][..],
        &[0x03, 0, 1, b'a', 0x03, 0, 1, b'b'],
        &[0x23, 0, 1, 0x23, 0, 1],
    ] {
        let mut c = open5(&b, "pdup").await;
        c.send(&publish_v5(b"pd/x", pr, b"x", 1, false, 1)).await;
        closed_v5(&mut c, &[0x82]).await;
    }
    let mut c = open5(&b, "pdup").await;
    let up = [0x26, 0, 1, b'k', 0, 1, b'1', 0x26, 0, 1, b'k', 0, 1, b'2'];
    c.send(&publish_v5(b"pd/x", &up, b"x", 1, false, 1)).await;
    assert_eq!(c.read(WAIT).await.map(|(first, _)| first), Some(0x40));
    b.stop().await;
}

/// [MQTT-3.3.2-3] the delivered topic name is the published one, not the filter;
/// [MQTT-3.3.1-3] the outgoing DUP flag is set independently of the incoming one (a DUP=1
/// publish is delivered with DUP 0 the first time); [MQTT-3.3.1-2] QoS 0 deliveries have DUP 0;
/// [MQTT-2.2.1-4] (v5) the broker's QoS 1 deliveries carry a non-zero packet id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_topic_name_and_dup_flag() {
    let b = TestBroker::start().await;
    let mut s = open5(&b, "dup-s").await;
    assert_eq!(sub5(&mut s, "dup/+/x", 1).await, 1);
    let mut p = open5(&b, "dup-p").await;
    let mut pkt = publish_v5(b"dup/a/x", &[], b"one", 1, false, 9);
    pkt[0] |= 0x08; // DUP
    p.send(&pkt).await;
    assert_eq!(p.read(WAIT).await.unwrap().0, 0x40);
    let m = next_pub(&mut s, 5).await;
    assert_eq!((&m.topic[..], m.qos, m.dup), (&b"dup/a/x"[..], 1, false));
    assert_ne!(m.pkid, 0);
    s.send(&raw::packet(0x40, &m.pkid.to_be_bytes())).await;
    p.send(&publish_v5(b"dup/b/x", &[], b"two", 0, false, 0))
        .await;
    let m = next_pub(&mut s, 5).await;
    assert_eq!((&m.topic[..], m.qos, m.dup), (&b"dup/b/x"[..], 0, false));
    b.stop().await;
}

/// QoS 1 from a client: [MQTT-4.3.2-4] (v5) / [MQTT-4.3.2-2] (3.1.1) PUBACK with the same
/// packet id [MQTT-2.2.1-5] (v5); after the PUBACK a PUBLISH reusing the id is a new
/// publication [MQTT-4.3.2-5] (v5) (delivered again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_flow_from_the_client() {
    let b = TestBroker::start().await;
    let mut s = open4(&b, "q1s").await;
    assert_eq!(sub4(&mut s, "q1/x", 0).await, 0);
    for level in [5u8, 4] {
        let mut p = if level == 5 {
            open5(&b, "q1p5").await
        } else {
            open4(&b, "q1p4").await
        };
        for n in 0..2u8 {
            let pkt = if level == 5 {
                publish_v5(b"q1/x", &[], &[n], 1, false, 0x1234)
            } else {
                publish_v4(b"q1/x", &[n], 1, false, 0x1234)
            };
            p.send(&pkt).await;
            let (first, body) = p.read(WAIT).await.unwrap();
            assert_eq!(
                (first, &body[..2]),
                (0x40, &[0x12u8, 0x34][..]),
                "PUBACK, same id"
            );
            assert_eq!(
                next_pub(&mut s, 4).await.payload,
                vec![n],
                "each is a new publication"
            );
        }
    }
    b.stop().await;
}

/// QoS 2 from a client: [MQTT-4.3.3-8] (v5) PUBREC with the same packet id; [MQTT-4.3.3-9]
/// (v5) / [MQTT-4.3.3-2] (3.1.1) a resend before PUBREL is acknowledged with PUBREC again and
/// not delivered twice; [MQTT-4.3.3-10] (v5) PUBREL is answered with PUBCOMP with the same id;
/// [MQTT-4.3.3-11] (v5) after PUBCOMP the id starts a new publication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_flow_from_the_client() {
    let b = TestBroker::start().await;
    let mut s = open4(&b, "q2s").await;
    assert_eq!(sub4(&mut s, "q2/x", 0).await, 0);
    for level in [5u8, 4] {
        let mut p = if level == 5 {
            open5(&b, "q2p5").await
        } else {
            open4(&b, "q2p4").await
        };
        for n in 0..2u8 {
            let mut pkt = if level == 5 {
                publish_v5(b"q2/x", &[], &[n], 2, false, 77)
            } else {
                publish_v4(b"q2/x", &[n], 2, false, 77)
            };
            p.send(&pkt).await;
            let (first, body) = p.read(WAIT).await.unwrap();
            assert_eq!((first, &body[..2]), (0x50, &[0u8, 77][..]), "PUBREC");
            pkt[0] |= 0x08;
            p.send(&pkt).await;
            let (first, body) = p.read(WAIT).await.unwrap();
            assert_eq!(
                (first, &body[..2]),
                (0x50, &[0u8, 77][..]),
                "PUBREC for the resend"
            );
            p.send(&raw::packet(0x62, &[0, 77])).await;
            let (first, body) = p.read(WAIT).await.unwrap();
            assert_eq!((first, &body[..2]), (0x70, &[0u8, 77][..]), "PUBCOMP");
            assert_eq!(next_pub(&mut s, 4).await.payload, vec![n]);
            assert_eq!(
                s.read(QUIET).await,
                None,
                "delivered once (level {level}, {n})"
            );
        }
    }
    b.stop().await;
}

/// A PUBREL for an unknown packet id is still answered with PUBCOMP (v5 reason 0x92 Packet
/// Identifier not found or 0x00, §3.7.2.1; 3.1.1 [MQTT-4.3.3-2]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubrel_for_an_unknown_packet_id_gets_pubcomp() {
    let b = TestBroker::start().await;
    let mut c = open5(&b, "rel5").await;
    c.send(&raw::packet(0x62, &[0, 42])).await;
    let (first, body) = c.read(WAIT).await.unwrap();
    assert_eq!((first, &body[..2]), (0x70, &[0u8, 42][..]));
    assert!(
        body.len() == 2 || body[2] == 0x92 || body[2] == 0,
        "{body:x?}"
    );
    let mut c = open4(&b, "rel4").await;
    c.send(&raw::packet(0x62, &[0, 42])).await;
    assert_eq!(c.read(WAIT).await.unwrap(), (0x70, vec![0, 42]));
    b.stop().await;
}

/// [MQTT-3.6.1-1] PUBREL fixed header flags must be 0010: 0x60 closes (v5 DISCONNECT 0x81/0x82
/// at most).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubrel_with_wrong_flags_closes() {
    let b = TestBroker::start().await;
    let mut c = open5(&b, "relf5").await;
    c.send(&publish_v5(b"rf/x", &[], b"x", 2, false, 5)).await;
    assert_eq!(c.read(WAIT).await.unwrap().0, 0x50);
    c.send(&raw::packet(0x60, &[0, 5])).await;
    closed_v5(&mut c, ERR).await;
    let mut c = open4(&b, "relf4").await;
    c.send(&publish_v4(b"rf/x", b"x", 2, false, 5)).await;
    assert_eq!(c.read(WAIT).await.unwrap().0, 0x50);
    c.send(&raw::packet(0x60, &[0, 5])).await;
    closed_v4(&mut c).await;
    b.stop().await;
}

/// [MQTT-2.1.3-1] (v5) / [MQTT-2.2.2-1] [MQTT-2.2.2-2] (3.1.1) reserved fixed header flags of
/// PUBACK, PUBREC, PUBCOMP, PINGREQ and DISCONNECT set: malformed, the connection is closed;
/// [MQTT-3.14.1-1] DISCONNECT flags, [MQTT-3.15.1-1] AUTH flags (v5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_reserved_fixed_header_flags_close() {
    let b = TestBroker::start().await;
    let mut fails = Vec::new();
    let cases: [(&str, Vec<u8>); 6] = [
        ("PUBACK 0x41", vec![0x41, 2, 0, 1]),
        ("PUBREC 0x51", vec![0x51, 2, 0, 1]),
        ("PUBCOMP 0x71", vec![0x71, 2, 0, 1]),
        ("PINGREQ 0xC1", vec![0xC1, 0]),
        ("DISCONNECT 0xE1", vec![0xE1, 0]),
        ("AUTH 0xF1", vec![0xF1, 0]),
    ];
    for (what, pkt) in cases {
        let mut c = open5(&b, "flags5").await;
        c.send(&pkt).await;
        if let Err(e) = try_closed_v5(&mut c, ERR).await {
            fails.push(format!("v5 {what}: {e}"));
        }
        if what.starts_with("AUTH") {
            continue;
        }
        let mut c = open4(&b, "flags4").await;
        c.send(&pkt).await;
        match try_until_closed(&mut c).await {
            Ok(got) if got.is_empty() => {}
            Ok(got) => fails.push(format!("3.1.1 {what}: sent {got:x?}")),
            Err(e) => fails.push(format!("3.1.1 {what}: {e}")),
        }
    }
    assert!(fails.is_empty(), "{fails:#?}");
    b.stop().await;
}

/// [MQTT-3.3.2-7] topic aliases belong to one network connection: an alias set on one
/// connection is unknown on the next one of the same session (protocol error 0x82).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_aliases_do_not_survive_the_connection() {
    let b = TestBroker::start().await;
    let (mut c, _) = open_with(&b, &raw::connect_v5_expiry("alias-s", false, 60)).await;
    c.send(&publish_v5(b"al/x", &[0x23, 0, 3], b"x", 1, false, 1))
        .await;
    assert_eq!(c.read(WAIT).await.unwrap().0, 0x40);
    c.send(&[0xE0, 0]).await;
    until_closed(&mut c).await;
    let (mut c, ack) = open_with(&b, &raw::connect_v5_expiry("alias-s", false, 60)).await;
    assert_eq!(parse_connack(&ack).0, 1);
    c.send(&publish_v5(b"", &[0x23, 0, 3], b"x", 1, false, 2))
        .await;
    closed_v5(&mut c, &[0x82]).await;
    b.stop().await;
}

/// [MQTT-3.1.2-27] [MQTT-3.3.2-11] (v5) the broker sends no Topic Alias to a client that
/// announced no Topic Alias Maximum; [MQTT-3.1.2-26] none above a client's maximum (here 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_topic_aliases_towards_clients_beyond_their_maximum() {
    let b = TestBroker::start().await;
    let mut s0 = open5(&b, "ta0").await;
    assert_eq!(sub5(&mut s0, "ta/#", 0).await, 0);
    let (mut s2, _) = open_with(&b, &connect_v5(b"ta2", &[0x22, 0, 2])).await;
    assert_eq!(sub5(&mut s2, "ta/#", 0).await, 0);
    let mut p = open5(&b, "tap").await;
    for i in 0..5u8 {
        p.send(&publish_v5(
            format!("ta/{i}").as_bytes(),
            &[],
            b"x",
            0,
            false,
            0,
        ))
        .await;
        let m = next_pub(&mut s0, 5).await;
        assert_eq!(prop(&m.props, 0x23), None, "no alias without a maximum");
        let m = next_pub(&mut s2, 5).await;
        if let Some(a) = prop(&m.props, 0x23) {
            let a = u16::from_be_bytes([a[0], a[1]]);
            assert!(
                (1..=2).contains(&a),
                "alias {a} beyond the client's maximum 2"
            );
        }
    }
    b.stop().await;
}

/// [MQTT-3.3.4-4] [MQTT-3.3.4-5] (v5) a message matching two subscriptions with identifiers:
/// one copy carries both identifiers, or each copy carries its subscription's identifier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_subscriptions_carry_every_subscription_identifier() {
    let b = TestBroker::start().await;
    let mut s = open5(&b, "ovl").await;
    for (id, f) in [(1u8, &b"ov/+"[..]), (2, b"ov/#")] {
        s.send(&subscribe_raw(id as u16, Some(&[0x0B, id]), &[(f, 1)]))
            .await;
        assert_eq!(s.read(WAIT).await.unwrap().0, 0x90);
    }
    let mut p = open5(&b, "ovp").await;
    p.send(&publish_v5(b"ov/x", &[], b"x", 0, false, 0)).await;
    let mut ids = Vec::new();
    while let Some((first, body)) = s.read(QUIET).await {
        let m = parse_publish(5, first, &body);
        let mine: Vec<u8> = m
            .props
            .iter()
            .filter(|(i, _)| *i == 0x0B)
            .map(|(_, v)| v[0])
            .collect();
        assert!(!mine.is_empty(), "each copy has an identifier: {m:?}");
        ids.extend(mine);
    }
    ids.sort();
    assert_eq!(ids, vec![1, 2], "identifiers of both subscriptions");
    b.stop().await;
}

/// [MQTT-3.3.5-1] (3.1.1) overlapping subscriptions at QoS 0 and 1: the message reaches the
/// client at least once at the maximum QoS of the matching subscriptions (1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_subscriptions_respect_the_maximum_qos_v311() {
    let b = TestBroker::start().await;
    let mut s = open4(&b, "ovl4").await;
    assert_eq!(sub4(&mut s, "ov4/+", 0).await, 0);
    assert_eq!(sub4(&mut s, "ov4/#", 1).await, 1);
    let mut p = open4(&b, "ovp4").await;
    p.send(&publish_v4(b"ov4/x", b"x", 1, false, 1)).await;
    assert_eq!(p.read(WAIT).await.unwrap().0, 0x40);
    let mut qos = Vec::new();
    while let Some((first, body)) = s.read(QUIET).await {
        let m = parse_publish(4, first, &body);
        if m.qos == 1 {
            s.send(&raw::packet(0x40, &m.pkid.to_be_bytes())).await;
        }
        qos.push(m.qos);
    }
    assert!(qos.contains(&1), "delivered at QoS 1: {qos:?}");
    b.stop().await;
}

/// [MQTT-4.6.0-5] (v5) / [MQTT-4.6.0-6] (3.1.1) messages from one client on one topic reach a
/// subscriber in publish order (QoS 0, 1 and 2 alike, 50 each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_keep_their_order() {
    let b = TestBroker::start().await;
    let mut s = open5(&b, "ord-s").await;
    assert_eq!(sub5(&mut s, "ord/#", 2).await, 2);
    let mut p = open5(&b, "ord-p").await;
    for qos in 0..=2u8 {
        let topic = format!("ord/{qos}");
        for i in 0..50u16 {
            p.send(&publish_v5(
                topic.as_bytes(),
                &[],
                &i.to_be_bytes(),
                qos,
                false,
                i + 1,
            ))
            .await;
        }
        let mut got = Vec::new();
        while got.len() < 50 {
            let (first, body) = s.read(WAIT).await.expect("delivery");
            match first & 0xF0 {
                0x30 => {
                    let m = parse_publish(5, first, &body);
                    match m.qos {
                        1 => s.send(&raw::packet(0x40, &m.pkid.to_be_bytes())).await,
                        2 => s.send(&raw::packet(0x50, &m.pkid.to_be_bytes())).await,
                        _ => {}
                    }
                    got.push(u16::from_be_bytes([m.payload[0], m.payload[1]]));
                }
                0x60 => s.send(&raw::packet(0x70, &body[..2])).await,
                _ => {}
            }
        }
        assert_eq!(got, (0..50).collect::<Vec<u16>>(), "QoS {qos}");
        // Publisher side: acknowledge its QoS 2 flow.
        loop {
            match p.read(QUIET).await {
                Some((0x50, body)) => p.send(&raw::packet(0x62, &body[..2])).await,
                Some(_) => {}
                None => break,
            }
        }
    }
    b.stop().await;
}

/// Ill-formed UTF-8 in PUBLISH properties is malformed [MQTT-1.5.4-1] (v5): a User Property
/// name or value [MQTT-1.5.7-1] (v5), the Content Type [MQTT-3.3.2-19] (v5), the Response Topic
/// [MQTT-3.3.2-13] (v5). The publisher is closed (DISCONNECT 0x81/0x82 at most) and nothing is
/// routed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_publish_properties_closes() {
    let b = TestBroker::start().await;
    let mut w = open5(&b, "iup-watch").await;
    assert_eq!(sub5(&mut w, "#", 0).await, 0);
    let mut fails = Vec::new();
    for bad in [&b"x\xff"[..], b"x\xed\xa0\x80"] {
        let mut name = vec![0x26];
        s(&mut name, bad);
        s(&mut name, b"v");
        let mut value = vec![0x26];
        s(&mut value, b"k");
        s(&mut value, bad);
        let mut ct = vec![0x03];
        s(&mut ct, bad);
        let mut rt = vec![0x08];
        s(&mut rt, bad);
        for (what, pr) in [
            ("user property name", name),
            ("user property value", value),
            ("content type", ct),
            ("response topic", rt),
        ] {
            for qos in [0u8, 1] {
                let mut c = open5(&b, "iup").await;
                c.send(&publish_v5(b"iup/x", &pr, b"x", qos, false, 1))
                    .await;
                if let Err(e) = try_closed_v5(&mut c, ERR).await {
                    fails.push(format!("{what} {bad:x?} QoS {qos}: {e}"));
                }
            }
        }
    }
    if let Some((first, body)) = w.read(QUIET).await {
        fails.push(format!("routed: {first:#x} {body:x?}"));
    }
    assert!(fails.is_empty(), "{fails:#?}");
    b.stop().await;
}

/// [MQTT-3.3.2-14] (v5) a Response Topic must not contain wildcards. The broker forwards it
/// unaltered [MQTT-3.3.2-15], so it can only refuse a PUBLISH or will carrying one: the
/// publisher is closed (DISCONNECT 0x82 at most), the CONNECT refused (CONNACK 0x82 at most),
/// and no subscriber ever gets such a Response Topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_topic_with_wildcards_is_refused() {
    let b = TestBroker::start().await;
    let mut w = open5(&b, "rtw-watch").await;
    assert_eq!(sub5(&mut w, "rtw/#", 0).await, 0);
    let mut fails = Vec::new();
    for rt in [&b"reply/+"[..], b"reply/#", b"#"] {
        let mut pr = vec![0x08];
        s(&mut pr, rt);
        let mut c = open5(&b, "rtw").await;
        c.send(&publish_v5(b"rtw/x", &pr, b"x", 1, false, 1)).await;
        if let Err(e) = try_closed_v5(&mut c, &[0x82]).await {
            fails.push(format!("PUBLISH {rt:?}: {e}"));
        }
        let p = connect_payload(5, b"rtw-will", Some((&pr, b"rtw/will", b"x")), None, None);
        let connect = connect_raw(b"MQTT", 5, 0x06, 0, Some(&[]), &p);
        let mut c = raw::Conn::open(b.mqtt).await;
        c.send(&connect).await;
        match c.read(WAIT).await {
            Some((0x20, body)) if body.get(1) == Some(&0x82) => {}
            Some((0x20, body)) if body.get(1) == Some(&0) => {
                fails.push(format!("will {rt:?} accepted"));
                drop(c);
            }
            other => fails.push(format!("will {rt:?}: {other:x?}")),
        }
    }
    // A well-formed Response Topic still goes through.
    let mut pr = vec![0x08];
    s(&mut pr, b"reply/ok");
    let mut c = open5(&b, "rtw-ok").await;
    c.send(&publish_v5(b"rtw/ok", &pr, b"x", 1, false, 1)).await;
    assert_eq!(c.read(WAIT).await.map(|(f, _)| f), Some(0x40));
    let m = next_pub(&mut w, 5).await;
    assert_eq!(prop(&m.props, 0x08), Some(&b"reply/ok"[..]));
    if let Some((first, body)) = w.read(QUIET).await {
        fails.push(format!("delivered: {first:#x} {body:x?}"));
    }
    assert!(fails.is_empty(), "{fails:#?}");
    b.stop().await;
}

/// [MQTT-3.3.4-10] [MQTT-4.9.0-3] (v5) with the client's Receive Maximum (1) used up by an
/// unacknowledged delivery, the broker still answers PINGREQ, SUBSCRIBE, UNSUBSCRIBE and the
/// client's own QoS 1/2 publishes at once; the held delivery follows the client's PUBACK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_packets_are_answered_while_the_send_quota_is_zero() {
    let b = TestBroker::start().await;
    let (mut s, _) = open_with(&b, &connect_v5(b"rmz", &[0x21, 0, 1])).await;
    assert_eq!(sub5(&mut s, "rmz/#", 1).await, 1);
    let mut p = open5(&b, "rmz-p").await;
    for i in 1..=2u16 {
        p.send(&publish_v5(b"rmz/x", &[], &i.to_be_bytes(), 1, false, i))
            .await;
        assert_eq!(p.read(WAIT).await.map(|(f, _)| f), Some(0x40));
    }
    let first = next_pub(&mut s, 5).await;
    assert_eq!(first.payload, 1u16.to_be_bytes());
    assert_eq!(s.read(QUIET).await, None, "the second waits for the quota");
    assert!(alive(&mut s).await, "PINGRESP while the quota is zero");
    assert_eq!(
        sub5(&mut s, "rmz2/x", 1).await,
        1,
        "SUBACK while the quota is zero"
    );
    s.send(&unsubscribe_raw(8, true, &[b"rmz2/x"])).await;
    let (f, body) = s.read(WAIT).await.expect("UNSUBACK");
    assert_eq!((f, &body[..2]), (0xB0, &[0u8, 8][..]));
    s.send(&publish_v5(b"rmz-own/x", &[], b"x", 1, false, 30))
        .await;
    assert_eq!(s.read(WAIT).await, Some((0x40, vec![0, 30])), "PUBACK");
    s.send(&publish_v5(b"rmz-own/x", &[], b"x", 2, false, 31))
        .await;
    assert_eq!(s.read(WAIT).await, Some((0x50, vec![0, 31])), "PUBREC");
    s.send(&raw::packet(0x62, &[0, 31])).await;
    assert_eq!(s.read(WAIT).await, Some((0x70, vec![0, 31])), "PUBCOMP");
    s.send(&raw::packet(0x40, &first.pkid.to_be_bytes())).await;
    let second = next_pub(&mut s, 5).await;
    assert_eq!(second.payload, 2u16.to_be_bytes());
    b.stop().await;
}

// =============================================================================================
// 3.8–3.9 SUBSCRIBE, SUBACK
// =============================================================================================

/// [MQTT-3.8.1-1] SUBSCRIBE fixed header flags must be 0010: 0x80 and 0x83 close the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_with_wrong_flags_closes() {
    let b = TestBroker::start().await;
    let mut cases = Vec::new();
    for byte1 in [0x80u8, 0x83] {
        let mut p5 = subscribe_raw(1, Some(&[]), &[(b"sf/x", 0)]);
        let mut p4 = subscribe_raw(1, None, &[(b"sf/x", 0)]);
        p5[0] = byte1;
        p4[0] = byte1;
        cases.push((if byte1 == 0x80 { "0x80" } else { "0x83" }, p5, p4));
    }
    let fails = check_closes(&b, cases).await;
    assert!(fails.is_empty(), "{fails:#?}");
    b.stop().await;
}

/// [MQTT-3.8.3-2] (v5) / [MQTT-3.8.3-3] (3.1.1) a SUBSCRIBE without any topic filter is a
/// protocol error: closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_without_filters_closes() {
    let b = TestBroker::start().await;
    let fails = check_closes(
        &b,
        vec![(
            "no filters",
            subscribe_raw(1, Some(&[]), &[]),
            subscribe_raw(1, None, &[]),
        )],
    )
    .await;
    assert!(fails.is_empty(), "{fails:#?}");
    b.stop().await;
}

/// [MQTT-3.8.3-5] (v5) reserved bits 6–7 of the subscription options; [MQTT-3.8.3-4] (3.1.1)
/// reserved bits 2–7 of the requested QoS byte: malformed, the connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_subscription_option_bits_close() {
    let b = TestBroker::start().await;
    let mut cases = Vec::new();
    for (what, o5, o4) in [
        ("bit 6", 0x40u8, 0x40u8),
        ("bit 7", 0x80, 0x80),
        ("bit 2 (3.1.1; v5 repeats bit 6)", 0x40, 0x04),
    ] {
        cases.push((
            what,
            subscribe_raw(1, Some(&[]), &[(b"so/x", o5)]),
            subscribe_raw(1, None, &[(b"so/x", o4)]),
        ));
    }
    let fails = check_closes(&b, cases).await;
    assert!(fails.is_empty(), "{fails:#?}");
    b.stop().await;
}

/// §3.8.3.1: Maximum QoS 3 and Retain Handling 3 are protocol errors (v5); [MQTT-3.8.3-4]
/// (3.1.1) requested QoS 3 is malformed: the connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_qos_3_and_retain_handling_3_close() {
    let b = TestBroker::start().await;
    let mut cases = Vec::new();
    for (what, o5) in [("QoS 3", 0x03u8), ("retain handling 3", 0x30)] {
        cases.push((
            what,
            subscribe_raw(1, Some(&[]), &[(b"so/x", o5)]),
            subscribe_raw(1, None, &[(b"so/x", 3)]),
        ));
    }
    let fails = check_closes(&b, cases).await;
    assert!(fails.is_empty(), "{fails:#?}");
    b.stop().await;
}

/// [MQTT-3.8.3-4] (v5) No Local on a shared subscription is a protocol error: closed
/// (DISCONNECT 0x82 at most).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_local_on_a_shared_subscription_closes() {
    let b = TestBroker::start().await;
    let mut c = open5(&b, "nlshare").await;
    c.send(&subscribe_raw(1, Some(&[]), &[(b"$share/g/x", 0x04 | 1)]))
        .await;
    closed_v5(&mut c, &[0x82]).await;
    b.stop().await;
}

/// §3.8.2.1.2: a Subscription Identifier of 0 is a protocol error: closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_identifier_zero_closes() {
    let b = TestBroker::start().await;
    let mut c = open5(&b, "subid0").await;
    c.send(&subscribe_raw(1, Some(&[0x0B, 0]), &[(b"x/y", 1)]))
        .await;
    closed_v5(&mut c, ERR).await;
    b.stop().await;
}

/// Invalid topic filters: [MQTT-4.7.1-1] `#` not alone or not last, [MQTT-4.7.1-2] `+` not a
/// whole level, [MQTT-4.7.3-1] empty filter, [MQTT-4.7.3-2] U+0000, [MQTT-4.8.2-1]
/// [MQTT-4.8.2-2] (v5) `$share` without a share name or filter, or with `+`/`#` in the name:
/// a failure code in SUBACK (v5 ≥ 0x80, 3.1.1 0x80) or a close — never a grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_topic_filters_are_not_granted() {
    let b = TestBroker::start().await;
    let mut fails = Vec::new();
    for f in [
        &b"a/#/b"[..],
        b"a#",
        b"#/",
        b"a/b#",
        b"a+",
        b"a/+b",
        b"+a/b",
        b"",
        b"a/\0",
        b"$share/g",
        b"$share/g/",
        b"$share//x",
        b"$share/a+b/x",
        b"$share/a#/x",
    ] {
        for level in [5u8, 4] {
            let mut c = if level == 5 {
                open5(&b, "bf5").await
            } else {
                open4(&b, "bf4").await
            };
            let pr: Option<&[u8]> = if level == 5 { Some(&[]) } else { None };
            c.send(&subscribe_raw(3, pr, &[(f, 1)])).await;
            match c.read(WAIT).await {
                None => {}
                Some((0x90, body)) if *body.last().unwrap() >= 0x80 => {}
                Some((0xE0, body)) if level == 5 && body[0] >= 0x80 => {}
                other => fails.push(format!(
                    "v{level} {:?}: {other:x?}",
                    String::from_utf8_lossy(f)
                )),
            }
        }
    }
    assert!(fails.is_empty(), "{fails:#?}");
    b.stop().await;
}

/// [MQTT-3.8.4-1] SUBSCRIBE is answered with SUBACK [MQTT-3.8.4-2] with the same packet id;
/// [MQTT-3.8.4-5] (v5) / [MQTT-3.8.4-4] (3.1.1) several filters get one SUBACK with
/// [MQTT-3.8.4-6] (v5) / [MQTT-3.8.4-5] (3.1.1) a code per filter, [MQTT-3.9.3-1] in order;
/// [MQTT-3.8.4-7] (v5) granted QoS = requested (the broker supports 2); [MQTT-3.9.3-2] (3.1.1)
/// only codes 0, 1, 2, 0x80.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suback_has_a_code_per_filter_in_order() {
    let b = TestBroker::start().await;
    let filters: [(&[u8], u8); 5] = [
        (b"sa/2", 2),
        (b"sa/0", 0),
        (b"sa/#/bad", 1),
        (b"sa/1", 1),
        (b"sa/+", 2),
    ];
    let mut c = open5(&b, "suback5").await;
    c.send(&subscribe_raw(0xBEEF, Some(&[]), &filters)).await;
    let (first, body) = c.read(WAIT).await.unwrap();
    assert_eq!((first, &body[..2]), (0x90, &[0xBE, 0xEF][..]));
    let (_, n) = parse_props(&body[2..]);
    let codes = &body[2 + n..];
    assert_eq!(
        (codes.len(), codes[0], codes[1], codes[3], codes[4]),
        (5, 2, 0, 1, 2),
        "{codes:x?}"
    );
    assert!(codes[2] >= 0x80, "{codes:x?}");
    let mut c = open4(&b, "suback4").await;
    c.send(&subscribe_raw(0xBEEF, None, &filters)).await;
    assert_eq!(
        c.read(WAIT).await.unwrap(),
        (0x90, vec![0xBE, 0xEF, 2, 0, 0x80, 1, 2])
    );
    b.stop().await;
}

/// [MQTT-3.8.4-3] a SUBSCRIBE with a filter identical to an existing one replaces it (one
/// delivery, at the new QoS); [MQTT-3.8.4-4] (v5) with Retain Handling 0 the retained message
/// is sent again; [MQTT-3.3.1-9] (v5) retained messages are sent on subscribe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_subscription_replaces_the_old_one() {
    let b = TestBroker::start().await;
    let mut p = open5(&b, "rep-p").await;
    p.send(&publish_v5(b"rep/x", &[], b"kept", 1, true, 1))
        .await;
    assert_eq!(p.read(WAIT).await.unwrap().0, 0x40);
    let mut s = open5(&b, "rep-s").await;
    for qos in [1u8, 0] {
        assert_eq!(sub5(&mut s, "rep/x", qos).await, qos);
        let m = next_pub(&mut s, 5).await;
        assert_eq!(
            (&m.payload[..], m.retain),
            (&b"kept"[..], true),
            "retained on subscribe (QoS {qos})"
        );
        if m.qos == 1 {
            s.send(&raw::packet(0x40, &m.pkid.to_be_bytes())).await;
        }
    }
    p.send(&publish_v5(b"rep/x", &[], b"live", 1, false, 2))
        .await;
    assert_eq!(p.read(WAIT).await.unwrap().0, 0x40);
    let mut got = Vec::new();
    while let Some((first, body)) = s.read(QUIET).await {
        let m = parse_publish(5, first, &body);
        got.push((String::from_utf8_lossy(&m.payload).into_owned(), m.qos));
    }
    assert_eq!(
        got,
        vec![("live".to_string(), 0)],
        "one delivery, at the new subscription's QoS"
    );
    b.stop().await;
}

// =============================================================================================
// 3.10–3.11 UNSUBSCRIBE, UNSUBACK
// =============================================================================================

/// [MQTT-3.10.1-1] UNSUBSCRIBE fixed header flags must be 0010: 0xA0 closes the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_with_wrong_flags_closes() {
    let b = TestBroker::start().await;
    let mut p5 = unsubscribe_raw(1, true, &[b"uf/x"]);
    let mut p4 = unsubscribe_raw(1, false, &[b"uf/x"]);
    p5[0] = 0xA0;
    p4[0] = 0xA0;
    let fails = check_closes(&b, vec![("0xA0", p5, p4)]).await;
    assert!(fails.is_empty(), "{fails:#?}");
    b.stop().await;
}

/// [MQTT-3.10.3-2] an UNSUBSCRIBE without any topic filter is a protocol error: closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_without_filters_closes() {
    let b = TestBroker::start().await;
    let fails = check_closes(
        &b,
        vec![(
            "no filters",
            unsubscribe_raw(1, true, &[]),
            unsubscribe_raw(1, false, &[]),
        )],
    )
    .await;
    assert!(fails.is_empty(), "{fails:#?}");
    b.stop().await;
}

/// [MQTT-3.10.4-4] UNSUBSCRIBE is answered with UNSUBACK [MQTT-3.10.4-5] with the same packet
/// id, also when nothing was deleted; [MQTT-3.10.4-6] several filters, one UNSUBACK;
/// [MQTT-3.11.3-1] [MQTT-3.11.3-2] (v5) a reason code per filter in order (0x00, 0x11 No
/// subscription existed); [MQTT-3.10.4-1] filters compare character by character (`uns/+` and
/// `UNS/a` do not remove `uns/a`); [MQTT-3.10.4-2] deliveries stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_and_unsuback() {
    let b = TestBroker::start().await;
    let mut s = open5(&b, "uns5").await;
    assert_eq!(sub5(&mut s, "uns/a", 0).await, 0);
    s.send(&unsubscribe_raw(
        0x0102,
        true,
        &[b"uns/+", b"UNS/a", b"none"],
    ))
    .await;
    let (first, body) = s.read(WAIT).await.unwrap();
    assert_eq!((first, &body[..2]), (0xB0, &[1u8, 2][..]));
    let (_, n) = parse_props(&body[2..]);
    assert_eq!(
        &body[2 + n..],
        &[0x11, 0x11, 0x11],
        "nothing matched exactly"
    );
    let mut p = open5(&b, "uns-p").await;
    p.send(&publish_v5(b"uns/a", &[], b"still", 0, false, 0))
        .await;
    assert_eq!(next_pub(&mut s, 5).await.payload, b"still");
    s.send(&unsubscribe_raw(0x0103, true, &[b"none", b"uns/a"]))
        .await;
    let (first, body) = s.read(WAIT).await.unwrap();
    assert_eq!((first, &body[..2]), (0xB0, &[1u8, 3][..]));
    assert_eq!(&body[2 + parse_props(&body[2..]).1..], &[0x11, 0x00]);
    p.send(&publish_v5(b"uns/a", &[], b"gone", 0, false, 0))
        .await;
    assert_eq!(s.read(QUIET).await, None, "no delivery after UNSUBSCRIBE");
    // 3.1.1: UNSUBACK carries only the packet id.
    let mut s4 = open4(&b, "uns4").await;
    assert_eq!(sub4(&mut s4, "uns/b", 0).await, 0);
    s4.send(&unsubscribe_raw(9, false, &[b"uns/b", b"none"]))
        .await;
    assert_eq!(s4.read(WAIT).await.unwrap(), (0xB0, vec![0, 9]));
    p.send(&publish_v5(b"uns/b", &[], b"gone", 0, false, 0))
        .await;
    assert_eq!(s4.read(QUIET).await, None);
    b.stop().await;
}

/// [MQTT-3.10.3-1] the topic filters of UNSUBSCRIBE are UTF-8 strings: ill-formed UTF-8 (bytes
/// ff, an encoded surrogate) is malformed and closes the connection (v5: DISCONNECT 0x81/0x82 at
/// most; 3.1.1: nothing sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_with_invalid_utf8_filter_closes() {
    let b = TestBroker::start().await;
    let mut cases = Vec::new();
    for (what, f) in [("ff", &b"uu/\xff"[..]), ("U+D800", b"uu/\xed\xa0\x80")] {
        cases.push((
            what,
            unsubscribe_raw(1, true, &[b"uu/ok", f]),
            unsubscribe_raw(1, false, &[b"uu/ok", f]),
        ));
    }
    let fails = check_closes(&b, cases).await;
    assert!(fails.is_empty(), "{fails:#?}");
    b.stop().await;
}

/// [MQTT-3.10.4-3] QoS 1 and QoS 2 deliveries in flight when their subscription is removed are
/// completed: after UNSUBSCRIBE the client's PUBACK and PUBREC are taken (PUBREL follows), and
/// a kept session does not get them again on reconnect (v5 and 3.1.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_completes_in_flight_deliveries() {
    let b = TestBroker::start().await;
    for level in [5u8, 4] {
        let id = format!("uif{level}");
        let connect = if level == 5 {
            raw::connect_v5_expiry(&id, false, 60)
        } else {
            raw::connect_with(4, &id, 0, false, None)
        };
        let (mut s, _) = open_with(&b, &connect).await;
        let pr: Option<&[u8]> = (level == 5).then_some(&[][..]);
        let filter = format!("uif{level}/#");
        s.send(&subscribe_raw(1, pr, &[(filter.as_bytes(), 2)]))
            .await;
        assert_eq!(s.read(WAIT).await.map(|(f, _)| f), Some(0x90));
        let mut p = open5(&b, &format!("{id}-p")).await;
        for qos in [1u8, 2] {
            let topic = format!("uif{level}/{qos}");
            p.send(&publish_v5(
                topic.as_bytes(),
                &[],
                b"x",
                qos,
                false,
                qos as u16,
            ))
            .await;
        }
        let m1 = next_pub(&mut s, level).await;
        let m2 = next_pub(&mut s, level).await;
        assert_eq!((m1.qos, m2.qos), (1, 2));
        s.send(&unsubscribe_raw(3, level == 5, &[filter.as_bytes()]))
            .await;
        let (f, body) = s.read(WAIT).await.expect("UNSUBACK");
        assert_eq!((f, &body[..2]), (0xB0, &[0u8, 3][..]));
        s.send(&raw::packet(0x40, &m1.pkid.to_be_bytes())).await;
        s.send(&raw::packet(0x50, &m2.pkid.to_be_bytes())).await;
        let (f, body) = s.read(WAIT).await.expect("PUBREL");
        assert_eq!(
            (f, &body[..2]),
            (0x62, &m2.pkid.to_be_bytes()[..]),
            "v{level}"
        );
        s.send(&raw::packet(0x70, &m2.pkid.to_be_bytes())).await;
        assert!(alive(&mut s).await);
        // The publisher's QoS 2 flow.
        while let Some((f, body)) = p.read(QUIET).await {
            if f == 0x50 {
                p.send(&raw::packet(0x62, &body[..2])).await;
            }
        }
        s.send(&[0xE0, 0]).await;
        until_closed(&mut s).await;
        let (mut s, ack) = open_with(&b, &connect).await;
        assert_eq!(ack[0], 1, "v{level}: session present");
        assert_eq!(s.read(QUIET).await, None, "v{level}: nothing resent");
    }
    b.stop().await;
}

// =============================================================================================
// 3.12 PINGREQ
// =============================================================================================

/// [MQTT-3.12.4-1] PINGREQ is answered with PINGRESP (v5 and 3.1.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pingreq_gets_pingresp() {
    let b = TestBroker::start().await;
    let mut c5 = open5(&b, "ping5").await;
    let mut c4 = open4(&b, "ping4").await;
    for _ in 0..3 {
        assert!(alive(&mut c5).await);
        assert!(alive(&mut c4).await);
    }
    b.stop().await;
}

// =============================================================================================
// 3.14 DISCONNECT
// =============================================================================================

/// Connects `id` (v5) with a QoS 0 will on `topic` and the given will flags / session expiry.
fn connect_with_will(id: &[u8], topic: &[u8], will_flags: u8, expiry: u32) -> Vec<u8> {
    let p = connect_payload(5, id, Some((&[], topic, b"will")), None, None);
    let mut pr = vec![0x11];
    pr.extend_from_slice(&expiry.to_be_bytes());
    connect_raw(b"MQTT", 5, 0x02 | 0x04 | will_flags, 0, Some(&pr), &p)
}

/// [MQTT-3.14.4-3] DISCONNECT 0x00 discards the will; §3.14.2.1 DISCONNECT 0x04 (Disconnect
/// with Will Message) publishes it [MQTT-3.1.2-10] (v5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_reason_decides_the_will() {
    let b = TestBroker::start().await;
    let mut w = open5(&b, "dw-watch").await;
    assert_eq!(sub5(&mut w, "dw/#", 0).await, 0);
    let (mut c, _) = open_with(&b, &connect_with_will(b"dw0", b"dw/0", 0, 0)).await;
    c.send(&[0xE0, 2, 0x00, 0]).await;
    until_closed(&mut c).await;
    assert_eq!(w.read(QUIET).await, None, "no will after DISCONNECT 0x00");
    let (mut c, _) = open_with(&b, &connect_with_will(b"dw4", b"dw/4", 0, 0)).await;
    c.send(&[0xE0, 2, 0x04, 0]).await;
    until_closed(&mut c).await;
    let m = next_pub(&mut w, 5).await;
    assert_eq!((&m.topic[..], &m.payload[..]), (&b"dw/4"[..], &b"will"[..]));
    b.stop().await;
}

/// §3.14.2.2.2: a DISCONNECT setting a non-zero Session Expiry Interval when CONNECT had 0 is
/// a protocol error: the connection closes (DISCONNECT 0x82 at most) and the session is not
/// kept ([MQTT-3.1.2-23] (v5) expiry 0 ends it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_cannot_raise_session_expiry_from_zero() {
    let b = TestBroker::start().await;
    let (mut c, _) = open_with(&b, &raw::connect_v5_expiry("sx0", false, 0)).await;
    assert_eq!(sub5(&mut c, "sx/x", 1).await, 1);
    c.send(&[0xE0, 7, 0x00, 5, 0x11, 0, 0, 0, 100]).await;
    closed_v5(&mut c, &[0x82]).await;
    let (_c, ack) = open_with(&b, &raw::connect_v5_expiry("sx0", false, 0)).await;
    assert_eq!(parse_connack(&ack).0, 0, "no session kept");
    b.stop().await;
}

/// §3.14.2.2.1 (and §3.4.2.2.1, §3.6.2.2.1 for the acks): a v5 DISCONNECT, PUBACK or PUBREL
/// whose Remaining Length stops after the reason code has property length 0 — well-formed.
/// DISCONNECT 0x00 in that form ends the connection without the will [MQTT-3.14.4-3]; PUBREL
/// 0x00 gets PUBCOMP; a subscriber's PUBACK 0x00 completes the delivery (nothing resent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_and_disconnect_without_property_length_are_well_formed() {
    let b = TestBroker::start().await;
    let mut fails = Vec::new();
    let mut w = open5(&b, "short-watch").await;
    assert_eq!(sub5(&mut w, "short/#", 1).await, 1);
    let mut p = open5(&b, "short-p").await;
    p.send(&publish_v5(b"short/q2", &[], b"x", 2, false, 3))
        .await;
    assert_eq!(p.read(WAIT).await.unwrap().0, 0x50);
    p.send(&raw::packet(0x62, &[0, 3, 0x00])).await;
    match p.read(WAIT).await {
        Some((0x70, body)) if body[..2] == [0, 3] => {}
        other => fails.push(format!("PUBREL without property length: {other:x?}")),
    }
    let m = next_pub(&mut w, 5).await;
    w.send(&raw::packet(
        0x40,
        &[(m.pkid >> 8) as u8, m.pkid as u8, 0x00],
    ))
    .await;
    if !alive(&mut w).await {
        fails.push("PUBACK without property length closed the subscriber".into());
    }
    let (mut c, _) = open_with(&b, &connect_with_will(b"short-d", b"short/will", 0, 0)).await;
    c.send(&[0xE0, 1, 0x00]).await;
    match try_until_closed(&mut c).await {
        Ok(got) if got.is_empty() => {}
        other => fails.push(format!("DISCONNECT without property length: {other:x?}")),
    }
    if let Some((first, body)) = w.read(QUIET).await {
        fails.push(format!(
            "will published after DISCONNECT 0x00: {first:#x} {body:x?}"
        ));
    }
    assert!(fails.is_empty(), "{fails:#?}");
    b.stop().await;
}

/// [MQTT-3.14.2-2] (v5) the server's DISCONNECT carries no Session Expiry Interval, whatever the
/// reason (topic alias 0: 0x94; a second CONNECT: 0x82; takeover: 0x8E) and although the
/// session has one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_disconnect_has_no_session_expiry_interval() {
    let b = TestBroker::start().await;
    let mut seen = Vec::new();
    let connect = raw::connect_v5_expiry("sdx", false, 60);
    let (mut c, _) = open_with(&b, &connect).await;
    c.send(&publish_v5(b"sdx/x", &[0x23, 0, 0], b"x", 0, false, 0))
        .await;
    seen.push(c.read(WAIT).await);
    let (mut c, _) = open_with(&b, &connect).await;
    c.send(&connect).await;
    seen.push(c.read(WAIT).await);
    let (mut old, _) = open_with(&b, &connect).await;
    let (_new, _) = open_with(&b, &connect).await;
    seen.push(old.read(WAIT).await);
    let mut codes = Vec::new();
    for got in seen {
        let Some((0xE0, body)) = got else {
            panic!("DISCONNECT expected: {got:x?}");
        };
        let pr = if body.len() > 1 {
            parse_props(&body[1..]).0
        } else {
            Vec::new()
        };
        assert_eq!(prop(&pr, 0x11), None, "DISCONNECT {body:x?}");
        codes.push(body[0]);
    }
    assert_eq!(codes, vec![0x94, 0x82, 0x8E]);
    b.stop().await;
}

// =============================================================================================
// 3.15 AUTH
// =============================================================================================

/// [MQTT-4.12.0-1] an unsupported Authentication Method: CONNACK 0x8C (or 0x87), then close;
/// an AUTH packet on a 3.1.1 connection (packet type 15 is reserved in 3.1.1, §2.2.1)
/// closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_authentication_method_is_refused() {
    let b = TestBroker::start().await;
    let mut c = raw::Conn::open(b.mqtt).await;
    let mut pr = vec![0x15];
    s(&mut pr, b"SCRAM-SHA-256");
    c.send(&connect_v5(b"am", &pr)).await;
    assert!(
        refused_v5(&mut c, &[0x8C, 0x87]).await.is_some(),
        "CONNACK with the reason expected"
    );
    let mut c = open4(&b, "auth4").await;
    c.send(&[0xF0, 0]).await;
    closed_v4(&mut c).await;
    b.stop().await;
}

/// §3.1.2.11.10: Authentication Data without an Authentication Method is a protocol error
/// (CONNACK 0x82 at most, then close).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_data_without_method_is_refused() {
    let b = TestBroker::start().await;
    let mut c = raw::Conn::open(b.mqtt).await;
    let mut pr = vec![0x16];
    s(&mut pr, b"data");
    c.send(&connect_v5(b"ad", &pr)).await;
    refused_v5(&mut c, &[0x82]).await;
    b.stop().await;
}

// =============================================================================================
// 4.1–4.6 Sessions, will, QoS flows, ordering
// =============================================================================================

/// Will on abnormal close: [MQTT-3.1.2-8] (v5) / [MQTT-3.1.2-8] (3.1.1) published when the
/// connection drops without DISCONNECT; [MQTT-3.1.2-15] (v5) / [MQTT-3.1.2-17] (3.1.1) with
/// will retain 1 it is retained; [MQTT-3.1.2-14] (v5) / [MQTT-3.1.2-16] (3.1.1) with will
/// retain 0 it is not; a close for a protocol error publishes it too (§3.1.2.5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_is_published_on_abnormal_close_with_its_retain_flag() {
    let b = TestBroker::start().await;
    let mut w = open5(&b, "will-watch").await;
    assert_eq!(sub5(&mut w, "wr/#", 1).await, 1);
    // v5, retained, QoS 1: dropped socket.
    let (c, _) = open_with(&b, &connect_with_will(b"wr5", b"wr/5", 0x20 | 0x08, 0)).await;
    drop(c);
    let m = next_pub(&mut w, 5).await;
    assert_eq!((&m.topic[..], m.qos), (&b"wr/5"[..], 1));
    w.send(&raw::packet(0x40, &m.pkid.to_be_bytes())).await;
    // 3.1.1, not retained: closed for a protocol error (PUBLISH QoS 3).
    let p = connect_payload(4, b"wr4", Some((&[], b"wr/4", b"will")), None, None);
    let (mut c, _) = open_with(&b, &connect_raw(b"MQTT", 4, 0x02 | 0x04, 0, None, &p)).await;
    c.send(&publish_v4(b"x", b"x", 3, false, 1)).await;
    closed_v4(&mut c).await;
    let m = next_pub(&mut w, 5).await;
    assert_eq!(&m.topic[..], b"wr/4");
    // A new subscriber gets only the retained one, with RETAIN 1.
    let mut late = open5(&b, "will-late").await;
    assert_eq!(sub5(&mut late, "wr/#", 0).await, 0);
    let m = next_pub(&mut late, 5).await;
    assert_eq!((&m.topic[..], m.retain), (&b"wr/5"[..], true));
    assert_eq!(
        late.read(QUIET).await,
        None,
        "the will with retain 0 is not retained"
    );
    b.stop().await;
}

/// What a kept session gets on reconnect after a QoS 2 delivery stopped after PUBREL and a
/// QoS 1 delivery was not acknowledged: (original QoS 1 packet id, resent PUBLISH packets,
/// PUBREL for the QoS 2 packet id resent, anything unexpected).
async fn resend_after_reconnect(
    b: &TestBroker,
    level: u8,
    tag: &str,
) -> (u16, Vec<Pub>, bool, Vec<String>) {
    let id = format!("{tag}{level}");
    let topic = format!("{tag}{level}");
    let connect = if level == 5 {
        raw::connect_v5_expiry(&id, false, 60)
    } else {
        raw::connect_with(4, &id, 0, false, None)
    };
    let (mut s, _) = open_with(b, &connect).await;
    let pr: Option<&[u8]> = if level == 5 { Some(&[]) } else { None };
    s.send(&subscribe_raw(
        1,
        pr,
        &[(format!("{topic}/#").as_bytes(), 2)],
    ))
    .await;
    assert_eq!(s.read(WAIT).await.unwrap().0, 0x90);
    let mut p = open5(b, &format!("{id}-p")).await;
    // QoS 2 first, up to the PUBREL; then QoS 1, not acknowledged.
    p.send(&publish_v5(
        format!("{topic}/2").as_bytes(),
        &[],
        b"two",
        2,
        false,
        2,
    ))
    .await;
    let m2 = next_pub(&mut s, level).await;
    assert_eq!(m2.qos, 2);
    s.send(&raw::packet(0x50, &m2.pkid.to_be_bytes())).await;
    let (first, body) = s.read(WAIT).await.expect("PUBREL");
    assert_eq!((first, &body[..2]), (0x62, &m2.pkid.to_be_bytes()[..]));
    p.send(&publish_v5(
        format!("{topic}/1").as_bytes(),
        &[],
        b"one",
        1,
        false,
        1,
    ))
    .await;
    let m1 = next_pub(&mut s, level).await;
    assert_eq!((m1.qos, m1.dup), (1, false));
    drop(s);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mut s, ack) = open_with(b, &connect).await;
    assert_eq!(ack[0], 1, "session present");
    let (mut pubs, mut rel, mut other) = (Vec::new(), false, Vec::new());
    while let Some((first, body)) = s.read(QUIET).await {
        match first & 0xF0 {
            0x30 => {
                let m = parse_publish(level, first, &body);
                s.send(&raw::packet(0x40, &m.pkid.to_be_bytes())).await;
                pubs.push(m);
            }
            0x60 if first == 0x62 && body[..2] == m2.pkid.to_be_bytes() => {
                s.send(&raw::packet(0x70, &body[..2])).await;
                rel = true;
            }
            _ => other.push(format!("v{level}: unexpected {first:#x} {body:x?}")),
        }
    }
    (m1.pkid, pubs, rel, other)
}

/// [MQTT-4.4.0-1] on reconnect with a kept session the broker resends the PUBREL of a QoS 2
/// delivery that had its PUBREC but no PUBCOMP, with its original packet id (v5 and 3.1.1);
/// [MQTT-4.3.3-6] (v5) / [MQTT-4.3.3-1] (3.1.1) it does not resend that PUBLISH.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubrel_is_resent_on_reconnect() {
    let b = TestBroker::start().await;
    for level in [5u8, 4] {
        let (_, pubs, rel, other) = resend_after_reconnect(&b, level, "rsrel").await;
        assert!(
            pubs.iter().all(|m| m.payload != b"two"),
            "v{level}: the QoS 2 PUBLISH is not resent after its PUBREL [MQTT-4.3.3-6] (v5)"
        );
        assert!(
            rel && other.is_empty(),
            "v{level}: PUBREL resent {rel}; {other:?}"
        );
    }
    b.stop().await;
}

/// [MQTT-4.4.0-1] on reconnect with a kept session the broker resends an unacknowledged QoS 1
/// PUBLISH with its original packet id and [MQTT-3.3.1-1] DUP 1 (v5 and 3.1.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_publish_is_resent_with_dup_and_its_packet_id() {
    let b = TestBroker::start().await;
    let mut fails = Vec::new();
    for level in [5u8, 4] {
        let (pkid, pubs, _, _) = resend_after_reconnect(&b, level, "rspub").await;
        let got: Vec<_> = pubs
            .iter()
            .map(|m| {
                (
                    String::from_utf8_lossy(&m.payload).into_owned(),
                    m.dup,
                    m.pkid,
                )
            })
            .collect();
        if got != vec![("one".to_string(), true, pkid)] {
            fails.push(format!(
                "v{level}: resent {got:?}, want [(\"one\", DUP true, id {pkid})]"
            ));
        }
    }
    assert!(fails.is_empty(), "{fails:#?}");
    b.stop().await;
}

/// [MQTT-4.3.3-4] (v5) / [MQTT-4.3.3-1] (3.1.1) the broker sends PUBREL when it receives a
/// PUBREC — not only once an earlier, unrelated QoS 1 delivery has been acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubrel_follows_pubrec_without_waiting_for_other_acks() {
    let b = TestBroker::start().await;
    for level in [5u8, 4] {
        let mut s = if level == 5 {
            open5(&b, "prl-s5").await
        } else {
            open4(&b, "prl-s4").await
        };
        let pr: Option<&[u8]> = if level == 5 { Some(&[]) } else { None };
        s.send(&subscribe_raw(1, pr, &[(b"prl/#", 2)])).await;
        assert_eq!(s.read(WAIT).await.unwrap().0, 0x90);
        let mut p = open5(&b, "prl-p").await;
        p.send(&publish_v5(b"prl/1", &[], b"one", 1, false, 1))
            .await;
        p.send(&publish_v5(b"prl/2", &[], b"two", 2, false, 2))
            .await;
        let _m1 = next_pub(&mut s, level).await;
        let m2 = next_pub(&mut s, level).await;
        s.send(&raw::packet(0x50, &m2.pkid.to_be_bytes())).await;
        let got = s.read(Duration::from_secs(2)).await;
        assert!(
            matches!(&got, Some((0x62, body)) if body[..2] == m2.pkid.to_be_bytes()),
            "v{level}: PUBREL expected, got {got:x?}"
        );
    }
    b.stop().await;
}

/// [MQTT-4.1.0-1] [MQTT-3.1.2-5] (v5) / [MQTT-3.1.2-4] [MQTT-3.1.2-5] (3.1.1) a kept session
/// keeps its subscriptions (no new SUBSCRIBE needed) and queues QoS 1 messages published while
/// it was offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_session_keeps_subscriptions_and_queues_messages() {
    let b = TestBroker::start().await;
    let (mut s, _) = open_with(&b, &raw::connect_with(4, "keep4", 0, false, None)).await;
    assert_eq!(sub4(&mut s, "keep/x", 1).await, 1);
    s.send(&[0xE0, 0]).await;
    until_closed(&mut s).await;
    let mut p = open4(&b, "keep-p").await;
    for i in 0..3u8 {
        p.send(&publish_v4(b"keep/x", &[i], 1, false, i as u16 + 1))
            .await;
        assert_eq!(p.read(WAIT).await.unwrap().0, 0x40);
    }
    let (mut s, ack) = open_with(&b, &raw::connect_with(4, "keep4", 0, false, None)).await;
    assert_eq!(ack, vec![1, 0]);
    for i in 0..3u8 {
        let m = next_pub(&mut s, 4).await;
        assert_eq!((m.payload, m.qos), (vec![i], 1));
        s.send(&raw::packet(0x40, &m.pkid.to_be_bytes())).await;
    }
    p.send(&publish_v4(b"keep/x", b"live", 0, false, 0)).await;
    assert_eq!(
        next_pub(&mut s, 4).await.payload,
        b"live",
        "the subscription is still there"
    );
    b.stop().await;
}

/// [MQTT-4.3.3-7] (v5) once the PUBLISH of a QoS 2 delivery was sent, its Message Expiry no
/// longer applies: the client that sends PUBREC after the interval gets the PUBREL.
/// [MQTT-4.3.3-12] [MQTT-4.3.3-13] (v5) as the receiver, the broker finishes a client's QoS 2
/// flow (PUBREL → PUBCOMP) after the message's expiry passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_flows_outlive_message_expiry() {
    let b = TestBroker::start().await;
    let mut s = open5(&b, "mx-s").await;
    assert_eq!(sub5(&mut s, "mx/#", 2).await, 2);
    let mut p = open5(&b, "mx-p").await;
    p.send(&publish_v5(b"mx/a", &[0x02, 0, 0, 0, 1], b"a", 2, false, 1))
        .await;
    assert_eq!(p.read(WAIT).await, Some((0x50, vec![0, 1])));
    let a = next_pub(&mut s, 5).await;
    assert_eq!(&a.payload[..], b"a");
    // The message expires; both flows are underway.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    p.send(&raw::packet(0x62, &[0, 1])).await;
    assert_eq!(p.read(WAIT).await, Some((0x70, vec![0, 1])), "PUBCOMP");
    s.send(&raw::packet(0x50, &a.pkid.to_be_bytes())).await;
    let (f, body) = s.read(WAIT).await.expect("PUBREL after expiry");
    assert_eq!((f, &body[..2]), (0x62, &a.pkid.to_be_bytes()[..]));
    s.send(&raw::packet(0x70, &a.pkid.to_be_bytes())).await;
    assert!(alive(&mut s).await);
    b.stop().await;
}

/// [MQTT-4.3.3-7] (v5) [MQTT-4.4.0-1] a QoS 2 PUBLISH sent and not acknowledged is sent again
/// when the kept session reconnects, also once its Message Expiry Interval has passed (a QoS 2
/// message without expiry, resent the same way, is the control).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sent_qos2_message_is_resent_after_its_expiry() {
    let b = TestBroker::start().await;
    let connect = raw::connect_v5_expiry("mxr-s", false, 60);
    let (mut s, _) = open_with(&b, &connect).await;
    assert_eq!(sub5(&mut s, "mxr/#", 2).await, 2);
    let mut p = open5(&b, "mxr-p").await;
    p.send(&publish_v5(b"mxr/plain", &[], b"plain", 2, false, 1))
        .await;
    p.send(&publish_v5(
        b"mxr/exp",
        &[0x02, 0, 0, 0, 1],
        b"exp",
        2,
        false,
        2,
    ))
    .await;
    let first = next_pub(&mut s, 5).await;
    let second = next_pub(&mut s, 5).await;
    assert_eq!(
        (&first.payload[..], &second.payload[..]),
        (&b"plain"[..], &b"exp"[..])
    );
    drop(s);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (mut s, ack) = open_with(&b, &connect).await;
    assert_eq!(ack[0], 1, "session present");
    // Both resends may come before the first PUBREL: answer whatever arrives.
    let (mut got, mut rels) = (Vec::new(), 0);
    while let Some((f, body)) = s.read(QUIET).await {
        if f == 0x62 {
            rels += 1;
            s.send(&raw::packet(0x70, &body[..2])).await;
            continue;
        }
        let m = parse_publish(5, f, &body);
        s.send(&raw::packet(0x50, &m.pkid.to_be_bytes())).await;
        got.push((String::from_utf8_lossy(&m.payload).into_owned(), m.dup));
    }
    assert_eq!(
        got,
        vec![("plain".to_string(), true), ("exp".to_string(), true)]
    );
    assert_eq!(rels, 2, "both flows completed");
    b.stop().await;
}

/// [MQTT-4.4.0-2] (v5) a PUBACK or PUBREC with a reason code ≥ 0x80 from the client completes
/// the delivery: no PUBREL follows the refusing PUBREC, and a kept session is not sent either
/// message again on reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_acks_complete_the_delivery() {
    let b = TestBroker::start().await;
    let connect = raw::connect_v5_expiry("rfa", false, 60);
    let (mut s, _) = open_with(&b, &connect).await;
    assert_eq!(sub5(&mut s, "rfa/#", 2).await, 2);
    let mut p = open5(&b, "rfa-p").await;
    p.send(&publish_v5(b"rfa/1", &[], b"one", 1, false, 1))
        .await;
    p.send(&publish_v5(b"rfa/2", &[], b"two", 2, false, 2))
        .await;
    let m1 = next_pub(&mut s, 5).await;
    let m2 = next_pub(&mut s, 5).await;
    assert_eq!((m1.qos, m2.qos), (1, 2));
    let [h1, l1] = m1.pkid.to_be_bytes();
    let [h2, l2] = m2.pkid.to_be_bytes();
    s.send(&raw::packet(0x40, &[h1, l1, 0x80, 0])).await;
    s.send(&raw::packet(0x50, &[h2, l2, 0x83, 0])).await;
    assert!(alive(&mut s).await, "no PUBREL after PUBREC 0x83");
    s.send(&[0xE0, 0]).await;
    until_closed(&mut s).await;
    let (mut s, ack) = open_with(&b, &connect).await;
    assert_eq!(ack[0], 1, "session present");
    assert_eq!(s.read(QUIET).await, None, "nothing resent");
    // Deliveries go on as usual.
    p.send(&publish_v5(b"rfa/3", &[], b"three", 1, false, 3))
        .await;
    assert_eq!(next_pub(&mut s, 5).await.payload, b"three");
    b.stop().await;
}

// =============================================================================================
// 4.7 Topic names and filters, `$` topics
// =============================================================================================

/// §4.7.1: wildcard matching. `sport/#` matches `sport` too; `+` matches one level, empty
/// levels included (`+/+` and `/+` match `/finance`, `+` does not); `#` matches everything not
/// starting with `$`; [MQTT-4.7.3-4] no normalisation: case and spaces are significant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_filter_matching() {
    let b = TestBroker::start().await;
    let filters = [
        "sport/#", "+", "+/+", "/+", "#", "a//c", "a/+/c", "Case", "sp ace",
    ];
    let mut subs = Vec::new();
    for (i, f) in filters.iter().enumerate() {
        let mut c = open4(&b, &format!("match{i}")).await;
        assert_eq!(sub4(&mut c, f, 0).await, 0, "{f}");
        subs.push(c);
    }
    let mut p = open4(&b, "match-p").await;
    let topics = [
        "sport", "/finance", "a//c", "a/b/c", "case", "sp ace", "spa ce", "bom",
    ];
    for t in topics {
        p.send(&publish_v4(t.as_bytes(), b"x", 0, false, 0)).await;
    }
    let expect: [&[&str]; 9] = [
        &["sport"],
        &["sport", "case", "bom"],
        &["/finance"],
        &["/finance"],
        &topics,
        &["a//c"],
        &["a//c", "a/b/c"],
        &[],
        &["sp ace"],
    ];
    let mut fails = Vec::new();
    for (i, c) in subs.iter_mut().enumerate() {
        let mut got = Vec::new();
        while let Some((first, body)) = c.read(QUIET).await {
            got.push(String::from_utf8(parse_publish(4, first, &body).topic).unwrap());
        }
        let mut want: Vec<String> = expect[i].iter().map(|s| s.to_string()).collect();
        if filters[i] == "+" {
            want.push("spa ce".into());
            want.push("sp ace".into());
        }
        got.sort();
        want.sort();
        if got != want {
            fails.push(format!("{:?}: got {got:?}, want {want:?}", filters[i]));
        }
    }
    assert!(fails.is_empty(), "{fails:#?}");
    b.stop().await;
}

/// [MQTT-4.5.0-1] (v5) messages on valid topic names reach matching subscriptions whatever
/// their first character: `ü/x` and `\u{FEFF}bom` ([MQTT-1.5.4-3] (v5) / [MQTT-1.5.3-3]
/// (3.1.1) a leading U+FEFF is not skipped or stripped, so `bom` does not match) reach exact
/// and `#` subscribers, and the broker keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_starting_with_non_ascii_characters() {
    let b = TestBroker::start().await;
    let mut all = open4(&b, "na-all").await;
    assert_eq!(sub4(&mut all, "#", 0).await, 0);
    let mut exact = open4(&b, "na-exact").await;
    assert_eq!(sub4(&mut exact, "ü/x", 0).await, 0);
    assert_eq!(sub4(&mut exact, "\u{FEFF}bom", 0).await, 0);
    let mut plain = open4(&b, "na-plain").await;
    assert_eq!(sub4(&mut plain, "bom", 0).await, 0);
    let mut p = open4(&b, "na-p").await;
    for topic in ["ü/x", "\u{FEFF}bom"] {
        p.send(&publish_v4(topic.as_bytes(), b"x", 0, false, 0))
            .await;
        for c in [&mut all, &mut exact] {
            let m = next_pub(c, 4).await;
            assert_eq!(m.topic, topic.as_bytes());
        }
    }
    assert_eq!(
        plain.read(QUIET).await,
        None,
        "the BOM is part of the topic"
    );
    let mut late = open4(&b, "na-late").await;
    p.send(&publish_v4(b"ok", b"x", 0, false, 0)).await;
    assert_eq!(next_pub(&mut all, 4).await.topic, b"ok");
    assert!(alive(&mut late).await);
    b.stop().await;
}

/// [MQTT-4.7.2-1] filters starting with a wildcard do not match topics starting with `$`
/// (live and retained).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dollar_topics_and_leading_wildcards() {
    let b = TestBroker::start().await;
    let mut p = open5(&b, "dollar-p").await;
    p.send(&publish_v5(b"$app/t", &[], b"kept", 1, true, 1))
        .await;
    let (first, body) = p.read(WAIT).await.unwrap();
    assert_eq!(first, 0x40);
    assert!(
        body.len() == 2 || body[2] == 0,
        "publishing to $app/t accepted: {body:x?}"
    );
    let mut wild = open5(&b, "dollar-w").await;
    for f in ["#", "+/t", "+/#"] {
        assert_eq!(sub5(&mut wild, f, 0).await, 0);
    }
    p.send(&publish_v5(b"$app/t", &[], b"live", 0, false, 0))
        .await;
    // Subscriptions to `$` filters are refused by this broker (SUBACK 0x8F), which is allowed;
    // so the positive side cannot be observed.
    let mut exact = open5(&b, "dollar-e").await;
    assert!(
        sub5(&mut exact, "$app/#", 0).await >= 0x80,
        "refused as documented"
    );
    assert_eq!(
        wild.read(QUIET).await,
        None,
        "no $ topic through a leading wildcard"
    );
    b.stop().await;
}

// =============================================================================================
// Retained messages
// =============================================================================================

/// [MQTT-3.3.1-5] (v5/3.1.1) a retained publish replaces the stored one (QoS 0 too,
/// [MQTT-3.3.1-7] (3.1.1)); [MQTT-3.3.1-8] (v5) / [MQTT-3.3.1-12] (3.1.1) a publish with
/// RETAIN 0 neither stores nor replaces; [MQTT-3.3.1-6] (3.1.1) [MQTT-3.3.1-8] (3.1.1) a new
/// subscription gets the latest retained message with RETAIN 1; [MQTT-3.1.2-7] (3.1.1) retained
/// messages outlive the publisher's session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_message_rules() {
    let b = TestBroker::start().await;
    let (mut p, _) = open_with(&b, &raw::connect_with(4, "ret-p", 0, false, None)).await;
    p.send(&publish_v4(b"ret/a", b"first", 1, true, 1)).await;
    assert_eq!(p.read(WAIT).await.unwrap().0, 0x40);
    p.send(&publish_v4(b"ret/a", b"second", 0, true, 0)).await;
    p.send(&publish_v4(b"ret/a", b"not-retained", 1, false, 2))
        .await;
    assert_eq!(p.read(WAIT).await.unwrap().0, 0x40);
    // The publisher's session ends (clean session reconnect); the retained message stays.
    drop(p);
    let (mut p, _) = open_with(&b, &raw::connect_with(4, "ret-p", 0, true, None)).await;
    p.send(&[0xE0, 0]).await;
    until_closed(&mut p).await;
    for level in [5u8, 4] {
        let mut s = if level == 5 {
            open5(&b, "ret-s5").await
        } else {
            open4(&b, "ret-s4").await
        };
        if level == 5 {
            assert_eq!(sub5(&mut s, "ret/#", 1).await, 1);
        } else {
            assert_eq!(sub4(&mut s, "ret/#", 1).await, 1);
        }
        let m = next_pub(&mut s, level).await;
        assert_eq!(
            (&m.payload[..], m.retain, m.qos),
            (&b"second"[..], true, 0),
            "v{level}"
        );
        assert_eq!(
            s.read(QUIET).await,
            None,
            "only the latest retained message"
        );
    }
    b.stop().await;
}

/// [MQTT-3.3.2-5] (v5) a retained message whose Message Expiry Interval has passed is no longer
/// sent to new subscribers; [MQTT-3.3.2-6] (v5) one still valid is sent with the remaining
/// interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_expire() {
    let b = TestBroker::start().await;
    let mut p = open5(&b, "rexp-p").await;
    p.send(&publish_v5(
        b"rexp/short",
        &[0x02, 0, 0, 0, 1],
        b"short",
        1,
        true,
        1,
    ))
    .await;
    p.send(&publish_v5(
        b"rexp/long",
        &[0x02, 0, 0, 0, 100],
        b"long",
        1,
        true,
        2,
    ))
    .await;
    for _ in 0..2 {
        assert_eq!(p.read(WAIT).await.unwrap().0, 0x40);
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let mut s = open5(&b, "rexp-s").await;
    assert_eq!(sub5(&mut s, "rexp/#", 0).await, 0);
    let m = next_pub(&mut s, 5).await;
    assert_eq!(&m.payload[..], b"long");
    let left = prop(&m.props, 0x02).map(|v| u32::from_be_bytes([v[0], v[1], v[2], v[3]]));
    assert!(matches!(left, Some(97..=99)), "remaining expiry {left:?}");
    assert_eq!(s.read(QUIET).await, None, "the expired one is not sent");
    b.stop().await;
}

// =============================================================================================
// 4.8 Shared subscriptions
// =============================================================================================

/// §4.8.2 / §3.3.1.3: retained messages are sent for new non-shared subscriptions only — not
/// when a shared subscription is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscriptions_get_no_retained_messages() {
    let b = TestBroker::start().await;
    let mut p = open5(&b, "sr-p").await;
    p.send(&publish_v5(b"sr/x", &[], b"kept", 1, true, 1)).await;
    assert_eq!(p.read(WAIT).await.unwrap().0, 0x40);
    let mut s = open5(&b, "sr-s").await;
    assert_eq!(sub5(&mut s, "$share/g/sr/#", 1).await, 1);
    assert_eq!(
        s.read(QUIET).await,
        None,
        "no retained message on a shared subscription"
    );
    b.stop().await;
}

/// [MQTT-4.8.2-3] (v5) each member of a share group gets messages at most at its own granted
/// QoS; after one member unsubscribes the other gets every message; a plain subscriber to the
/// same topic gets every message as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_members_keep_their_qos() {
    let b = TestBroker::start().await;
    let mut m0 = open5(&b, "sh0").await;
    assert_eq!(sub5(&mut m0, "$share/g/sh/#", 0).await, 0);
    let mut m1 = open5(&b, "sh1").await;
    assert_eq!(sub5(&mut m1, "$share/g/sh/#", 1).await, 1);
    let mut plain = open5(&b, "shp").await;
    assert_eq!(sub5(&mut plain, "sh/#", 1).await, 1);
    let mut p = open5(&b, "sh-p").await;
    for i in 0..10u16 {
        p.send(&publish_v5(b"sh/x", &[], &i.to_be_bytes(), 1, false, i + 1))
            .await;
    }
    let mut total = 0;
    for (m, max) in [(&mut m0, 0u8), (&mut m1, 1)] {
        while let Some((first, body)) = m.read(QUIET).await {
            let d = parse_publish(5, first, &body);
            assert!(d.qos <= max, "member granted {max} got QoS {}", d.qos);
            if d.qos == 1 {
                m.send(&raw::packet(0x40, &d.pkid.to_be_bytes())).await;
            }
            total += 1;
        }
    }
    assert_eq!(total, 10, "each message to one member");
    let mut n = 0;
    while let Some((first, body)) = plain.read(QUIET).await {
        let d = parse_publish(5, first, &body);
        plain.send(&raw::packet(0x40, &d.pkid.to_be_bytes())).await;
        n += 1;
    }
    assert_eq!(n, 10, "the plain subscriber gets all");
    m0.send(&unsubscribe_raw(2, true, &[b"$share/g/sh/#"]))
        .await;
    assert_eq!(m0.read(WAIT).await.unwrap().0, 0xB0);
    for i in 0..4u16 {
        p.send(&publish_v5(b"sh/x", &[], &i.to_be_bytes(), 0, false, 0))
            .await;
    }
    let mut n = 0;
    while m1.read(QUIET).await.is_some() {
        n += 1;
    }
    assert_eq!(n, 4, "the remaining member gets every message");
    assert_eq!(m0.read(Duration::from_millis(50)).await, None);
    b.stop().await;
}

/// The member of `members` that got a delivery within `WAIT`, with it.
async fn shared_delivery(members: &mut [raw::Conn]) -> (usize, Pub) {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        for (i, m) in members.iter_mut().enumerate() {
            if let Some((first, body)) = m.read(Duration::from_millis(50)).await {
                return (i, parse_publish(5, first, &body));
            }
        }
    }
    panic!("no member got the message");
}

/// [MQTT-4.8.2-6] (v5) a share group member that refuses a message (PUBACK or PUBREC ≥ 0x80)
/// ends its delivery: the message is not sent to the other member, nor again to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_shared_delivery_goes_to_no_other_member() {
    let b = TestBroker::start().await;
    let mut members = Vec::new();
    for i in 0..2 {
        let mut m = open5(&b, &format!("shr{i}")).await;
        assert_eq!(sub5(&mut m, "$share/g/shr/#", 2).await, 2);
        members.push(m);
    }
    let mut p = open5(&b, "shr-p").await;
    for qos in [1u8, 2] {
        p.send(&publish_v5(b"shr/x", &[], &[qos], qos, false, qos as u16))
            .await;
        let (i, m) = shared_delivery(&mut members).await;
        assert_eq!(m.qos, qos);
        let [h, l] = m.pkid.to_be_bytes();
        let kind = if qos == 1 { 0x40 } else { 0x50 };
        members[i].send(&raw::packet(kind, &[h, l, 0x80, 0])).await;
        for (j, m) in members.iter_mut().enumerate() {
            assert_eq!(
                m.read(QUIET).await,
                None,
                "QoS {qos}: member {j} (refused by {i})"
            );
        }
    }
    b.stop().await;
}

/// Share group `group` of two v5 members with Session Expiry `expiry`; one message is published
/// at QoS 2 (the statements below are about QoS 2 deliveries; for QoS 1 the specification lets
/// the server choose) and the member that got it drops its connection before PUBREC. Returns the
/// member's CONNECT, the delivery, and whatever the other member got within a second.
async fn shared_member_drops(
    b: &TestBroker,
    group: &str,
    expiry: u32,
) -> (Vec<u8>, Pub, Option<(u8, Vec<u8>)>) {
    let filter = format!("$share/{group}/shf/{group}");
    let connects: Vec<Vec<u8>> = (0..2)
        .map(|i| raw::connect_v5_expiry(&format!("shf-{group}{i}"), false, expiry))
        .collect();
    let mut members = Vec::new();
    for c in &connects {
        let (mut m, _) = open_with(b, c).await;
        assert_eq!(sub5(&mut m, &filter, 2).await, 2);
        members.push(m);
    }
    let mut p = open5(b, &format!("shf-{group}-p")).await;
    p.send(&publish_v5(
        format!("shf/{group}").as_bytes(),
        &[],
        b"x",
        2,
        false,
        1,
    ))
    .await;
    assert_eq!(p.read(WAIT).await.map(|(f, _)| f), Some(0x50));
    let (i, first) = shared_delivery(&mut members).await;
    assert_eq!(first.qos, 2);
    drop(members.remove(i));
    let other = members[0].read(Duration::from_secs(1)).await;
    (connects[i].clone(), first, other)
}

/// [MQTT-4.8.2-5] (v5) a message in flight to a share group member whose session ends with its
/// connection is not sent to the other member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_delivery_of_an_ended_session_goes_to_no_other_member() {
    let b = TestBroker::start().await;
    let (_, _, other) = shared_member_drops(&b, "end", 0).await;
    assert_eq!(other, None, "the other member got the message");
    b.stop().await;
}

/// [MQTT-4.8.2-4] (v5) a message in flight to a share group member whose connection drops stays
/// with that member's kept session: it is not sent to the other member, and the member gets it
/// again (DUP 1, same packet id) when it reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fails under load (about one run in three): rumqttd rewinds the share group's cursor \
            when the member drops, but nothing wakes the group's parked reads, so the resend (DUP 1, \
            same packet id) waits for the next message on the filter"]
async fn shared_delivery_in_flight_is_resent_to_its_member() {
    let b = TestBroker::start().await;
    let (connect, first, other) = shared_member_drops(&b, "keep", 60).await;
    assert_eq!(other, None, "the other member got the message");
    let (mut m, ack) = open_with(&b, &connect).await;
    assert_eq!(ack[0], 1, "session present");
    let again = next_pub(&mut m, 5).await;
    assert_eq!(
        (again.pkid, again.dup),
        (first.pkid, true),
        "resent to its member"
    );
    b.stop().await;
}

// =============================================================================================
// The conformance table
// =============================================================================================

/// Statement ids in brackets (`MQTT-` + section + number) in the `///` doc comments of a source.
fn doc_comment_ids(src: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for line in src.lines() {
        let Some(doc) = line.trim_start().strip_prefix("///") else {
            continue;
        };
        let mut rest = doc;
        while let Some(i) = rest.find("[MQTT-") {
            let tail = &rest[i + 1..];
            let Some(end) = tail.find(']') else { break };
            ids.push(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    ids
}

/// True if `id` occurs in `text` as a whole id (`MQTT-3.1.2-1` is not found in `MQTT-3.1.2-10`).
fn mentions(text: &str, id: &str) -> bool {
    text.match_indices(id).any(|(i, _)| {
        let after = text[i + id.len()..].chars().next();
        !matches!(after, Some(c) if c.is_ascii_digit())
    })
}

/// Every statement id named in a test's doc comment (any `tests/*.rs`) has a row in
/// `docs/CONFORMANCE.md`.
#[test]
fn conformance_table_lists_every_tested_statement() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let table =
        std::fs::read_to_string(root.join("docs/CONFORMANCE.md")).expect("docs/CONFORMANCE.md");
    let mut missing = Vec::new();
    let mut seen = 0;
    let mut files: Vec<_> = std::fs::read_dir(root.join("tests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    for f in files {
        let src = std::fs::read_to_string(&f).unwrap();
        for id in doc_comment_ids(&src) {
            seen += 1;
            if !mentions(&table, &id) {
                missing.push(format!(
                    "{id} ({})",
                    f.file_name().unwrap().to_string_lossy()
                ));
            }
        }
    }
    missing.sort();
    missing.dedup();
    assert!(seen > 50, "ids found: {seen}");
    assert!(
        missing.is_empty(),
        "statements tested but not in docs/CONFORMANCE.md: {missing:#?}"
    );
}
