//! Configuration of the blocks engine: the serde tree (`[blocks]` settings and one
//! `BlockConfig` per binding), human units for durations and sizes, defaults, and validation
//! into typed [`ConfigError`]s.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::filter::TopicFilter;

/// The event a block is bound to; decides which handler the script must export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockEvent {
    BeforePublish,
    AfterPublish,
    Interval,
    Connect,
    Subscribe,
}

impl BlockEvent {
    pub const ALL: [BlockEvent; 5] = [
        BlockEvent::BeforePublish,
        BlockEvent::AfterPublish,
        BlockEvent::Interval,
        BlockEvent::Connect,
        BlockEvent::Subscribe,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BlockEvent::BeforePublish => "before_publish",
            BlockEvent::AfterPublish => "after_publish",
            BlockEvent::Interval => "interval",
            BlockEvent::Connect => "connect",
            BlockEvent::Subscribe => "subscribe",
        }
    }

    /// The Lua function the script's module table must provide for this event.
    pub fn handler_name(self) -> &'static str {
        match self {
            BlockEvent::BeforePublish | BlockEvent::AfterPublish => "on_publish",
            BlockEvent::Interval => "on_interval",
            BlockEvent::Connect => "on_connect",
            BlockEvent::Subscribe => "on_subscribe",
        }
    }
}

impl fmt::Display for BlockEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BlockEvent {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BlockEvent::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| ConfigError::UnknownEvent(s.to_owned()))
    }
}

impl<'de> Deserialize<'de> for BlockEvent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What an error or a timeout in a block means for the message (or connection, subscription).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Fail open: the message continues as if the block had passed it.
    #[default]
    Pass,
    /// Fail closed: the message is dropped (connection / subscription refused).
    Drop,
}

/// Byte sizes share the broker config's type and parser.
pub use crate::config::ByteSize;

/// One binding of a script to an event (`[[blocks.blocks]]` in the broker's TOML).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockConfig {
    /// Unique; used in logs, metrics and as the kv namespace.
    pub name: String,
    pub script: PathBuf,
    pub event: BlockEvent,
    /// MQTT filters: required for publish events, optional for subscribe, refused otherwise.
    #[serde(default)]
    pub topics: Vec<String>,
    /// Period of an `interval` block.
    #[serde(default, with = "humantime_serde")]
    pub every: Option<Duration>,
    /// Wall-clock deadline of one invocation, including time spent awaiting host calls.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Heap limit of the block's own Lua state (one state per block per worker).
    #[serde(default = "default_memory")]
    pub memory: ByteSize,
    #[serde(default)]
    pub on_error: OnError,
    /// Username the block's publishes act as (ACL subject); defaults to `block:<name>`.
    #[serde(default)]
    pub identity: Option<String>,
}

impl BlockConfig {
    /// A binding with every optional key at its default; handy for tests and the dry run.
    pub fn new(name: impl Into<String>, script: impl Into<PathBuf>, event: BlockEvent) -> Self {
        BlockConfig {
            name: name.into(),
            script: script.into(),
            event,
            topics: Vec::new(),
            every: None,
            timeout: default_timeout(),
            memory: default_memory(),
            on_error: OnError::Pass,
            identity: None,
        }
    }

    pub fn identity(&self) -> String {
        self.identity
            .clone()
            .unwrap_or_else(|| format!("block:{}", self.name))
    }
}

/// Engine-wide settings plus the list of bindings (`[blocks]` in the broker's TOML).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlocksConfig {
    /// Worker OS threads, each with its own Lua states; default: available cores.
    #[serde(default)]
    pub workers: Option<usize>,
    /// Bounded queue in front of each worker for before_publish/connect/subscribe work.
    /// When full, callers wait (backpressure) and the wait is counted.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// Bounded queue in front of each worker for after_publish work. When full, the message
    /// is not given to after_publish blocks and the overflow is counted (delivery never waits).
    #[serde(default = "default_after_queue_capacity")]
    pub after_queue_capacity: usize,
    /// Block republishes deeper than this are refused (loop guard).
    #[serde(default = "default_max_hops")]
    pub max_hops: u8,
    /// `mqtt.publish` calls allowed in one handler invocation.
    #[serde(default = "default_max_publishes")]
    pub max_publishes_per_call: u32,
    /// Largest payload `mqtt.publish` accepts.
    #[serde(default = "default_max_payload")]
    pub max_payload: ByteSize,
    /// `require(name)` resolves only `scripts_dir/lib/<name>.lua`; also watched for hot reload.
    #[serde(default = "default_scripts_dir")]
    pub scripts_dir: PathBuf,
    /// redb file backing `kv.*`.
    #[serde(default = "default_kv_path")]
    pub kv_path: PathBuf,
    /// Watch `scripts_dir` and every bound script, and reload on change.
    #[serde(default = "default_true")]
    pub hot_reload: bool,
    #[serde(default)]
    pub blocks: Vec<BlockConfig>,
}

impl Default for BlocksConfig {
    fn default() -> Self {
        BlocksConfig {
            workers: None,
            queue_capacity: default_queue_capacity(),
            after_queue_capacity: default_after_queue_capacity(),
            max_hops: default_max_hops(),
            max_publishes_per_call: default_max_publishes(),
            max_payload: default_max_payload(),
            scripts_dir: default_scripts_dir(),
            kv_path: default_kv_path(),
            hot_reload: true,
            blocks: Vec::new(),
        }
    }
}

fn default_timeout() -> Duration {
    Duration::from_millis(250)
}
fn default_memory() -> ByteSize {
    ByteSize::mib(64)
}
fn default_queue_capacity() -> usize {
    1024
}
fn default_after_queue_capacity() -> usize {
    4096
}
fn default_max_hops() -> u8 {
    3
}
fn default_max_publishes() -> u32 {
    100
}
fn default_max_payload() -> ByteSize {
    ByteSize::mib(1)
}
fn default_scripts_dir() -> PathBuf {
    PathBuf::from("scripts")
}
fn default_kv_path() -> PathBuf {
    PathBuf::from("data/blocks.redb")
}
fn default_true() -> bool {
    true
}

/// Smallest heap a block may ask for: the sandbox and host API alone take ~100 KiB.
pub const MIN_MEMORY: ByteSize = ByteSize::kib(512);
/// Longest per-invocation deadline: anything longer holds a topic's queue hostage.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("blocks: duplicate block name `{0}`")]
    DuplicateName(String),
    #[error("blocks: invalid block name `{name}`: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error(
        "unknown event `{0}` (expected before_publish, after_publish, interval, connect or subscribe)"
    )]
    UnknownEvent(String),
    #[error("blocks.{block}: event `interval` needs `every`")]
    MissingEvery { block: String },
    #[error("blocks.{block}: `every` only applies to event `interval`, not `{event}`")]
    UnexpectedEvery { block: String, event: BlockEvent },
    #[error("blocks.{block}: event `{event}` needs at least one filter in `topics`")]
    MissingTopics { block: String, event: BlockEvent },
    #[error("blocks.{block}: event `{event}` takes no `topics`")]
    UnexpectedTopics { block: String, event: BlockEvent },
    #[error("blocks.{block}: bad topic filter `{filter}`: {reason}")]
    BadFilter {
        block: String,
        filter: String,
        reason: String,
    },
    #[error("blocks.{key}: {reason}")]
    InvalidValue { key: String, reason: String },
}

impl BlocksConfig {
    /// Worker count after defaulting to the machine's cores.
    pub fn worker_count(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
    }

    /// Checks everything that can be checked without touching the file system.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: &str| ConfigError::InvalidValue {
            key: key.to_owned(),
            reason: reason.to_owned(),
        };
        if self.workers == Some(0) {
            return Err(invalid("workers", "must be at least 1"));
        }
        if self.queue_capacity == 0 {
            return Err(invalid("queue_capacity", "must be at least 1"));
        }
        if self.after_queue_capacity == 0 {
            return Err(invalid("after_queue_capacity", "must be at least 1"));
        }
        if self.max_payload.0 == 0 {
            return Err(invalid("max_payload", "must be above 0"));
        }
        let mut seen = HashSet::new();
        for b in &self.blocks {
            validate_name(&b.name)?;
            if !seen.insert(b.name.as_str()) {
                return Err(ConfigError::DuplicateName(b.name.clone()));
            }
            validate_block(b)?;
        }
        Ok(())
    }
}

fn validate_name(name: &str) -> Result<(), ConfigError> {
    let bad = |reason| ConfigError::InvalidName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() || name.len() > 64 {
        return Err(bad("must be 1 to 64 characters"));
    }
    // The name becomes a kv namespace, a metrics label and a log field: keep it plain.
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(bad("only letters, digits, `_`, `-` and `.` are allowed"));
    }
    Ok(())
}

fn validate_block(b: &BlockConfig) -> Result<(), ConfigError> {
    let key = |k: &str| format!("{}.{k}", b.name);
    match (b.event, b.every) {
        (BlockEvent::Interval, None) => {
            return Err(ConfigError::MissingEvery {
                block: b.name.clone(),
            });
        }
        (BlockEvent::Interval, Some(every)) if every < Duration::from_millis(10) => {
            return Err(ConfigError::InvalidValue {
                key: key("every"),
                reason: "must be at least 10ms".into(),
            });
        }
        (BlockEvent::Interval, Some(_)) | (_, None) => {}
        (event, Some(_)) => {
            return Err(ConfigError::UnexpectedEvery {
                block: b.name.clone(),
                event,
            });
        }
    }
    match b.event {
        BlockEvent::BeforePublish | BlockEvent::AfterPublish if b.topics.is_empty() => {
            return Err(ConfigError::MissingTopics {
                block: b.name.clone(),
                event: b.event,
            });
        }
        BlockEvent::Interval | BlockEvent::Connect if !b.topics.is_empty() => {
            return Err(ConfigError::UnexpectedTopics {
                block: b.name.clone(),
                event: b.event,
            });
        }
        _ => {}
    }
    for f in &b.topics {
        TopicFilter::parse(f).map_err(|reason| ConfigError::BadFilter {
            block: b.name.clone(),
            filter: f.clone(),
            reason: reason.to_string(),
        })?;
    }
    if b.timeout.is_zero() || b.timeout > MAX_TIMEOUT {
        return Err(ConfigError::InvalidValue {
            key: key("timeout"),
            reason: format!("must be above 0 and at most {}s", MAX_TIMEOUT.as_secs()),
        });
    }
    if b.memory < MIN_MEMORY {
        return Err(ConfigError::InvalidValue {
            key: key("memory"),
            reason: format!("must be at least {MIN_MEMORY}"),
        });
    }
    if b.script.as_os_str().is_empty() {
        return Err(ConfigError::InvalidValue {
            key: key("script"),
            reason: "must not be empty".into(),
        });
    }
    if b.identity.as_deref() == Some("") {
        return Err(ConfigError::InvalidValue {
            key: key("identity"),
            reason: "must not be empty".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<BlocksConfig, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!("64MiB".parse::<ByteSize>(), Ok(ByteSize::mib(64)));
        assert_eq!("512KiB".parse::<ByteSize>(), Ok(ByteSize::kib(512)));
        assert_eq!("1MB".parse::<ByteSize>(), Ok(ByteSize(1_000_000)));
        assert_eq!("4096".parse::<ByteSize>(), Ok(ByteSize(4096)));
        assert!("12 parsecs".parse::<ByteSize>().is_err());
        assert!("".parse::<ByteSize>().is_err());
        assert!("99999999999999GiB".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize::mib(64).to_string(), "64MiB");
    }

    #[test]
    fn defaults_apply() {
        let cfg = parse(
            r#"{"blocks":[{"name":"a","script":"a.lua","event":"before_publish","topics":["x/#"]}]}"#,
        )
        .unwrap();
        assert_eq!(cfg.queue_capacity, 1024);
        assert_eq!(cfg.after_queue_capacity, 4096);
        assert_eq!(cfg.max_hops, 3);
        assert_eq!(cfg.max_publishes_per_call, 100);
        assert_eq!(cfg.max_payload, ByteSize::mib(1));
        let b = &cfg.blocks[0];
        assert_eq!(b.timeout, Duration::from_millis(250));
        assert_eq!(b.memory, ByteSize::mib(64));
        assert_eq!(b.on_error, OnError::Pass);
        assert_eq!(b.identity(), "block:a");
        cfg.validate().unwrap();
    }

    #[test]
    fn human_units_parse() {
        let cfg = parse(
            r#"{"max_payload":"512KiB","blocks":[{"name":"hb","script":"h.lua","event":"interval",
                "every":"30s","timeout":"1s","memory":"8MiB","on_error":"drop"}]}"#,
        )
        .unwrap();
        assert_eq!(cfg.max_payload, ByteSize::kib(512));
        assert_eq!(cfg.blocks[0].every, Some(Duration::from_secs(30)));
        assert_eq!(cfg.blocks[0].memory, ByteSize::mib(8));
        assert_eq!(cfg.blocks[0].on_error, OnError::Drop);
        cfg.validate().unwrap();
    }

    #[test]
    fn unknown_event_and_keys_are_refused() {
        let err =
            parse(r#"{"blocks":[{"name":"a","script":"a.lua","event":"on_boot"}]}"#).unwrap_err();
        assert!(err.contains("unknown event `on_boot`"), "{err}");
        assert_eq!(
            "on_boot".parse::<BlockEvent>(),
            Err(ConfigError::UnknownEvent("on_boot".into()))
        );
        let err =
            parse(r#"{"blocks":[{"name":"a","script":"a.lua","event":"connect","timout":"1s"}]}"#)
                .unwrap_err();
        assert!(err.contains("timout"), "{err}");
    }

    fn one(b: BlockConfig) -> BlocksConfig {
        BlocksConfig {
            blocks: vec![b],
            ..BlocksConfig::default()
        }
    }

    #[test]
    fn validation_errors_are_typed() {
        let mut b = BlockConfig::new("a", "a.lua", BlockEvent::BeforePublish);
        b.topics = vec!["x/#".into()];
        let dup = BlocksConfig {
            blocks: vec![b.clone(), b.clone()],
            ..BlocksConfig::default()
        };
        assert_eq!(dup.validate(), Err(ConfigError::DuplicateName("a".into())));

        let iv = BlockConfig::new("hb", "h.lua", BlockEvent::Interval);
        assert_eq!(
            one(iv).validate(),
            Err(ConfigError::MissingEvery { block: "hb".into() })
        );

        let mut bad = b.clone();
        bad.topics = vec!["a/#/b".into()];
        assert!(matches!(
            one(bad).validate(),
            Err(ConfigError::BadFilter { .. })
        ));

        let mut none = b.clone();
        none.topics.clear();
        assert!(matches!(
            one(none).validate(),
            Err(ConfigError::MissingTopics { .. })
        ));

        let mut every = b.clone();
        every.every = Some(Duration::from_secs(1));
        assert!(matches!(
            one(every).validate(),
            Err(ConfigError::UnexpectedEvery { .. })
        ));

        let mut name = b.clone();
        name.name = "bad name".into();
        assert!(matches!(
            one(name).validate(),
            Err(ConfigError::InvalidName { .. })
        ));

        let mut mem = b;
        mem.memory = ByteSize(1000);
        assert!(matches!(
            one(mem).validate(),
            Err(ConfigError::InvalidValue { .. })
        ));
    }
}
