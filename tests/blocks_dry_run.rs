//! `dry_run`: one handler, same sandbox, every side effect reported.

mod blocks_support;
use blocks_support as common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use moonwire::blocks::kv::KvStore;
use moonwire::blocks::{BlockError, DryRunOptions, KvValue, OnError, SideEffect, dry_run};
use moonwire::pipeline::{DropCode, Verdict};

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

#[test]
fn reports_verdict_message_and_effects() {
    let d = Dir::new();
    let kv_path = d.path().join("copy.redb");
    {
        let kv = KvStore::open(&kv_path).unwrap();
        kv.set("enrich", b"room:pir", &KvValue::Str(b"hall".to_vec()), None)
            .unwrap();
    }
    let r = dry_run(
        &example("enrich_motion.lua"),
        DryRunOptions {
            block_name: Some("enrich".into()),
            topic: Some("home/pir/motion".into()),
            filter: Some("home/+/motion".into()),
            payload: r#"{"motion":true,"ts":7}"#.into(),
            kv_path: Some(kv_path),
            ..DryRunOptions::default()
        },
    )
    .unwrap();
    assert_eq!(r.verdict, Verdict::Pass);
    assert_eq!(r.error, None);
    assert_eq!(r.handler, "on_publish");
    let [SideEffect::Publish(alert)] = &r.effects[..] else {
        panic!("{:?}", r.effects)
    };
    assert_eq!(alert.topic, "alerts/hall");
    assert_eq!(alert.origin.hop, 1);
    let text = r.to_string();
    println!("{text}");
    assert!(text.contains("verdict PASS"), "{text}");
    assert!(text.contains("publish   alerts/hall qos=1"), "{text}");
}

#[test]
fn drops_and_failures_are_reported() {
    let r = dry_run(
        &example("validate_sensors.lua"),
        DryRunOptions {
            topic: Some("home/x/sensors".into()),
            payload: r#"{"temperature":1,"humidity":101,"motion":false,"ts":1}"#.into(),
            ..DryRunOptions::default()
        },
    )
    .unwrap();
    assert_eq!(
        r.verdict,
        Verdict::Drop {
            code: DropCode::ImplementationSpecific,
            reason: "humidity out of range (0-100): 101".into()
        }
    );
    assert_eq!(r.message, None);
    let text = r.to_string();
    println!("{text}");
    assert!(
        text.contains("verdict DROP (reason code 0x83): humidity out of range"),
        "{text}"
    );

    let d = Dir::new();
    let s = d.script(
        "fail.lua",
        "return { on_publish = function(m) kv.set('k', 'v', {ttl = 5}); log.warn('about to fail'); error('nope') end }",
    );
    let opts = |on_error| DryRunOptions {
        topic: Some("t".into()),
        payload: vec![0u8, 1, 2, 255].into(),
        on_error,
        ..DryRunOptions::default()
    };
    let r = dry_run(&s, opts(OnError::Drop)).unwrap();
    assert!(matches!(
        r.verdict,
        Verdict::Drop {
            code: DropCode::Unspecified,
            ..
        }
    ));
    assert!(r.error.as_deref().unwrap().contains("fail.lua:1: nope"));
    assert_eq!(
        r.effects.len(),
        2,
        "effects before the error are still reported"
    );
    let text = r.to_string();
    println!("{text}");
    assert!(text.contains("kv.set    \"k\" = \"v\" (ttl 5s)"), "{text}");
    assert!(text.contains("<binary 4 bytes> 000102ff"), "{text}");
    let r = dry_run(&s, opts(OnError::Pass)).unwrap();
    assert_eq!(r.verdict, Verdict::Pass);
}

#[test]
fn interval_handlers_run_without_a_topic() {
    let r = dry_run(&example("heartbeat.lua"), DryRunOptions::default()).unwrap();
    assert_eq!(r.handler, "on_interval");
    let [SideEffect::Publish(m)] = &r.effects[..] else {
        panic!("{:?}", r.effects)
    };
    assert_eq!(m.topic, "moonwire/heartbeat");
    assert!(m.retain);
    println!("{r}");
}

#[test]
fn load_errors_and_bad_options_are_errors() {
    let d = Dir::new();
    let s = d.script("syntax.lua", "return {");
    let err = dry_run(
        &s,
        DryRunOptions {
            topic: Some("t".into()),
            ..DryRunOptions::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, BlockError::Load(_)), "{err}");
    assert!(err.to_string().contains("syntax.lua:1"), "{err}");
    let err = dry_run(
        &s,
        DryRunOptions {
            topic: Some("a/#".into()),
            ..DryRunOptions::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, BlockError::DryRun(_)), "{err}");
    let err = dry_run(&d.scripts().join("missing.lua"), DryRunOptions::default()).unwrap_err();
    assert!(matches!(err, BlockError::ReadScript { .. }), "{err}");
    let slow = d.script(
        "slow.lua",
        "return { on_publish = function() while true do end end }",
    );
    let r = dry_run(
        &slow,
        DryRunOptions {
            topic: Some("t".into()),
            timeout: Duration::from_millis(50),
            ..DryRunOptions::default()
        },
    )
    .unwrap();
    assert!(r.error.unwrap().contains("timeout"));
}
