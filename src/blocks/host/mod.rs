//! The host API: the globals a block script gets besides the trimmed standard library.
//! One file per namespace (`mqtt`, `json`, `kv`, `log`, and `time`/`codec`/`crypto` in
//! `util`); this module wires them into a state and defines the extension point through which
//! the broker adds more namespaces (e.g. `media.*`) without touching the engine.

pub mod json;
pub mod kv;
pub mod log;
pub mod mqtt;
pub mod util;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use mlua::Lua;

use super::engine::Publisher;
use super::kv::{KvStore, KvValue};
use super::plan::{BlockSpec, LibCache, Settings};
use super::sandbox;
use super::verdict;
use super::vm::{Invocation, Slot};
use crate::pipeline::Message;
use log::{LogLevel, RateLimit};

/// Adds globals to every block state (the lead's `media` namespace goes here).
///
/// `install` runs once per block per worker, on that worker's thread, after the sandbox and
/// the built-in host API are in place and before the script's top level runs. Functions may
/// be async (`Lua::create_async_function`): a handler awaiting one parks its coroutine and the
/// worker keeps serving other topics; the block's `timeout` still bounds the whole call.
pub trait HostExtension: Send + Sync {
    /// Used in error messages when `install` fails.
    fn name(&self) -> &str;
    fn install(&self, lua: &Lua, block: &BlockInfo) -> mlua::Result<()>;
}

/// What an extension may know about the state it installs into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockInfo {
    pub name: String,
    pub identity: String,
    pub worker: usize,
}

/// The thread-safe services every state's host functions use.
#[derive(Clone)]
pub(crate) struct Services {
    pub publisher: Arc<dyn Publisher>,
    pub kv: Arc<KvStore>,
    pub extensions: Arc<[Arc<dyn HostExtension>]>,
}

impl Services {
    pub fn install_extensions(
        &self,
        lua: &Lua,
        spec: &BlockSpec,
        worker: usize,
    ) -> mlua::Result<()> {
        let info = BlockInfo {
            name: spec.cfg.name.clone(),
            identity: spec.identity.clone(),
            worker,
        };
        for ext in self.extensions.iter() {
            ext.install(lua, &info)
                .map_err(|e| mlua::Error::runtime(format!("extension `{}`: {e}", ext.name())))?;
        }
        Ok(())
    }
}

/// One side effect of a handler, as recorded by a dry run.
#[derive(Debug, Clone, PartialEq)]
pub enum SideEffect {
    Publish(Message),
    PublishRefused {
        topic: String,
        reason: String,
    },
    KvSet {
        key: Vec<u8>,
        value: KvValue,
        ttl: Option<Duration>,
    },
    KvIncr {
        key: Vec<u8>,
        by: i64,
        result: i64,
    },
    KvDel {
        key: Vec<u8>,
    },
    Log {
        level: LogLevel,
        text: String,
    },
}

/// Collects side effects during a recorded (dry-run) invocation.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    pub effects: RefCell<Vec<SideEffect>>,
}

/// Per-state context captured by host functions.
pub(crate) struct HostCtx {
    pub spec: Arc<BlockSpec>,
    pub settings: Arc<Settings>,
    pub publisher: Arc<dyn Publisher>,
    pub kv: Arc<KvStore>,
    pub slot: Rc<Slot>,
    pub libs: Arc<LibCache>,
    pub worker: usize,
    /// Script `log.*`/`print` lines.
    pub log_limit: RateLimit,
    /// The engine's own reports of this block's failures.
    pub error_limit: RateLimit,
}

impl HostCtx {
    pub fn new(
        spec: Arc<BlockSpec>,
        settings: Arc<Settings>,
        services: &Services,
        slot: Rc<Slot>,
        libs: Arc<LibCache>,
        worker: usize,
    ) -> Self {
        HostCtx {
            spec,
            settings,
            publisher: services.publisher.clone(),
            kv: services.kv.clone(),
            slot,
            libs,
            worker,
            log_limit: RateLimit::new(50.0, 10.0),
            error_limit: RateLimit::new(10.0, 1.0),
        }
    }

    pub fn current(&self) -> Option<Rc<Invocation>> {
        self.slot.current()
    }

    pub fn record(&self, effect: impl FnOnce() -> SideEffect) {
        if let Some(rec) = self.current().and_then(|inv| inv.recorder.clone()) {
            rec.effects.borrow_mut().push(effect());
        }
    }

    pub fn ns(&self) -> &str {
        &self.spec.cfg.name
    }
}

pub(crate) fn install(lua: &Lua, host: &Rc<HostCtx>) -> mlua::Result<()> {
    let g = lua.globals();
    mqtt::install(lua, &g, host)?;
    json::install(lua, &g)?;
    kv::install(lua, &g, host)?;
    log::install(lua, &g, host)?;
    util::install(lua, &g)?;
    verdict::install_helpers(lua, &g)?;
    sandbox::install_require(lua, host)
}
