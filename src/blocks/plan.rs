//! A "plan" is one immutable, fully read generation of the configuration: validated settings,
//! every binding with its compiled filters and the script source it will run (read once, so
//! every worker compiles the very same bytes), and the filter indexes behind the engine's fast
//! paths. Workers build their Lua states from a plan; a reload builds a new plan.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use super::config::{BlockConfig, BlockEvent, BlocksConfig};
use super::error::BlockError;
use super::filter::{FilterIndex, TopicFilter};
use super::metrics::BlockMetrics;

/// Engine-wide limits the host API enforces.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub max_hops: u8,
    pub max_publishes_per_call: u32,
    pub max_payload: usize,
    pub scripts_dir: PathBuf,
}

impl Settings {
    pub fn from_config(cfg: &BlocksConfig) -> Self {
        Settings {
            max_hops: cfg.max_hops,
            max_publishes_per_call: cfg.max_publishes_per_call,
            max_payload: cfg.max_payload.as_usize(),
            scripts_dir: cfg.scripts_dir.clone(),
        }
    }
}

/// A handler failure as shown by `status()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorRecord {
    pub at: SystemTime,
    pub message: String,
}

/// What the engine remembers about a block name across reloads: its counters, the version
/// running and when it was loaded, and its last error.
#[derive(Debug)]
pub(crate) struct BlockRecord {
    pub metrics: Arc<BlockMetrics>,
    pub state: Mutex<RecordState>,
}

#[derive(Debug, Clone)]
pub(crate) struct RecordState {
    pub version: String,
    pub loaded_at: SystemTime,
    pub last_error: Option<ErrorRecord>,
}

impl BlockRecord {
    pub(crate) fn new() -> Self {
        BlockRecord {
            metrics: Arc::default(),
            state: Mutex::new(RecordState {
                version: String::new(),
                loaded_at: SystemTime::now(),
                last_error: None,
            }),
        }
    }

    pub fn set_error(&self, message: String) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.last_error = Some(ErrorRecord {
            at: SystemTime::now(),
            message,
        });
    }

    pub fn snapshot(&self) -> RecordState {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Records by block name, owned by the engine.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    records: Mutex<HashMap<String, Arc<BlockRecord>>>,
}

impl Registry {
    pub fn record(&self, name: &str) -> Arc<BlockRecord> {
        let mut map = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(name.to_owned())
            .or_insert_with(|| Arc::new(BlockRecord::new()))
            .clone()
    }

    /// Forgets names no longer configured, so their counters restart if they come back.
    pub fn retain(&self, names: &[&str]) {
        let mut map = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|k, _| names.contains(&k.as_str()));
    }
}

/// One binding, ready to be compiled by a worker.
#[derive(Debug)]
pub(crate) struct BlockSpec {
    pub cfg: BlockConfig,
    pub filters: Vec<TopicFilter>,
    pub source: Arc<[u8]>,
    /// sha256 of the source, hex.
    pub version: String,
    pub identity: String,
    /// `@<script path>`: Lua then reports errors as `<script path>:<line>: ...`.
    pub chunk_name: String,
    pub record: Arc<BlockRecord>,
}

impl BlockSpec {
    pub fn name(&self) -> &str {
        &self.cfg.name
    }
    pub fn metrics(&self) -> &BlockMetrics {
        &self.record.metrics
    }
    /// First filter capture list matching `topic`, in filter order.
    pub fn captures(&self, topic: &str) -> Option<Vec<String>> {
        self.filters.iter().find_map(|f| f.captures(topic))
    }
    /// Subscribe blocks apply to a requested filter when one of their filters matches it read
    /// as a topic (wildcards taken literally); with no filters they apply to every request.
    pub fn applies_to_subscription(&self, requested: &str) -> bool {
        self.filters.is_empty() || self.filters.iter().any(|f| f.matches(requested))
    }
}

/// Library sources read during one plan's lifetime, shared by all workers so they compile
/// identical bytes even if a file changes mid-reload (the watcher then triggers another).
/// A library file's bytes, or why it could not be read.
type LibSource = Result<Arc<[u8]>, String>;

#[derive(Debug, Default)]
pub(crate) struct LibCache {
    files: Mutex<HashMap<PathBuf, LibSource>>,
}

impl LibCache {
    /// Reads every `.lua` file under `lib` into the cache and returns their joint sha256.
    pub fn preload(&self, lib: &Path) -> String {
        let mut files = Vec::new();
        collect_lua(lib, 0, &mut files);
        files.sort();
        let mut h = Sha256::new();
        for path in files {
            if let Ok(src) = self.read(&path) {
                h.update(path.to_string_lossy().as_bytes());
                h.update([0]);
                h.update(&src[..]);
            }
        }
        hex::encode(h.finalize())
    }

    pub fn read(&self, path: &Path) -> Result<Arc<[u8]>, String> {
        let mut files = self.files.lock().unwrap_or_else(PoisonError::into_inner);
        files
            .entry(path.to_owned())
            .or_insert_with(|| {
                super::bundled::read(path)
                    .map(Arc::from)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))
            })
            .clone()
    }
}

fn collect_lua(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    // Bounded depth: a symlink loop must not hang a reload.
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    if depth > 8 {
        return;
    }
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            collect_lua(&path, depth + 1, out);
        } else if path.extension().is_some_and(|x| x == "lua") {
            out.push(path);
        }
    }
}

#[derive(Debug)]
pub(crate) struct Plan {
    pub generation: u64,
    pub config: BlocksConfig,
    pub settings: Arc<Settings>,
    pub blocks: Vec<Arc<BlockSpec>>,
    pub before_index: FilterIndex,
    pub after_index: FilterIndex,
    pub has_connect: bool,
    pub has_subscribe: bool,
    pub libs: Arc<LibCache>,
    /// sha256 over every `scripts_dir/lib/**/*.lua` (path and content): a library change
    /// reloads the blocks even though their own sources did not change.
    pub libs_version: String,
}

impl Plan {
    /// An empty plan: what workers run before the first commit.
    pub fn empty(config: BlocksConfig) -> Plan {
        Plan {
            generation: 0,
            settings: Arc::new(Settings::from_config(&config)),
            config,
            blocks: Vec::new(),
            before_index: FilterIndex::default(),
            after_index: FilterIndex::default(),
            has_connect: false,
            has_subscribe: false,
            libs: Arc::default(),
            libs_version: String::new(),
        }
    }

    /// Validates `config` and reads every script.
    pub fn build(
        config: BlocksConfig,
        generation: u64,
        registry: &Registry,
    ) -> Result<Plan, BlockError> {
        config.validate()?;
        let mut plan = Plan::empty(config.clone());
        plan.generation = generation;
        for b in &config.blocks {
            let source =
                super::bundled::read(&b.script).map_err(|source| BlockError::ReadScript {
                    block: b.name.clone(),
                    path: b.script.clone(),
                    source,
                })?;
            let spec = Self::spec(b, source, registry.record(&b.name));
            match b.event {
                BlockEvent::BeforePublish => spec
                    .filters
                    .iter()
                    .for_each(|f| plan.before_index.insert(f)),
                BlockEvent::AfterPublish => {
                    spec.filters.iter().for_each(|f| plan.after_index.insert(f))
                }
                BlockEvent::Connect => plan.has_connect = true,
                BlockEvent::Subscribe => plan.has_subscribe = true,
                BlockEvent::Interval => {}
            }
            plan.blocks.push(Arc::new(spec));
        }
        plan.libs_version = plan.libs.preload(&config.scripts_dir.join("lib"));
        Ok(plan)
    }

    pub(crate) fn spec(b: &BlockConfig, source: Vec<u8>, record: Arc<BlockRecord>) -> BlockSpec {
        // Validated already, so parsing cannot fail here; a failure would only drop the filter.
        let filters = b
            .topics
            .iter()
            .filter_map(|t| TopicFilter::parse(t).ok())
            .collect();
        BlockSpec {
            version: hex::encode(Sha256::digest(&source)),
            identity: b.identity(),
            chunk_name: format!("@{}", b.script.display()),
            cfg: b.clone(),
            filters,
            source: Arc::from(source),
            record,
        }
    }

    /// Blocks bound to `event`, in config order.
    pub fn bound(&self, event: BlockEvent) -> impl Iterator<Item = &Arc<BlockSpec>> {
        self.blocks.iter().filter(move |b| b.cfg.event == event)
    }
}
