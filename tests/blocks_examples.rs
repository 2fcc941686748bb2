//! The example blocks in scripts/, run by the engine behind a simulated broker pipeline.

mod blocks_support;
use blocks_support as common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use moonwire::blocks::kv::KvStore;
use moonwire::blocks::{BlockConfig, BlockEngine, BlockEvent, BlocksConfig, KvValue};
use moonwire::pipeline::{DropCode, Message, Verdict};
use serde_json::Value as Json;

fn scripts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts")
}

/// The example bindings, with the heartbeat sped up for the test.
fn example_config(d: &Dir) -> BlocksConfig {
    // The example file is in the broker's config format; the engine-level tests here have no
    // media service, so the camera block is left out.
    let file = scripts().join("blocks.example.toml");
    let broker_cfg =
        moonwire::config::Config::load_with_env(Some(&file), std::iter::empty()).unwrap();
    let mut cfg: BlocksConfig = broker_cfg.blocks_config();
    cfg.blocks.retain(|b| b.name != "camera-thumbs");
    cfg.validate().unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    cfg.scripts_dir = scripts();
    cfg.kv_path = d.path().join("kv.redb");
    cfg.hot_reload = false;
    cfg.workers = Some(2);
    for b in &mut cfg.blocks {
        b.script = root.join(&b.script);
        if b.event == BlockEvent::Interval {
            b.every = Some(Duration::from_millis(100));
        }
    }
    cfg
}

fn only(cfg: &BlocksConfig, names: &[&str]) -> BlocksConfig {
    let mut c = cfg.clone();
    c.blocks
        .retain(|b: &BlockConfig| names.contains(&b.name.as_str()));
    c
}

fn start_sim(cfg: BlocksConfig) -> (Arc<BrokerSim>, BlockEngine) {
    let sim = BrokerSim::new();
    let e = start(cfg, Arc::new(SimPublisher(sim.clone())));
    let _ = sim.engine.set(e.clone());
    (sim, e)
}

fn reading(temp: f64, hum: f64) -> String {
    format!(r#"{{"temperature":{temp},"humidity":{hum},"motion":false,"ts":1700000000}}"#)
}

fn json(m: &Message) -> Json {
    serde_json::from_slice(&m.payload).unwrap()
}

fn dropped(v: &Verdict) -> String {
    match v {
        Verdict::Drop {
            code: DropCode::ImplementationSpecific,
            reason,
        } => reason.clone(),
        v => panic!("expected a drop, got {v:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_sensors_drops_bad_readings_with_a_reason() {
    let d = Dir::new();
    let cfg = example_config(&d);
    let (sim, e) = start_sim(only(&cfg, &["validate-sensors"]));
    let t = "home/kitchen/sensors";
    assert_eq!(sim.inject(msg(t, reading(21.5, 40.2))).await, Verdict::Pass);
    assert_eq!(sim.inject(msg(t, reading(-5.0, 0.0))).await, Verdict::Pass);
    assert_eq!(
        sim.inject(msg(t, reading(21.0, 100.0))).await,
        Verdict::Pass
    );
    let r = dropped(&sim.inject(msg(t, reading(21.5, 140.0))).await);
    assert!(r.contains("humidity out of range"), "{r}");
    let r = dropped(&sim.inject(msg(t, reading(21.5, -0.5))).await);
    assert!(r.contains("humidity out of range"), "{r}");
    let r = dropped(
        &sim.inject(msg(
            t,
            r#"{"temperature":21.5,"humidity":40,"motion":false}"#,
        ))
        .await,
    );
    assert_eq!(r, "missing field ts");
    let r = dropped(
        &sim.inject(msg(
            t,
            r#"{"temperature":21.5,"humidity":null,"motion":false,"ts":1}"#,
        ))
        .await,
    );
    assert_eq!(r, "missing field humidity");
    let r = dropped(
        &sim.inject(msg(
            t,
            r#"{"temperature":"hot","humidity":4,"motion":false,"ts":1}"#,
        ))
        .await,
    );
    assert_eq!(r, "temperature must be a number");
    let r = dropped(&sim.inject(msg(t, r#"{"temperature":21.5,"#)).await);
    assert!(r.starts_with("invalid JSON"), "{r}");
    let r = dropped(&sim.inject(msg(t, "[1,2]")).await);
    assert!(r.contains("expected an object"), "{r}");
    let r = dropped(&sim.inject(msg(t, vec![0xff, 0xfe])).await);
    assert!(r.starts_with("invalid JSON"), "{r}");
    // Other topics are not its business.
    assert!(!e.has_before_publish("home/kitchen/motion"));
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrich_motion_publishes_alerts_to_the_devices_room() {
    let d = Dir::new();
    let cfg = example_config(&d);
    {
        let kv = KvStore::open(&cfg.kv_path).unwrap();
        kv.set(
            "enrich-motion",
            b"room:hall-pir",
            &KvValue::Str(b"hallway".to_vec()),
            None,
        )
        .unwrap();
    }
    let (sim, e) = start_sim(only(&cfg, &["enrich-motion"]));
    let mut m = msg("home/hall-pir/motion", r#"{"motion":true,"ts":1700000001}"#);
    m.received_at = 1_700_000_001_234;
    assert_eq!(
        sim.inject(m).await,
        Verdict::Pass,
        "the original is delivered as is"
    );
    let _ = sim
        .inject(msg("home/garage-pir/motion", r#"{"motion":true,"ts":5}"#))
        .await;
    let _ = sim
        .inject(msg("home/hall-pir/motion", r#"{"motion":false,"ts":6}"#))
        .await;
    let _ = sim.inject(msg("home/hall-pir/motion", "not json")).await;
    // A room set through the topic takes effect for the next event.
    let _ = sim.inject(msg("home/porch-pir/room", "porch")).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _ = sim
        .inject(msg("home/porch-pir/motion", r#"{"motion":true,"ts":9}"#))
        .await;
    assert!(
        eventually(Duration::from_secs(3), || sim.delivered_on("alerts/").len()
            == 3)
        .await
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut alerts = sim.delivered_on("alerts/");
    assert_eq!(alerts.len(), 3, "no alert for motion=false or bad JSON");
    alerts.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert_eq!(alerts[0].topic, "alerts/hallway");
    assert_eq!(
        json(&alerts[0]),
        serde_json::json!({"device":"hall-pir","room":"hallway","motion":true,"ts":1700000001,"received_at":1700000001234u64})
    );
    assert_eq!(
        alerts[0].origin.username.as_deref(),
        Some("block:enrich-motion")
    );
    assert_eq!(alerts[0].origin.hop, 1);
    assert_eq!(alerts[1].topic, "alerts/porch");
    assert_eq!(alerts[2].topic, "alerts/unknown");
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_splits_valid_readings_only() {
    let d = Dir::new();
    let cfg = example_config(&d);
    let (sim, e) = start_sim(only(&cfg, &["validate-sensors", "fanout-sensors"]));
    let _ = sim
        .inject(msg("home/den/sensors", reading(21.5, 40.2)))
        .await;
    let _ = sim
        .inject(msg("home/den/sensors", reading(21.5, 400.0)))
        .await;
    assert!(
        eventually(Duration::from_secs(3), || sim
            .delivered
            .lock()
            .unwrap()
            .len()
            >= 4)
        .await
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut out: Vec<(String, String, bool)> = sim
        .delivered
        .lock()
        .unwrap()
        .iter()
        .filter(|m| !m.topic.ends_with("/sensors"))
        .map(|m| {
            (
                m.topic.clone(),
                String::from_utf8(m.payload.to_vec()).unwrap(),
                m.retain,
            )
        })
        .collect();
    out.sort();
    assert_eq!(
        out,
        [
            ("home/den/readings/humidity".into(), "40.2".into(), true),
            ("home/den/readings/motion".into(), "false".into(), true),
            ("home/den/readings/temperature".into(), "21.5".into(), true),
        ]
    );
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debounce_lets_one_alert_per_device_per_window() {
    let d = Dir::new();
    let cfg = example_config(&d);
    {
        let kv = KvStore::open(&cfg.kv_path).unwrap();
        kv.set("debounce-alerts", b"window_seconds", &KvValue::Int(1), None)
            .unwrap();
    }
    let (sim, e) = start_sim(only(&cfg, &["debounce-alerts"]));
    let alert = |dev: &str| {
        msg(
            "alerts/hallway",
            format!(r#"{{"device":"{dev}","room":"hallway"}}"#),
        )
    };
    assert_eq!(sim.inject(alert("a")).await, Verdict::Pass);
    assert_eq!(sim.inject(alert("a")).await, Verdict::Consume);
    assert_eq!(sim.inject(alert("a")).await, Verdict::Consume);
    assert_eq!(sim.inject(alert("b")).await, Verdict::Pass, "per device");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        sim.inject(alert("a")).await,
        Verdict::Pass,
        "the window expired"
    );
    let r = dropped(&sim.inject(msg("alerts/x", "{}")).await);
    assert_eq!(r, "alert without a device");
    let st = &e.status()[0];
    assert_eq!(
        (st.counters.pass, st.counters.consume, st.counters.drop),
        (3, 2, 1)
    );
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_reports_the_counters_of_the_whole_set() {
    let d = Dir::new();
    let cfg = example_config(&d);
    let (sim, e) = start_sim(cfg);
    for i in 0..3 {
        let _ = sim
            .inject(msg(&format!("home/dev{i}/sensors"), reading(20.0, 50.0)))
            .await;
    }
    let _ = sim
        .inject(msg("home/bad/sensors", reading(20.0, 500.0)))
        .await;
    // Two motion events of one device: one alert gets through the debounce.
    let _ = sim
        .inject(msg("home/pir/motion", r#"{"motion":true,"ts":1}"#))
        .await;
    let _ = sim
        .inject(msg("home/pir/motion", r#"{"motion":true,"ts":2}"#))
        .await;
    let want = serde_json::json!({"alerts": 1, "readings": 3});
    let beat = || {
        sim.delivered_on("moonwire/heartbeat").last().map(|m| {
            let mut j = json(m);
            let ts = j.as_object_mut().unwrap().remove("ts").unwrap();
            assert!(ts.as_i64().unwrap() > 1_700_000_000);
            assert!(m.retain);
            j
        })
    };
    assert!(
        eventually(Duration::from_secs(5), || beat() == Some(want.clone())).await,
        "last heartbeat: {:?}",
        beat()
    );
    assert_eq!(sim.delivered_on("alerts/").len(), 1);
    e.shutdown().await;
}
