//! The real `moonwire` binary as a child process over a config and data directory in a temp
//! dir, shared by the restart tests (`tests/durability.rs`) and the soak (`tests/soak.rs`): it
//! is stopped with SIGINT or killed with SIGKILL and started again over the same
//! `<data_dir>/moonwire.redb`.
//!
//! Every start picks fresh ports (no TIME_WAIT or reuse races after a kill -9). A `Broker`
//! kills its child on drop, and when a test fails it prints the broker's log and keeps the temp
//! dir for inspection.

// Each test crate that includes this module uses a different part of it.
#![allow(dead_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Two distinct free loopback ports (both bound at once, so they differ).
fn free_ports() -> (u16, u16) {
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

#[derive(Clone, Copy, Debug)]
pub enum Stop {
    Graceful,
    Kill9,
}

pub struct Broker {
    /// Owns the temp dir; taken (kept on disk) when a test fails.
    dir: Option<tempfile::TempDir>,
    pub root: PathBuf,
    child: Option<Child>,
    pub mqtt: u16,
    pub http: u16,
    pub starts: u32,
    /// `storage.fsync`.
    pub fsync: &'static str,
    /// `storage.fsync_interval`.
    pub fsync_interval: &'static str,
    /// `[[blocks]]` tables; empty: `blocks = []` (no example blocks).
    pub blocks: String,
    /// `mqtt.max_connections` and `limits.max_connections` (and no per-address limit) when set.
    pub max_connections: Option<u32>,
    /// `shutdown.grace`.
    pub grace: &'static str,
    /// Bound for the broker to start accepting connections.
    pub ready: Duration,
    /// Bound for a graceful stop.
    pub stop: Duration,
}

impl Broker {
    pub fn new(fsync: &'static str) -> Broker {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().to_path_buf();
        Broker {
            dir: Some(dir),
            root,
            child: None,
            mqtt: 0,
            http: 0,
            starts: 0,
            fsync,
            fsync_interval: "1s",
            blocks: String::new(),
            max_connections: None,
            grace: "3s",
            ready: Duration::from_secs(20),
            stop: Duration::from_secs(10),
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    pub fn store_path(&self) -> PathBuf {
        self.data_dir().join("moonwire.redb")
    }

    pub fn log_path(&self) -> PathBuf {
        self.root.join("broker.log")
    }

    pub fn log(&self) -> String {
        std::fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.mqtt))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    fn write_config(&mut self) -> PathBuf {
        let (mqtt, http) = free_ports();
        self.mqtt = mqtt;
        self.http = http;
        let root = self.root.display();
        let blocks_off = if self.blocks.is_empty() {
            "blocks = []\n"
        } else {
            ""
        };
        let (mqtt_max, limits) = match self.max_connections {
            Some(n) => (
                format!("max_connections = {n}\n"),
                format!("[limits]\nmax_connections = {n}\nmax_connections_per_ip = 0\n"),
            ),
            None => (String::new(), String::new()),
        };
        let text = format!(
            r#"{blocks_off}
[mqtt]
listen = "127.0.0.1:{mqtt}"
{mqtt_max}
[http]
enabled = true
listen = "127.0.0.1:{http}"

[ws]
enabled = false

{limits}
[media]
workers = 1

[block_engine]
workers = 1
hot_reload = false
scripts_dir = "{root}/scripts"

[storage]
data_dir = "{root}/data"
persistence = true
fsync = "{fsync}"
fsync_interval = "{fsync_interval}"

[shutdown]
grace = "{grace}"

{blocks}
"#,
            fsync = self.fsync,
            fsync_interval = self.fsync_interval,
            grace = self.grace,
            blocks = self.blocks,
        );
        let path = self.root.join("moonwire.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        let cfg = self.write_config();
        self.starts += 1;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        writeln!(
            log,
            "===== start {} (mqtt {}, http {}) =====",
            self.starts, self.mqtt, self.http
        )
        .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_moonwire"))
            .arg("-c")
            .arg(&cfg)
            .arg("run")
            .env("RUST_LOG", "info,rumqttd=warn")
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn moonwire");
        self.child = Some(child);
    }

    /// Starts the broker and waits until its MQTT and HTTP listeners accept.
    pub async fn start(&mut self) {
        self.spawn();
        let deadline = Instant::now() + self.ready;
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!("broker exited during startup ({st}); log:\n{}", self.log());
            }
            let http = SocketAddr::from(([127, 0, 0, 1], self.http));
            if TcpStream::connect(self.addr()).await.is_ok()
                && TcpStream::connect(http).await.is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "broker not accepting after {:?}; log:\n{}",
                self.ready,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts the broker expecting it to refuse to run; returns its exit status.
    pub async fn start_expecting_failure(&mut self) -> ExitStatus {
        self.spawn();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return st;
            }
            if Instant::now() >= deadline {
                let accepting = TcpStream::connect(self.addr()).await.is_ok();
                panic!(
                    "broker still running 10 s after start (mqtt accepting: {accepting}); log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Panics (with the log) if the broker exited on its own.
    pub fn assert_alive(&mut self, when: &str) {
        if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
            self.child = None;
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(60)..].join("\n");
            panic!("broker died {when} ({st}); log tail:\n{tail}");
        }
    }

    /// SIGINT, then waits for a clean exit.
    pub async fn stop_gracefully(&mut self) {
        let mut child = self.child.take().expect("broker running");
        let st = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "kill -INT failed");
        let deadline = Instant::now() + self.stop;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                assert!(
                    st.success(),
                    "broker exited with {st} on SIGINT; log:\n{}",
                    self.log()
                );
                return;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "broker did not stop within {:?} of SIGINT; log:\n{}",
                    self.stop,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: the process gets no chance to flush or close anything.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("broker running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    pub async fn restart(&mut self, how: Stop) {
        match how {
            Stop::Graceful => self.stop_gracefully().await,
            Stop::Kill9 => self.kill9(),
        }
        self.start().await;
    }

    /// Waits until the broker has taken `client` offline (its DISCONNECT fully processed), via
    /// `/api/sessions`; without that endpoint, waits a fixed half second.
    pub async fn wait_offline(&self, client: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match session_online(self.http, client).await {
                Some(false) => return,
                Some(true) => {}
                None => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{client} still online in /api/sessions 5 s after disconnecting"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(80)..];
            eprintln!("----- broker log (last {} lines) -----", tail.len());
            for l in tail {
                eprintln!("{l}");
            }
            if let Some(d) = self.dir.take() {
                eprintln!("----- kept {} -----", d.keep().display());
            }
        }
    }
}

/// `Some(online)` for `client` from `/api/sessions`; `None` if the endpoint is unusable.
pub async fn session_online(http: u16, client: &str) -> Option<bool> {
    let (status, body) = http_get(http, "/api/sessions").await?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let list = match &v {
        serde_json::Value::Array(a) => a.clone(),
        serde_json::Value::Object(o) => o.get("sessions")?.as_array()?.clone(),
        _ => return None,
    };
    for s in list {
        if s.get("client_id").and_then(|c| c.as_str()) == Some(client) {
            return s.get("online").and_then(|o| o.as_bool());
        }
    }
    // Not listed at all: not online as a persistent session either.
    Some(false)
}

/// A plain HTTP/1.1 GET; `None` on any failure.
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}
