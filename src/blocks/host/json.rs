//! `json.encode`, `json.decode`, `json.null`, `json.array`, `json.is_array` (serde_json
//! underneath).
//!
//! Rules, also in docs/BLOCKS.md:
//! - `json.decode(text)` returns the value, or `nil, message` for invalid JSON (bad input is
//!   data, not a script bug). JSON `null` decodes to `json.null` (so keys and array slots
//!   survive); arrays decode to tables marked as arrays, so `[]` re-encodes as `[]`.
//! - `json.encode(value)` raises on values JSON cannot hold: non-UTF-8 strings (binary data
//!   must go through `codec.base64_encode`), NaN/infinity, functions, cycles or nesting deeper
//!   than 128. A table is an array when marked (`json.array(t)` or decoded from an array) or
//!   when its keys are exactly `1..n`; otherwise it is an object whose keys must be strings or
//!   integers (written as text). An empty unmarked table is `{}`. Object keys come out sorted.
//! - Integers stay integers (i64); other numbers are floats.

use std::rc::Rc;

use mlua::{LightUserData, Lua, LuaString, Table, Value};
use serde_json::{Number, Value as Json};

const MAX_DEPTH: usize = 128;

pub(crate) fn null() -> Value {
    Value::LightUserData(LightUserData(std::ptr::null_mut()))
}

fn is_null(v: &Value) -> bool {
    matches!(v, Value::LightUserData(p) if p.0.is_null())
}

pub(crate) fn install(lua: &Lua, g: &Table) -> mlua::Result<()> {
    // Marks tables that must encode as arrays; shared by encode, decode and json.array.
    let array_mt = Rc::new(lua.create_table()?);
    array_mt.raw_set("__name", "json.array")?;
    let json = lua.create_table()?;
    json.raw_set("null", null())?;

    let mt = array_mt.clone();
    json.raw_set(
        "encode",
        lua.create_function(move |_, v: Value| {
            let mut out = Vec::with_capacity(128);
            encode(&v, &mt, 0, &mut out)
                .map_err(|e| mlua::Error::runtime(format!("json.encode: {e}")))?;
            // Only valid UTF-8 strings and JSON syntax were written; the check keeps it honest.
            String::from_utf8(out).map_err(|e| mlua::Error::runtime(format!("json.encode: {e}")))
        })?,
    )?;

    let mt = array_mt.clone();
    json.raw_set(
        "decode",
        lua.create_function(move |lua, s: LuaString| {
            match serde_json::from_slice::<Json>(&s.as_bytes()) {
                Ok(j) => Ok((to_lua(lua, &j, &mt)?, None)),
                Err(e) => Ok((Value::Nil, Some(format!("invalid JSON: {e}")))),
            }
        })?,
    )?;

    let mt = array_mt.clone();
    json.raw_set(
        "is_array",
        lua.create_function(move |_, v: Value| {
            Ok(matches!(&v, Value::Table(t) if t.metatable().is_some_and(|m| m == *mt)))
        })?,
    )?;

    let mt = array_mt;
    json.raw_set(
        "array",
        lua.create_function(move |lua, t: Option<Table>| {
            let t = match t {
                Some(t) => t,
                None => lua.create_table()?,
            };
            t.set_metatable(Some((*mt).clone()))?;
            Ok(t)
        })?,
    )?;
    g.raw_set("json", json)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Function(_) => "a function",
        Value::Thread(_) => "a thread",
        Value::UserData(_) | Value::LightUserData(_) => "a userdata",
        _ => "an unsupported value",
    }
}

/// Writes `v` as JSON straight into `out`: no intermediate `serde_json::Value` (a map, a
/// `String` per key and value), which made encoding cost twice the parse.
fn encode(v: &Value, array_mt: &Table, depth: usize, out: &mut Vec<u8>) -> Result<(), String> {
    match v {
        Value::Nil => out.extend_from_slice(b"null"),
        v if is_null(v) => out.extend_from_slice(b"null"),
        Value::Boolean(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Integer(i) => write_json(out, i)?,
        Value::Number(f) => {
            let n = Number::from_f64(*f).ok_or("NaN and infinity cannot be encoded")?;
            write_json(out, &n)?;
        }
        Value::String(s) => write_json(out, utf8(&s.as_bytes())?)?,
        Value::Table(t) => {
            if depth >= MAX_DEPTH {
                return Err(format!("nested deeper than {MAX_DEPTH} (or a cycle)"));
            }
            encode_table(t, array_mt, depth + 1, out)?;
        }
        other => return Err(format!("{} cannot be encoded", kind(other))),
    }
    Ok(())
}

fn utf8(b: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(b).map_err(|_| {
        "string is not valid UTF-8 (encode binary data with codec.base64_encode)".to_owned()
    })
}

fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) -> Result<(), String> {
    serde_json::to_writer(out, v).map_err(|e| e.to_string())
}

fn encode_array<'a>(
    items: impl Iterator<Item = &'a Value>,
    array_mt: &Table,
    depth: usize,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    out.push(b'[');
    for (i, v) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        encode(v, array_mt, depth, out)?;
    }
    out.push(b']');
    Ok(())
}

fn encode_table(
    t: &Table,
    array_mt: &Table,
    depth: usize,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let marked = t.metatable().is_some_and(|mt| mt == *array_mt);
    if marked {
        let items = (1..=t.raw_len())
            .map(|i| t.raw_get::<Value>(i).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        return encode_array(items.iter(), array_mt, depth, out);
    }
    let mut entries = Vec::new();
    for pair in t.pairs::<Value, Value>() {
        entries.push(pair.map_err(|e| e.to_string())?);
    }
    let n = entries.len();
    let is_sequence = n > 0
        && entries
            .iter()
            .all(|(k, _)| matches!(k, Value::Integer(i) if *i >= 1 && usize::try_from(*i).is_ok_and(|i| i <= n)));
    if is_sequence {
        let mut items = vec![Value::Nil; n];
        for (k, v) in entries {
            if let Value::Integer(i) = k
                && let Some(slot) = usize::try_from(i - 1).ok().and_then(|i| items.get_mut(i))
            {
                *slot = v;
            }
        }
        return encode_array(items.iter(), array_mt, depth, out);
    }
    let mut keyed = Vec::with_capacity(n);
    for (k, v) in entries {
        let key = match &k {
            Value::String(s) => std::str::from_utf8(&s.as_bytes())
                .map_err(|_| "object key is not valid UTF-8".to_owned())?
                .to_owned(),
            Value::Integer(i) => i.to_string(),
            other => {
                return Err(format!(
                    "table key {} cannot be a JSON object key (use strings or integers)",
                    other.type_name()
                ));
            }
        };
        keyed.push((key, v));
    }
    // Sorted keys, so equal tables encode equally; a key given both as an integer and as a
    // string keeps one entry.
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    keyed.dedup_by(|a, b| a.0 == b.0);
    out.push(b'{');
    for (i, (k, v)) in keyed.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json(out, k.as_str())?;
        out.push(b':');
        encode(v, array_mt, depth, out)?;
    }
    out.push(b'}');
    Ok(())
}

pub(crate) fn to_lua(lua: &Lua, j: &Json, array_mt: &Table) -> mlua::Result<Value> {
    Ok(match j {
        Json::Null => null(),
        Json::Bool(b) => Value::Boolean(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Number(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::String(lua.create_string(s)?),
        Json::Array(items) => {
            let t = lua.create_table_with_capacity(items.len(), 0)?;
            for (i, item) in items.iter().enumerate() {
                t.raw_set(i + 1, to_lua(lua, item, array_mt)?)?;
            }
            t.set_metatable(Some(array_mt.clone()))?;
            Value::Table(t)
        }
        Json::Object(map) => {
            let t = lua.create_table_with_capacity(0, map.len())?;
            for (k, v) in map {
                t.raw_set(k.as_str(), to_lua(lua, v, array_mt)?)?;
            }
            Value::Table(t)
        }
    })
}
