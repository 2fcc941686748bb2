//! Soak test: the real `moonwire` binary as a child process under a sustained mixed load, with
//! reconnect storms and one kill -9 + restart in the middle.
//!
//! ```text
//! cargo test --release --test soak -- --ignored --nocapture
//! MOONWIRE_SOAK_SECS=20 cargo test --test soak -- --ignored --nocapture   # short, debug
//! ```
//!
//! Load (raw tokio TCP MQTT 3.1.1 clients, no library in the way):
//! - 600 devices `dev0..dev599`, persistent sessions (clean session 0), each subscribed to
//!   `soak/dev/<i>/cmd` at QoS 1. Every ~10 s a storm drops 30 % of them at once (half with
//!   DISCONNECT, half by closing the socket); they come back 0.5–2 s later with clean session 0.
//!   A few more drop at random every second.
//! - 300 publishers sending QoS 0/1 (50/50) to random devices, ~2,000 msg/s in total, with a
//!   per-device sequence number in the payload. Every PUBACKed sequence is recorded.
//! - 100 clients churning retained messages on `soak/state/<k>` (k in 0..2000, client c owns
//!   the k with k % 100 == c, so each topic's history has one order), QoS 1, set or clear.
//!
//! In the middle the broker is killed with SIGKILL and started again over the same data dir;
//! every client must reconnect. At the end publishing stops, every device reconnects once more
//! and drains, and:
//! - every PUBACKed QoS 1 sequence was received by its device at least once (duplicates are
//!   counted, not failed);
//! - every retained topic holds the last acknowledged value (or a later unacknowledged one);
//! - RSS in the last third of the run is at most 1.5× the RSS at the end of the first third,
//!   and the store file stays below 256 MiB.
//!
//! RSS, the store file size and `moonwire_store_queued_messages` are sampled every 5 s and
//! printed as a table (with each broker process's RSS growth rate), followed by one summary
//! line for BENCHMARKS.md.
//!
//! Environment: `MOONWIRE_SOAK_SECS` (default 60); for diagnosis, `MOONWIRE_SOAK_KILL=0` (no
//! kill -9: one broker process for the whole run) and `MOONWIRE_SOAK_STORMS=0` (no reconnect
//! storms or random drops). `MOONWIRE__…` variables reach the broker's config as usual.

mod child;
#[path = "../benches/support/raw.rs"]
mod raw;
use bytes::BytesMut;
use child::{Broker, http_get};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use raw::{connect_packet, parse, remaining_length};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::time::Instant;

const DEVICES: usize = 600;
const PUBLISHERS: usize = 300;
const RETAINERS: usize = 100;
const RETAINED_TOPICS: usize = 2000;
/// Target publish rate of all publishers together (msg/s).
const PUBLISH_RATE: f64 = 2000.0;
/// Each retained client sets or clears one of its topics this often (400 msg/s in total).
const RETAIN_EVERY: Duration = Duration::from_millis(250);
const STORM_EVERY: Duration = Duration::from_secs(10);
const STORM_SHARE: f64 = 0.3;
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
const STORE_LIMIT: u64 = 256 << 20;
const RSS_GROWTH_LIMIT: f64 = 1.5;
/// A third of the 60 s keep alive `raw::connect_packet` announces.
const PING_EVERY: Duration = Duration::from_secs(20);

/// Bound for a broker to start accepting connections.
const READY: Duration = Duration::from_secs(30);
/// Bound for a graceful stop.
const STOP: Duration = Duration::from_secs(15);
/// Bound for a CONNACK or SUBACK.
const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Child-process harness (tests/child)
// ---------------------------------------------------------------------------------------------

/// The shared harness with the soak's limits: 2,000 connections from one address, and more time
/// to start and stop under load.
fn soak_broker() -> Broker {
    let mut b = Broker::new("batch");
    b.max_connections = Some(2000);
    b.grace = "5s";
    b.ready = READY;
    b.stop = STOP;
    b
}

/// One unlabelled sample from Prometheus text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// VmRSS of a process in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------------------------
// Raw MQTT 3.1.1 client (after benches/support/raw.rs)
// ---------------------------------------------------------------------------------------------

fn publish_packet(topic: &str, payload: &[u8], qos: u8, retain: bool, pkid: u16) -> Vec<u8> {
    let len = 2 + topic.len() + if qos > 0 { 2 } else { 0 } + payload.len();
    let mut out = Vec::with_capacity(len + 5);
    out.push(0x30 | (qos << 1) | retain as u8);
    remaining_length(len, &mut out);
    out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    out.extend_from_slice(topic.as_bytes());
    if qos > 0 {
        out.extend_from_slice(&pkid.to_be_bytes());
    }
    out.extend_from_slice(payload);
    out
}

fn subscribe_packet(pkid: u16, filter: &str, qos: u8) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
    body.extend_from_slice(filter.as_bytes());
    body.push(qos);
    let mut out = vec![0x82];
    remaining_length(body.len(), &mut out);
    out.extend(body);
    out
}

fn puback(pkid: u16) -> [u8; 4] {
    let p = pkid.to_be_bytes();
    [0x40, 0x02, p[0], p[1]]
}

const PINGREQ: [u8; 2] = [0xC0, 0x00];
const DISCONNECT: [u8; 2] = [0xE0, 0x00];

struct Publish<'a> {
    topic: &'a [u8],
    qos: u8,
    retain: bool,
    pkid: u16,
    payload: &'a [u8],
}

fn parse_publish(first: u8, body: &[u8]) -> Option<Publish<'_>> {
    let qos = (first >> 1) & 3;
    let tl = u16::from_be_bytes([*body.first()?, *body.get(1)?]) as usize;
    let topic = body.get(2..2 + tl)?;
    let mut at = 2 + tl;
    let mut pkid = 0;
    if qos > 0 {
        pkid = u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]);
        at += 2;
    }
    Some(Publish {
        topic,
        qos,
        retain: first & 1 == 1,
        pkid,
        payload: body.get(at..)?,
    })
}

struct Conn {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    buf: BytesMut,
}

impl Conn {
    /// Connects and waits for an accepting CONNACK; returns session present.
    async fn open(port: u16, id: &str, clean: bool) -> std::io::Result<(Conn, bool)> {
        let fut = async {
            let s = TcpStream::connect(("127.0.0.1", port)).await?;
            s.set_nodelay(true)?;
            let (rd, mut wr) = s.into_split();
            wr.write_all(&connect_packet(id, clean)).await?;
            let mut c = Conn {
                rd,
                wr,
                buf: BytesMut::with_capacity(16 * 1024),
            };
            let (first, body) = c.next().await?;
            if first != 0x20 || body.get(1) != Some(&0) {
                return Err(std::io::Error::other(format!(
                    "CONNACK refused: {first:#x} {body:?}"
                )));
            }
            Ok((c, body.first() == Some(&1)))
        };
        tokio::time::timeout(WAIT, fut)
            .await
            .map_err(|_| std::io::Error::other("no CONNACK"))?
    }

    /// Next packet; cancel-safe (bytes are only ever added to the buffer).
    async fn next(&mut self) -> std::io::Result<(u8, BytesMut)> {
        loop {
            if let Some(p) = parse(&mut self.buf) {
                return Ok(p);
            }
            if self.rd.read_buf(&mut self.buf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.wr.write_all(bytes).await
    }
}

// ---------------------------------------------------------------------------------------------
// Shared bookkeeping
// ---------------------------------------------------------------------------------------------

/// One published device command.
#[derive(Clone, Copy, Default)]
struct Seq {
    qos: u8,
    acked: bool,
    /// Broker start (1 = before the kill) during which the PUBACK arrived.
    ack_epoch: u32,
    /// Seconds since the load started when the PUBACK arrived.
    ack_t: f32,
    /// Whether the device was connected when the PUBACK arrived.
    online_at_ack: bool,
    received: u32,
}

#[derive(Default)]
struct Dev {
    log: Mutex<Vec<Seq>>,
    online: AtomicBool,
    subscribed: AtomicBool,
    connects: AtomicU32,
    /// Broker start the device last connected to.
    epoch: AtomicU32,
    /// Reconnects after a SUBACK that found no session (CONNACK session present 0).
    session_missing: AtomicU32,
    /// Sequences received that were never published (would be a routing bug).
    unknown: AtomicU32,
    /// Connection timeline (seconds since the load started), printed for devices that lost
    /// acknowledged messages.
    events: Mutex<Vec<(f32, String)>>,
}

impl Dev {
    fn event(&self, t: f32, what: impl Into<String>) {
        self.events.lock().unwrap().push((t, what.into()));
    }
}

/// A retained set (Some) or clear (None) on one topic.
struct RetOp {
    n: u64,
    value: Option<Vec<u8>>,
    acked: bool,
}

/// Ops on one retained topic from its last acknowledged op on (or all, if none was acked).
#[derive(Default)]
struct RetTopic {
    ops: Vec<RetOp>,
}

impl RetTopic {
    fn ack(&mut self, n: u64) {
        if let Some(i) = self.ops.iter().position(|o| o.n == n) {
            self.ops[i].acked = true;
            self.ops.drain(..i);
        }
    }

    /// Values the topic may hold now: the last acknowledged one or any later unacknowledged.
    fn acceptable(&self) -> Vec<Option<Vec<u8>>> {
        let mut out: Vec<Option<Vec<u8>>> = self.ops.iter().map(|o| o.value.clone()).collect();
        if self.ops.first().is_none_or(|o| !o.acked) {
            out.push(None);
        }
        out
    }
}

#[derive(Default)]
struct Stats {
    pub_q0: AtomicU64,
    pub_q1: AtomicU64,
    acked: AtomicU64,
    delivered: AtomicU64,
    dev_connects: AtomicU64,
    dev_connect_failures: AtomicU64,
    /// Device connections closed by the broker side (not by a storm).
    dev_lost: AtomicU64,
    pub_connects: AtomicU64,
    pub_lost: AtomicU64,
    ret_connects: AtomicU64,
    ret_lost: AtomicU64,
    ret_set: AtomicU64,
    ret_clear: AtomicU64,
    ret_acked: AtomicU64,
    wrong_topic: AtomicU64,
    storms: AtomicU64,
    storm_drops: AtomicU64,
    random_drops: AtomicU64,
    unexpected_packets: AtomicU64,
}

struct Shared {
    load_start: Mutex<Option<Instant>>,
    port: AtomicU16,
    epoch: AtomicU32,
    stop_publishing: AtomicBool,
    stop_storms: AtomicBool,
    devs: Vec<Dev>,
    ret: Vec<Mutex<RetTopic>>,
    pub_epoch: Vec<AtomicU32>,
    ret_epoch: Vec<AtomicU32>,
    st: Stats,
}

impl Shared {
    fn t(&self) -> f32 {
        self.load_start
            .lock()
            .unwrap()
            .map(|s| s.elapsed().as_secs_f32())
            .unwrap_or(0.0)
    }

    /// Records a device's received publish; returns the packet id to acknowledge.
    fn device_publish(&self, i: usize, first: u8, body: &[u8]) -> Option<u16> {
        let Some(p) = parse_publish(first, body) else {
            self.st.unexpected_packets.fetch_add(1, Relaxed);
            return None;
        };
        self.st.delivered.fetch_add(1, Relaxed);
        let want = format!("soak/dev/{i}/cmd");
        if p.topic != want.as_bytes() {
            self.st.wrong_topic.fetch_add(1, Relaxed);
        } else {
            let seq = std::str::from_utf8(p.payload)
                .ok()
                .and_then(|s| s.split(' ').next())
                .and_then(|s| s.parse::<usize>().ok());
            let dev = &self.devs[i];
            let mut log = dev.log.lock().unwrap();
            match seq.and_then(|s| log.get_mut(s)) {
                Some(s) => s.received += 1,
                None => {
                    dev.unknown.fetch_add(1, Relaxed);
                }
            }
        }
        (p.qos > 0).then_some(p.pkid)
    }
}

fn rng() -> StdRng {
    StdRng::from_entropy()
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

enum Cmd {
    /// Drop the connection (with DISCONNECT or by closing the socket) and come back after `pause`.
    Drop { graceful: bool, pause: Duration },
}

enum End {
    Lost,
    Dropped { graceful: bool, pause: Duration },
    Stop,
}

async fn device(i: usize, sh: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Cmd>) {
    let id = format!("dev{i}");
    let filter = format!("soak/dev/{i}/cmd");
    let dev = &sh.devs[i];
    let mut rng = rng();
    let mut pause = Duration::ZERO;
    loop {
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        let port = sh.port.load(Relaxed);
        let epoch = sh.epoch.load(Relaxed);
        dev.event(sh.t(), format!("CONNECT (start {epoch})"));
        let (mut c, present) = match Conn::open(port, &id, false).await {
            Ok(x) => x,
            Err(e) => {
                dev.event(sh.t(), format!("connect failed: {e}"));
                sh.st.dev_connect_failures.fetch_add(1, Relaxed);
                pause = Duration::from_millis(rng.gen_range(100..400));
                continue;
            }
        };
        sh.st.dev_connects.fetch_add(1, Relaxed);
        dev.event(sh.t(), format!("CONNACK session present {}", present as u8));
        dev.epoch.store(epoch, Relaxed);
        dev.online.store(true, Relaxed);
        if !present || !dev.subscribed.load(Relaxed) {
            if !present && dev.subscribed.load(Relaxed) {
                dev.session_missing.fetch_add(1, Relaxed);
                eprintln!(
                    "[{:6.1}s] {id}: CONNACK session present 0 for a subscribed persistent session",
                    sh.t()
                );
            }
            let ok = async {
                c.send(&subscribe_packet(1, &filter, 1)).await?;
                loop {
                    let (first, body) = c.next().await?;
                    match first >> 4 {
                        9 => {
                            if body.get(2) != Some(&1) {
                                return Err(std::io::Error::other(format!("SUBACK {body:?}")));
                            }
                            return Ok(());
                        }
                        3 => {
                            if let Some(pkid) = sh.device_publish(i, first, &body) {
                                c.send(&puback(pkid)).await?;
                            }
                        }
                        _ => {}
                    }
                }
            };
            match tokio::time::timeout(WAIT, ok).await {
                Ok(Ok(())) => {
                    dev.event(sh.t(), "SUBACK");
                    dev.subscribed.store(true, Relaxed);
                }
                other => {
                    eprintln!("[{:6.1}s] {id}: subscribe failed: {other:?}", sh.t());
                    dev.online.store(false, Relaxed);
                    pause = Duration::from_millis(200);
                    continue;
                }
            }
        }
        // Counted once subscribed, so "reconnected" means ready to receive.
        dev.connects.fetch_add(1, Relaxed);
        let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
        let end = loop {
            tokio::select! {
                r = c.next() => match r {
                    Ok((first, body)) if first >> 4 == 3 => {
                        if let Some(pkid) = sh.device_publish(i, first, &body)
                            && c.send(&puback(pkid)).await.is_err()
                        {
                            break End::Lost;
                        }
                    }
                    Ok((0xD0, _)) => {}
                    Ok(_) => {
                        sh.st.unexpected_packets.fetch_add(1, Relaxed);
                    }
                    Err(_) => break End::Lost,
                },
                cmd = rx.recv() => match cmd {
                    Some(Cmd::Drop { graceful, pause }) => break End::Dropped { graceful, pause },
                    None => break End::Stop,
                },
                _ = ping.tick() => {
                    if c.send(&PINGREQ).await.is_err() {
                        break End::Lost;
                    }
                }
            }
        };
        dev.online.store(false, Relaxed);
        match end {
            End::Lost => {
                dev.event(sh.t(), "connection closed by the broker");
                sh.st.dev_lost.fetch_add(1, Relaxed);
                pause = Duration::from_millis(rng.gen_range(50..300));
            }
            End::Dropped { graceful, pause: p } => {
                dev.event(
                    sh.t(),
                    format!(
                        "{} (back in {} ms)",
                        if graceful {
                            "DISCONNECT"
                        } else {
                            "socket closed"
                        },
                        p.as_millis()
                    ),
                );
                if graceful {
                    let _ = c.send(&DISCONNECT).await;
                }
                drop(c);
                pause = p;
            }
            End::Stop => {
                let _ = c.send(&DISCONNECT).await;
                return;
            }
        }
    }
}

async fn publisher(p: usize, sh: Arc<Shared>) {
    let id = format!("pub{p}");
    let every = Duration::from_secs_f64(PUBLISHERS as f64 / PUBLISH_RATE);
    let mut rng = rng();
    let pad = "x".repeat(32);
    loop {
        if sh.stop_publishing.load(Relaxed) {
            return;
        }
        let port = sh.port.load(Relaxed);
        let epoch = sh.epoch.load(Relaxed);
        let mut c = match Conn::open(port, &id, true).await {
            Ok((c, _)) => c,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(rng.gen_range(100..400))).await;
                continue;
            }
        };
        sh.st.pub_connects.fetch_add(1, Relaxed);
        sh.pub_epoch[p].store(epoch, Relaxed);
        let mut inflight: HashMap<u16, (usize, usize)> = HashMap::new();
        let mut pkid: u16 = 0;
        let offset = Duration::from_secs_f64(rng.gen_range(0.0..every.as_secs_f64()));
        let mut tick = tokio::time::interval_at(Instant::now() + offset, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
        let mut stopping: Option<Instant> = None;
        let lost = loop {
            if let Some(since) = stopping
                && (inflight.is_empty() || since.elapsed() > Duration::from_secs(20))
            {
                let _ = c.send(&DISCONNECT).await;
                return;
            }
            tokio::select! {
                _ = tick.tick(), if stopping.is_none() => {
                    if sh.stop_publishing.load(Relaxed) {
                        stopping = Some(Instant::now());
                        continue;
                    }
                    let d = rng.gen_range(0..DEVICES);
                    let qos = rng.gen_range(0..2u8);
                    let seq = {
                        let mut log = sh.devs[d].log.lock().unwrap();
                        log.push(Seq { qos, ..Default::default() });
                        log.len() - 1
                    };
                    let payload = format!("{seq} q{qos} {id} {pad}");
                    let topic = format!("soak/dev/{d}/cmd");
                    let id16 = if qos == 1 {
                        loop {
                            pkid = pkid.wrapping_add(1);
                            if pkid != 0 && !inflight.contains_key(&pkid) {
                                break;
                            }
                        }
                        inflight.insert(pkid, (d, seq));
                        sh.st.pub_q1.fetch_add(1, Relaxed);
                        pkid
                    } else {
                        sh.st.pub_q0.fetch_add(1, Relaxed);
                        0
                    };
                    if c.send(&publish_packet(&topic, payload.as_bytes(), qos, false, id16)).await.is_err() {
                        break true;
                    }
                }
                r = c.next() => match r {
                    Ok((0x40, body)) if body.len() >= 2 => {
                        let id = u16::from_be_bytes([body[0], body[1]]);
                        if let Some((d, seq)) = inflight.remove(&id) {
                            let (t, epoch) = (sh.t(), sh.epoch.load(Relaxed));
                            let online = sh.devs[d].online.load(Relaxed);
                            let mut log = sh.devs[d].log.lock().unwrap();
                            let s = &mut log[seq];
                            s.acked = true;
                            s.ack_epoch = epoch;
                            s.ack_t = t;
                            s.online_at_ack = online;
                            sh.st.acked.fetch_add(1, Relaxed);
                        } else {
                            sh.st.unexpected_packets.fetch_add(1, Relaxed);
                        }
                    }
                    Ok((0xD0, _)) => {}
                    Ok(_) => {
                        sh.st.unexpected_packets.fetch_add(1, Relaxed);
                    }
                    Err(_) => break true,
                },
                _ = ping.tick() => {
                    if c.send(&PINGREQ).await.is_err() {
                        break true;
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(100)), if stopping.is_some() => {}
            }
        };
        if lost {
            sh.st.pub_lost.fetch_add(1, Relaxed);
            // Unacknowledged publishes of this connection stay unacknowledged: not resent.
            if stopping.is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(rng.gen_range(50..300))).await;
        }
    }
}

async fn retainer(r: usize, sh: Arc<Shared>) {
    let id = format!("ret{r}");
    let topics: Vec<usize> = (r..RETAINED_TOPICS).step_by(RETAINERS).collect();
    let mut rng = rng();
    let mut n: u64 = 0;
    loop {
        if sh.stop_publishing.load(Relaxed) {
            return;
        }
        let port = sh.port.load(Relaxed);
        let epoch = sh.epoch.load(Relaxed);
        let mut c = match Conn::open(port, &id, true).await {
            Ok((c, _)) => c,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(rng.gen_range(100..400))).await;
                continue;
            }
        };
        sh.st.ret_connects.fetch_add(1, Relaxed);
        sh.ret_epoch[r].store(epoch, Relaxed);
        let mut inflight: HashMap<u16, (usize, u64)> = HashMap::new();
        let mut pkid: u16 = 0;
        let offset = Duration::from_secs_f64(rng.gen_range(0.0..RETAIN_EVERY.as_secs_f64()));
        let mut tick = tokio::time::interval_at(Instant::now() + offset, RETAIN_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
        let mut stopping: Option<Instant> = None;
        let lost = loop {
            if let Some(since) = stopping
                && (inflight.is_empty() || since.elapsed() > Duration::from_secs(20))
            {
                let _ = c.send(&DISCONNECT).await;
                return;
            }
            tokio::select! {
                _ = tick.tick(), if stopping.is_none() => {
                    if sh.stop_publishing.load(Relaxed) {
                        stopping = Some(Instant::now());
                        continue;
                    }
                    let k = topics[rng.gen_range(0..topics.len())];
                    n += 1;
                    let value = if rng.gen_bool(0.7) {
                        let len = rng.gen_range(16..256);
                        let mut v = format!("{id}-{n}-").into_bytes();
                        v.resize(len.max(v.len()), b'r');
                        sh.st.ret_set.fetch_add(1, Relaxed);
                        Some(v)
                    } else {
                        sh.st.ret_clear.fetch_add(1, Relaxed);
                        None
                    };
                    loop {
                        pkid = pkid.wrapping_add(1);
                        if pkid != 0 && !inflight.contains_key(&pkid) {
                            break;
                        }
                    }
                    let packet = publish_packet(
                        &format!("soak/state/{k}"),
                        value.as_deref().unwrap_or_default(),
                        1,
                        true,
                        pkid,
                    );
                    sh.ret[k].lock().unwrap().ops.push(RetOp { n, value, acked: false });
                    inflight.insert(pkid, (k, n));
                    if c.send(&packet).await.is_err() {
                        break true;
                    }
                }
                r = c.next() => match r {
                    Ok((0x40, body)) if body.len() >= 2 => {
                        let id = u16::from_be_bytes([body[0], body[1]]);
                        if let Some((k, n)) = inflight.remove(&id) {
                            sh.ret[k].lock().unwrap().ack(n);
                            sh.st.ret_acked.fetch_add(1, Relaxed);
                        } else {
                            sh.st.unexpected_packets.fetch_add(1, Relaxed);
                        }
                    }
                    Ok((0xD0, _)) => {}
                    Ok(_) => {
                        sh.st.unexpected_packets.fetch_add(1, Relaxed);
                    }
                    Err(_) => break true,
                },
                _ = ping.tick() => {
                    if c.send(&PINGREQ).await.is_err() {
                        break true;
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(100)), if stopping.is_some() => {}
            }
        };
        if lost {
            sh.st.ret_lost.fetch_add(1, Relaxed);
            if stopping.is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(rng.gen_range(50..300))).await;
        }
    }
}

/// Every ~10 s 30 % of the devices drop at once and come back 0.5–2 s later; in between,
/// about 1 % a second drop on their own.
async fn storms(sh: Arc<Shared>, txs: Vec<mpsc::UnboundedSender<Cmd>>) {
    if txs.is_empty() {
        return;
    }
    let mut rng = rng();
    // The first storm after half a period, so the kill -9 (at half the run) falls between
    // storms rather than on one.
    let mut next_storm = Instant::now() + STORM_EVERY / 2;
    while !sh.stop_storms.load(Relaxed) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if sh.stop_storms.load(Relaxed) {
            break;
        }
        let storm = Instant::now() >= next_storm;
        let picked: Vec<usize> = if storm {
            next_storm =
                Instant::now() + STORM_EVERY + Duration::from_millis(rng.gen_range(0..2000))
                    - Duration::from_secs(1);
            sh.st.storms.fetch_add(1, Relaxed);
            rand::seq::index::sample(&mut rng, DEVICES, (DEVICES as f64 * STORM_SHARE) as usize)
                .into_vec()
        } else {
            (0..DEVICES).filter(|_| rng.gen_bool(0.01)).collect()
        };
        for i in picked {
            let graceful = rng.gen_bool(0.5);
            let pause = Duration::from_millis(rng.gen_range(500..2000));
            if txs[i].send(Cmd::Drop { graceful, pause }).is_ok() {
                if storm {
                    sh.st.storm_drops.fetch_add(1, Relaxed);
                } else {
                    sh.st.random_drops.fetch_add(1, Relaxed);
                }
            }
        }
        if storm {
            println!(
                "[{:6.1}s] storm: {} devices dropped",
                sh.t(),
                (DEVICES as f64 * STORM_SHARE) as usize
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sampling and reporting
// ---------------------------------------------------------------------------------------------

struct Sample {
    t: f32,
    start: u32,
    rss_kib: u64,
    store_bytes: u64,
    queued: Option<u64>,
    connections: Option<u64>,
    published: u64,
    acked: u64,
    delivered: u64,
    note: String,
}

async fn sample(b: &Broker, sh: &Shared, note: &str) -> Sample {
    let metrics = match http_get(b.http, "/metrics").await {
        Some((200, body)) => body,
        _ => String::new(),
    };
    Sample {
        t: sh.t(),
        start: b.starts,
        rss_kib: b.pid().and_then(rss_kib).unwrap_or(0),
        store_bytes: std::fs::metadata(b.store_path())
            .map(|m| m.len())
            .unwrap_or(0),
        queued: metric(&metrics, "moonwire_store_queued_messages").map(|v| v as u64),
        connections: metric(&metrics, "moonwire_connections").map(|v| v as u64),
        published: sh.st.pub_q0.load(Relaxed) + sh.st.pub_q1.load(Relaxed),
        acked: sh.st.acked.load(Relaxed),
        delivered: sh.st.delivered.load(Relaxed),
        note: note.to_string(),
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn print_table(samples: &[Sample]) {
    println!();
    println!(
        "{:>7} {:>5} {:>9} {:>10} {:>8} {:>6} {:>10} {:>9} {:>10}  note",
        "t (s)",
        "start",
        "RSS MiB",
        "store MiB",
        "queued",
        "conns",
        "published",
        "acked",
        "delivered"
    );
    for s in samples {
        println!(
            "{:>7.1} {:>5} {:>9.1} {:>10.2} {:>8} {:>6} {:>10} {:>9} {:>10}  {}",
            s.t,
            s.start,
            s.rss_kib as f64 / 1024.0,
            mib(s.store_bytes),
            s.queued.map(|q| q.to_string()).unwrap_or("-".into()),
            s.connections.map(|q| q.to_string()).unwrap_or("-".into()),
            s.published,
            s.acked,
            s.delivered,
            s.note
        );
    }
    println!();
}

/// Per broker process: RSS growth from 10 s after it started (warm-up) to the end of the load,
/// per second and per 1,000 messages published.
fn rss_growth(samples: &[Sample], load_end: f32) -> Vec<String> {
    let mut out = Vec::new();
    let mut starts: Vec<u32> = samples.iter().map(|s| s.start).collect();
    starts.dedup();
    for start in starts {
        let mine: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.start == start && s.rss_kib > 0 && s.t <= load_end + 1.0)
            .collect();
        let Some(t0) = mine.first().map(|s| if start == 1 { 0.0 } else { s.t }) else {
            continue;
        };
        let warm: Vec<&&Sample> = mine.iter().filter(|s| s.t >= t0 + 10.0).collect();
        let (Some(a), Some(b)) = (warm.first(), warm.last()) else {
            continue;
        };
        if b.t - a.t < 5.0 {
            continue;
        }
        let d_mib = (b.rss_kib as f64 - a.rss_kib as f64) / 1024.0;
        let d_msgs = b.published.saturating_sub(a.published).max(1) as f64;
        out.push(format!(
            "RSS growth of broker process {start}: {:.1} → {:.1} MiB from {:.0} s to {:.0} s = {:+.2} MiB/s, {:+.1} KiB per 1,000 messages published",
            a.rss_kib as f64 / 1024.0,
            b.rss_kib as f64 / 1024.0,
            a.t,
            b.t,
            d_mib / (b.t - a.t) as f64,
            d_mib * 1024.0 / d_msgs * 1000.0,
        ));
    }
    out
}

/// Waits until `cond` holds, checking every 200 ms; false after `max`.
async fn wait_for(max: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + max;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// (acked sequences not yet received, devices with such sequences).
fn missing(sh: &Shared) -> (u64, usize) {
    let (mut n, mut devs) = (0, 0);
    for d in &sh.devs {
        let log = d.log.lock().unwrap();
        let m = log.iter().filter(|s| s.acked && s.received == 0).count() as u64;
        n += m;
        devs += (m > 0) as usize;
    }
    (n, devs)
}

/// Subscribes a fresh client to `soak/state/#` and compares every topic with what the
/// retained clients had acknowledged. Returns (retained delivered, mismatches as text).
async fn check_retained(port: u16, sh: &Shared) -> (usize, Vec<String>) {
    let (mut c, _) = Conn::open(port, "soak-retained-check", true)
        .await
        .expect("retained check connect");
    c.send(&subscribe_packet(1, "soak/state/#", 1))
        .await
        .unwrap();
    let mut got: HashMap<usize, Vec<Vec<u8>>> = HashMap::new();
    let mut problems = Vec::new();
    let mut total = 0;
    let quiet = Duration::from_secs(3);
    loop {
        let r = match tokio::time::timeout(quiet, c.next()).await {
            Ok(r) => r,
            Err(_) => break,
        };
        let (first, body) = r.expect("retained check connection");
        if first >> 4 != 3 {
            continue;
        }
        let p = parse_publish(first, &body).expect("PUBLISH");
        if p.qos > 0 {
            c.send(&puback(p.pkid)).await.unwrap();
        }
        total += 1;
        let topic = String::from_utf8_lossy(p.topic).into_owned();
        if !p.retain {
            problems.push(format!("{topic}: delivered without the retain flag"));
        }
        match topic
            .strip_prefix("soak/state/")
            .and_then(|k| k.parse::<usize>().ok())
        {
            Some(k) if k < RETAINED_TOPICS => got.entry(k).or_default().push(p.payload.to_vec()),
            _ => problems.push(format!("unexpected retained topic {topic}")),
        }
    }
    let _ = c.send(&DISCONNECT).await;
    for k in 0..RETAINED_TOPICS {
        let have: Option<Vec<u8>> = match got.get(&k).map(|v| v.as_slice()) {
            None => None,
            Some([one]) => Some(one.clone()),
            Some(many) => {
                problems.push(format!("soak/state/{k}: delivered {} times", many.len()));
                many.last().cloned()
            }
        };
        let ok = sh.ret[k].lock().unwrap().acceptable();
        if !ok.contains(&have) {
            let show = |v: &Option<Vec<u8>>| match v {
                None => "(none)".to_string(),
                Some(v) => String::from_utf8_lossy(&v[..v.len().min(24)]).into_owned(),
            };
            problems.push(format!(
                "soak/state/{k}: holds {}, acceptable {:?}",
                show(&have),
                ok.iter().map(show).collect::<Vec<_>>()
            ));
        }
    }
    (total, problems)
}

// ---------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: run with cargo test --release --test soak -- --ignored --nocapture"]
async fn soak() {
    let secs: u64 = std::env::var("MOONWIRE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let duration = Duration::from_secs(secs);
    let flag = |name: &str| std::env::var(name).map(|v| v != "0").unwrap_or(true);
    let (kill, storms_on) = (flag("MOONWIRE_SOAK_KILL"), flag("MOONWIRE_SOAK_STORMS"));
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!(
        "soak: {secs} s, {} clients ({DEVICES} devices, {PUBLISHERS} publishers, {RETAINERS} retained), {profile} build, kill -9: {kill}, storms: {storms_on}",
        DEVICES + PUBLISHERS + RETAINERS
    );

    let mut b = soak_broker();
    b.start().await;
    let sh = Arc::new(Shared {
        load_start: Mutex::new(None),
        port: AtomicU16::new(b.mqtt),
        epoch: AtomicU32::new(1),
        stop_publishing: AtomicBool::new(false),
        stop_storms: AtomicBool::new(false),
        devs: (0..DEVICES).map(|_| Dev::default()).collect(),
        ret: (0..RETAINED_TOPICS).map(|_| Mutex::default()).collect(),
        pub_epoch: (0..PUBLISHERS).map(|_| AtomicU32::new(0)).collect(),
        ret_epoch: (0..RETAINERS).map(|_| AtomicU32::new(0)).collect(),
        st: Stats::default(),
    });

    // Devices first: every subscription exists before anything is published.
    let setup = Instant::now();
    let mut txs = Vec::new();
    let mut devices = Vec::new();
    for i in 0..DEVICES {
        let (tx, rx) = mpsc::unbounded_channel();
        txs.push(tx);
        devices.push(tokio::spawn(device(i, sh.clone(), rx)));
    }
    let all_subscribed = wait_for(Duration::from_secs(120), || {
        sh.devs.iter().all(|d| d.subscribed.load(Relaxed))
    })
    .await;
    b.assert_alive("while devices connected");
    assert!(
        all_subscribed,
        "only {} of {DEVICES} devices subscribed within 120 s",
        sh.devs
            .iter()
            .filter(|d| d.subscribed.load(Relaxed))
            .count()
    );
    println!(
        "{DEVICES} devices connected and subscribed in {:.1} s",
        setup.elapsed().as_secs_f64()
    );

    // Load.
    *sh.load_start.lock().unwrap() = Some(Instant::now());
    let load_start = Instant::now();
    let mut senders = Vec::new();
    for p in 0..PUBLISHERS {
        senders.push(tokio::spawn(publisher(p, sh.clone())));
    }
    for r in 0..RETAINERS {
        senders.push(tokio::spawn(retainer(r, sh.clone())));
    }
    let storm_task = tokio::spawn(storms(
        sh.clone(),
        if storms_on { txs.clone() } else { Vec::new() },
    ));

    let kill_at = duration / 2;
    let mut killed_at: Option<f32> = None;
    let mut reconnected_after_kill: Option<f32> = None;
    let mut restarted_at: Option<f32> = None;
    let mut samples: Vec<Sample> = Vec::new();
    let mut next_sample = SAMPLE_EVERY;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        b.assert_alive("under load");
        let t = load_start.elapsed();
        if kill && killed_at.is_none() && t >= kill_at {
            samples.push(sample(&b, &sh, "before kill -9").await);
            b.kill9();
            let kt = sh.t();
            killed_at = Some(kt);
            println!("[{kt:6.1}s] kill -9");
            sh.epoch.fetch_add(1, Relaxed);
            b.start().await;
            sh.port.store(b.mqtt, Relaxed);
            restarted_at = Some(sh.t());
            println!(
                "[{:6.1}s] restarted (start {}, mqtt port {})",
                sh.t(),
                b.starts,
                b.mqtt
            );
            samples.push(sample(&b, &sh, "restarted").await);
        }
        if let Some(k) = killed_at
            && reconnected_after_kill.is_none()
        {
            let e = sh.epoch.load(Relaxed);
            let all = sh.devs.iter().all(|d| d.epoch.load(Relaxed) == e)
                && sh.pub_epoch.iter().all(|x| x.load(Relaxed) == e)
                && sh.ret_epoch.iter().all(|x| x.load(Relaxed) == e);
            if all {
                let t = sh.t();
                reconnected_after_kill = Some(t);
                println!(
                    "[{t:6.1}s] all {} clients reconnected after the kill ({:.1} s)",
                    DEVICES + PUBLISHERS + RETAINERS,
                    t - k
                );
            }
        }
        if t >= next_sample {
            let s = sample(&b, &sh, "").await;
            println!(
                "[{:6.1}s] rss {:.1} MiB, store {:.2} MiB, queued {:?}, conns {:?}, published {}, acked {}, delivered {}",
                s.t,
                s.rss_kib as f64 / 1024.0,
                mib(s.store_bytes),
                s.queued,
                s.connections,
                s.published,
                s.acked,
                s.delivered
            );
            samples.push(s);
            next_sample += SAMPLE_EVERY;
        }
        if t >= duration {
            break;
        }
    }

    // Stop the load: storms first, then publishing (waiting for outstanding PUBACKs).
    sh.stop_storms.store(true, Relaxed);
    let _ = storm_task.await;
    sh.stop_publishing.store(true, Relaxed);
    for h in senders {
        tokio::time::timeout(Duration::from_secs(60), h)
            .await
            .expect("publisher did not stop within 60 s")
            .expect("publisher task panicked");
    }
    let load_secs = load_start.elapsed().as_secs_f64();
    b.assert_alive("after the load");
    println!("[{:6.1}s] publishing stopped", sh.t());
    samples.push(sample(&b, &sh, "publishing stopped").await);

    // Every client must have come back after the kill.
    let epoch = sh.epoch.load(Relaxed);
    let stale_pubs = sh
        .pub_epoch
        .iter()
        .filter(|e| e.load(Relaxed) != epoch)
        .count();
    let stale_rets = sh
        .ret_epoch
        .iter()
        .filter(|e| e.load(Relaxed) != epoch)
        .count();

    // Every device reconnects once more (clean session 0) and drains.
    let before: Vec<u32> = sh.devs.iter().map(|d| d.connects.load(Relaxed)).collect();
    for tx in &txs {
        let _ = tx.send(Cmd::Drop {
            graceful: true,
            pause: Duration::ZERO,
        });
    }
    let all_back = wait_for(Duration::from_secs(60), || {
        sh.devs
            .iter()
            .zip(&before)
            .all(|(d, n)| d.connects.load(Relaxed) > *n && d.online.load(Relaxed))
    })
    .await;
    let not_back: Vec<usize> = sh
        .devs
        .iter()
        .zip(&before)
        .enumerate()
        .filter(|(_, (d, n))| !(d.connects.load(Relaxed) > **n && d.online.load(Relaxed)))
        .map(|(i, _)| i)
        .collect();
    println!(
        "[{:6.1}s] final reconnect: {} of {DEVICES} devices back",
        sh.t(),
        DEVICES - not_back.len()
    );
    // Drain: until nothing acknowledged is missing, or no progress for 15 s (at most 120 s).
    let drain_start = Instant::now();
    let mut last = missing(&sh).0;
    let mut last_progress = Instant::now();
    loop {
        let (m, _) = missing(&sh);
        if m == 0 {
            break;
        }
        if m < last {
            last = m;
            last_progress = Instant::now();
        }
        if last_progress.elapsed() > Duration::from_secs(15)
            || drain_start.elapsed() > Duration::from_secs(120)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Duplicates sent right behind must show up in this window.
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "[{:6.1}s] drained in {:.1} s",
        sh.t(),
        drain_start.elapsed().as_secs_f64()
    );
    b.assert_alive("after the drain");
    samples.push(sample(&b, &sh, "drained").await);

    let (retained_delivered, retained_problems) = check_retained(b.mqtt, &sh).await;

    // Devices leave with DISCONNECT.
    drop(txs);
    for h in devices {
        let _ = tokio::time::timeout(Duration::from_secs(10), h).await;
    }

    // ---- Report ----
    let st = &sh.st;
    let (pub_q0, pub_q1) = (st.pub_q0.load(Relaxed), st.pub_q1.load(Relaxed));
    let acked = st.acked.load(Relaxed);
    let delivered = st.delivered.load(Relaxed);
    let mut duplicates = 0u64;
    let mut lost: Vec<(usize, usize, Seq)> = Vec::new();
    let mut unacked_q1_received = 0u64;
    let mut unacked_q1 = 0u64;
    let mut q0_received = 0u64;
    for (i, d) in sh.devs.iter().enumerate() {
        for (seq, s) in d.log.lock().unwrap().iter().enumerate() {
            duplicates += s.received.saturating_sub(1) as u64;
            if s.qos == 0 {
                q0_received += (s.received > 0) as u64;
            }
            if s.qos == 1 && !s.acked {
                unacked_q1 += 1;
                unacked_q1_received += (s.received > 0) as u64;
            }
            if s.acked && s.received == 0 {
                lost.push((i, seq, *s));
            }
        }
    }
    let session_missing: u32 = sh
        .devs
        .iter()
        .map(|d| d.session_missing.load(Relaxed))
        .sum();
    let unknown: u32 = sh.devs.iter().map(|d| d.unknown.load(Relaxed)).sum();

    print_table(&samples);
    let growth = rss_growth(&samples, load_secs as f32);
    for g in &growth {
        println!("{g}");
    }

    println!(
        "clients: devices {} connects ({} failed attempts, {} closed by broker), publishers {} connects ({} lost), retained {} connects ({} lost)",
        st.dev_connects.load(Relaxed),
        st.dev_connect_failures.load(Relaxed),
        st.dev_lost.load(Relaxed),
        st.pub_connects.load(Relaxed),
        st.pub_lost.load(Relaxed),
        st.ret_connects.load(Relaxed),
        st.ret_lost.load(Relaxed),
    );
    println!(
        "storms: {} ({} device drops), random drops {}; kill -9 at {:.2} s, accepting again at {:.2} s, all clients back {}",
        st.storms.load(Relaxed),
        st.storm_drops.load(Relaxed),
        st.random_drops.load(Relaxed),
        killed_at.unwrap_or(f32::NAN),
        restarted_at.unwrap_or(f32::NAN),
        match (killed_at, reconnected_after_kill) {
            (Some(k), Some(r)) => format!("after {:.1} s", r - k),
            _ => "never".to_string(),
        }
    );
    println!(
        "publish: QoS0 {pub_q0} ({q0_received} delivered), QoS1 {pub_q1} (acked {acked}, {unacked_q1} unacked of which {unacked_q1_received} delivered anyway); {:.0} msg/s over {load_secs:.1} s",
        (pub_q0 + pub_q1) as f64 / load_secs
    );
    println!(
        "retained: {} sets, {} clears, {} acked; check: {retained_delivered} delivered, {} problems",
        st.ret_set.load(Relaxed),
        st.ret_clear.load(Relaxed),
        st.ret_acked.load(Relaxed),
        retained_problems.len()
    );
    println!(
        "anomalies: session present 0 on resume {session_missing}, wrong topic {}, unknown seq {unknown}, unexpected packets {}",
        st.wrong_topic.load(Relaxed),
        st.unexpected_packets.load(Relaxed)
    );
    if !lost.is_empty() {
        let devices = lost
            .iter()
            .map(|(i, _, _)| i)
            .collect::<std::collections::HashSet<_>>()
            .len();
        println!(
            "LOST {} acknowledged messages on {devices} devices",
            lost.len()
        );
        // Before the kill (the router alone held them when the process died) and after the
        // restart (the broker was up the whole time since).
        let labels = if killed_at.is_some() {
            [
                ("acked before the kill -9", true),
                ("acked after the restart", false),
            ]
        } else {
            [("acked", true), ("", false)]
        };
        for (label, epoch_one) in labels {
            let part: Vec<&(usize, usize, Seq)> = lost
                .iter()
                .filter(|(_, _, s)| (s.ack_epoch == 1) == epoch_one)
                .collect();
            if part.is_empty() {
                continue;
            }
            let online = part.iter().filter(|(_, _, s)| s.online_at_ack).count();
            println!(
                "  {} {label} ({online} while the device was connected):",
                part.len()
            );
            for (i, seq, s) in part.iter().take(15) {
                println!(
                    "    dev{i} seq {seq}: acked at {:.2} s, device connected at ack: {}{}",
                    s.ack_t,
                    s.online_at_ack,
                    killed_at
                        .filter(|_| epoch_one)
                        .map(|k| format!(", {:.0} ms before the kill", (k - s.ack_t) * 1000.0))
                        .unwrap_or_default()
                );
            }
            let mut shown = std::collections::HashSet::new();
            for (i, seq, s) in &part {
                if shown.len() >= 6 || !shown.insert(*i) {
                    continue;
                }
                println!(
                    "    dev{i} timeline around seq {seq} (acked at {:.2} s):",
                    s.ack_t
                );
                for (t, e) in sh.devs[*i].events.lock().unwrap().iter() {
                    if (t - s.ack_t).abs() <= 3.0 {
                        println!("      {t:8.2} s  {e}");
                    }
                }
            }
        }
    }
    for p in retained_problems.iter().take(20) {
        println!("  retained: {p}");
    }
    let log = b.log();
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("panicked"))
        .collect();
    let warns = log.lines().filter(|l| l.contains("WARN")).count();
    println!(
        "broker log: {} ERROR/panic lines, {warns} WARN lines",
        errors.len()
    );
    for l in errors.iter().take(10) {
        println!("  {l}");
    }

    // Stability: last third against the end of the first third.
    let third = load_secs as f32 / 3.0;
    let base = samples
        .iter()
        .rfind(|s| s.t <= third && s.rss_kib > 0 && s.note.is_empty())
        .or(samples.first())
        .map(|s| s.rss_kib)
        .unwrap_or(0);
    let last_third_max = samples
        .iter()
        .filter(|s| s.t >= 2.0 * third && s.t <= load_secs as f32 + 1.0)
        .map(|s| s.rss_kib)
        .max()
        .unwrap_or(0);
    let store_max = samples.iter().map(|s| s.store_bytes).max().unwrap_or(0);
    let first = samples.first().unwrap();
    let lastl = samples.last().unwrap();

    let storm_text = if storms_on {
        format!(
            "storms every {} s ×{:.0}%",
            STORM_EVERY.as_secs(),
            STORM_SHARE * 100.0
        )
    } else {
        "no storms".to_string()
    };
    let kill_text = match killed_at {
        Some(k) => format!("kill -9 at {k:.0} s"),
        None => "no kill".to_string(),
    };
    println!();
    println!(
        "SUMMARY soak {secs} s ({profile}): {} clients ({DEVICES} persistent devices, {PUBLISHERS} publishers, {RETAINERS} retained churners), {storm_text}, {kill_text} | published {} (QoS0 {pub_q0} / QoS1 {pub_q1}), {:.0} msg/s | acked {acked} | delivered {delivered} | duplicates {duplicates} | lost {} | retained ops {} ({} mismatches) | RSS {:.1} → {:.1} MiB (end of first third {:.1}, max last third {:.1}) | store {:.2} → {:.2} MiB (max {:.2})",
        DEVICES + PUBLISHERS + RETAINERS,
        pub_q0 + pub_q1,
        (pub_q0 + pub_q1) as f64 / load_secs,
        lost.len(),
        st.ret_set.load(Relaxed) + st.ret_clear.load(Relaxed),
        retained_problems.len(),
        first.rss_kib as f64 / 1024.0,
        lastl.rss_kib as f64 / 1024.0,
        base as f64 / 1024.0,
        last_third_max as f64 / 1024.0,
        mib(first.store_bytes),
        mib(lastl.store_bytes),
        mib(store_max),
    );
    println!();

    // ---- Assertions ----
    assert!(
        all_back,
        "{} devices did not reconnect at the end: {:?}",
        not_back.len(),
        &not_back[..not_back.len().min(20)]
    );
    assert_eq!(
        stale_pubs + stale_rets,
        0,
        "{stale_pubs} publishers and {stale_rets} retained clients never reconnected after the kill"
    );
    assert!(
        lost.is_empty(),
        "{} acknowledged QoS 1 messages never reached their device (see LOST above)",
        lost.len()
    );
    assert!(
        retained_problems.is_empty(),
        "retained state wrong after the run: {:?}",
        &retained_problems[..retained_problems.len().min(10)]
    );
    assert!(pub_q1 > 0 && acked > 0, "nothing was published");
    assert!(
        base > 0 && (last_third_max as f64) <= base as f64 * RSS_GROWTH_LIMIT,
        "RSS grew: {:.1} MiB at the end of the first third, {:.1} MiB in the last third (limit {RSS_GROWTH_LIMIT}×)",
        base as f64 / 1024.0,
        last_third_max as f64 / 1024.0
    );
    assert!(
        store_max < STORE_LIMIT,
        "store file reached {:.1} MiB (limit {} MiB)",
        mib(store_max),
        STORE_LIMIT >> 20
    );

    b.assert_alive("at the end");
    b.stop_gracefully().await;
}
