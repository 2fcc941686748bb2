//! Test harness: the real broker in-process on ephemeral ports, real MQTT clients (rumqttc v4
//! and v5), and a raw-packet client for what well-behaved libraries won't send.
#![allow(dead_code, unused_imports)]

use moonwire::app::{App, Running};
use moonwire::config::Config;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

pub const WAIT: Duration = Duration::from_secs(5);

/// Defaults with every listener on an ephemeral loopback port, a fresh data directory, and
/// no example blocks (tests of blocks add their own).
pub fn test_config() -> Config {
    let mut cfg = Config::defaults().expect("defaults load");
    cfg.blocks.clear();
    // Kept (not deleted on drop) because the broker may outlive any handle the test holds.
    cfg.storage.data_dir = tempfile::tempdir().expect("temp dir").keep();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    cfg.mqtt.listen = any;
    cfg.ws.listen = any;
    cfg.http.listen = any;
    cfg.tls.listen = any;
    cfg.shutdown.grace = Duration::from_secs(3);
    cfg
}

pub struct TestBroker {
    pub running: Option<Running>,
    pub mqtt: SocketAddr,
}

impl TestBroker {
    pub async fn start() -> TestBroker {
        Self::start_app(App::new(test_config())).await
    }

    pub async fn start_with(f: impl FnOnce(&mut Config)) -> TestBroker {
        let mut cfg = test_config();
        f(&mut cfg);
        Self::start_app(App::new(cfg)).await
    }

    pub async fn start_app(app: App) -> TestBroker {
        let running = app.start().await.expect("broker starts");
        TestBroker {
            mqtt: running.mqtt,
            running: Some(running),
        }
    }

    pub fn port(&self) -> u16 {
        self.mqtt.port()
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    pub async fn metrics(&self) -> String {
        let addr = self.running().http.expect("http enabled");
        http_get(addr, "/metrics").await.1
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(r) = &self.running {
            r.shutdown_token().cancel();
        }
    }
}

/// Minimal HTTP/1.1 GET over a raw socket: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

// ---------- rumqttc v3.1.1 ----------

pub mod v4 {
    use super::*;
    pub use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};

    pub struct Client {
        pub client: AsyncClient,
        pub rx: mpsc::UnboundedReceiver<Packet>,
        pub task: tokio::task::JoinHandle<Option<rumqttc::ConnectionError>>,
    }

    pub fn options(port: u16, id: &str) -> MqttOptions {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(30));
        // Camera frames are larger than rumqttc's 10 KB default.
        o.set_max_packet_size(4 << 20, 4 << 20);
        o
    }

    /// Connects and waits for CONNACK; incoming packets go to `rx`.
    pub async fn connect(opts: MqttOptions) -> Client {
        let (client, mut el) = AsyncClient::new(opts, 1000);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(p)) => {
                        if tx.send(p).is_err() {
                            return None;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => return Some(e),
                }
            }
        });
        match tokio::time::timeout(WAIT, rx.recv()).await {
            Ok(Some(Packet::ConnAck(_))) => {}
            other => panic!("expected CONNACK, got {other:?}"),
        }
        Client { client, rx, task }
    }

    impl Client {
        pub async fn subscribe(&mut self, filter: &str, qos: QoS) {
            self.client.subscribe(filter, qos).await.unwrap();
            loop {
                match self.next().await {
                    Some(Packet::SubAck(_)) => return,
                    Some(_) => {}
                    None => panic!("no SUBACK for {filter}"),
                }
            }
        }

        /// Publishes at QoS 1 and waits for the PUBACK, so the broker has taken it.
        pub async fn publish_acked(
            &mut self,
            topic: &str,
            retain: bool,
            payload: impl Into<Vec<u8>>,
        ) {
            self.client
                .publish(topic, QoS::AtLeastOnce, retain, payload.into())
                .await
                .unwrap();
            loop {
                match self.next().await {
                    Some(Packet::PubAck(_)) => return,
                    Some(_) => {}
                    None => panic!("no PUBACK for {topic}"),
                }
            }
        }

        /// Next packet within the wait time.
        pub async fn next(&mut self) -> Option<Packet> {
            tokio::time::timeout(WAIT, self.rx.recv())
                .await
                .ok()
                .flatten()
        }

        pub async fn next_publish(&mut self) -> Option<Publish> {
            self.next_publish_within(WAIT).await
        }

        pub async fn next_publish_within(&mut self, wait: Duration) -> Option<Publish> {
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                    Ok(Some(Packet::Publish(p))) => return Some(p),
                    Ok(Some(_)) => {}
                    _ => return None,
                }
            }
        }
    }
}

// ---------- rumqttc v5 ----------

pub mod v5 {
    use super::*;
    pub use rumqttc::v5::mqttbytes::QoS;
    pub use rumqttc::v5::mqttbytes::v5::{LastWill, Packet, Publish};
    pub use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions};

    pub struct Client {
        pub client: AsyncClient,
        pub rx: mpsc::UnboundedReceiver<Packet>,
        pub task: tokio::task::JoinHandle<Option<ConnectionError>>,
    }

    pub fn options(port: u16, id: &str) -> MqttOptions {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(Some(4 << 20));
        o
    }

    /// Connects; returns the client and its CONNACK.
    pub async fn connect(opts: MqttOptions) -> (Client, rumqttc::v5::mqttbytes::v5::ConnAck) {
        let (client, mut el) = AsyncClient::new(opts, 1000);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(p)) => {
                        if tx.send(p).is_err() {
                            return None;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => return Some(e),
                }
            }
        });
        let ack = match tokio::time::timeout(WAIT, rx.recv()).await {
            Ok(Some(Packet::ConnAck(a))) => a,
            other => panic!("expected CONNACK, got {other:?}"),
        };
        (Client { client, rx, task }, ack)
    }

    impl Client {
        pub async fn subscribe(&mut self, filter: &str, qos: QoS) {
            self.client.subscribe(filter, qos).await.unwrap();
            loop {
                match self.next().await {
                    Some(Packet::SubAck(_)) => return,
                    Some(_) => {}
                    None => panic!("no SUBACK for {filter}"),
                }
            }
        }

        pub async fn next(&mut self) -> Option<Packet> {
            tokio::time::timeout(WAIT, self.rx.recv())
                .await
                .ok()
                .flatten()
        }

        pub async fn next_publish(&mut self) -> Option<Publish> {
            loop {
                match self.next().await {
                    Some(Packet::Publish(p)) => return Some(p),
                    Some(_) => {}
                    None => return None,
                }
            }
        }

        /// The next publish within `wait`, or `None` (to check that nothing more arrives).
        pub async fn next_publish_within(&mut self, wait: Duration) -> Option<Publish> {
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                    Ok(Some(Packet::Publish(p))) => return Some(p),
                    Ok(Some(_)) => {}
                    _ => return None,
                }
            }
        }
    }
}

// ---------- raw packets ----------

pub mod raw {
    use super::*;

    fn remaining_length(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let mut b = (n % 128) as u8;
            n /= 128;
            if n > 0 {
                b |= 0x80;
            }
            out.push(b);
            if n == 0 {
                break;
            }
        }
    }

    pub fn packet(byte1: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![byte1];
        remaining_length(body.len(), &mut out);
        out.extend_from_slice(body);
        out
    }

    fn string(s: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s);
    }

    /// CONNECT for protocol level 4 or 5 with clean start and no will.
    pub fn connect(level: u8, client_id: &str, keep_alive: u16) -> Vec<u8> {
        connect_with(level, client_id, keep_alive, true, None)
    }

    /// CONNECT with an optional QoS 0 will (topic, payload).
    pub fn connect_with(
        level: u8,
        client_id: &str,
        keep_alive: u16,
        clean: bool,
        will: Option<(&str, &[u8])>,
    ) -> Vec<u8> {
        let mut body = Vec::new();
        string(b"MQTT", &mut body);
        body.push(level);
        let mut flags = if clean { 0x02 } else { 0 };
        if will.is_some() {
            flags |= 0x04;
        }
        body.push(flags);
        body.extend_from_slice(&keep_alive.to_be_bytes());
        if level == 5 {
            body.push(0); // no properties
        }
        string(client_id.as_bytes(), &mut body);
        if let Some((t, p)) = will {
            if level == 5 {
                body.push(0);
            }
            string(t.as_bytes(), &mut body);
            string(p, &mut body);
        }
        packet(0x10, &body)
    }

    /// v5 CONNECT with a Session Expiry Interval property.
    pub fn connect_v5_expiry(client_id: &str, clean: bool, expiry: u32) -> Vec<u8> {
        let mut body = Vec::new();
        string(b"MQTT", &mut body);
        body.push(5);
        body.push(if clean { 0x02 } else { 0 });
        body.extend_from_slice(&0u16.to_be_bytes());
        body.push(5);
        body.push(0x11);
        body.extend_from_slice(&expiry.to_be_bytes());
        string(client_id.as_bytes(), &mut body);
        packet(0x10, &body)
    }

    pub fn publish(level: u8, topic: &[u8], payload: &[u8], qos: u8, pkid: u16) -> Vec<u8> {
        let mut body = Vec::new();
        string(topic, &mut body);
        if qos > 0 {
            body.extend_from_slice(&pkid.to_be_bytes());
        }
        if level == 5 {
            body.push(0);
        }
        body.extend_from_slice(payload);
        packet(0x30 | (qos << 1), &body)
    }

    pub fn subscribe(level: u8, pkid: u16, filter: &str, qos: u8) -> Vec<u8> {
        let mut body = pkid.to_be_bytes().to_vec();
        if level == 5 {
            body.push(0);
        }
        string(filter.as_bytes(), &mut body);
        body.push(qos);
        packet(0x82, &body)
    }

    pub struct Conn {
        pub stream: TcpStream,
        buf: Vec<u8>,
    }

    impl Conn {
        pub async fn open(addr: SocketAddr) -> Conn {
            Conn {
                stream: TcpStream::connect(addr).await.unwrap(),
                buf: Vec::new(),
            }
        }

        pub async fn send(&mut self, bytes: &[u8]) {
            self.stream.write_all(bytes).await.unwrap();
        }

        /// Next packet as (first byte, body); `None` when the broker closed or on timeout.
        pub async fn read(&mut self, wait: Duration) -> Option<(u8, Vec<u8>)> {
            let (hlen, wire) = self.read_wire(wait).await?;
            Some((wire[0], wire[hlen..].to_vec()))
        }

        /// Next packet exactly as it came on the wire, with the length of its fixed header.
        pub async fn read_wire(&mut self, wait: Duration) -> Option<(usize, Vec<u8>)> {
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                if self.buf.len() >= 2 {
                    let (mut len, mut mult, mut i) = (0usize, 1usize, 1usize);
                    let mut complete = false;
                    while i < self.buf.len() && i <= 4 {
                        let b = self.buf[i];
                        len += (b & 0x7F) as usize * mult;
                        mult *= 128;
                        i += 1;
                        if b & 0x80 == 0 {
                            complete = true;
                            break;
                        }
                    }
                    if complete && self.buf.len() >= i + len {
                        let wire = self.buf.drain(..i + len).collect();
                        return Some((i, wire));
                    }
                }
                let mut tmp = [0u8; 4096];
                match tokio::time::timeout_at(deadline, self.stream.read(&mut tmp)).await {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                    Ok(Ok(n)) => self.buf.extend_from_slice(&tmp[..n]),
                }
            }
        }

        /// Every byte left until the broker closes the connection (or `wait` passes).
        pub async fn rest(&mut self, wait: Duration) -> Vec<u8> {
            let mut out = std::mem::take(&mut self.buf);
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                let mut tmp = [0u8; 4096];
                match tokio::time::timeout_at(deadline, self.stream.read(&mut tmp)).await {
                    Ok(Ok(n)) if n > 0 => out.extend_from_slice(&tmp[..n]),
                    _ => return out,
                }
            }
        }

        /// Waits until the broker closes the connection; true if it did within `wait`.
        pub async fn closed_within(&mut self, wait: Duration) -> bool {
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                let mut tmp = [0u8; 4096];
                match tokio::time::timeout_at(deadline, self.stream.read(&mut tmp)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return true,
                    Ok(Ok(_)) => {}
                    Err(_) => return false,
                }
            }
        }
    }
}
