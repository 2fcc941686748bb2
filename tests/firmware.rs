//! The firmware examples against the real broker: the portable C core's unit tests and
//! freestanding cross-compiles, the host simulator sending the test frames whole and chunked at
//! QoS 0 and 1, a device dying mid-frame, and the MicroPython example under CPython.

mod common;

use common::{TestBroker, test_config, v4};
use moonwire::app::App;
use moonwire::config::Config;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

fn fw() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("firmware-examples")
}

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn make(target: &str) -> std::process::Output {
    let out = Command::new("make")
        .arg("-C")
        .arg(fw())
        .arg(target)
        .output()
        .expect("make runs");
    assert!(
        out.status.success(),
        "make {target} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Builds host-sim once per test binary.
fn camsim() -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        make("host-sim");
    });
    fw().join("host-sim/camsim")
}

fn broker_config() -> Config {
    let mut cfg = test_config();
    cfg.blocks = Config::defaults().unwrap().blocks;
    cfg.media.frame_timeout = Duration::from_millis(500);
    cfg
}

#[test]
fn c_core_unit_tests_pass() {
    let out = make("test");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("passed, 0 failed"), "{text}");
    assert!(!text.contains(" 1 failed"));
}

#[test]
fn c_core_cross_compiles_for_cortex_m4_and_rv32() {
    let out = make("cross");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("cortex-m4") || text.contains("arm"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_sim_frames_become_thumbnails() {
    let sim = tokio::task::spawn_blocking(camsim).await.unwrap();
    let b = TestBroker::start_app(App::new(broker_config())).await;
    let mut thumbs = v4::connect(v4::options(b.port(), "dash")).await;
    thumbs
        .subscribe("cameras/+/thumb", v4::QoS::AtLeastOnce)
        .await;
    let frames = [fixture("vga_astronaut.jpg"), fixture("uxga_coffee.jpg")];
    for (id, args) in [
        ("simq0", vec!["--qos", "0", "--chunk", "4000"]),
        ("simq1", vec!["--qos", "1", "--chunk", "4000"]),
        ("simwhole", vec!["--qos", "1", "--chunk", "0"]),
    ] {
        let port = b.port().to_string();
        let mut cmd = Command::new(&sim);
        cmd.args(["--host", "127.0.0.1", "--port", &port, "--id", id])
            .args(&args)
            .args(&frames);
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "camsim {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut seen = 0;
        while seen < frames.len() {
            let p = thumbs
                .next_publish()
                .await
                .unwrap_or_else(|| panic!("thumbnail for {id}"));
            if p.topic != format!("cameras/{id}/thumb") {
                continue;
            }
            let img = image::load_from_memory_with_format(&p.payload, image::ImageFormat::Jpeg)
                .expect("valid JPEG");
            assert_eq!(img.width(), 160, "configured thumbnail width");
            seen += 1;
        }
    }
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_dying_mid_frame_reports_timeout_not_a_corrupt_thumbnail() {
    let sim = tokio::task::spawn_blocking(camsim).await.unwrap();
    let b = TestBroker::start_app(App::new(broker_config())).await;
    let mut sub = v4::connect(v4::options(b.port(), "ops")).await;
    sub.subscribe("cameras/dying/#", v4::QoS::AtLeastOnce).await;
    let port = b.port().to_string();
    let frame = fixture("uxga_chelsea.jpg");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&sim)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port,
                "--id",
                "dying",
                "--qos",
                "1",
                "--chunk",
                "4000",
            ])
            .args(["--abort-after-chunks", "5", &frame])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut got_timeout = false;
    while let Some(p) = sub.next_publish().await {
        assert_ne!(
            p.topic, "cameras/dying/thumb",
            "thumbnail from a partial frame"
        );
        if p.topic == "cameras/dying/status" {
            let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
            assert_eq!(v["error"], "timeout");
            got_timeout = true;
            break;
        }
    }
    assert!(got_timeout);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn micropython_example_under_cpython() {
    let b = TestBroker::start_app(App::new(broker_config())).await;
    let mut sub = v4::connect(v4::options(b.port(), "ha")).await;
    sub.subscribe("home/hall/#", v4::QoS::AtLeastOnce).await;
    sub.subscribe("cameras/mpcam/thumb", v4::QoS::AtLeastOnce)
        .await;
    let runner = fw().join("micropython/tests/run_under_cpython.py");
    let port = b.port().to_string();
    let run = |args: Vec<String>| {
        let runner = runner.clone();
        tokio::task::spawn_blocking(move || {
            Command::new("python3")
                .arg(&runner)
                .args(&args)
                .output()
                .unwrap()
        })
    };
    // Sensor node: its readings pass the example validate block and are fanned out.
    let out = run([
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--mode",
        "sensor",
        "--count",
        "2",
        "--id",
        "hall",
    ]
    .map(String::from)
    .to_vec())
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "sensor node: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut readings = 0;
    let mut temperature = false;
    while readings < 2 || !temperature {
        let p = sub.next_publish().await.expect("readings and fan-out");
        match p.topic.as_str() {
            "home/hall/sensors" => {
                let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                assert!(v["humidity"].is_number() && v["ts"].is_number(), "{v}");
                readings += 1;
            }
            "home/hall/readings/temperature" => temperature = true,
            _ => {}
        }
    }
    // Camera node: fchunk frames become thumbnails.
    let mut args: Vec<String> = [
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--mode",
        "camera",
        "--count",
        "1",
        "--id",
        "mpcam",
        "--frames",
    ]
    .map(String::from)
    .to_vec();
    args.push(fixture("qvga_rocket.jpg"));
    let out = run(args).await.unwrap();
    assert!(
        out.status.success(),
        "camera node: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    loop {
        let p = sub
            .next_publish()
            .await
            .expect("thumbnail from the MicroPython camera");
        if p.topic == "cameras/mpcam/thumb" {
            image::load_from_memory(&p.payload).expect("valid JPEG");
            break;
        }
    }
    b.stop().await;
}
