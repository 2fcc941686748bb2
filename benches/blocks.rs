//! Throughput of `before_publish` and latency isolation between topics.
//!
//! `cargo bench --bench blocks` (release). Prints one line per scenario. Scenarios:
//! 1. no block bound (the `has_before_publish` fast path), a pass-through block, and a JSON
//!    decode-modify-encode block on a 64-byte payload; 4 producers, each either awaiting one
//!    message at a time or keeping 32 in flight on distinct topics;
//! 2. p50/p99 latency of a fast topic on a single worker, alone and while other topics on
//!    the same worker sit 50 ms in an async host call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use moonwire::blocks::mlua::{self, Lua};
use moonwire::blocks::{
    BlockConfig, BlockEngine, BlockEvent, BlockInfo, BlocksConfig, EngineOptions, HostExtension,
    Publisher,
};
use moonwire::pipeline::{Message, Origin, Props, Verdict};

struct Sink;
impl Publisher for Sink {
    fn publish(&self, _msg: Message) -> Result<(), String> {
        Ok(())
    }
}

struct Sleep;
impl HostExtension for Sleep {
    fn name(&self) -> &str {
        "bench_sleep"
    }
    fn install(&self, lua: &Lua, _block: &BlockInfo) -> mlua::Result<()> {
        let f = lua.create_async_function(|_, ms: u64| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(())
        })?;
        lua.globals().set("__test_sleep", f)
    }
}

const PRODUCERS: usize = 4;
const PAYLOAD: &str = r#"{"t":21.5,"h":40.2,"m":false,"ts":1700000000,"id":"abcdefghijk"}"#;

fn msg(topic: String, payload: Bytes) -> Message {
    Message {
        topic,
        payload,
        qos: 1,
        retain: false,
        props: Props::default(),
        origin: Origin {
            client_id: "bench".into(),
            username: None,
            hop: 0,
        },
        received_at: 0,
    }
}

fn engine(dir: &std::path::Path, script: Option<&str>, workers: usize) -> BlockEngine {
    let mut blocks = Vec::new();
    if let Some(src) = script {
        let path = dir.join(format!("b{}.lua", src.len()));
        std::fs::write(&path, src).unwrap();
        let mut b = BlockConfig::new("b", path, BlockEvent::BeforePublish);
        b.topics = vec!["bench/#".into()];
        blocks.push(b);
    }
    let cfg = BlocksConfig {
        workers: Some(workers),
        scripts_dir: dir.to_owned(),
        kv_path: dir.join(format!(
            "kv-{}.redb",
            blocks.len() * 1000 + script.map_or(0, str::len)
        )),
        hot_reload: false,
        blocks,
        ..BlocksConfig::default()
    };
    BlockEngine::start_with(
        cfg,
        Arc::new(Sink),
        EngineOptions {
            kv_database: None,
            extensions: vec![Arc::new(Sleep)],
        },
    )
    .unwrap()
}

/// Messages per second with `PRODUCERS` tasks, each keeping `window` messages in flight.
async fn throughput(e: &BlockEngine, window: usize, dur: Duration, expect_modify: bool) -> f64 {
    let payload = Bytes::from_static(PAYLOAD.as_bytes());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..PRODUCERS {
        for w in 0..window {
            let e = e.clone();
            let payload = payload.clone();
            tasks.push(tokio::spawn(async move {
                let topic = format!("bench/{p}/{w}");
                let mut n = 0u64;
                while start.elapsed() < dur {
                    let v = e.before_publish(msg(topic.clone(), payload.clone())).await;
                    assert_eq!(matches!(v, Verdict::Modify(_)), expect_modify, "{v:?}");
                    n += 1;
                }
                n
            }));
        }
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Sequential publishes on the fast topic for `dur`; latency percentiles.
async fn fast_latency(e: &BlockEngine, dur: Duration) -> (Duration, Duration, Duration) {
    let mut lat = Vec::new();
    let start = Instant::now();
    while start.elapsed() < dur {
        let t0 = Instant::now();
        let _ = e
            .before_publish(msg("bench/fast".into(), Bytes::from_static(b"1")))
            .await;
        lat.push(t0.elapsed());
    }
    lat.sort();
    (
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        percentile(&lat, 0.999),
    )
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // BENCH_SECS shortens runs (e.g. under a profiler); BENCH_ONLY=<name prefix> picks scenarios.
    let secs: f64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let dur = Duration::from_secs_f64(secs);
    println!(
        "payload: {} bytes; producers: {PRODUCERS}; run: {dur:?} each",
        PAYLOAD.len()
    );

    let pass = "return { on_publish = function(msg, ctx) return nil end }";
    let json = r#"return { on_publish = function(msg, ctx)
        local v = json.decode(msg.payload)
        v.t = v.t + 1
        msg.payload = json.encode(v)
        return msg
      end }"#;
    rt.block_on(async {
        for (name, script, modify) in [("no block", None, false), ("pass-through", Some(pass), false), ("json modify", Some(json), true)] {
            if !name.starts_with(&only) {
                continue;
            }
            let e = engine(dir.path(), script, 2);
            let _ = throughput(&e, 1, Duration::from_millis(300), modify).await; // warm up
            let seq = throughput(&e, 1, dur, modify).await;
            let win = throughput(&e, 32, dur, modify).await;
            println!(
                "{name:<13} 2 workers: {seq:>10.0} msg/s (4 x 1 in flight)   {win:>10.0} msg/s (4 x 32 in flight)"
            );
            e.shutdown().await;
        }

        if !"latency".starts_with(&only) {
            return;
        }
        let slow = r#"return { on_publish = function(msg, ctx)
            if msg.topic ~= "bench/fast" then __test_sleep(50) end
          end }"#;
        let e = engine(dir.path(), Some(slow), 1);
        let _ = fast_latency(&e, Duration::from_millis(200)).await;
        let (p50, p99, p999) = fast_latency(&e, dur).await;
        println!("fast topic alone, 1 worker:                   p50 {p50:>9.1?}  p99 {p99:>9.1?}  p99.9 {p999:>9.1?}");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut slow_tasks = Vec::new();
        for s in 0..8 {
            let (e, stop) = (e.clone(), stop.clone());
            slow_tasks.push(tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = e.before_publish(msg(format!("bench/slow/{s}"), Bytes::from_static(b"1"))).await;
                    n += 1;
                }
                n
            }));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (p50, p99, p999) = fast_latency(&e, dur).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut slow_done = 0;
        for t in slow_tasks {
            slow_done += t.await.unwrap();
        }
        println!(
            "fast topic, 8 topics parked 50 ms, 1 worker:   p50 {p50:>9.1?}  p99 {p99:>9.1?}  p99.9 {p999:>9.1?}  ({slow_done} slow messages meanwhile)"
        );
        let m = e.metrics();
        println!(
            "queue wait p99 bucket on that worker: <= {:?} s",
            m.workers[0].wait.quantile_upper_bound(0.99)
        );
        e.shutdown().await;
    });
}
