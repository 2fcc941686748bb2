//! Start, stop and configuration as an operator meets them: graceful shutdown in-process, the
//! real binary on SIGTERM, and `check-config`.

mod common;

use common::{TestBroker, WAIT, raw, test_config};
use moonwire::app::App;
use moonwire::pipeline::{Message, Tap};
use parking_lot::Mutex;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl Tap for Recorder {
    fn wants(&self, _: &str) -> bool {
        true
    }
    fn published(&self, msg: &Message) {
        self.0.lock().push(msg.topic.clone());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_disconnects_clients_without_wills() {
    let rec = Arc::new(Recorder::default());
    let b = TestBroker::start_app(App::new(test_config()).tap(rec.clone())).await;
    let mut c5 = raw::Conn::open(b.mqtt).await;
    c5.send(&raw::connect_with(
        5,
        "v5",
        30,
        true,
        Some(("wills/v5", b"x")),
    ))
    .await;
    c5.read(WAIT).await.unwrap();
    let mut c4 = raw::Conn::open(b.mqtt).await;
    c4.send(&raw::connect_with(
        4,
        "v4",
        30,
        true,
        Some(("wills/v4", b"x")),
    ))
    .await;
    c4.read(WAIT).await.unwrap();
    let mqtt = b.mqtt;
    let started = Instant::now();
    b.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown took {:?}",
        started.elapsed()
    );
    let (first, body) = c5.read(WAIT).await.expect("DISCONNECT");
    assert_eq!((first, body[0]), (0xE0, 0x8B), "server shutting down");
    assert!(c4.closed_within(WAIT).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        rec.0.lock().is_empty(),
        "wills fired on shutdown: {:?}",
        rec.0.lock()
    );
    assert!(
        tokio::net::TcpStream::connect(mqtt).await.is_err(),
        "still accepting"
    );
}

fn moonwire() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_moonwire"));
    c.env_remove("RUST_LOG").env("NO_COLOR", "1");
    c
}

#[test]
fn binary_runs_with_defaults_and_stops_on_sigterm() {
    // Its own data directory: the store file is locked by whichever broker has it open.
    let data = tempfile::tempdir().unwrap();
    let mut child = moonwire()
        .env("MOONWIRE__STORAGE__DATA_DIR", data.path())
        .env("MOONWIRE__MQTT__LISTEN", "127.0.0.1:0")
        .env("MOONWIRE__WS__LISTEN", "127.0.0.1:0")
        .env("MOONWIRE__HTTP__LISTEN", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let started = lines
        .by_ref()
        .take(20)
        .map_while(Result::ok)
        .find(|l| l.contains("moonwire listening"));
    assert!(started.is_some(), "broker did not report its addresses");
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(Instant::now() < deadline, "broker did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn check_config_reports_the_bad_key() {
    let out = moonwire()
        .arg("check-config")
        .env("MOONWIRE__LIMITS__MAX_PACKET_SIZE", "12")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("limits.max_packet_size"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[mqtt]\nlisten = \"127.0.0.1:1883\"\nlisen = 1\n").unwrap();
    let out = moonwire()
        .arg("check-config")
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("lisen"));

    let out = moonwire()
        .arg("check-config")
        .arg("--print-defaults")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("[mqtt]") && text.contains("127.0.0.1:1883"));
    let out = moonwire().arg("check-config").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
