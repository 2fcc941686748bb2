//! One block's Lua state: creation with its heap limit and deadline hook, sandboxing, host API
//! installation, loading the script into a module table, and running a handler as a coroutine
//! under the invocation's deadline.
//!
//! Limits map onto states like this: every block gets its own `mlua::Lua` on every worker
//! that runs it, so `memory` is exactly that state's `set_memory_limit`, and one block's
//! runaway allocation, GC debt or global mutation never touches another block. `timeout` is a
//! wall-clock deadline per invocation, enforced twice: an instruction-count hook (every
//! [`HOOK_EVERY`] VM instructions) errors once the deadline passed, which stops busy Lua
//! code, and a timer around the coroutine stops a handler parked in an async host call.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use mlua::chunk::ChunkMode;
use mlua::{Function, HookTriggers, Lua, LuaOptions, MultiValue, Value, VmState};

use super::host::{self, HostCtx, Recorder, Services};
use super::plan::{BlockSpec, LibCache, Settings};
use super::sandbox;
use super::verdict::StrCache;

/// VM instructions between two deadline checks: ~10-50 µs of Lua, cheap enough to be always on.
pub const HOOK_EVERY: u32 = 1000;
/// The script's top level (including its `require`s) gets at least this long to load.
const MIN_LOAD_BUDGET: Duration = Duration::from_secs(1);

/// The handler call in progress on a state. Host functions read it to learn the hop count,
/// count publishes, and record side effects; the hook reads its deadline.
#[derive(Debug)]
pub(crate) struct Invocation {
    pub deadline: Instant,
    pub budget: Duration,
    pub hop: u8,
    /// The script's top level is running (publishing is refused then).
    pub loading: bool,
    pub publishes: Cell<u32>,
    /// Set once the deadline passed or the call was abandoned: from then on every hook tick
    /// and every `pcall` return re-raises, so scripts cannot swallow the timeout.
    pub aborted: Cell<bool>,
    pub recorder: Option<Rc<Recorder>>,
}

impl Invocation {
    pub fn new(budget: Duration, hop: u8, recorder: Option<Rc<Recorder>>) -> Rc<Self> {
        Rc::new(Self::build(budget, hop, recorder, false))
    }

    fn build(budget: Duration, hop: u8, recorder: Option<Rc<Recorder>>, loading: bool) -> Self {
        Invocation {
            deadline: Instant::now() + budget,
            budget,
            hop,
            loading,
            publishes: Cell::new(0),
            aborted: Cell::new(false),
            recorder,
        }
    }

    pub fn timeout_error(&self) -> mlua::Error {
        mlua::Error::RuntimeError(format!("timeout: handler exceeded {:?}", self.budget))
    }
}

/// Which invocation (if any) is running on this state right now. Several invocations of one
/// block can be in flight on a worker (parked in async host calls); only one runs at a time,
/// and [`Guarded`] swaps it in for exactly the duration of each poll.
#[derive(Debug, Default)]
pub(crate) struct Slot(RefCell<Option<Rc<Invocation>>>);

impl Slot {
    pub fn current(&self) -> Option<Rc<Invocation>> {
        self.0.borrow().clone()
    }
    fn enter(&self, inv: &Rc<Invocation>) -> Option<Rc<Invocation>> {
        self.0.replace(Some(inv.clone()))
    }
    fn leave(&self, prev: Option<Rc<Invocation>>) {
        *self.0.borrow_mut() = prev;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureKind {
    Error,
    Timeout,
}

/// A handler that did not produce a usable result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScriptFailure {
    pub kind: FailureKind,
    /// One line, `file:line: message` when a location is known.
    pub message: String,
}

impl ScriptFailure {
    pub fn error(message: impl Into<String>) -> Self {
        ScriptFailure {
            kind: FailureKind::Error,
            message: message.into(),
        }
    }
}

/// Polls a handler's coroutine with its invocation installed in the state's [`Slot`], and
/// makes sure Lua code that runs while an abandoned coroutine is torn down (to-be-closed
/// variables) still sees an expired deadline.
struct Guarded<F: Future> {
    fut: Option<Pin<Box<F>>>,
    slot: Rc<Slot>,
    inv: Rc<Invocation>,
}

impl<F: Future> Future for Guarded<F> {
    type Output = Option<F::Output>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(fut) = this.fut.as_mut() else {
            return Poll::Ready(None);
        };
        let prev = this.slot.enter(&this.inv);
        let out = fut.as_mut().poll(cx);
        if out.is_ready() {
            this.fut = None;
        }
        this.slot.leave(prev);
        out.map(Some)
    }
}

impl<F: Future> Drop for Guarded<F> {
    fn drop(&mut self) {
        if let Some(fut) = self.fut.take() {
            self.inv.aborted.set(true);
            let prev = self.slot.enter(&self.inv);
            drop(fut);
            self.slot.leave(prev);
        }
    }
}

/// Builds `msg` and `ctx` inside Lua and tail-calls the handler. Creating the two tables from
/// Rust costs a protected call per field; this way they cost a few VM instructions.
///
/// Most messages carry no properties; their `msg.props` (two tables) is only built when the
/// handler first reads it, through a metatable shared by all messages, which keeps the
/// per-message garbage down. A handler that never reads `props` returns none, which the
/// engine reads as "unchanged".
const PUBLISH_ENTRY: &str = r#"
local handler = ...
local rawset, setmetatable = rawset, setmetatable
local lazy_props = {
  __metatable = false,
  __index = function(t, k)
    if k == "props" then
      local p = { user = {} }
      rawset(t, "props", p)
      return p
    end
  end,
}
return function(topic, payload, qos, retain, client_id, username, received_at,
                user, ct, rt, cd, mei, pfi, block, hop, ...)
  local msg = { topic = topic, payload = payload, qos = qos, retain = retain,
                client_id = client_id, username = username, received_at = received_at }
  if user or ct or rt or cd or mei or pfi then
    msg.props = { content_type = ct, response_topic = rt, correlation_data = cd,
                  message_expiry_interval = mei, payload_format_indicator = pfi,
                  user = user or {} }
  else
    setmetatable(msg, lazy_props)
  end
  return handler(msg, { block = block, hop = hop, matches = { ... } })
end
"#;

pub(crate) struct BlockVm {
    pub spec: Arc<BlockSpec>,
    lua: Lua,
    /// What `call` runs: the handler, or for `on_publish` the [`PUBLISH_ENTRY`] around it.
    entry: Function,
    /// The block's name as a Lua string, made once (it is in every `ctx`).
    pub name: mlua::LuaString,
    /// Recent topics and client ids as Lua strings (see [`StrCache`]).
    pub strings: StrCache,
    /// `file:line` where the handler is defined, for errors without a better location.
    pub handler_at: String,
    slot: Rc<Slot>,
    pub host: Rc<HostCtx>,
}

impl BlockVm {
    /// Builds the state and runs the script's top level. The error is one line for operators.
    pub fn load(
        spec: Arc<BlockSpec>,
        settings: Arc<Settings>,
        libs: Arc<LibCache>,
        services: &Services,
        worker: usize,
    ) -> Result<BlockVm, String> {
        let lua = Lua::new_with(sandbox::libs(), LuaOptions::new()).map_err(|e| describe(&e))?;
        lua.set_memory_limit(spec.cfg.memory.as_usize())
            .map_err(|e| describe(&e))?;
        // Handlers make short-lived garbage (the msg and ctx tables, strings) on every call:
        // the generational collector reclaims it in cheap minor collections.
        lua.gc_set_mode(mlua::prelude::LuaGcMode::Generational(
            mlua::prelude::LuaGcGenParams::default(),
        ));
        let slot = Rc::new(Slot::default());
        let hook_slot = slot.clone();
        lua.set_global_hook(
            HookTriggers::new().every_nth_instruction(HOOK_EVERY),
            move |_, _| match hook_slot.current() {
                Some(inv) if inv.aborted.get() || Instant::now() >= inv.deadline => {
                    inv.aborted.set(true);
                    Err(inv.timeout_error())
                }
                _ => Ok(VmState::Continue),
            },
        )
        .map_err(|e| describe(&e))?;
        let host = Rc::new(HostCtx::new(
            spec.clone(),
            settings,
            services,
            slot.clone(),
            libs,
            worker,
        ));
        let setup = sandbox::harden(&lua, &slot)
            .and_then(|()| host::install(&lua, &host))
            .and_then(|()| services.install_extensions(&lua, &spec, worker));
        setup.map_err(|e| format!("sandbox setup failed: {}", describe(&e)))?;

        let chunk = lua
            .load(&spec.source[..])
            .set_name(spec.chunk_name.clone())
            .set_mode(ChunkMode::Text)
            .into_function()
            .map_err(|e| describe(&e))?;
        let budget = spec.cfg.timeout.max(MIN_LOAD_BUDGET);
        let inv = Rc::new(Invocation::build(budget, 0, None, true));
        let module = call_sync(&slot, &chunk, MultiValue::new(), &inv).map_err(|f| f.message)?;
        let Some(Value::Table(module)) = module.into_iter().next() else {
            return Err("the script must return its module table (`return M`)".into());
        };
        let name = spec.cfg.event.handler_name();
        let handler = match module.raw_get::<Value>(name) {
            Ok(Value::Function(f)) => f,
            _ => return Err(format!("the module table has no `{name}` function")),
        };
        let info = handler.info();
        let handler_at = format!(
            "{}:{}",
            info.short_src.unwrap_or_default(),
            info.line_defined.unwrap_or(0)
        );
        let entry = if name == "on_publish" {
            lua.load(PUBLISH_ENTRY)
                .set_name("=on_publish")
                .set_mode(ChunkMode::Text)
                .call::<Function>(handler)
                .map_err(|e| describe(&e))?
        } else {
            handler
        };
        let block_name = lua.create_string(spec.name()).map_err(|e| describe(&e))?;
        // Start from a compact heap so the limit is mostly the block's own working set.
        let _ = lua.gc_collect();
        Ok(BlockVm {
            spec,
            lua,
            entry,
            name: block_name,
            strings: StrCache::default(),
            handler_at,
            slot,
            host,
        })
    }

    pub fn lua(&self) -> &Lua {
        &self.lua
    }

    pub fn invocation(&self, hop: u8, recorder: Option<Rc<Recorder>>) -> Rc<Invocation> {
        Invocation::new(self.spec.cfg.timeout, hop, recorder)
    }

    /// Runs the handler as a coroutine until it returns, fails, or its deadline passes.
    pub async fn call(
        &self,
        args: MultiValue,
        inv: Rc<Invocation>,
    ) -> Result<MultiValue, ScriptFailure> {
        let mut guarded = Guarded {
            fut: Some(Box::pin(self.entry.call_async::<MultiValue>(args))),
            slot: self.slot.clone(),
            inv: inv.clone(),
        };
        // Most handlers finish without waiting on a host call, and running Lua code is stopped
        // by the instruction hook; so the timer (a registration in the runtime's wheel) is
        // only armed once the handler actually parks.
        let first = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut guarded).poll(cx))).await;
        let out = match first {
            Poll::Ready(v) => Ok(v),
            Poll::Pending => tokio::time::timeout_at(inv.deadline.into(), guarded).await,
        };
        let failure = match out {
            Ok(Some(Ok(values))) => return Ok(values),
            Err(_) | Ok(None) => ScriptFailure {
                kind: FailureKind::Timeout,
                message: format!(
                    "{}: timeout: handler exceeded {:?} (waiting in a host call)",
                    self.handler_at, inv.budget
                ),
            },
            Ok(Some(Err(e))) => classify(&e, &inv, &self.handler_at),
        };
        if matches!(failure.kind, FailureKind::Error) {
            // A memory error leaves garbage behind; reclaim it now rather than at the next call.
            let _ = self.lua.gc_collect();
        }
        Err(failure)
    }

    /// Converts `Table` construction errors (memory limit while building arguments) into
    /// failures of this block.
    pub fn arg_failure(&self, e: &mlua::Error) -> ScriptFailure {
        ScriptFailure::error(format!("{}: {}", self.handler_at, describe(e)))
    }
}

fn call_sync(
    slot: &Slot,
    f: &Function,
    args: MultiValue,
    inv: &Rc<Invocation>,
) -> Result<MultiValue, ScriptFailure> {
    let prev = slot.enter(inv);
    let out = f.call::<MultiValue>(args);
    slot.leave(prev);
    out.map_err(|e| classify(&e, inv, ""))
}

fn classify(e: &mlua::Error, inv: &Invocation, fallback_at: &str) -> ScriptFailure {
    let mut message = describe(e);
    if !has_location(&message) && !fallback_at.is_empty() {
        message = format!("{fallback_at}: {message}");
    }
    let kind = if inv.aborted.get() {
        FailureKind::Timeout
    } else {
        FailureKind::Error
    };
    ScriptFailure { kind, message }
}

/// One line for an operator: the innermost message, prefixed with the script location when
/// Lua or the traceback knows it.
pub(crate) fn describe(e: &mlua::Error) -> String {
    use mlua::Error as E;
    match e {
        E::RuntimeError(s) => first_line(s),
        E::SyntaxError { message, .. } => first_line(message),
        E::MemoryError(_) => "out of memory: the block's `memory` limit was reached".into(),
        E::CallbackError { traceback, cause } => {
            let inner = describe(cause);
            match script_location(traceback) {
                Some(loc) if !has_location(&inner) => format!("{loc}: {inner}"),
                _ => inner,
            }
        }
        E::WithContext { context, cause } => format!("{context}: {}", describe(cause)),
        E::BadArgument { to, pos, cause, .. } => format!(
            "bad argument #{pos} to `{}`: {}",
            to.as_deref().unwrap_or("?"),
            describe(cause)
        ),
        other => first_line(&other.to_string()),
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_owned()
}

/// `path:line` at the start of `s` (Lua's own error prefix).
fn location_prefix(s: &str) -> Option<&str> {
    let s = s.trim_start();
    for (i, _) in s.match_indices(':') {
        let rest = &s[i + 1..];
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits > 0 && rest[digits..].starts_with(':') && !s[..i].starts_with('[') {
            return Some(&s[..i + 1 + digits]);
        }
    }
    None
}

fn has_location(s: &str) -> bool {
    location_prefix(s).is_some_and(|p| p.contains(".lua:"))
}

/// The first frame of a traceback that is a script line (skipping `[C]` frames).
fn script_location(traceback: &str) -> Option<String> {
    traceback
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("[C]"))
        .find_map(|l| location_prefix(l).filter(|p| p.contains(".lua:")))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_found() {
        assert_eq!(
            location_prefix("scripts/a.lua:12: boom"),
            Some("scripts/a.lua:12")
        );
        assert_eq!(location_prefix("boom: no"), None);
        assert!(has_location("scripts/a.lua:3: x"));
        assert!(!has_location("[string \"x\"]:3: x"));
        let tb = "stack traceback:\n\t[C]: in function 'mqtt.publish'\n\tscripts/x.lua:5: in function <scripts/x.lua:3>";
        assert_eq!(script_location(tb).as_deref(), Some("scripts/x.lua:5"));
    }
}
