//! Durability benchmark, side by side in one run:
//! 1. QoS 1 throughput to an offline persistent session with the store off (in memory, the
//!    router's queue), `fsync = "batch"` and `fsync = "always"`, plus mosquitto with its
//!    persistence on as a reference. Every message is acknowledged, then the subscriber comes
//!    back and counts what it gets.
//! 2. QoS 1 to a connected persistent subscriber, store off and `batch` (every message is
//!    kept in the store until the subscriber acknowledges it).
//! 3. Restart with 100,000 retained messages and 1,000 persistent sessions: time from process
//!    start to the first CONNACK, and to a subscriber holding every retained message.
//!
//! Run: `cargo bench --bench durability` (`-- --quick` for a smoke run with a tenth of the
//! load, `-- --only NAME` for one of memory, batch, always, mosquitto, online, restart;
//! `-- --messages N` to publish N messages per offline-queue round instead of 100,000).
//! Each broker is a child process (this binary re-executed with `--serve`).

#[path = "support/raw.rs"]
mod raw;

use raw::{Client, publish_packet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Memory,
    Batch,
    Always,
    Mosquitto,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Memory => "moonwire, persistence off",
            Mode::Batch => "moonwire, fsync batch",
            Mode::Always => "moonwire, fsync always",
            Mode::Mosquitto => "mosquitto, persistence on",
        }
    }

    fn arg(self) -> &'static str {
        match self {
            Mode::Memory => "memory",
            Mode::Batch => "batch",
            Mode::Always => "always",
            Mode::Mosquitto => "mosquitto",
        }
    }
}

struct Proc {
    child: Child,
}

impl Proc {
    fn start(mode: Mode, dir: &Path, port: u16) -> (Proc, Instant) {
        let started = Instant::now();
        let child = if mode == Mode::Mosquitto {
            let conf = dir.join("m.conf");
            std::fs::write(
                &conf,
                format!(
                    "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
                     persistence_location {}/\nmax_queued_messages 0\nmax_inflight_messages 100\n",
                    dir.display()
                ),
            )
            .unwrap();
            Command::new("mosquitto")
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn mosquitto")
        } else {
            Command::new(std::env::current_exe().unwrap())
                .args(["--serve", mode.arg(), &port.to_string()])
                .arg(dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn broker")
        };
        (Proc { child }, started)
    }

    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
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

fn serve(mode: &str, port: u16, dir: PathBuf) {
    let mut cfg = moonwire::config::Config::load(None).unwrap();
    cfg.mqtt.listen = format!("127.0.0.1:{port}").parse().unwrap();
    cfg.mqtt.max_connections = 20000;
    cfg.limits.max_connections = 20000;
    cfg.limits.max_connections_per_ip = 0;
    cfg.ws.enabled = false;
    cfg.http.enabled = false;
    cfg.blocks.clear();
    cfg.storage.data_dir = dir;
    cfg.storage.max_queued_messages = 10_000_000;
    cfg.storage.max_queued_bytes = moonwire::config::ByteSize(1 << 32);
    match mode {
        "memory" => cfg.storage.persistence = false,
        "batch" => cfg.storage.fsync = moonwire::store::Fsync::Batch,
        "always" => cfg.storage.fsync = moonwire::store::Fsync::Always,
        other => panic!("unknown mode {other}"),
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let running = moonwire::app::App::new(cfg).start().await.unwrap();
        let mut sig =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).unwrap();
        sig.recv().await;
        running.shutdown().await;
    });
}

async fn connect(port: u16, id: &str, clean: bool) -> (Client, bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Client::connect_with(port, id, clean).await {
            Ok(c) => return c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => panic!("connect {id}: {e}"),
        }
    }
}

async fn disconnect(mut c: Client) {
    let _ = c.wr.write_all(&[0xE0, 0]).await;
    let _ = c.read_packet().await;
}

/// Sends `n` QoS 1 publishes with 100 in flight; returns when all are acknowledged.
async fn publish_qos1(mut c: Client, topic: String, n: u64, payload: Vec<u8>, retain: bool) {
    let (mut sent, mut acked, mut pkid) = (0u64, 0u64, 0u16);
    let mut out = Vec::with_capacity(64 * 1024);
    while acked < n {
        out.clear();
        while sent < n && sent - acked < 100 {
            pkid = if pkid == u16::MAX { 1 } else { pkid + 1 };
            let topic = if retain {
                format!("{topic}/{sent}")
            } else {
                topic.clone()
            };
            let at = out.len();
            publish_packet(&mut out, &topic, &payload, 1, pkid);
            if retain {
                out[at] |= 0x01;
            }
            sent += 1;
        }
        if !out.is_empty() {
            c.wr.write_all(&out).await.unwrap();
        }
        let (first, _) = c.read_packet().await.unwrap();
        if first >> 4 == 4 {
            acked += 1;
        }
    }
    disconnect(c).await;
}

/// Counts publishes until `want` arrived or the stream is idle for `idle`; acks QoS 1.
async fn drain(c: &mut Client, want: u64, idle: Duration) -> u64 {
    let mut got = 0;
    while got < want {
        match tokio::time::timeout(idle, c.read_packet()).await {
            Ok(Ok((first, body))) if first >> 4 == 3 => {
                got += 1;
                if (first >> 1) & 3 == 1 {
                    let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
                    let pkid = [body[2 + tl], body[3 + tl]];
                    c.wr.write_all(&[0x40, 2, pkid[0], pkid[1]]).await.unwrap();
                }
            }
            Ok(Ok(_)) => {}
            _ => break,
        }
    }
    got
}

async fn offline_queue(mode: Mode, n: u64) -> (f64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (_p, _) = Proc::start(mode, dir.path(), port);
    let (mut sub, _) = connect(port, "dur-sub", false).await;
    sub.subscribe("bench/d", 1).await;
    disconnect(sub).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut pubs = Vec::new();
    for i in 0..4 {
        pubs.push(connect(port, &format!("dur-pub{i}"), true).await.0);
    }
    let t = Instant::now();
    let tasks: Vec<_> = pubs
        .into_iter()
        .map(|c| {
            tokio::spawn(publish_qos1(
                c,
                "bench/d".into(),
                n / 4,
                vec![0x5A; 64],
                false,
            ))
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    let (mut sub, _) = connect(port, "dur-sub", false).await;
    let got = drain(&mut sub, n, Duration::from_secs(3)).await;
    (rate, got)
}

/// QoS 1 to a *connected* persistent subscriber: delivered messages per second, from the first
/// publish to the last delivery (the store keeps each message until the subscriber acks it).
async fn online_persistent(mode: Mode, n: u64) -> (f64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (_p, _) = Proc::start(mode, dir.path(), port);
    let (mut sub, _) = connect(port, "on-sub", false).await;
    sub.subscribe("bench/on", 1).await;
    let mut pubs = Vec::new();
    for i in 0..4 {
        pubs.push(connect(port, &format!("on-pub{i}"), true).await.0);
    }
    let t = Instant::now();
    let receiver = tokio::spawn(async move { drain(&mut sub, n, Duration::from_secs(5)).await });
    for c in pubs {
        tokio::spawn(publish_qos1(
            c,
            "bench/on".into(),
            n / 4,
            vec![0x5A; 64],
            false,
        ));
    }
    let got = receiver.await.unwrap();
    (got as f64 / t.elapsed().as_secs_f64(), got)
}

/// Fills a store, restarts on it, and times the way back.
async fn restart(retained: u64, sessions: u64) -> (f64, f64, u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (mut p, _) = Proc::start(Mode::Batch, dir.path(), port);
    for i in 0..sessions {
        let (mut c, _) = connect(port, &format!("dev{i}"), false).await;
        c.subscribe(&format!("dev/{i}/cmd"), 1).await;
        disconnect(c).await;
    }
    let (c, _) = connect(port, "filler", true).await;
    publish_qos1(c, "retained".into(), retained, vec![0x42; 64], true).await;
    p.stop();
    let size = std::fs::metadata(dir.path().join("moonwire.redb"))
        .map(|m| m.len())
        .unwrap_or(0);
    let (_p, started) = Proc::start(Mode::Batch, dir.path(), port);
    let (mut c, present) = connect(port, "dev0", false).await;
    let accept = started.elapsed().as_secs_f64();
    assert!(present, "dev0's session is back");
    c.subscribe("retained/#", 0).await;
    let got = drain(&mut c, retained, Duration::from_secs(5)).await;
    let all = started.elapsed().as_secs_f64();
    (accept, all, got, size)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--serve") {
        serve(
            &args[i + 1],
            args[i + 2].parse().unwrap(),
            PathBuf::from(&args[i + 3]),
        );
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .map(|i| args[i + 1].clone());
    let want = |name: &str| only.as_ref().is_none_or(|o| name.contains(o.as_str()));
    let scale = if quick { 10 } else { 1 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut modes = vec![Mode::Memory, Mode::Batch, Mode::Always];
    if Command::new("mosquitto").arg("-h").output().is_ok() {
        modes.push(Mode::Mosquitto);
    }
    let n = args
        .iter()
        .position(|a| a == "--messages")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(100_000 / scale);
    modes.retain(|m| want(m.arg()));
    // Rounds interleave the modes so machine noise hits them alike; the median is reported.
    let rounds = if quick { 1 } else { 3 };
    let mut rates: Vec<Vec<f64>> = vec![vec![]; modes.len()];
    let mut delivered = vec![u64::MAX; modes.len()];
    for _ in 0..rounds {
        for (i, &mode) in modes.iter().enumerate() {
            let (rate, got) = rt.block_on(offline_queue(mode, n));
            eprintln!("{:28} {rate:>10.0} msg/s, {got}/{n} delivered", mode.name());
            rates[i].push(rate);
            delivered[i] = delivered[i].min(got);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    if !modes.is_empty() {
        println!(
            "| QoS 1 → offline persistent session, 4 publishers, 64 B (median of {rounds}) | msg/s | vs persistence off | delivered on resume (worst) |"
        );
        println!("|---|---:|---:|---:|");
    }
    let mut base = None;
    for (i, mode) in modes.iter().enumerate() {
        let rate = median(&mut rates[i]);
        let base = *base.get_or_insert(rate);
        println!(
            "| {} | {rate:.0} | {:.2}× | {}/{n} |",
            mode.name(),
            rate / base,
            delivered[i]
        );
    }
    if want("online") {
        println!();
        println!(
            "| QoS 1 → connected persistent subscriber, 4 publishers, 64 B (median of {rounds}) | delivered msg/s | vs persistence off |"
        );
        println!("|---|---:|---:|");
        let mut base = None;
        for mode in [Mode::Memory, Mode::Batch] {
            let mut v = vec![];
            let mut worst = u64::MAX;
            for _ in 0..rounds {
                let (rate, got) = rt.block_on(online_persistent(mode, n));
                eprintln!("online {:28} {rate:>10.0} msg/s, {got}/{n}", mode.name());
                v.push(rate);
                worst = worst.min(got);
            }
            let rate = median(&mut v);
            let base = *base.get_or_insert(rate);
            println!(
                "| {} ({worst}/{n} delivered) | {rate:.0} | {:.2}× |",
                mode.name(),
                rate / base
            );
        }
    }
    if !want("restart") {
        return;
    }
    let (retained, sessions) = (100_000 / scale, 1_000 / scale);
    let (accept, all, got, size) = rt.block_on(restart(retained, sessions));
    println!();
    println!("| Restart, fsync batch | value |");
    println!("|---|---:|");
    println!(
        "| store with {retained} retained + {sessions} sessions | {:.1} MiB |",
        size as f64 / 1048576.0
    );
    println!(
        "| process start → first CONNACK (session present) | {:.3} s |",
        accept
    );
    println!("| process start → all {got}/{retained} retained received | {all:.3} s |");
}
