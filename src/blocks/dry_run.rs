//! `moonwire test-block`: run one handler once, in the same sandbox and with the same limits
//! as the broker, without a broker; report the verdict, the resulting message and every side
//! effect (publishes, refused publishes, kv writes, log lines).
//!
//! Publishes are recorded, not sent. kv is real: an in-memory store by default, or the redb
//! file at `kv_path` (use a copy: the broker holds a lock on its live file, and writes made by
//! the dry run persist there).

use std::fmt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::config::{BlockConfig, BlockEvent, ByteSize, OnError};
use super::engine::Publisher;
use super::error::{BlockError, LoadFailure};
use super::filter::{TopicFilter, validate_topic_name};
use super::host::{Recorder, Services, SideEffect};
use super::invoke;
use super::kv::{KvStore, KvValue, now_ms};
use super::plan::{BlockRecord, LibCache, Plan, Settings};
use super::verdict::Outcome;
use super::vm::BlockVm;
use crate::pipeline::{DropCode, Message, Origin, Props, Verdict};

#[derive(Debug, Clone)]
pub struct DryRunOptions {
    /// kv namespace and `ctx.block`; default: the script's file stem.
    pub block_name: Option<String>,
    /// Runs `on_publish` with this topic; without a topic, `on_interval` runs.
    pub topic: Option<String>,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub client_id: String,
    pub username: Option<String>,
    pub props: Props,
    /// The filter the block would be bound with (fills `ctx.matches`); default: the topic.
    pub filter: Option<String>,
    /// A redb file to use for `kv` (a copy of the broker's); default: an empty in-memory one.
    pub kv_path: Option<PathBuf>,
    /// Where `require` looks (`<scripts_dir>/lib`); default: the script's directory.
    pub scripts_dir: Option<PathBuf>,
    pub timeout: Duration,
    pub memory: ByteSize,
    pub on_error: OnError,
    pub max_hops: u8,
    pub max_publishes_per_call: u32,
    pub max_payload: ByteSize,
}

impl Default for DryRunOptions {
    fn default() -> Self {
        let cfg = super::config::BlocksConfig::default();
        let b = BlockConfig::new("x", "x", BlockEvent::BeforePublish);
        DryRunOptions {
            block_name: None,
            topic: None,
            payload: Bytes::new(),
            qos: 0,
            retain: false,
            client_id: "dry-run".into(),
            username: None,
            props: Props::default(),
            filter: None,
            kv_path: None,
            scripts_dir: None,
            timeout: b.timeout,
            memory: b.memory,
            on_error: OnError::Pass,
            max_hops: cfg.max_hops,
            max_publishes_per_call: cfg.max_publishes_per_call,
            max_payload: cfg.max_payload,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DryRunReport {
    pub block: String,
    pub script: PathBuf,
    /// sha256 of the script, hex.
    pub version: String,
    pub handler: &'static str,
    pub input: Option<Message>,
    /// What the broker would do with the message (`on_error` applied to failures).
    pub verdict: Verdict,
    /// The message as it would be routed (`None` when dropped or consumed, or for intervals).
    pub message: Option<Message>,
    /// The failure, when the handler failed or timed out.
    pub error: Option<String>,
    pub effects: Vec<SideEffect>,
    pub elapsed: Duration,
}

struct NoPublish;
impl Publisher for NoPublish {
    fn publish(&self, _msg: Message) -> Result<(), String> {
        Ok(())
    }
}

/// Runs the handler once. Runs on its own thread, so it may be called from inside or outside
/// an async runtime.
pub fn dry_run(script_path: &Path, opts: DryRunOptions) -> Result<DryRunReport, BlockError> {
    let script = script_path.to_owned();
    std::thread::Builder::new()
        .name("blocks-dry-run".into())
        .spawn(move || run(&script, opts))
        .map_err(BlockError::Spawn)?
        .join()
        .map_err(|_| BlockError::DryRun("the dry run thread panicked".into()))?
}

fn run(script: &Path, opts: DryRunOptions) -> Result<DryRunReport, BlockError> {
    let name = opts.block_name.clone().unwrap_or_else(|| {
        script
            .file_stem()
            .map(|s| {
                s.to_string_lossy().replace(
                    |c: char| !c.is_ascii_alphanumeric() && c != '_' && c != '-',
                    "_",
                )
            })
            .unwrap_or_else(|| "dry-run".into())
    });
    let event = if opts.topic.is_some() {
        BlockEvent::BeforePublish
    } else {
        BlockEvent::Interval
    };
    let mut cfg = BlockConfig::new(name.clone(), script, event);
    cfg.timeout = opts.timeout;
    cfg.memory = opts.memory;
    cfg.on_error = opts.on_error;
    let input = match &opts.topic {
        Some(topic) => {
            validate_topic_name(topic).map_err(|e| BlockError::DryRun(format!("--topic: {e}")))?;
            let filter = opts.filter.clone().unwrap_or_else(|| topic.clone());
            TopicFilter::parse(&filter)
                .map_err(|e| BlockError::DryRun(format!("filter `{filter}`: {e}")))?;
            cfg.topics = vec![filter];
            Some(Message {
                topic: topic.clone(),
                payload: opts.payload.clone(),
                qos: opts.qos.min(2),
                retain: opts.retain,
                props: opts.props.clone(),
                origin: Origin {
                    client_id: opts.client_id.clone(),
                    username: opts.username.clone(),
                    hop: 0,
                },
                received_at: now_ms(),
            })
        }
        None => {
            cfg.every = Some(Duration::from_secs(1));
            None
        }
    };
    let source = std::fs::read(script).map_err(|source| BlockError::ReadScript {
        block: name.clone(),
        path: script.to_owned(),
        source,
    })?;
    let spec = Arc::new(Plan::spec(&cfg, source, Arc::new(BlockRecord::new())));
    let scripts_dir = opts
        .scripts_dir
        .clone()
        .or_else(|| script.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    let settings = Arc::new(Settings {
        max_hops: opts.max_hops,
        max_publishes_per_call: opts.max_publishes_per_call,
        max_payload: opts.max_payload.as_usize(),
        scripts_dir,
    });
    let kv = match &opts.kv_path {
        Some(p) => KvStore::open(p)?,
        None => KvStore::in_memory()?,
    };
    let services = Services {
        publisher: Arc::new(NoPublish),
        kv: Arc::new(kv),
        extensions: Arc::new([]),
    };
    let vm = BlockVm::load(
        spec.clone(),
        settings,
        Arc::new(LibCache::default()),
        &services,
        0,
    )
    .map_err(|message| {
        BlockError::Load(vec![LoadFailure {
            block: name.clone(),
            script: script.to_owned(),
            message,
        }])
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(BlockError::Spawn)?;
    let recorder = Rc::new(Recorder::default());
    let started = Instant::now();
    let local = tokio::task::LocalSet::new();
    let (verdict, message, error) = local.block_on(&runtime, async {
        match &input {
            Some(msg) => {
                let matches = spec.captures(&msg.topic).unwrap_or_default();
                match invoke::on_publish(&vm, msg, &matches, Some(recorder.clone())).await {
                    Ok(Outcome::Pass) => (Verdict::Pass, Some(msg.clone()), None),
                    Ok(Outcome::Modify(m)) => (Verdict::Modify(m.clone()), Some(m), None),
                    Ok(Outcome::Drop(reason)) => (
                        Verdict::Drop {
                            code: DropCode::ImplementationSpecific,
                            reason,
                        },
                        None,
                        None,
                    ),
                    Ok(Outcome::Consume) => (Verdict::Consume, None, None),
                    Err(f) => match opts.on_error {
                        OnError::Pass => (Verdict::Pass, Some(msg.clone()), Some(f.message)),
                        OnError::Drop => (
                            Verdict::Drop {
                                code: DropCode::Unspecified,
                                reason: format!("block `{name}` failed"),
                            },
                            None,
                            Some(f.message),
                        ),
                    },
                }
            }
            None => match invoke::on_interval(&vm, Some(recorder.clone())).await {
                Ok(()) => (Verdict::Pass, None, None),
                Err(f) => (Verdict::Pass, None, Some(f.message)),
            },
        }
    });
    let elapsed = started.elapsed();
    let effects = recorder.effects.take();
    Ok(DryRunReport {
        block: name,
        script: script.to_owned(),
        version: spec.version.clone(),
        handler: event.handler_name(),
        input,
        verdict,
        message,
        error,
        effects,
        elapsed,
    })
}

/// Payload for humans: text when it is printable UTF-8, otherwise hex.
struct Shown<'a>(&'a [u8]);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MAX: usize = 512;
        match std::str::from_utf8(self.0) {
            Ok(s) if !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') => {
                if s.len() > MAX {
                    let mut cut = MAX;
                    while !s.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    write!(f, "{:?}… ({} bytes)", &s[..cut], s.len())
                } else {
                    write!(f, "{s:?}")
                }
            }
            _ => {
                let shown = &self.0[..self.0.len().min(MAX / 2)];
                write!(f, "<binary {} bytes> {}", self.0.len(), hex::encode(shown))?;
                if shown.len() < self.0.len() {
                    f.write_str("…")?;
                }
                Ok(())
            }
        }
    }
}

fn show_message(f: &mut fmt::Formatter<'_>, m: &Message) -> fmt::Result {
    writeln!(
        f,
        "  topic={} qos={} retain={} payload={}",
        m.topic,
        m.qos,
        m.retain,
        Shown(&m.payload)
    )?;
    let p = &m.props;
    if p != &Props::default() {
        writeln!(
            f,
            "  props: content_type={:?} response_topic={:?} expiry={:?} format={:?} correlation={} user={:?}",
            p.content_type,
            p.response_topic,
            p.message_expiry_interval,
            p.payload_format_indicator,
            p.correlation_data
                .as_ref()
                .map_or_else(|| "-".into(), |c| Shown(c).to_string()),
            p.user
        )?;
    }
    Ok(())
}

fn show_value(v: &KvValue) -> String {
    match v {
        KvValue::Str(s) => Shown(s).to_string(),
        KvValue::Int(i) => i.to_string(),
        KvValue::Float(x) => x.to_string(),
        KvValue::Bool(b) => b.to_string(),
    }
}

impl fmt::Display for DryRunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "block   {} ({}, sha256 {})",
            self.block,
            self.script.display(),
            &self.version[..self.version.len().min(12)]
        )?;
        writeln!(f, "handler {}", self.handler)?;
        if let Some(m) = &self.input {
            writeln!(f, "input")?;
            show_message(f, m)?;
        }
        match &self.verdict {
            Verdict::Pass => writeln!(f, "verdict PASS")?,
            Verdict::Modify(_) => writeln!(f, "verdict MODIFY")?,
            Verdict::Drop { code, reason } => writeln!(
                f,
                "verdict DROP (reason code 0x{:02X}): {reason}",
                *code as u8
            )?,
            Verdict::Consume => writeln!(f, "verdict CONSUME (acked, not routed)")?,
        }
        if let Some(e) = &self.error {
            writeln!(f, "error   {e}")?;
        }
        if let Some(m) = &self.message {
            writeln!(f, "routed")?;
            show_message(f, m)?;
        }
        if self.effects.is_empty() {
            writeln!(f, "effects none")?;
        } else {
            writeln!(f, "effects")?;
        }
        for e in &self.effects {
            match e {
                SideEffect::Publish(m) => writeln!(
                    f,
                    "  publish   {} qos={} retain={} hop={} as={} payload={}",
                    m.topic,
                    m.qos,
                    m.retain,
                    m.origin.hop,
                    m.origin.username.as_deref().unwrap_or("-"),
                    Shown(&m.payload)
                )?,
                SideEffect::PublishRefused { topic, reason } => {
                    writeln!(f, "  publish   {topic} {reason}")?
                }
                SideEffect::KvSet { key, value, ttl } => {
                    write!(f, "  kv.set    {} = {}", Shown(key), show_value(value))?;
                    match ttl {
                        Some(t) => writeln!(f, " (ttl {}s)", t.as_secs_f64())?,
                        None => writeln!(f)?,
                    }
                }
                SideEffect::KvIncr { key, by, result } => {
                    writeln!(f, "  kv.incr   {} by {by} -> {result}", Shown(key))?
                }
                SideEffect::KvDel { key } => writeln!(f, "  kv.del    {}", Shown(key))?,
                SideEffect::Log { level, text } => writeln!(f, "  log.{level:<5} {text}")?,
            }
        }
        write!(f, "took    {:.3} ms", self.elapsed.as_secs_f64() * 1000.0)
    }
}
