//! `kv.get(key)`, `kv.set(key, value, {ttl = seconds})`, `kv.incr(key, by, {ttl = seconds})`,
//! `kv.del(key)`: the Lua face of [`crate::blocks::kv::KvStore`], namespaced by block name.
//! `kv.shared.*` is the same API over one namespace common to all blocks (counters several
//! blocks feed, like the heartbeat's).
//! Values are strings (any bytes), numbers and booleans; `kv.set(key, nil)` deletes. Calls are
//! synchronous on the worker thread (redb transactions take microseconds with eventual
//! durability).

use std::rc::Rc;
use std::time::Duration;

use mlua::{Lua, LuaString, Table, Value};

use super::{HostCtx, SideEffect};
use crate::blocks::kv::KvValue;

/// Longest key accepted.
const MAX_KEY: usize = 1024;

fn key(v: &Value, f: &str) -> mlua::Result<Vec<u8>> {
    let k = match v {
        Value::String(s) => s.as_bytes().to_vec(),
        Value::Integer(i) => i.to_string().into_bytes(),
        Value::Number(n) => n.to_string().into_bytes(),
        _ => return Err(mlua::Error::runtime(format!("{f}: key must be a string"))),
    };
    if k.is_empty() || k.len() > MAX_KEY {
        return Err(mlua::Error::runtime(format!(
            "{f}: key must be 1 to {MAX_KEY} bytes"
        )));
    }
    Ok(k)
}

fn ttl(opts: &Option<Table>, f: &str) -> mlua::Result<Option<Duration>> {
    let Some(opts) = opts else { return Ok(None) };
    match opts.raw_get::<Value>("ttl")? {
        Value::Nil => Ok(None),
        Value::Integer(i) if i > 0 => Ok(Some(Duration::from_secs(i.unsigned_abs()))),
        Value::Number(n) if n > 0.0 && n.is_finite() => Duration::try_from_secs_f64(n)
            .map(Some)
            .map_err(|e| mlua::Error::runtime(format!("{f}: ttl: {e}"))),
        _ => Err(mlua::Error::runtime(format!(
            "{f}: ttl must be a positive number of seconds"
        ))),
    }
}

fn to_lua(lua: &Lua, v: KvValue) -> mlua::Result<Value> {
    Ok(match v {
        KvValue::Str(s) => Value::String(lua.create_string(&s)?),
        KvValue::Int(i) => Value::Integer(i),
        KvValue::Float(f) => Value::Number(f),
        KvValue::Bool(b) => Value::Boolean(b),
    })
}

fn err(f: &str, e: impl std::fmt::Display) -> mlua::Error {
    mlua::Error::runtime(format!("{f}: {e}"))
}

/// The namespace `kv.shared.*` works in: one for all blocks (block names cannot contain `$`).
pub const SHARED_NS: &str = "$shared";

pub(crate) fn install(lua: &Lua, g: &Table, host: &Rc<HostCtx>) -> mlua::Result<()> {
    let kv = api(lua, host, None)?;
    kv.raw_set("shared", api(lua, host, Some(SHARED_NS))?)?;
    g.raw_set("kv", kv)
}

/// `get/set/incr/del` over the block's own namespace, or over `shared`.
fn api(lua: &Lua, host: &Rc<HostCtx>, shared: Option<&'static str>) -> mlua::Result<Table> {
    let kv = lua.create_table()?;
    let prefix = if shared.is_some() { "kv.shared" } else { "kv" };
    let name = move |f: &str| format!("{prefix}.{f}");
    // Effects of shared calls are recorded as `$shared/<key>` so a dry run shows which is which.
    let shown = move |k: &[u8]| -> Vec<u8> {
        match shared {
            Some(ns) => [ns.as_bytes(), b"/", k].concat(),
            None => k.to_vec(),
        }
    };

    let h = host.clone();
    let f = name("get");
    kv.raw_set(
        "get",
        lua.create_function(move |lua, k: Value| {
            let k = key(&k, &f)?;
            match h
                .kv
                .get(shared.unwrap_or(h.ns()), &k)
                .map_err(|e| err(&f, e))?
            {
                Some(v) => to_lua(lua, v),
                None => Ok(Value::Nil),
            }
        })?,
    )?;

    let h = host.clone();
    let f = name("set");
    kv.raw_set(
        "set",
        lua.create_function(move |_, (k, v, opts): (Value, Value, Option<Table>)| {
            let k = key(&k, &f)?;
            let ttl = ttl(&opts, &f)?;
            let ns = shared.unwrap_or(h.ns());
            let value = match v {
                Value::Nil => {
                    h.kv.del(ns, &k).map_err(|e| err(&f, e))?;
                    h.record(|| SideEffect::KvDel { key: shown(&k) });
                    return Ok(true);
                }
                Value::String(s) => {
                    let bytes = LuaString::as_bytes(&s).to_vec();
                    if bytes.len() > h.settings.max_payload {
                        return Err(err(
                            &f,
                            format!(
                                "value is larger than max_payload ({} bytes)",
                                h.settings.max_payload
                            ),
                        ));
                    }
                    KvValue::Str(bytes)
                }
                Value::Integer(i) => KvValue::Int(i),
                Value::Number(n) => KvValue::Float(n),
                Value::Boolean(b) => KvValue::Bool(b),
                _ => {
                    return Err(err(
                        &f,
                        "value must be a string, number or boolean (json.encode tables first)",
                    ));
                }
            };
            h.kv.set(ns, &k, &value, ttl).map_err(|e| err(&f, e))?;
            h.record(|| SideEffect::KvSet {
                key: shown(&k),
                value,
                ttl,
            });
            Ok(true)
        })?,
    )?;

    let h = host.clone();
    let f = name("incr");
    kv.raw_set(
        "incr",
        lua.create_function(
            move |_, (k, by, opts): (Value, Option<i64>, Option<Table>)| {
                let k = key(&k, &f)?;
                let by = by.unwrap_or(1);
                let ttl = ttl(&opts, &f)?;
                let result =
                    h.kv.incr(shared.unwrap_or(h.ns()), &k, by, ttl)
                        .map_err(|e| err(&f, e))?;
                h.record(|| SideEffect::KvIncr {
                    key: shown(&k),
                    by,
                    result,
                });
                Ok(result)
            },
        )?,
    )?;

    let h = host.clone();
    let f = name("del");
    kv.raw_set(
        "del",
        lua.create_function(move |_, k: Value| {
            let k = key(&k, &f)?;
            let existed =
                h.kv.del(shared.unwrap_or(h.ns()), &k)
                    .map_err(|e| err(&f, e))?;
            h.record(|| SideEffect::KvDel { key: shown(&k) });
            Ok(existed)
        })?,
    )?;
    Ok(kv)
}
