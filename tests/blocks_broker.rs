//! Blocks through the real broker and real MQTT clients: the example blocks, verdicts with
//! their reason codes, hot reload under load, connect/subscribe hooks, failing scripts, the
//! admin API and metrics.

mod common;

use common::{TestBroker, WAIT, http_get, raw, test_config, v4, v5};
use moonwire::blocks::{BlockConfig, BlockEvent, OnError};
use moonwire::config::{ByteSize, Config};
use std::path::Path;
use std::time::{Duration, Instant};

/// Test config with the example blocks of the default config.
fn with_examples() -> Config {
    let mut cfg = test_config();
    cfg.blocks = Config::defaults().unwrap().blocks;
    cfg
}

fn binding(name: &str, script: &Path, event: BlockEvent, topics: &[&str]) -> BlockConfig {
    let mut b = BlockConfig::new(name, script, event);
    b.topics = topics.iter().map(|t| t.to_string()).collect();
    b
}

fn write(dir: &Path, name: &str, src: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, src).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_blocks_validate_fan_out_enrich_and_debounce() {
    let b = TestBroker::start_app(moonwire::app::App::new(with_examples())).await;
    let mut sub = v4::connect(v4::options(b.port(), "dash")).await;
    sub.subscribe("home/#", v4::QoS::AtLeastOnce).await;
    sub.subscribe("alerts/#", v4::QoS::AtLeastOnce).await;

    // (a) validate-and-drop: v5 sees the reason code and string; nothing is routed.
    let mut dev = raw::Conn::open(b.mqtt).await;
    dev.send(&raw::connect(5, "hall-sensor", 30)).await;
    dev.read(WAIT).await.unwrap();
    let bad = br#"{"temperature":21.5,"humidity":140,"motion":false,"ts":1}"#;
    dev.send(&raw::publish(5, b"home/hall/sensors", bad, 1, 1))
        .await;
    let (first, body) = dev.read(WAIT).await.unwrap();
    assert_eq!((first, &body[..3]), (0x40, &[0u8, 1, 0x83][..]));
    assert!(
        String::from_utf8_lossy(&body).contains("humidity"),
        "reason string"
    );
    let missing = br#"{"temperature":21.5,"motion":false,"ts":1}"#;
    dev.send(&raw::publish(5, b"home/hall/sensors", missing, 2, 2))
        .await;
    let (first, body) = dev.read(WAIT).await.unwrap();
    assert_eq!(
        (first, &body[..3]),
        (0x50, &[0u8, 2, 0x83][..]),
        "QoS 2 drop in PUBREC"
    );

    // (c) fan-out: a valid reading is delivered and split per reading (after routing).
    let good = br#"{"temperature":21.5,"humidity":40.5,"motion":true,"ts":1}"#;
    dev.send(&raw::publish(5, b"home/hall/sensors", good, 1, 3))
        .await;
    assert_eq!(dev.read(WAIT).await.unwrap().1[..2], [0, 3]);
    let mut got = std::collections::BTreeMap::new();
    while got.len() < 4 {
        let p = sub.next_publish().await.expect("reading and its fan-out");
        got.insert(
            p.topic.clone(),
            String::from_utf8_lossy(&p.payload).into_owned(),
        );
    }
    assert_eq!(got["home/hall/sensors"].as_bytes(), good);
    assert_eq!(got["home/hall/readings/temperature"], "21.5");
    assert_eq!(got["home/hall/readings/humidity"], "40.5");
    assert_eq!(got["home/hall/readings/motion"], "true");

    // (b) enrich: the room comes from kv (set through home/<device>/room), alert to alerts/<room>.
    let mut p = v4::connect(v4::options(b.port(), "pir")).await;
    p.publish_acked("home/pir1/room", true, "kitchen").await;
    let _ = sub.next_publish().await; // the room publish itself
    tokio::time::sleep(Duration::from_millis(200)).await;
    p.publish_acked("home/pir1/motion", false, r#"{"motion":true,"ts":5}"#)
        .await;
    let mut alert = None;
    while alert.is_none() {
        let m = sub.next_publish().await.expect("alert");
        if m.topic.starts_with("alerts/") {
            alert = Some(m);
        }
    }
    let alert = alert.unwrap();
    assert_eq!(&alert.topic, "alerts/kitchen");
    let v: serde_json::Value = serde_json::from_slice(&alert.payload).unwrap();
    assert_eq!(v["device"], "pir1");
    assert_eq!(v["room"], "kitchen");
    assert!(v["received_at"].as_u64().unwrap() > 1_600_000_000_000);

    // (d) debounce: a second motion within 30 s produces no second alert.
    p.publish_acked("home/pir1/motion", false, r#"{"motion":true,"ts":6}"#)
        .await;
    let deadline = Instant::now() + Duration::from_millis(800);
    while let Some(m) = sub
        .next_publish_within(deadline.saturating_duration_since(Instant::now()))
        .await
    {
        assert!(
            !m.topic.starts_with("alerts/"),
            "debounce let a second alert through"
        );
    }
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_heartbeat_counts_from_kv() {
    let mut cfg = with_examples();
    for b in &mut cfg.blocks {
        if b.name == "heartbeat" {
            b.every = Some(Duration::from_millis(200));
        }
    }
    let b = TestBroker::start_app(moonwire::app::App::new(cfg)).await;
    let mut p = v4::connect(v4::options(b.port(), "s1")).await;
    p.publish_acked(
        "home/s1/sensors",
        false,
        r#"{"temperature":1,"humidity":2,"motion":false,"ts":1}"#,
    )
    .await;
    let mut sub = v4::connect(v4::options(b.port(), "hb")).await;
    sub.subscribe("moonwire/heartbeat", v4::QoS::AtMostOnce)
        .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = sub.next_publish().await.expect("heartbeat");
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        if v["readings"] == 1 {
            assert_eq!(v["alerts"], 0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "heartbeat never counted the reading: {v}"
        );
    }
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_scripts_never_hurt_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let spin = write(
        d,
        "spin.lua",
        "return { on_publish = function(msg) while true do end end }",
    );
    let bomb = write(
        d,
        "bomb.lua",
        "return { on_publish = function(msg) local t = {} for i = 1, 1e9 do t[i] = string.rep('x', 1000) .. i end end }",
    );
    let rep = write(
        d,
        "rep.lua",
        "return { on_publish = function(msg) return { payload = string.rep('x', 1e9) } end }",
    );
    let boom = write(
        d,
        "boom.lua",
        "return { on_publish = function(msg) error('kaput') end }",
    );
    let wrong = write(
        d,
        "wrong.lua",
        "return { on_publish = function(msg) return 42 end }",
    );
    let loopy = write(
        d,
        "loop.lua",
        "return { on_publish = function(msg) mqtt.publish(msg.topic, msg.payload) end }",
    );
    let evil = write(
        d,
        "evil.lua",
        r#"return { on_publish = function(msg)
            local found = {}
            for _, name in ipairs({'io', 'debug', 'package', 'load', 'loadfile', 'dofile'}) do
              if _G[name] ~= nil then found[#found + 1] = name end
            end
            if os.execute ~= nil then found[#found + 1] = 'os.execute' end
            if string.dump ~= nil then found[#found + 1] = 'string.dump' end
            local ok = pcall(require, 'socket')
            if ok then found[#found + 1] = 'socket' end
            return { payload = table.concat(found, ',') }
        end }"#,
    );
    let echo = write(
        d,
        "echo.lua",
        "return { on_publish = function(msg) return { payload = msg.payload .. '\\0\\255' } end }",
    );
    let mut cfg = test_config();
    cfg.block_engine.scripts_dir = d.to_owned();
    let mut timed = binding("spin", &spin, BlockEvent::BeforePublish, &["bad/spin"]);
    timed.timeout = Duration::from_millis(100);
    let mut bomb_b = binding("bomb", &bomb, BlockEvent::BeforePublish, &["bad/bomb"]);
    bomb_b.memory = ByteSize::mib(8);
    let mut rep_b = binding("rep", &rep, BlockEvent::BeforePublish, &["bad/rep"]);
    rep_b.memory = ByteSize::mib(8);
    let mut boom_b = binding("boom", &boom, BlockEvent::BeforePublish, &["bad/boom"]);
    boom_b.on_error = OnError::Drop;
    cfg.blocks = vec![
        timed,
        bomb_b,
        rep_b,
        boom_b,
        binding("wrong", &wrong, BlockEvent::BeforePublish, &["bad/wrong"]),
        binding("loop", &loopy, BlockEvent::BeforePublish, &["bad/loop"]),
        binding("evil", &evil, BlockEvent::BeforePublish, &["bad/evil"]),
        binding("echo", &echo, BlockEvent::BeforePublish, &["bin/#"]),
    ];
    let b = TestBroker::start_app(moonwire::app::App::new(cfg)).await;
    let mut sub = v4::connect(v4::options(b.port(), "w")).await;
    sub.subscribe("bad/#", v4::QoS::AtLeastOnce).await;
    sub.subscribe("bin/#", v4::QoS::AtLeastOnce).await;
    let mut p = v4::connect(v4::options(b.port(), "p")).await;

    // Infinite loop: deadline, on_error = pass → delivered unchanged, broker responsive.
    let t = Instant::now();
    p.publish_acked("bad/spin", false, "x").await;
    assert!(t.elapsed() < Duration::from_secs(3));
    assert_eq!(&sub.next_publish().await.unwrap().topic, "bad/spin");
    // Memory bombs: limit hit, on_error = pass.
    p.publish_acked("bad/bomb", false, "x").await;
    assert_eq!(&sub.next_publish().await.unwrap().topic, "bad/bomb");
    p.publish_acked("bad/rep", false, "x").await;
    assert_eq!(&sub.next_publish().await.unwrap().payload[..], b"x");
    // Runtime error with on_error = drop: not routed.
    p.publish_acked("bad/boom", false, "x").await;
    // Wrong return type: clear error, on_error = pass.
    p.publish_acked("bad/wrong", false, "x").await;
    assert_eq!(&sub.next_publish().await.unwrap().topic, "bad/wrong");
    // Loop guard: the block republishes its own topic; hops stop it.
    p.publish_acked("bad/loop", false, "x").await;
    let mut loops = 0;
    while let Some(m) = sub.next_publish_within(Duration::from_millis(700)).await {
        assert_eq!(&m.topic, "bad/loop");
        loops += 1;
    }
    assert!((2..=6).contains(&loops), "loop guard: {loops} deliveries");
    // Sandbox: nothing dangerous reachable.
    p.publish_acked("bad/evil", false, "x").await;
    let m = sub.next_publish().await.unwrap();
    assert_eq!(
        &m.payload[..],
        b"",
        "reachable: {}",
        String::from_utf8_lossy(&m.payload)
    );
    // Binary payloads round-trip byte for byte.
    let all: Vec<u8> = (0..=255u8).collect();
    p.publish_acked("bin/x", false, all.clone()).await;
    let m = sub.next_publish().await.unwrap();
    assert_eq!(&m.payload[..256], &all[..]);
    assert_eq!(&m.payload[256..], &[0, 255]);

    let (_, api) = http_get(b.running().http.unwrap(), "/api/blocks").await;
    let v: serde_json::Value = serde_json::from_str(&api).unwrap();
    let find = |n: &str| {
        v["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == n)
            .cloned()
            .unwrap()
    };
    assert_eq!(find("spin")["timeouts"], 1);
    assert!(
        find("boom")["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("kaput")
    );
    assert!(find("wrong")["errors"].as_u64().unwrap() >= 1);
    assert!(find("loop")["hop_refused"].as_u64().unwrap() >= 1);
    let metrics = b.metrics().await;
    assert!(
        metrics.contains("moonwire_block_timeouts_total{block=\"spin\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("moonwire_block_latency_seconds_bucket{block=\"echo\""));
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_subscribe_blocks_decide() {
    let dir = tempfile::tempdir().unwrap();
    let gate = write(
        dir.path(),
        "gate.lua",
        r#"return {
          on_connect = function(client) if client.client_id:find('^banned') then return false, 'banned device' end return true end,
          on_subscribe = function(client, filter) return filter ~= 'secret/#' end,
        }"#,
    );
    let mut cfg = test_config();
    cfg.block_engine.scripts_dir = dir.path().to_owned();
    cfg.blocks = vec![
        binding("gate-c", &gate, BlockEvent::Connect, &[]),
        binding("gate-s", &gate, BlockEvent::Subscribe, &[]),
    ];
    let b = TestBroker::start_app(moonwire::app::App::new(cfg)).await;
    let mut c = raw::Conn::open(b.mqtt).await;
    c.send(&raw::connect(5, "banned-1", 30)).await;
    let (first, body) = c.read(WAIT).await.unwrap();
    assert_eq!((first, body[1]), (0x20, 0x87));
    let mut c = raw::Conn::open(b.mqtt).await;
    c.send(&raw::connect(4, "ok-1", 30)).await;
    assert_eq!(c.read(WAIT).await.unwrap(), (0x20, vec![0, 0]));
    c.send(&raw::subscribe(4, 1, "secret/#", 0)).await;
    assert_eq!(c.read(WAIT).await.unwrap(), (0x90, vec![0, 1, 0x80]));
    c.send(&raw::subscribe(4, 2, "public/#", 1)).await;
    assert_eq!(c.read(WAIT).await.unwrap(), (0x90, vec![0, 2, 1]));
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_under_load_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let version = |n: u32| {
        format!(
            "return {{ on_publish = function(msg) return {{ payload = msg.payload .. ':v{n}' }} end }}"
        )
    };
    let script = write(dir.path(), "tag.lua", &version(0));
    let broken =
        "return { on_publish = function(msg) return { payload = msg.payload .. ':broken' } end";
    let mut cfg = test_config();
    cfg.block_engine.scripts_dir = dir.path().to_owned();
    cfg.blocks = vec![binding(
        "tag",
        &script,
        BlockEvent::BeforePublish,
        &["load/#"],
    )];
    let b = TestBroker::start_app(moonwire::app::App::new(cfg)).await;
    let mut sub = v5::connect(v5::options(b.port(), "counter")).await.0;
    sub.subscribe("load/#", v5::QoS::AtLeastOnce).await;

    const N: u32 = 20_000;
    let port = b.port();
    let producer = tokio::spawn(async move {
        // Raw QoS 1 publisher paced at 20,000 msg/s: bursts of 200 every 10 ms.
        let mut c = raw::Conn::open(format!("127.0.0.1:{port}").parse().unwrap()).await;
        c.send(&raw::connect(4, "producer", 0)).await;
        c.read(WAIT).await.unwrap();
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        for chunk in 0..N / 200 {
            tick.tick().await;
            let mut burst = Vec::new();
            for i in 0..200 {
                let seq = chunk * 200 + i;
                burst.extend(raw::publish(
                    4,
                    b"load/x",
                    seq.to_string().as_bytes(),
                    1,
                    (seq % 60000 + 1) as u16,
                ));
            }
            c.send(&burst).await;
            for _ in 0..200 {
                assert_eq!(c.read(WAIT).await.expect("PUBACK").0, 0x40);
            }
        }
        let rate = N as f64 / start.elapsed().as_secs_f64();
        eprintln!("hot reload under load: {rate:.0} msg/s offered and acknowledged");
    });
    let writer = {
        let script = script.clone();
        tokio::spawn(async move {
            for n in 1..=4 {
                // Longer than the watcher's 200 ms debounce, so each write is its own reload.
                tokio::time::sleep(Duration::from_millis(230)).await;
                if n == 2 {
                    std::fs::write(&script, broken).unwrap();
                } else {
                    std::fs::write(&script, version(n)).unwrap();
                }
            }
        })
    };
    let mut seen = vec![0u8; N as usize];
    let mut versions = std::collections::BTreeSet::new();
    for _ in 0..N {
        let m = sub.next_publish().await.expect("message lost");
        let text = String::from_utf8(m.payload.to_vec()).unwrap();
        let (seq, tag) = text.split_once(':').unwrap();
        assert_ne!(tag, "broken", "a script with a syntax error was loaded");
        versions.insert(tag.to_string());
        seen[seq.parse::<usize>().unwrap()] += 1;
    }
    producer.await.unwrap();
    writer.await.unwrap();
    assert!(
        seen.iter().all(|&n| n == 1),
        "lost or duplicated: {:?}",
        seen.iter()
            .enumerate()
            .filter(|(_, n)| **n != 1)
            .take(5)
            .collect::<Vec<_>>()
    );
    assert!(
        versions.len() >= 3,
        "reloads not applied under load: {versions:?}"
    );
    let (_, api) = http_get(b.running().http.unwrap(), "/api/blocks").await;
    let v: serde_json::Value = serde_json::from_str(&api).unwrap();
    assert!(v["reload"]["failed"].as_u64().unwrap() >= 1, "{v}");
    b.stop().await;
}

#[test]
fn test_block_cli_prints_the_verdict_and_fails_on_script_errors() {
    let run = |args: &[&str], input: &str| {
        use std::io::Write;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_moonwire"))
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = run(
        &[
            "test-block",
            "scripts/validate_sensors.lua",
            "--topic",
            "home/hall/sensors",
            "--payload",
            "-",
        ],
        r#"{"temperature":20,"humidity":101,"motion":false,"ts":1}"#,
    );
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("DROP") && text.contains("humidity"), "{text}");
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "bad.lua",
        "return { on_publish = function(msg) error('nope') end }",
    );
    let out = run(
        &[
            "test-block",
            bad.to_str().unwrap(),
            "--topic",
            "a/b",
            "--payload",
            "-",
        ],
        "x",
    );
    assert!(!out.status.success(), "script error must fail the dry run");
    assert!(String::from_utf8_lossy(&out.stdout).contains("nope"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_syntax_error_at_start_is_refused_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "broken.lua",
        "local x = 1\nreturn { on_publish = function(msg) end\n",
    );
    let mut cfg = test_config();
    cfg.block_engine.scripts_dir = dir.path().to_owned();
    cfg.blocks = vec![binding("broken", &bad, BlockEvent::BeforePublish, &["x/#"])];
    let err = match moonwire::app::App::new(cfg).start().await {
        Ok(_) => panic!("broker started with a broken script"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("broken.lua:") && err.contains("broken"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_deleted_while_running_keeps_the_loaded_version() {
    let dir = tempfile::tempdir().unwrap();
    let script = write(
        dir.path(),
        "tag.lua",
        "return { on_publish = function(msg) return { payload = msg.payload .. '!' } end }",
    );
    let mut cfg = test_config();
    cfg.block_engine.scripts_dir = dir.path().to_owned();
    cfg.blocks = vec![binding(
        "tag",
        &script,
        BlockEvent::BeforePublish,
        &["del/#"],
    )];
    let b = TestBroker::start_app(moonwire::app::App::new(cfg)).await;
    let mut sub = v4::connect(v4::options(b.port(), "s")).await;
    sub.subscribe("del/#", v4::QoS::AtLeastOnce).await;
    let mut p = v4::connect(v4::options(b.port(), "p")).await;
    std::fs::remove_file(&script).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    p.publish_acked("del/x", false, "still").await;
    assert_eq!(&sub.next_publish().await.unwrap().payload[..], b"still!");
    let (_, api) = http_get(b.running().http.unwrap(), "/api/blocks").await;
    assert!(api.contains("\"name\":\"tag\""), "{api}");
    b.stop().await;
}
