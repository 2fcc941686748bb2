//! Lua "blocks": scripts that intercept publishes (before and after routing), connections,
//! subscriptions and timers, run in a sandbox by a pool of worker threads.
//!
//! Map of the module, one responsibility per file:
//! - `config`   serde config (`BlocksConfig`, `BlockConfig`), units, defaults, validation
//! - `filter`   MQTT filters: matching, wildcard captures, topic-name checks, fast index
//! - `plan`     one immutable generation of config + script sources, the per-name records
//! - `engine`   public API: start, before/after publish, connect, subscribe, reload, status
//! - `worker`   worker threads: bounded queues, per-client ordering, reload swap, intervals
//! - `chain`    running a message through every bound block, verdict rules
//! - `invoke`   one handler invocation with accounting
//! - `vm`       one block's Lua state: memory limit, deadline hook, loading, coroutine calls
//! - `sandbox`  trimmed stdlib, wrapped `pcall`/`setmetatable`/..., `require`
//! - `verdict`  Message <-> Lua tables, `drop`/`consume`, return-value rules
//! - `host`     the host API (`mqtt`, `json`, `kv`, `log`, `time`, `codec`, `crypto`) and
//!   the `HostExtension` seam for `media.*`
//! - `kv`       the redb-backed store behind `kv.*`
//! - `metrics`  counters and histograms, snapshot structs for Prometheus
//! - `watch`    script watcher (hot reload) and kv housekeeping
//! - `dry_run`  `moonwire test-block`
//! - `broker`   adapters that plug the engine into the broker's pipeline and publisher
//! - `bundled`  example scripts compiled in, used when the default paths do not exist
//!
//! The operator's guide is docs/BLOCKS.md.

pub mod broker;
mod bundled;
mod chain;
pub mod config;
mod dry_run;
mod engine;
mod error;
pub mod filter;
pub mod host;
mod invoke;
pub mod kv;
pub mod metrics;
mod plan;
mod sandbox;
mod verdict;
mod vm;
mod watch;
mod worker;

pub use config::{BlockConfig, BlockEvent, BlocksConfig, ByteSize, ConfigError, OnError};
pub use dry_run::{DryRunOptions, DryRunReport, dry_run};
pub use engine::{
    BlockEngine, BlockStatus, ClientInfo, ConnectInfo, EngineOptions, Publisher, ReloadReport,
    ReloadStatus,
};
pub use error::{BlockError, LoadFailure};
pub use host::log::LogLevel;
pub use host::{BlockInfo, HostExtension, SideEffect};
pub use kv::{KvError, KvValue};
pub use metrics::{BlockCounters, HistogramSnapshot, MetricsSnapshot, WorkerSnapshot};
/// The Lua binding the engine is built on, for `HostExtension` implementations.
pub use mlua;
pub use plan::ErrorRecord;
