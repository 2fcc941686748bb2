//! `log.debug/info/warn/error(...)` and `print(...)`: script lines go to `tracing` (target
//! `moonwire::blocks::script`, fields `block` and `worker`), rate-limited per block per
//! worker so a chatty or looping script cannot flood the log. Suppressed lines are counted
//! (`logs_suppressed`) and summarised in the next line that gets through.

use std::cell::Cell;
use std::fmt;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use mlua::{Lua, MultiValue, Table, Value};

use super::{HostCtx, SideEffect};

/// Longest log line kept; the rest is cut (with a marker).
const MAX_LINE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        })
    }
}

/// A token bucket: `burst` lines at once, then `per_sec` lines a second.
#[derive(Debug)]
pub(crate) struct RateLimit {
    burst: f64,
    per_sec: f64,
    tokens: Cell<f64>,
    last: Cell<Instant>,
    suppressed: Cell<u64>,
}

impl RateLimit {
    pub fn new(burst: f64, per_sec: f64) -> Self {
        RateLimit {
            burst,
            per_sec,
            tokens: Cell::new(burst),
            last: Cell::new(Instant::now()),
            suppressed: Cell::new(0),
        }
    }

    /// `Some(n)`: emit, after `n` suppressed lines; `None`: suppress this one.
    pub fn allow(&self) -> Option<u64> {
        let now = Instant::now();
        let refill = now.duration_since(self.last.get()).as_secs_f64() * self.per_sec;
        self.last.set(now);
        let tokens = (self.tokens.get() + refill).min(self.burst);
        if tokens >= 1.0 {
            self.tokens.set(tokens - 1.0);
            Some(self.suppressed.replace(0))
        } else {
            self.tokens.set(tokens);
            self.suppressed.set(self.suppressed.get() + 1);
            None
        }
    }
}

fn line(args: MultiValue) -> mlua::Result<String> {
    let mut out = String::new();
    for (i, v) in args.into_iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        match v {
            Value::String(s) => out.push_str(&s.to_string_lossy()),
            v => out.push_str(&v.to_string()?),
        }
        if out.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
            out.push_str(" …(truncated)");
            break;
        }
    }
    Ok(out)
}

pub(crate) fn emit(host: &HostCtx, level: LogLevel, text: &str) {
    let Some(suppressed) = host.log_limit.allow() else {
        host.spec.metrics().logs_suppressed.fetch_add(1, Relaxed);
        return;
    };
    let block = host.ns();
    let worker = host.worker;
    macro_rules! ev {
        ($mac:ident) => {
            if suppressed > 0 {
                tracing::$mac!(target: "moonwire::blocks::script", block, worker, suppressed, "{text}")
            } else {
                tracing::$mac!(target: "moonwire::blocks::script", block, worker, "{text}")
            }
        };
    }
    match level {
        LogLevel::Debug => ev!(debug),
        LogLevel::Info => ev!(info),
        LogLevel::Warn => ev!(warn),
        LogLevel::Error => ev!(error),
    }
}

/// The engine's report of a failed invocation, under its own (stricter) rate limit.
pub(crate) fn report_failure(host: &HostCtx, message: &str, timeout: bool) {
    let Some(suppressed) = host.error_limit.allow() else {
        host.spec.metrics().logs_suppressed.fetch_add(1, Relaxed);
        return;
    };
    let kind = if timeout { "timeout" } else { "error" };
    tracing::warn!(
        target: "moonwire::blocks",
        block = host.ns(),
        worker = host.worker,
        suppressed,
        kind,
        "block failed: {message}"
    );
}

pub(crate) fn install(lua: &Lua, g: &Table, host: &Rc<HostCtx>) -> mlua::Result<()> {
    let log = lua.create_table()?;
    for (name, level) in [
        ("debug", LogLevel::Debug),
        ("info", LogLevel::Info),
        ("warn", LogLevel::Warn),
        ("error", LogLevel::Error),
    ] {
        let host = host.clone();
        let f = lua.create_function(move |_, args: MultiValue| {
            let text = line(args)?;
            host.record(|| SideEffect::Log {
                level,
                text: text.clone(),
            });
            emit(&host, level, &text);
            Ok(())
        })?;
        log.raw_set(name, f.clone())?;
        if level == LogLevel::Info {
            g.raw_set("print", f)?;
        }
    }
    g.raw_set("log", log)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_limits_and_counts() {
        let rl = RateLimit::new(3.0, 0.0);
        assert_eq!(rl.allow(), Some(0));
        assert_eq!(rl.allow(), Some(0));
        assert_eq!(rl.allow(), Some(0));
        assert_eq!(rl.allow(), None);
        assert_eq!(rl.allow(), None);
        rl.tokens.set(1.0);
        assert_eq!(rl.allow(), Some(2));
    }
}
