//! Interoperability with third-party MQTT clients run as child processes against the real
//! broker (in-process, ephemeral port): `mosquitto_pub`/`mosquitto_sub` (MQTT 5 and 3.1.1),
//! Eclipse paho-mqtt 2.x for Python with MQTT 5 (`tests/interop/paho_client.py`) and, for the
//! cross-client test, rumqttc v5 — on QoS 0/1/2, retained messages, wills, session resume,
//! shared subscriptions and v5 properties (from the MQTT 5 conformance issue).
//!
//! Needs `mosquitto-clients` (and `stdbuf` from coreutils, so mosquitto_sub's `-d` lines are not
//! stuck in its stdio buffer) and `python3 -m pip install 'paho-mqtt>=2,<3'`. A test whose
//! client is missing prints `SKIPPED: … not installed` to stderr and passes.
//!
//! No test sleeps to let a subscriber settle: mosquitto_sub runs with `-d`, whose
//! `Subscribed (mid: …)` line is printed on SUBACK, and the paho script prints a
//! `{"event":"subscribed"}` line. Every child runs with `kill_on_drop` and a bounded timeout
//! of its own (`-W`, `--timeout`), and every read from it is bounded here too.

mod common;

use common::{TestBroker, v5};
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// Bound for one step of a child process (a line of output, an exit).
const STEP: Duration = Duration::from_secs(15);
/// The children's own limit (`mosquitto_sub -W`, paho `--timeout`), a backstop behind `STEP`.
const CHILD_TIMEOUT: &str = "30";
/// How long to watch for a message that must not come (duplicates, a will that must not fire).
const QUIET: Duration = Duration::from_millis(700);

// ---------- availability ----------

fn installed(program: &str, args: &[&str]) -> bool {
    std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// `Some(why)` when mosquitto_sub/mosquitto_pub (or stdbuf) cannot be run.
fn mosquitto_missing() -> Option<&'static str> {
    static MISSING: OnceLock<Option<&'static str>> = OnceLock::new();
    *MISSING.get_or_init(|| {
        if !installed("mosquitto_sub", &["--help"]) || !installed("mosquitto_pub", &["--help"]) {
            Some("mosquitto_sub/mosquitto_pub not installed (apt-get install mosquitto-clients)")
        } else if !installed("stdbuf", &["--version"]) {
            Some("stdbuf not installed (coreutils)")
        } else {
            None
        }
    })
}

fn paho_missing() -> Option<&'static str> {
    static MISSING: OnceLock<Option<&'static str>> = OnceLock::new();
    *MISSING.get_or_init(|| {
        let ok = std::process::Command::new("python3")
            .args([
                "-c",
                "import sys, paho.mqtt.client; \
                 sys.exit(0 if int(paho.mqtt.__version__.split('.')[0]) >= 2 else 1)",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        (!ok).then_some(
            "python3 with paho-mqtt>=2 not installed (python3 -m pip install 'paho-mqtt>=2,<3')",
        )
    })
}

/// Returns early (the test passes) when a client is missing, saying so on stderr.
macro_rules! require {
    ($($missing:ident),+; $test:literal) => {
        $(
            if let Some(why) = $missing() {
                eprintln!("SKIPPED: {}: {why}", $test);
                return;
            }
        )+
    };
}

// ---------- child processes ----------

/// A child process whose stdout is read line by line (every line is kept for the transcript
/// shown when an assertion fails) and whose stderr is collected.
struct Proc {
    name: String,
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start {cmd:?}: {e}"));
        let (tx, lines) = mpsc::unbounded_channel();
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(l)) = out.next_line().await {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let sink = Arc::clone(&stderr);
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Proc {
            name: name.to_string(),
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    /// The next stdout line within `wait`; `None` at end of output or on timeout.
    async fn next_line(&mut self, wait: Duration) -> Option<String> {
        let l = tokio::time::timeout(wait, self.lines.recv())
            .await
            .ok()
            .flatten()?;
        self.seen.push(l.clone());
        Some(l)
    }

    /// Reads until a line satisfies `pred` and returns it; panics with the transcript if the
    /// output ends or `STEP` passes first.
    async fn wait_for(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_line(left).await {
                Some(l) if pred(&l) => return l,
                Some(_) => {}
                None => panic!("{}: no {what}\n{}", self.name, self.transcript()),
            }
        }
    }

    /// Waits (bounded) for the exit and reads the rest of stdout.
    async fn finish(&mut self) -> ExitStatus {
        let status = match tokio::time::timeout(STEP, self.child.wait()).await {
            Ok(s) => s.unwrap(),
            Err(_) => {
                let _ = self.child.start_kill();
                panic!("{}: did not exit\n{}", self.name, self.transcript());
            }
        };
        while self.next_line(Duration::from_secs(2)).await.is_some() {}
        status
    }

    /// Waits for a successful exit.
    async fn finish_ok(&mut self) {
        let status = self.finish().await;
        assert!(
            status.success(),
            "{}: exited with {status}\n{}",
            self.name,
            self.transcript()
        );
    }

    /// SIGKILL: no DISCONNECT, the socket just closes.
    async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(STEP, self.child.wait()).await;
    }

    fn transcript(&self) -> String {
        format!(
            "--- {0} stdout ---\n{1}\n--- {0} stderr ---\n{2}",
            self.name,
            self.seen.join("\n"),
            self.stderr.lock().unwrap()
        )
    }
}

// ---------- mosquitto_sub / mosquitto_pub ----------

/// `mosquitto_sub -d`: debug lines tell when the SUBACK came; everything else is output.
struct MosqSub {
    p: Proc,
    msgs: Vec<String>,
}

fn is_mosquitto_debug(l: &str) -> bool {
    l.starts_with("Client ") || l.starts_with("Subscribed (mid:")
}

/// Starts `mosquitto_sub -h 127.0.0.1 -p PORT -V VERSION -d -W 30 ARGS…` (`args` split at
/// whitespace, like every command line here) with line-buffered
/// stdout (`stdbuf -oL`; mosquitto_sub only flushes after a message, not after debug lines).
fn mosquitto_sub(b: &TestBroker, name: &str, version: &str, args: &str) -> MosqSub {
    let mut cmd = Command::new("stdbuf");
    cmd.args(["-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p"])
        .arg(b.port().to_string())
        .args(["-V", version, "-d", "-W", CHILD_TIMEOUT])
        .args(args.split_whitespace());
    MosqSub {
        p: Proc::spawn(name, cmd),
        msgs: Vec::new(),
    }
}

impl MosqSub {
    /// Waits for the SUBACK.
    async fn subscribed(&mut self) {
        self.p
            .wait_for("SUBACK", |l| l.starts_with("Subscribed (mid:"))
            .await;
    }

    /// The next output (non-debug) line within `wait`.
    async fn next_message(&mut self, wait: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let l = self.p.next_line(left).await?;
            if !is_mosquitto_debug(&l) {
                self.msgs.push(l.clone());
                return Some(l);
            }
        }
    }

    /// Waits for a successful exit (`-C`, `-E`) and returns every output line.
    async fn finish(&mut self) -> Vec<String> {
        self.p.finish_ok().await;
        self.msgs = self
            .p
            .seen
            .iter()
            .filter(|l| !is_mosquitto_debug(l))
            .cloned()
            .collect();
        self.msgs.clone()
    }

    /// The (QoS, DUP) of every PUBLISH mosquitto_sub received, from its debug lines
    /// `Client … received PUBLISH (d0, q1, r0, m1, 'topic', … (2 bytes))`.
    fn received_publishes(&self) -> Vec<(u8, bool)> {
        self.p
            .seen
            .iter()
            .filter_map(|l| {
                let flags = l.split_once("received PUBLISH (")?.1;
                let mut it = flags.split(", ");
                let dup = it.next()? == "d1";
                let qos = it.next()?.strip_prefix('q')?.parse().ok()?;
                Some((qos, dup))
            })
            .collect()
    }

    fn transcript(&self) -> String {
        self.p.transcript()
    }
}

/// Runs `mosquitto_pub -h 127.0.0.1 -p PORT -V VERSION -d ARGS…` to a successful exit (for
/// QoS 1 and 2 mosquitto_pub exits only after the PUBACK/PUBCOMP) and returns its stdout.
async fn mosquitto_pub(b: &TestBroker, version: &str, args: &str) -> Vec<String> {
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args(["-h", "127.0.0.1", "-p"])
        .arg(b.port().to_string())
        .args(["-V", version, "-d"])
        .args(args.split_whitespace());
    let mut p = Proc::spawn("mosquitto_pub", cmd);
    p.finish_ok().await;
    p.seen
}

// ---------- paho ----------

fn paho_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/paho_client.py")
}

/// `python3 tests/interop/paho_client.py --port PORT --timeout 30 GLOBAL… CMD ARGS…`, where
/// `args` is everything from the global options on (e.g. `"--id x sub --topic t"`).
fn paho(b: &TestBroker, name: &str, args: &str) -> Paho {
    let mut cmd = Command::new("python3");
    cmd.arg("-u")
        .arg(paho_script())
        .args(["--port", &b.port().to_string(), "--timeout", CHILD_TIMEOUT])
        .args(args.split_whitespace());
    Paho {
        p: Proc::spawn(name, cmd),
    }
}

struct Paho {
    p: Proc,
}

impl Paho {
    fn parse(&self, l: &str) -> Value {
        serde_json::from_str(l).unwrap_or_else(|e| {
            panic!(
                "{}: not JSON ({e}): {l}\n{}",
                self.p.name,
                self.transcript()
            )
        })
    }

    /// Waits for the next event of this kind, failing on an `error` or `timeout` event.
    async fn event(&mut self, kind: &str) -> Value {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(l) = self.p.next_line(left).await else {
                panic!("{}: no {kind} event\n{}", self.p.name, self.transcript());
            };
            let v = self.parse(&l);
            match v["event"].as_str() {
                Some(k) if k == kind => return v,
                Some("error") | Some("timeout") => {
                    panic!(
                        "{}: {l} while waiting for {kind}\n{}",
                        self.p.name,
                        self.transcript()
                    )
                }
                _ => {}
            }
        }
    }

    /// The next message event within `wait`, or `None`.
    async fn next_message(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let l = self.p.next_line(left).await?;
            let v = self.parse(&l);
            if v["event"] == "message" {
                return Some(v);
            }
        }
    }

    async fn finish_ok(&mut self) {
        self.p.finish_ok().await;
    }

    /// Every message event printed so far.
    fn messages(&self) -> Vec<Value> {
        self.p
            .seen
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["event"] == "message")
            .collect()
    }

    fn transcript(&self) -> String {
        self.p.transcript()
    }
}

/// Runs a paho `pub` to a successful exit; returns the reason code of each publish (the
/// PUBACK/PUBREC reason for QoS 1/2).
async fn paho_pub(b: &TestBroker, args: &str) -> Vec<i64> {
    let mut p = paho(b, "paho pub", args);
    p.finish_ok().await;
    p.p.seen
        .iter()
        .map(|l| p.parse(l))
        .filter(|v| v["event"] == "published")
        .map(|v| v["reason_code"].as_i64().unwrap())
        .collect()
}

/// (payload, qos, retain) of paho message events, for exact comparisons.
fn summary(msgs: &[Value]) -> Vec<(String, u64, bool)> {
    msgs.iter()
        .map(|m| {
            (
                m["payload"].as_str().unwrap().to_string(),
                m["qos"].as_u64().unwrap(),
                m["retain"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn lines(topic: &str, payloads: &[&str]) -> Vec<String> {
    payloads.iter().map(|p| format!("{topic} {p}")).collect()
}

// ====================================================================================
// mosquitto_pub / mosquitto_sub
// ====================================================================================

/// Three messages at `qos` from mosquitto_pub to a mosquitto_sub subscribed at `qos`: each
/// arrives once, in order, at that QoS, and mosquitto_pub gets its PUBACK/PUBCOMP.
async fn mosquitto_qos_roundtrip(b: &TestBroker, version: &str, qos: u8) {
    let topic = format!("interop/mosq/{version}/qos{qos}");
    let name = format!("mosquitto_sub {version} q{qos}");
    let mut sub = mosquitto_sub(b, &name, version, &format!("-q {qos} -t {topic} -C 3 -v"));
    sub.subscribed().await;
    for m in ["m1", "m2", "m3"] {
        let out = mosquitto_pub(b, version, &format!("-q {qos} -t {topic} -m {m}")).await;
        if qos > 0 {
            let ack = ["received PUBACK", "received PUBCOMP"][qos as usize - 1];
            assert!(
                out.iter().any(|l| l.contains(ack)),
                "mosquitto_pub q{qos}: no {ack}: {out:#?}"
            );
        }
    }
    assert_eq!(
        sub.finish().await,
        lines(&topic, &["m1", "m2", "m3"]),
        "{}",
        sub.transcript()
    );
    assert_eq!(
        sub.received_publishes(),
        [(qos, false); 3],
        "(QoS, DUP) as delivered\n{}",
        sub.transcript()
    );
}

/// [MQTT-3.8.4-8] (v5), [MQTT-3.8.4-6] (v3.1.1): a QoS 2 subscription receives publishes
/// made at QoS 0, 1 and 2 at min(publish QoS, 2).
async fn mosquitto_qos_min(b: &TestBroker, version: &str) {
    let topic = format!("interop/mosq/{version}/qos-min");
    let name = format!("mosquitto_sub {version} q2");
    let mut sub = mosquitto_sub(b, &name, version, &format!("-q 2 -t {topic} -C 3 -F %q|%p"));
    sub.subscribed().await;
    for q in 0..=2 {
        mosquitto_pub(b, version, &format!("-q {q} -t {topic} -m at-{q}")).await;
    }
    assert_eq!(
        sub.finish().await,
        ["0|at-0", "1|at-1", "2|at-2"],
        "delivered QoS = min(publish, subscription)\n{}",
        sub.transcript()
    );
}

/// A retained message from mosquitto_pub -r: live subscribers get it with RETAIN 0, later
/// ones get only the latest one, with RETAIN 1, before live messages; `-r -n` clears it.
async fn mosquitto_retained(b: &TestBroker, version: &str) {
    let topic = format!("interop/mosq/{version}/retained");
    let sub_args = |count: u32| format!("-q 1 -t {topic} -C {count} -F %r|%t|%p");
    let mut live = mosquitto_sub(b, "live subscriber", version, &sub_args(2));
    live.subscribed().await;
    mosquitto_pub(b, version, &format!("-q 1 -r -t {topic} -m on")).await;
    mosquitto_pub(b, version, &format!("-q 1 -r -t {topic} -m off")).await;
    assert_eq!(
        live.finish().await,
        [format!("0|{topic}|on"), format!("0|{topic}|off")],
        "live delivery of a retained publish has RETAIN 0 [MQTT-3.3.1-9]\n{}",
        live.transcript()
    );

    // A new subscriber: the latest retained message, then a live marker (a second retained
    // copy would have shown before the marker).
    let mut later = mosquitto_sub(b, "later subscriber", version, &sub_args(2));
    later.subscribed().await;
    mosquitto_pub(b, version, &format!("-q 1 -t {topic} -m marker")).await;
    assert_eq!(
        later.finish().await,
        [format!("1|{topic}|off"), format!("0|{topic}|marker")],
        "{}",
        later.transcript()
    );

    // Cleared with a zero-length retained publish: a new subscriber sees only the marker.
    mosquitto_pub(b, version, &format!("-q 1 -r -n -t {topic}")).await;
    let mut after = mosquitto_sub(b, "subscriber after clearing", version, &sub_args(1));
    after.subscribed().await;
    mosquitto_pub(b, version, &format!("-q 1 -t {topic} -m marker2")).await;
    assert_eq!(
        after.finish().await,
        [format!("0|{topic}|marker2")],
        "{}",
        after.transcript()
    );
}

/// mosquitto_sub -c -i ID -q 1 subscribes and leaves (`-E`, with DISCONNECT); QoS 1 messages
/// published while it is away are delivered once each, in order, when it comes back.
async fn mosquitto_session_resume(b: &TestBroker, version: &str) {
    let topic = format!("interop/mosq/{version}/session");
    // v5: the session outlives the connection only with a Session Expiry Interval.
    let expiry = if version == "mqttv5" { "-x 3600" } else { "" };
    let session = format!("-c -i interop-mosq-{version}-session -q 1 -t {topic} {expiry}");
    let mut first = mosquitto_sub(
        b,
        "mosquitto_sub (first)",
        version,
        &format!("{session} -E"),
    );
    first.subscribed().await;
    first.finish().await;

    for m in ["q1", "q2", "q3"] {
        mosquitto_pub(b, version, &format!("-q 1 -t {topic} -m {m}")).await;
    }
    let resumed_args = format!("{session} -C 3 -v");
    let mut resumed = mosquitto_sub(b, "mosquitto_sub (resumed)", version, &resumed_args);
    assert_eq!(
        resumed.finish().await,
        lines(&topic, &["q1", "q2", "q3"]),
        "messages queued while offline\n{}",
        resumed.transcript()
    );
    assert_eq!(
        resumed.received_publishes(),
        [(1, false); 3],
        "{}",
        resumed.transcript()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_v5_qos0() {
    require!(mosquitto_missing; "mosquitto_v5_qos0");
    let b = TestBroker::start().await;
    mosquitto_qos_roundtrip(&b, "mqttv5", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_v5_qos1() {
    require!(mosquitto_missing; "mosquitto_v5_qos1");
    let b = TestBroker::start().await;
    mosquitto_qos_roundtrip(&b, "mqttv5", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_v5_qos2() {
    require!(mosquitto_missing; "mosquitto_v5_qos2");
    let b = TestBroker::start().await;
    mosquitto_qos_roundtrip(&b, "mqttv5", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_v5_qos_is_min_of_publish_and_subscription() {
    require!(mosquitto_missing; "mosquitto_v5_qos_is_min_of_publish_and_subscription");
    let b = TestBroker::start().await;
    mosquitto_qos_min(&b, "mqttv5").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_v5_retained() {
    require!(mosquitto_missing; "mosquitto_v5_retained");
    let b = TestBroker::start().await;
    mosquitto_retained(&b, "mqttv5").await;
}

/// A mosquitto_sub with a will (and v5 will properties) killed with SIGKILL: a rumqttc v5
/// subscriber gets the will, properties included. One that leaves with DISCONNECT does not
/// [MQTT-3.1.2-10].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_v5_will() {
    require!(mosquitto_missing; "mosquitto_v5_will");
    let b = TestBroker::start().await;
    let will_topic = "interop/mosq/v5/will";
    let (mut watcher, _) = v5::connect(v5::options(b.port(), "interop-will-watcher")).await;
    watcher.subscribe(will_topic, v5::QoS::AtLeastOnce).await;

    let will = format!(
        "--will-topic {will_topic} --will-payload mosquitto-gone --will-qos 1 \
         -D will user-property origin mosquitto -D will content-type text/plain"
    );
    let mut doomed = mosquitto_sub(
        &b,
        "mosquitto_sub with will (killed)",
        "mqttv5",
        &format!("-i interop-mosq-will -t interop/mosq/v5/idle {will}"),
    );
    doomed.subscribed().await;
    doomed.p.kill().await;
    let p = watcher
        .next_publish()
        .await
        .unwrap_or_else(|| panic!("no will after SIGKILL\n{}", doomed.transcript()));
    assert_eq!(
        (&p.topic[..], &p.payload[..], p.qos),
        (
            will_topic.as_bytes(),
            &b"mosquitto-gone"[..],
            v5::QoS::AtLeastOnce
        )
    );
    let props = p.properties.unwrap_or_default();
    assert_eq!(
        props.user_properties,
        [("origin".to_string(), "mosquitto".to_string())]
    );
    assert_eq!(props.content_type.as_deref(), Some("text/plain"));

    // Normal exit (-C 1: DISCONNECT with reason 0x00): the will is discarded.
    let idle = "interop/mosq/v5/idle2";
    let mut polite = mosquitto_sub(
        &b,
        "mosquitto_sub with will (disconnects)",
        "mqttv5",
        &format!("-i interop-mosq-will2 -t {idle} -C 1 {will}"),
    );
    polite.subscribed().await;
    mosquitto_pub(&b, "mqttv5", &format!("-t {idle} -m bye")).await;
    polite.finish().await;
    assert!(
        watcher.next_publish_within(QUIET).await.is_none(),
        "will published after a normal DISCONNECT\n{}",
        polite.transcript()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_v5_session_resume() {
    require!(mosquitto_missing; "mosquitto_v5_session_resume");
    let b = TestBroker::start().await;
    mosquitto_session_resume(&b, "mqttv5").await;
}

/// Two mosquitto_sub on `$share/g/…`: each message goes to exactly one of them; a plain
/// subscriber on the same topic still gets every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_v5_shared_subscription() {
    require!(mosquitto_missing; "mosquitto_v5_shared_subscription");
    let b = TestBroker::start().await;
    let topic = "interop/mosq/v5/shared";
    let n = 10;
    let member = format!("-q 1 -t $share/g/{topic} -v");
    let mut members = [
        mosquitto_sub(&b, "shared member a", "mqttv5", &member),
        mosquitto_sub(&b, "shared member b", "mqttv5", &member),
    ];
    let plain_args = format!("-q 1 -t {topic} -v -C {n}");
    let mut plain = mosquitto_sub(&b, "plain subscriber", "mqttv5", &plain_args);
    for m in members.iter_mut() {
        m.subscribed().await;
    }
    plain.subscribed().await;

    let sent: Vec<String> = (1..=n).map(|i| format!("m{i:02}")).collect();
    for m in &sent {
        mosquitto_pub(&b, "mqttv5", &format!("-q 1 -t {topic} -m {m}")).await;
    }
    let deadline = tokio::time::Instant::now() + STEP;
    while members.iter().map(|m| m.msgs.len()).sum::<usize>() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "shared subscription delivered {:?} and {:?} of {n}\n{}\n{}",
            members[0].msgs,
            members[1].msgs,
            members[0].transcript(),
            members[1].transcript()
        );
        for m in members.iter_mut() {
            m.next_message(Duration::from_millis(50)).await;
        }
    }
    // Nothing more (a message sent to both members would show up as an extra line).
    for m in members.iter_mut() {
        while m.next_message(QUIET).await.is_some() {}
    }
    let sent: Vec<&str> = sent.iter().map(String::as_str).collect();
    let mut got: Vec<String> = members.iter().flat_map(|m| m.msgs.clone()).collect();
    got.sort();
    assert_eq!(
        got,
        lines(topic, &sent),
        "each message to exactly one member of the group: a {:?}, b {:?}",
        members[0].msgs,
        members[1].msgs
    );
    eprintln!(
        "shared subscription split: a {} / b {}",
        members[0].msgs.len(),
        members[1].msgs.len()
    );
    assert_eq!(
        plain.finish().await,
        lines(topic, &sent),
        "{}",
        plain.transcript()
    );
    for m in members.iter_mut() {
        m.p.kill().await;
    }
}

/// v5 publish properties from mosquitto_pub -D reach a v5 mosquitto_sub unchanged (-F codes
/// %C %P %R %D %F %E); a v3.1.1 mosquitto_sub gets the same payload without them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_v5_properties() {
    require!(mosquitto_missing; "mosquitto_v5_properties");
    let b = TestBroker::start().await;
    let topic = "interop/mosq/v5/props";
    let mut v5sub = mosquitto_sub(
        &b,
        "mosquitto_sub v5 -F",
        "mqttv5",
        &format!("-q 1 -t {topic} -C 1 -F %t|%C|%P|%R|%D|%F|%p|%E"),
    );
    let v311_args = format!("-q 1 -t {topic} -C 1 -v");
    let mut v311sub = mosquitto_sub(&b, "mosquitto_sub v3.1.1", "mqttv311", &v311_args);
    v5sub.subscribed().await;
    v311sub.subscribed().await;
    mosquitto_pub(
        &b,
        "mqttv5",
        &format!(
            r#"-q 1 -t {topic} -m {{"door":"open"}}
               -D publish user-property site hall
               -D publish user-property site garage
               -D publish user-property unit °C
               -D publish content-type application/json
               -D publish response-topic interop/mosq/v5/reply
               -D publish correlation-data corr-42
               -D publish payload-format-indicator 1
               -D publish message-expiry-interval 3600"#
        ),
    )
    .await;
    let out = v5sub.finish().await;
    assert_eq!(out.len(), 1, "{}", v5sub.transcript());
    let (line, expiry) = out[0].rsplit_once('|').unwrap();
    assert_eq!(
        line,
        format!(
            r#"{topic}|application/json|site:hall site:garage unit:°C|interop/mosq/v5/reply|corr-42|1|{{"door":"open"}}"#
        ),
        "user properties in order, repeated keys kept [MQTT-3.3.2-17, -18]\n{}",
        v5sub.transcript()
    );
    let expiry: u32 = expiry.parse().unwrap_or_else(|_| panic!("%E = {expiry:?}"));
    assert!(
        (3590..=3600).contains(&expiry),
        "message expiry interval {expiry}"
    );

    assert_eq!(
        v311sub.finish().await,
        [format!(r#"{topic} {{"door":"open"}}"#)],
        "{}",
        v311sub.transcript()
    );
}

/// `-V mqttv311`: QoS 0/1/2 (and min(publish, subscription) QoS), retained (set, replace,
/// clear) and a persistent session (-c).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_v311_qos_retained_session() {
    require!(mosquitto_missing; "mosquitto_v311_qos_retained_session");
    let b = TestBroker::start().await;
    for qos in 0..=2 {
        mosquitto_qos_roundtrip(&b, "mqttv311", qos).await;
    }
    mosquitto_qos_min(&b, "mqttv311").await;
    mosquitto_retained(&b, "mqttv311").await;
    mosquitto_session_resume(&b, "mqttv311").await;
}

// ====================================================================================
// paho-mqtt 2.x, MQTT 5
// ====================================================================================

/// paho publishes three messages at `qos` to a paho subscription at `qos`: acked with reason
/// code 0, delivered once each, in order, at that QoS.
async fn paho_qos_roundtrip(qos: u8) {
    let b = TestBroker::start().await;
    let topic = format!("interop/paho/qos{qos}");
    let mut sub = paho(
        &b,
        "paho sub",
        &format!("--id interop-paho-sub-q{qos} sub --topic {topic} --qos {qos} --count 3"),
    );
    let granted = sub.event("subscribed").await;
    assert_eq!(granted["granted"], json!([qos]));
    let codes = paho_pub(
        &b,
        &format!(
            "--id interop-paho-pub-q{qos} pub --topic {topic} --qos {qos} \
             --payload m1 --payload m2 --payload m3"
        ),
    )
    .await;
    assert_eq!(codes, [0, 0, 0], "reason codes of the publishes");
    sub.finish_ok().await;
    let msgs = sub.messages();
    let q = u64::from(qos);
    assert_eq!(
        summary(&msgs),
        [
            ("m1".into(), q, false),
            ("m2".into(), q, false),
            ("m3".into(), q, false)
        ],
        "{}",
        sub.transcript()
    );
    assert!(
        msgs.iter()
            .all(|m| m["dup"] == false && m["topic"] == topic.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_v5_qos0() {
    require!(paho_missing; "paho_v5_qos0");
    paho_qos_roundtrip(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_v5_qos1() {
    require!(paho_missing; "paho_v5_qos1");
    paho_qos_roundtrip(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_v5_qos2() {
    require!(paho_missing; "paho_v5_qos2");
    paho_qos_roundtrip(2).await;
}

/// Retained from paho: a later subscriber gets only the latest one, with RETAIN 1, before live
/// messages; an empty retained publish clears it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_v5_retained() {
    require!(paho_missing; "paho_v5_retained");
    let b = TestBroker::start().await;
    let topic = "interop/paho/retained";
    let publish =
        |rest: &str| format!("--id interop-paho-ret-pub pub --topic {topic} --qos 1 {rest}");
    let subscribe =
        |id: &str, count: u32| format!("--id {id} sub --topic {topic} --qos 1 --count {count}");
    for state in ["on", "off"] {
        let codes = paho_pub(&b, &publish(&format!("--retain --payload {state}"))).await;
        assert_eq!(codes, [0]);
    }
    let mut later = paho(
        &b,
        "paho later subscriber",
        &subscribe("interop-paho-ret-sub", 2),
    );
    later.event("subscribed").await;
    paho_pub(&b, &publish("--payload marker")).await;
    later.finish_ok().await;
    assert_eq!(
        summary(&later.messages()),
        [("off".into(), 1, true), ("marker".into(), 1, false)],
        "{}",
        later.transcript()
    );

    paho_pub(&b, &publish("--retain --empty")).await;
    let mut after = paho(
        &b,
        "paho subscriber after clearing",
        &subscribe("interop-paho-ret-sub2", 1),
    );
    after.event("subscribed").await;
    paho_pub(&b, &publish("--payload marker2")).await;
    after.finish_ok().await;
    assert_eq!(
        summary(&after.messages()),
        [("marker2".into(), 1, false)],
        "retained message cleared\n{}",
        after.transcript()
    );
}

/// A paho client with a will (QoS 1, user property, content type) killed with SIGKILL: a paho
/// subscriber gets the will with its properties.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_v5_will() {
    require!(paho_missing; "paho_v5_will");
    let b = TestBroker::start().await;
    let will_topic = "interop/paho/will";
    let mut watcher = paho(
        &b,
        "paho will watcher",
        &format!("--id interop-paho-will-watch sub --topic {will_topic} --qos 1 --count 1"),
    );
    watcher.event("subscribed").await;
    let mut doomed = paho(
        &b,
        "paho with will",
        &format!(
            "--id interop-paho-will will --will-topic {will_topic} --will-payload paho-gone \
             --will-qos 1 --will-user-prop origin=paho --will-content-type text/plain"
        ),
    );
    doomed.event("connected").await;
    doomed.p.kill().await;
    watcher.finish_ok().await;
    let msgs = watcher.messages();
    assert_eq!(
        summary(&msgs),
        [("paho-gone".into(), 1, false)],
        "{}",
        watcher.transcript()
    );
    assert_eq!(
        msgs[0]["props"],
        json!({"user_properties": [["origin", "paho"]], "content_type": "text/plain"}),
        "will properties"
    );
}

/// clean_start=False with a Session Expiry Interval: paho subscribes and disconnects, QoS 1
/// messages are published while it is away, and on reconnecting (no SUBSCRIBE) it gets
/// session present and the queued messages once each, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_v5_session_resume() {
    require!(paho_missing; "paho_v5_session_resume");
    let b = TestBroker::start().await;
    let topic = "interop/paho/session";
    let id = "interop-paho-session";
    let mut first = paho(
        &b,
        "paho first connection",
        &format!("--id {id} --session-expiry 3600 sub --topic {topic} --qos 1 --count 0"),
    );
    assert_eq!(first.event("connected").await["session_present"], false);
    first.finish_ok().await;

    let codes = paho_pub(
        &b,
        &format!(
            "--id interop-paho-session-pub pub --topic {topic} --qos 1 \
             --payload q1 --payload q2 --payload q3"
        ),
    )
    .await;
    assert_eq!(codes, [0, 0, 0]);

    let resume = format!("--id {id} --session-expiry 3600 resume --count 3");
    let mut resumed = paho(&b, "paho resumed", &resume);
    let c = resumed.event("connected").await;
    assert_eq!(
        c["session_present"],
        true,
        "CONNACK session present\n{}",
        resumed.transcript()
    );
    resumed.finish_ok().await;
    assert_eq!(
        summary(&resumed.messages()),
        [
            ("q1".into(), 1, false),
            ("q2".into(), 1, false),
            ("q3".into(), 1, false)
        ],
        "{}",
        resumed.transcript()
    );

    // Resuming again finds the session once more, now with nothing queued.
    let resume = format!("--id {id} --session-expiry 0 resume --count 0");
    let mut again = paho(&b, "paho resumed again", &resume);
    assert_eq!(
        again.event("connected").await["session_present"],
        true,
        "{}",
        again.transcript()
    );
    again.finish_ok().await;
    assert!(again.messages().is_empty(), "{}", again.transcript());
}

/// Two paho clients in `$share/g/…`: each message is delivered to exactly one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_v5_shared_subscription() {
    require!(paho_missing; "paho_v5_shared_subscription");
    let b = TestBroker::start().await;
    let topic = "interop/paho/shared";
    let n = 10;
    let member =
        |id: &str| format!("--id {id} shared --group g --topic {topic} --qos 1 --count -1");
    let mut members = [
        paho(&b, "paho shared a", &member("interop-paho-shared-a")),
        paho(&b, "paho shared b", &member("interop-paho-shared-b")),
    ];
    for m in members.iter_mut() {
        assert_eq!(m.event("subscribed").await["granted"], json!([1]));
    }
    let sent: Vec<String> = (1..=n).map(|i| format!("m{i:02}")).collect();
    let payloads: String = sent.iter().map(|m| format!(" --payload {m}")).collect();
    let codes = paho_pub(
        &b,
        &format!("--id interop-paho-shared-pub pub --topic {topic} --qos 1{payloads}"),
    )
    .await;
    assert_eq!(codes, vec![0; n]);

    let mut got: [Vec<String>; 2] = Default::default();
    let deadline = tokio::time::Instant::now() + STEP;
    while got.iter().map(Vec::len).sum::<usize>() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "shared subscription delivered {got:?} of {n}\n{}\n{}",
            members[0].transcript(),
            members[1].transcript()
        );
        for (i, m) in members.iter_mut().enumerate() {
            if let Some(v) = m.next_message(Duration::from_millis(50)).await {
                got[i].push(v["payload"].as_str().unwrap().to_string());
            }
        }
    }
    // Nothing more (a message sent to both members would show up here).
    for (i, m) in members.iter_mut().enumerate() {
        while let Some(v) = m.next_message(QUIET).await {
            got[i].push(v["payload"].as_str().unwrap().to_string());
        }
    }
    let mut all: Vec<String> = got.concat();
    all.sort();
    assert_eq!(
        all, sent,
        "each message to exactly one member: a {:?}, b {:?}",
        got[0], got[1]
    );
    eprintln!(
        "shared subscription split: a {} / b {}",
        got[0].len(),
        got[1].len()
    );
    for m in members.iter_mut() {
        m.p.kill().await;
    }
}

/// v5 publish properties set by paho (user properties with a repeated key, content type,
/// response topic, correlation data, payload format indicator, message expiry) arrive at a
/// paho subscriber unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_v5_properties() {
    require!(paho_missing; "paho_v5_properties");
    let b = TestBroker::start().await;
    let topic = "interop/paho/props";
    let mut sub = paho(
        &b,
        "paho sub",
        &format!("--id interop-paho-props-sub sub --topic {topic} --qos 1 --count 1"),
    );
    sub.event("subscribed").await;
    let codes = paho_pub(
        &b,
        &format!(
            "--id interop-paho-props-pub pub --topic {topic} --qos 1 --payload 21.5
             --user-prop site=hall --user-prop site=garage --user-prop unit=°C
             --content-type text/plain --response-topic interop/paho/reply
             --correlation-data corr-7 --payload-format-indicator 1 --message-expiry 3600"
        ),
    )
    .await;
    assert_eq!(codes, [0]);
    sub.finish_ok().await;
    let msgs = sub.messages();
    assert_eq!(
        summary(&msgs),
        [("21.5".into(), 1, false)],
        "{}",
        sub.transcript()
    );
    let mut props = msgs[0]["props"].clone();
    let expiry = props
        .as_object_mut()
        .unwrap()
        .remove("message_expiry_interval")
        .and_then(|v| v.as_u64());
    assert!(
        matches!(expiry, Some(3590..=3600)),
        "message expiry interval {expiry:?}"
    );
    assert_eq!(
        props,
        json!({
            "user_properties": [["site", "hall"], ["site", "garage"], ["unit", "°C"]],
            "content_type": "text/plain",
            "response_topic": "interop/paho/reply",
            "correlation_data": "corr-7",
            "payload_format_indicator": 1,
        }),
        "{}",
        sub.transcript()
    );
}

// ====================================================================================
// across clients
// ====================================================================================

/// paho publishes at QoS 2 with properties; a rumqttc v5 subscriber and a v5 mosquitto_sub
/// (both QoS 2) each get it exactly once with its properties. "Once" is checked with a marker
/// published afterwards, which must be the next message each of them sees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_paho_qos2_to_rumqttc_and_mosquitto() {
    require!(paho_missing, mosquitto_missing; "cross_paho_qos2_to_rumqttc_and_mosquitto");
    let b = TestBroker::start().await;
    let topic = "interop/cross/qos2";
    let (mut rumq, _) = v5::connect(v5::options(b.port(), "interop-cross-rumqttc")).await;
    rumq.subscribe(topic, v5::QoS::ExactlyOnce).await;
    let mut mosq = mosquitto_sub(
        &b,
        "mosquitto_sub",
        "mqttv5",
        &format!("-q 2 -t {topic} -C 2 -F %t|%q|%C|%P|%p"),
    );
    mosq.subscribed().await;

    let codes = paho_pub(
        &b,
        &format!(
            "--id interop-cross-paho pub --topic {topic} --qos 2 --payload from-paho \
             --user-prop origin=paho --user-prop seq=1 --content-type text/plain"
        ),
    )
    .await;
    assert_eq!(codes, [0], "QoS 2 flow completed with reason code 0");

    let p = rumq.next_publish().await.expect("rumqttc got nothing");
    assert_eq!(
        (&p.topic[..], &p.payload[..], p.qos, p.retain, p.dup),
        (
            topic.as_bytes(),
            &b"from-paho"[..],
            v5::QoS::ExactlyOnce,
            false,
            false
        )
    );
    let props = p.properties.unwrap_or_default();
    assert_eq!(
        props.user_properties,
        [
            ("origin".to_string(), "paho".to_string()),
            ("seq".to_string(), "1".to_string())
        ]
    );
    assert_eq!(props.content_type.as_deref(), Some("text/plain"));

    rumq.client
        .publish_with_properties(
            topic,
            v5::QoS::ExactlyOnce,
            false,
            "marker",
            PublishProperties::default(),
        )
        .await
        .unwrap();
    let next = rumq.next_publish().await.expect("marker");
    assert_eq!(
        &next.payload[..],
        b"marker",
        "rumqttc: the paho message again before the marker"
    );

    assert_eq!(
        mosq.finish().await,
        [
            format!("{topic}|2|text/plain|origin:paho seq:1|from-paho"),
            format!("{topic}|2|||marker")
        ],
        "{}",
        mosq.transcript()
    );
    assert_eq!(
        mosq.received_publishes(),
        [(2, false); 2],
        "{}",
        mosq.transcript()
    );
}
