//! Side-by-side broker benchmark: the same load, in the same run, against moonwire, stock
//! rumqttd (its demo config with the accept delay set to 0) and Debian's mosquitto when
//! installed. Each broker runs as its own child process so RSS is the broker's alone.
//!
//! Run: `cargo bench --bench broker` (add `-- --quick` for a short smoke run,
//! `-- --only NAME` to run scenarios whose name contains NAME, `-- --broker NAME` for one broker).
//! Results go to stdout as a Markdown table; BENCHMARKS.md records them.

use bytes::Buf;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "support/raw.rs"]
mod raw;
use raw::{Client, parse, publish_packet};

static BASE: OnceLock<Instant> = OnceLock::new();

fn nanos() -> u64 {
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

// ---------------- brokers ----------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Moonwire,
    Rumqttd,
    Mosquitto,
    /// moonwire with a pass-through before_publish block on `bench/+`.
    BlockPass,
    /// moonwire with a JSON decode-modify-encode block on `bench/+`.
    BlockJson,
    /// moonwire, one blocks worker, a JSON block on `bench/+` and a block waiting 50 ms in a
    /// host call on `slow/+`.
    BlockSlow,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Moonwire => "moonwire",
            Kind::Rumqttd => "rumqttd (stock)",
            Kind::Mosquitto => "mosquitto",
            Kind::BlockPass => "moonwire + pass-through block",
            Kind::BlockJson => "moonwire + JSON block",
            Kind::BlockSlow => "moonwire + JSON block, 50 ms block on another topic",
        }
    }

    fn serve_name(self) -> &'static str {
        match self {
            Kind::Moonwire => "moonwire",
            Kind::Rumqttd => "rumqttd",
            Kind::Mosquitto => "mosquitto",
            Kind::BlockPass => "block-pass",
            Kind::BlockJson => "block-json",
            Kind::BlockSlow => "block-slow",
        }
    }
}

const PASS_LUA: &str = "return { on_publish = function(msg) return nil end }";
const JSON_LUA: &str = "return { on_publish = function(msg)
  local v = json.decode(msg.payload)
  if v == nil then return nil end
  v.checked = true
  return { payload = json.encode(v) }
end }";
const SLOW_LUA: &str = "return { on_publish = function(msg) bench.sleep(50) return nil end }";

/// `bench.sleep(ms)`: an async host call, standing in for a slow media call.
struct SleepExt;

impl moonwire::blocks::HostExtension for SleepExt {
    fn name(&self) -> &str {
        "bench"
    }
    fn install(
        &self,
        lua: &moonwire::blocks::mlua::Lua,
        _: &moonwire::blocks::BlockInfo,
    ) -> moonwire::blocks::mlua::Result<()> {
        let t = lua.create_table()?;
        t.set(
            "sleep",
            lua.create_async_function(|_, ms: u64| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(())
            })?,
        )?;
        lua.globals().set("bench", t)
    }
}

struct BrokerProc {
    child: Child,
    port: u16,
    _dir: Option<tempfile::TempDir>,
}

impl BrokerProc {
    fn start(kind: Kind) -> BrokerProc {
        let port = free_port();
        // `MOONWIRE_BENCH_SERVER=<another build of this bench>` serves moonwire from that build
        // while this one generates the load: an A/B of two broker builds under one load
        // generator.
        let other = std::env::var_os("MOONWIRE_BENCH_SERVER").filter(|_| kind == Kind::Moonwire);
        let exe = match other {
            Some(path) => std::path::PathBuf::from(path),
            None => std::env::current_exe().expect("bench binary path"),
        };
        let (child, dir) = match kind {
            Kind::Moonwire
            | Kind::Rumqttd
            | Kind::BlockPass
            | Kind::BlockJson
            | Kind::BlockSlow => {
                let child = Command::new(exe)
                    .args(["--serve", kind.serve_name(), &port.to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("spawn broker");
                (child, None)
            }
            Kind::Mosquitto => {
                let dir = tempfile::tempdir().unwrap();
                let conf = dir.path().join("m.conf");
                std::fs::write(
                    &conf,
                    format!(
                        "listener {port} 127.0.0.1\nallow_anonymous true\nmax_connections -1\n"
                    ),
                )
                .unwrap();
                let child = Command::new("mosquitto")
                    .arg("-c")
                    .arg(&conf)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("spawn mosquitto");
                (child, Some(dir))
            }
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "{kind:?} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        BrokerProc {
            child,
            port,
            _dir: dir,
        }
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for BrokerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn serve(which: &str, port: u16) {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    match which {
        "moonwire" | "block-pass" | "block-json" | "block-slow" => {
            let mut cfg = moonwire::config::Config::load(None).unwrap();
            cfg.mqtt.listen = addr;
            cfg.mqtt.max_connections = 20000;
            cfg.limits.max_connections = 20000;
            // The load comes from one address.
            cfg.limits.max_connections_per_ip = 0;
            cfg.ws.enabled = false;
            cfg.http.enabled = false;
            let dir = tempfile::tempdir().unwrap();
            cfg.storage.data_dir = dir.path().to_owned();
            // The example blocks bind home/… and alerts/…, which the load does not touch.
            let bind = |name: &str, src: &str, topic: &str| {
                let path = dir.path().join(format!("{name}.lua"));
                std::fs::write(&path, src).unwrap();
                let mut b = moonwire::blocks::BlockConfig::new(
                    name,
                    path,
                    moonwire::blocks::BlockEvent::BeforePublish,
                );
                b.topics = vec![topic.to_string()];
                b
            };
            match which {
                "block-pass" => cfg.blocks = vec![bind("pass", PASS_LUA, "bench/+")],
                "block-json" => cfg.blocks = vec![bind("json", JSON_LUA, "bench/+")],
                "block-slow" => {
                    cfg.block_engine.workers = 1;
                    cfg.blocks = vec![
                        bind("json", JSON_LUA, "bench/+"),
                        bind("slow", SLOW_LUA, "slow/+"),
                    ];
                }
                _ => {}
            }
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let app =
                    moonwire::app::App::new(cfg).block_extension(std::sync::Arc::new(SleepExt));
                let _running = app.start().await.unwrap();
                std::future::pending::<()>().await;
            });
        }
        "rumqttd" => {
            let toml = format!(
                r#"
id = 0
[router]
id = 0
max_connections = 20010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10
[v4.1]
name = "v4-1"
listen = "{addr}"
next_connection_delay_ms = 0
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = 20480
max_inflight_count = 100
dynamic_filters = true
"#
            );
            let config: rumqttd_stock::Config = toml::from_str(&toml).expect("stock config");
            let mut broker = rumqttd_stock::Broker::new(config);
            let _ = broker.start();
        }
        other => panic!("unknown broker {other}"),
    }
}

// ---------------- raw MQTT 3.1.1 load clients ----------------

/// Receives until `expected` publishes arrived or the stream went idle. Returns
/// (count, time of last message, latencies in ns when payloads carry timestamps).
async fn receive(
    mut c: Client,
    expected: u64,
    qos: u8,
    timestamps: bool,
    idle: Duration,
) -> (u64, Instant, Vec<u64>) {
    let mut count = 0u64;
    let mut last = Instant::now();
    let mut lat = Vec::new();
    let mut acks = Vec::new();
    while count < expected {
        match tokio::time::timeout(idle, c.rd.read_buf(&mut c.buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => break,
        }
        while let Some((first, mut body)) = parse(&mut c.buf) {
            if first >> 4 != 3 {
                continue;
            }
            count += 1;
            let tlen = u16::from_be_bytes([body[0], body[1]]) as usize;
            body.advance(2 + tlen);
            if (first >> 1) & 3 > 0 {
                let pkid = [body[0], body[1]];
                body.advance(2);
                acks.extend_from_slice(&[0x40, 2, pkid[0], pkid[1]]);
            }
            if let Some(sent) = sent_at(&body).filter(|_| timestamps) {
                lat.push(nanos().saturating_sub(sent));
            }
        }
        last = Instant::now();
        if !acks.is_empty() && qos > 0 {
            let _ = c.wr.write_all(&acks).await;
            acks.clear();
        }
    }
    (count, last, lat)
}

/// The send time in a `{"t":…}` payload.
fn sent_at(payload: &[u8]) -> Option<u64> {
    let at = payload.windows(4).position(|w| w == b"\"t\":")? + 4;
    let digits: Vec<u8> = payload[at..]
        .iter()
        .copied()
        .take_while(u8::is_ascii_digit)
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// A JSON payload of about `size` bytes (at least its fields), like a sensor reading.
fn json_payload(size: usize, t: u64) -> Vec<u8> {
    let mut p = format!("{{\"t\":{t},\"temperature\":21.5,\"note\":\"").into_bytes();
    while p.len() + 2 < size {
        p.push(b'x');
    }
    p.extend_from_slice(b"\"}");
    p
}

/// Publishes `n` messages as fast as the connection takes them; QoS 1 keeps `window` in flight.
async fn publish(mut c: Client, topic: String, n: u64, size: usize, qos: u8) {
    let payload = if size >= 48 {
        json_payload(size, 0)
    } else {
        vec![0x5Au8; size]
    };
    let window = 100u64;
    let mut sent = 0u64;
    let mut out = Vec::with_capacity(256 * 1024);
    let mut pkid = 0u16;
    while sent < n {
        out.clear();
        let batch = if qos == 0 {
            1000.min(n - sent)
        } else {
            window.min(n - sent)
        };
        for _ in 0..batch {
            pkid = if pkid == u16::MAX { 1 } else { pkid + 1 };
            publish_packet(&mut out, &topic, &payload, qos, pkid);
        }
        if c.wr.write_all(&out).await.is_err() {
            return;
        }
        sent += batch;
        if qos > 0 {
            let mut acked = 0;
            while acked < batch {
                match c.read_packet().await {
                    Ok((first, _)) if first >> 4 == 4 => acked += 1,
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        }
    }
}

/// Paced publisher with send timestamps in the payload.
async fn publish_paced(mut c: Client, topic: String, rate: u64, secs: u64, size: usize) -> u64 {
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let total = rate * secs;
    let mut sent = 0u64;
    let start = Instant::now();
    let mut out = Vec::new();
    while sent < total {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        out.clear();
        while sent < due.min(total) {
            publish_packet(&mut out, &topic, &json_payload(size, nanos()), 0, 0);
            sent += 1;
        }
        if !out.is_empty() && c.wr.write_all(&out).await.is_err() {
            break;
        }
    }
    sent
}

// ---------------- media ----------------

/// `cameras` cameras each publish `n / cameras` frames as fast as the broker takes them;
/// frames/s = thumbnails received per second. Several cameras, because one camera's frames
/// are thumbnailed in order, one at a time (its block runs per client in order).
/// Thumbnails per second on one thread, the way the `camera-thumbs` block asks for them
/// (160 px wide, quality 80), cycling through `frames`.
fn single_core_thumbs_per_sec(frames: &[Vec<u8>], rounds: usize) -> f64 {
    use moonwire::media::thumbnail::{
        DecodeLimits, ImageInput, OutputFormat, ThumbOptions, thumbnail,
    };
    let opts = ThumbOptions {
        width: Some(160),
        height: None,
        quality: 80,
        format: OutputFormat::Jpeg,
    };
    let limits = DecodeLimits::default();
    let run = |n: usize| {
        for f in frames.iter().cycle().take(n) {
            let t = thumbnail(ImageInput::Encoded(f), &opts, &limits).unwrap();
            std::hint::black_box(t.bytes.len());
        }
    };
    run(frames.len() * 4);
    let n = frames.len() * rounds;
    let start = Instant::now();
    run(n);
    n as f64 / start.elapsed().as_secs_f64()
}

async fn frames_through(port: u16, frames: &[Vec<u8>], n: u64, chunked: bool, cameras: u64) -> f64 {
    let mut sub = Client::connect(port, &id("thumbs")).await.unwrap();
    sub.subscribe("cameras/+/thumb", 0).await;
    let start = Instant::now();
    let receiver = tokio::spawn(receive(sub, n, 0, false, Duration::from_secs(5)));
    let mut cams = Vec::new();
    for c in 0..cameras {
        let frames = frames.to_vec();
        cams.push(tokio::spawn(async move {
            camera(port, c, &frames, n / cameras, chunked).await
        }));
    }
    for c in cams {
        c.await.unwrap();
    }
    let (count, last, _) = receiver.await.unwrap();
    count as f64 / last.duration_since(start).as_secs_f64()
}

/// One camera publishing `n` frames, starting at a different photograph per camera.
async fn camera(port: u16, c: u64, frames: &[Vec<u8>], n: u64, chunked: bool) {
    let name = format!("benchcam{c}");
    let topic = format!("cameras/{name}/frame");
    let mut cam = Client::connect(port, &name).await.unwrap();
    let encoded: Vec<Vec<Vec<u8>>> = frames
        .iter()
        .map(|frame| {
            if chunked {
                moonwire::media::fchunk::encode_frame(
                    moonwire::media::fchunk::FrameSpec {
                        frame_id: 0,
                        format: moonwire::media::PixelFormat::Jpeg,
                        width: 0,
                        height: 0,
                        chunk_size: 4000,
                    },
                    frame,
                )
                .unwrap()
            } else {
                vec![frame.clone()]
            }
        })
        .collect();
    let mut out = Vec::new();
    for i in 0..n {
        out.clear();
        let parts = &encoded[(c + i) as usize % encoded.len()];
        for p in parts {
            let mut p = p.clone();
            if chunked {
                p[4..6].copy_from_slice(&(i as u16).to_le_bytes());
            }
            publish_packet(&mut out, &topic, &p, 0, 0);
        }
        cam.wr.write_all(&out).await.unwrap();
    }
}

/// `cams` cameras each sending one ~60 KB frame per second in 4 KB chunks for `secs` seconds.
/// Returns (RSS before, RSS after, chunks sent).
async fn reassembly_load(b: &BrokerProc, cams: usize, secs: u64) -> (u64, u64, u64) {
    let mut frame = vec![0u8; 60_000];
    frame[0] = 0xFF;
    frame[1] = 0xD8;
    let mut clients = Vec::new();
    for i in 0..cams {
        clients.push(Client::connect(b.port, &format!("rcam{i}")).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = b.rss_kib();
    let sent = std::sync::Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        let frame = frame.clone();
        let sent = sent.clone();
        tasks.push(tokio::spawn(async move {
            // Spread the cameras over the second.
            tokio::time::sleep(Duration::from_millis((i as u64 * 997) % 1000)).await;
            let topic = format!("cameras/rcam{i}/frame");
            for f in 0..secs {
                let parts = moonwire::media::fchunk::encode_frame(
                    moonwire::media::fchunk::FrameSpec {
                        frame_id: f as u16,
                        format: moonwire::media::PixelFormat::Jpeg,
                        width: 0,
                        height: 0,
                        chunk_size: 4000,
                    },
                    &frame,
                )
                .unwrap();
                for p in parts {
                    let mut out = Vec::new();
                    publish_packet(&mut out, &topic, &p, 0, 0);
                    if c.wr.write_all(&out).await.is_err() {
                        return c;
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(1000 / 16)).await;
                }
            }
            c
        }));
    }
    let mut keep = Vec::new();
    for t in tasks {
        keep.push(t.await.unwrap());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = b.rss_kib();
    drop(keep);
    (before, after, sent.load(Ordering::Relaxed))
}

// ---------------- scenarios ----------------

struct Row {
    scenario: String,
    broker: Kind,
    /// The broker this row is compared with.
    base: Kind,
    value: f64,
    unit: &'static str,
    note: String,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

fn id(prefix: &str) -> String {
    format!("{prefix}-{}", SEQ.fetch_add(1, Ordering::Relaxed))
}

/// pubs → subs on one topic. Returns (deliveries/s, delivered, expected).
async fn throughput(
    port: u16,
    pubs: usize,
    subs: usize,
    n_per_pub: u64,
    size: usize,
    qos: u8,
) -> (f64, u64, u64) {
    let topic = id("bench/t");
    let mut receivers = Vec::new();
    for _ in 0..subs {
        let mut c = Client::connect(port, &id("sub")).await.unwrap();
        c.subscribe(&topic, qos).await;
        receivers.push(c);
    }
    let expected = n_per_pub * pubs as u64;
    let mut publishers = Vec::new();
    for _ in 0..pubs {
        publishers.push(Client::connect(port, &id("pub")).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = Instant::now();
    let handles: Vec<_> = receivers
        .into_iter()
        .map(|c| tokio::spawn(receive(c, expected, qos, false, Duration::from_secs(2))))
        .collect();
    for c in publishers {
        tokio::spawn(publish(c, topic.clone(), n_per_pub, size, qos));
    }
    let mut delivered = 0;
    let mut end = start;
    for h in handles {
        let (count, last, _) = h.await.unwrap();
        delivered += count;
        end = end.max(last);
    }
    let secs = end.duration_since(start).as_secs_f64().max(1e-6);
    (delivered as f64 / secs, delivered, expected * subs as u64)
}

async fn latency(port: u16, rate: u64, secs: u64, slow_topic: bool) -> (f64, f64, u64) {
    let topic = id("bench/lat");
    let mut sub = Client::connect(port, &id("lsub")).await.unwrap();
    sub.subscribe(&topic, 0).await;
    let p = Client::connect(port, &id("lpub")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let h = tokio::spawn(receive(sub, rate * secs, 0, true, Duration::from_secs(2)));
    if slow_topic {
        // 10 msg/s to a topic whose block waits 50 ms each, on the same (single) worker.
        let slow = Client::connect(port, &id("slowpub")).await.unwrap();
        tokio::spawn(publish_paced(slow, "slow/x".to_string(), 10, secs, 64));
    }
    publish_paced(p, topic, rate, secs, 64).await;
    let (count, _, mut lat) = h.await.unwrap();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1e6
    };
    (pct(0.5), pct(0.99), count)
}

async fn idle_connections(b: &BrokerProc, n: usize) -> (f64, f64) {
    // Baseline with one connection open, so per-connection cost excludes start-up memory.
    let first = Client::connect(b.port, &id("idle")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = b.rss_kib();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(128));
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let port = b.port;
        set.spawn(async move {
            let c = Client::connect(port, &id("idle")).await;
            drop(permit);
            c
        });
    }
    let mut clients = vec![first];
    while let Some(r) = set.join_next().await {
        if let Ok(Ok(c)) = r {
            clients.push(c);
        }
    }
    let rate = (clients.len() - 1) as f64 / start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = b.rss_kib();
    let per = after.saturating_sub(before) as f64 / (clients.len() - 1).max(1) as f64;
    drop(clients);
    (rate, per)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--serve") {
        serve(&args[i + 1], args[i + 2].parse().unwrap());
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .map(|i| args[i + 1].clone());
    let mut kinds = vec![Kind::Moonwire, Kind::Rumqttd];
    if Command::new("mosquitto").arg("-h").output().is_ok() {
        kinds.push(Kind::Mosquitto);
    } else {
        eprintln!("mosquitto not installed: skipping it");
    }
    if let Some(i) = args.iter().position(|a| a == "--broker") {
        let name = args[i + 1].clone();
        kinds.retain(|k| k.name().starts_with(name.as_str()));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let scale = if quick { 10 } else { 1 };
    let rounds: usize = std::env::var("MOONWIRE_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let mut rows: Vec<Row> = Vec::new();
    let want = |name: &str| only.as_ref().is_none_or(|o| name.contains(o.as_str()));

    type Scenario = (&'static str, usize, usize, u64, usize, u8);
    let scenarios: [Scenario; 4] = [
        ("1→1 QoS0 16 B", 1, 1, 500_000, 16, 0),
        ("4→1 QoS0 64 B", 4, 1, 100_000, 64, 0),
        ("4→1 QoS1 64 B", 4, 1, 25_000, 64, 1),
        ("1→50 fan-out QoS0 16 B", 1, 50, 20_000, 16, 0),
    ];
    for (name, pubs, subs, n, size, qos) in scenarios {
        if !want(name) {
            continue;
        }
        for &k in &kinds {
            let b = BrokerProc::start(k);
            // Each run takes well under a second; repeating it on the same broker and taking
            // the median steadies A/B comparisons and leaves time to attach a profiler.
            let mut runs: Vec<(f64, u64, u64)> = (0..rounds)
                .map(|_| rt.block_on(throughput(b.port, pubs, subs, n / scale, size, qos)))
                .collect();
            runs.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (rate, got, exp) = runs[runs.len() / 2];
            eprintln!(
                "{name:28} {:18} {rate:>12.0} msg/s delivered {got}/{exp}",
                k.name()
            );
            rows.push(Row {
                scenario: name.into(),
                broker: k,
                base: Kind::Rumqttd,
                value: rate,
                unit: "msg/s",
                note: format!("{:.1}% delivered", got as f64 * 100.0 / exp as f64),
            });
        }
    }
    if want("latency") {
        for &k in &kinds {
            let b = BrokerProc::start(k);
            let (p50, p99, got) =
                rt.block_on(latency(b.port, 5000, if quick { 2 } else { 10 }, false));
            eprintln!(
                "latency @5k/s {:18} p50 {p50:.3} ms p99 {p99:.3} ms ({got} samples)",
                k.name()
            );
            rows.push(Row {
                scenario: "p99 latency @ 5,000 msg/s".into(),
                broker: k,
                base: Kind::Rumqttd,
                value: p99,
                unit: "ms",
                note: format!("p50 {p50:.3} ms, {got} samples"),
            });
        }
    }
    if want("idle") {
        let n = if quick { 1000 } else { 5000 };
        for &k in &kinds {
            let b = BrokerProc::start(k);
            let (rate, per) = rt.block_on(idle_connections(&b, n));
            eprintln!(
                "{n} idle conns {:18} {rate:>8.0} connects/s {per:.1} KiB/conn",
                k.name()
            );
            rows.push(Row {
                scenario: format!("{n} idle connections: connect rate"),
                broker: k,
                base: Kind::Rumqttd,
                value: rate,
                unit: "conn/s",
                note: String::new(),
            });
            rows.push(Row {
                scenario: format!("{n} idle connections: RSS per connection"),
                broker: k,
                base: Kind::Rumqttd,
                value: per,
                unit: "KiB",
                note: String::new(),
            });
        }
    }
    if want("rss") {
        let n = 1_000_000 / scale as u64;
        for &k in &kinds {
            let b = BrokerProc::start(k);
            let (_, got, _) = rt.block_on(throughput(b.port, 1, 1, n, 16, 0));
            std::thread::sleep(Duration::from_secs(1));
            let rss = b.rss_kib() as f64 / 1024.0;
            eprintln!("RSS after {n} msgs {:18} {rss:.1} MiB", k.name());
            rows.push(Row {
                scenario: format!("RSS after {n} messages (16 B, 1→1)"),
                broker: k,
                base: Kind::Rumqttd,
                value: rss,
                unit: "MiB",
                note: format!("{got} delivered"),
            });
        }
    }

    if want("blocks") {
        // Issue targets: pass-through ≥ 0.4×, JSON ≥ 0.2× of the same load without blocks.
        let name = "blocks: 4→1 QoS0 64 B JSON";
        for k in [Kind::Moonwire, Kind::BlockPass, Kind::BlockJson] {
            let b = BrokerProc::start(k);
            let (rate, got, exp) = rt.block_on(throughput(b.port, 4, 1, 100_000 / scale, 64, 0));
            eprintln!(
                "{name:28} {:30} {rate:>12.0} msg/s delivered {got}/{exp}",
                k.name()
            );
            rows.push(Row {
                scenario: name.into(),
                broker: k,
                base: Kind::Moonwire,
                value: rate,
                unit: "msg/s",
                note: format!("{:.1}% delivered", got as f64 * 100.0 / exp as f64),
            });
        }
        let name = "blocks: p99 latency @ 5,000 msg/s";
        for (k, slow) in [
            (Kind::Moonwire, false),
            (Kind::BlockJson, false),
            (Kind::BlockSlow, true),
        ] {
            let b = BrokerProc::start(k);
            let (p50, p99, got) =
                rt.block_on(latency(b.port, 5000, if quick { 2 } else { 10 }, slow));
            eprintln!("{name} {:30} p50 {p50:.3} ms p99 {p99:.3} ms", k.name());
            rows.push(Row {
                scenario: name.into(),
                broker: k,
                base: Kind::Moonwire,
                value: p99,
                unit: "ms",
                note: format!("p50 {p50:.3} ms, {got} samples"),
            });
        }
    }

    if want("media") {
        // Frames through the broker: cameras publish whole VGA JPEGs (or 4 KB fchunk chunks),
        // cycling through the four VGA fixture photographs, as fast as the broker takes them;
        // frames/s = thumbnails received on cameras/+/thumb per second.
        let frames: Vec<Vec<u8>> = ["astronaut", "chelsea", "coffee", "rocket"]
            .iter()
            .map(|s| {
                std::fs::read(format!(
                    "{}/tests/fixtures/vga_{s}.jpg",
                    env!("CARGO_MANIFEST_DIR")
                ))
                .unwrap()
            })
            .collect();
        // `MOONWIRE_BENCH_CAMERAS` (default 4) cameras; `MOONWIRE__MEDIA__WORKERS` sets the
        // broker's thumbnail workers as for any moonwire config key (0 or unset: one per core).
        let cameras: u64 = std::env::var("MOONWIRE_BENCH_CAMERAS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(4);
        let workers = std::env::var("MOONWIRE__MEDIA__WORKERS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&w| w > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        // The issue's bar, measured in this run on the same frames: 0.7 × the single-core
        // thumbnail rate × thumbnail workers.
        let single = single_core_thumbs_per_sec(&frames, if quick { 20 } else { 200 });
        let bar = 0.7 * single * workers as f64;
        eprintln!(
            "single-core thumbnails: {single:.0}/s; bar for {workers} workers: {bar:.0} frames/s"
        );
        rows.push(Row {
            scenario: "media: single-core thumbnail rate, the same four VGA frames".into(),
            broker: Kind::Moonwire,
            base: Kind::Moonwire,
            value: single,
            unit: "frames/s",
            note: format!("bar for {workers} workers: 0.7 × rate × workers = {bar:.0} frames/s"),
        });
        for chunked in [false, true] {
            let b = BrokerProc::start(Kind::Moonwire);
            let n = if quick { 50 } else { 200 * cameras };
            let rate = rt.block_on(frames_through(b.port, &frames, n, chunked, cameras));
            let name = if chunked {
                "media: VGA frames/s end to end, 4 KB chunks"
            } else {
                "media: VGA frames/s end to end, whole"
            };
            eprintln!("{name}: {rate:.1} frames/s");
            rows.push(Row {
                scenario: name.into(),
                broker: Kind::Moonwire,
                base: Kind::Moonwire,
                value: rate,
                unit: "frames/s",
                note: format!(
                    "{n} frames from {cameras} cameras, {workers} workers, {:.2}× the bar",
                    rate / bar
                ),
            });
        }
        // Reassembly memory: many cameras at 1 fps of ~60 KB frames in 4 KB chunks.
        let cams = if quick { 100 } else { 1000 };
        let secs = if quick { 3 } else { 10 };
        let b = BrokerProc::start(Kind::Moonwire);
        let (before, after, sent) = rt.block_on(reassembly_load(&b, cams, secs));
        let growth = after.saturating_sub(before) as f64 / 1024.0;
        eprintln!(
            "reassembly {cams} cameras × 1 fps × 60 KB for {secs} s: RSS {before} → {after} KiB, {sent} chunks"
        );
        rows.push(Row {
            scenario: format!(
                "media: RSS growth, {cams} cameras × 1 fps × 60 KB in 4 KB chunks, {secs} s"
            ),
            broker: Kind::Moonwire,
            base: Kind::Moonwire,
            value: growth,
            unit: "MiB",
            note: format!("{sent} chunks"),
        });
    }

    println!("\n| scenario | broker | result | ratio | note |\n|---|---|---|---|---|");
    for r in &rows {
        let base = rows
            .iter()
            .find(|s| s.scenario == r.scenario && s.broker == r.base)
            .map(|s| s.value);
        let ratio = match base {
            Some(s) if s > 0.0 && r.broker != r.base => {
                format!("{:.2}× {}", r.value / s, r.base.name())
            }
            _ => "—".into(),
        };
        println!(
            "| {} | {} | {:.3} {} | {} | {} |",
            r.scenario,
            r.broker.name(),
            r.value,
            r.unit,
            ratio,
            r.note
        );
    }
}
