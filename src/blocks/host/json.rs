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
use serde_json::{Map, Number, Value as Json};

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
            let j = to_json(&v, &mt, 0)
                .map_err(|e| mlua::Error::runtime(format!("json.encode: {e}")))?;
            serde_json::to_string(&j).map_err(|e| mlua::Error::runtime(format!("json.encode: {e}")))
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

pub(crate) fn to_json(v: &Value, array_mt: &Table, depth: usize) -> Result<Json, String> {
    Ok(match v {
        Value::Nil => Json::Null,
        v if is_null(v) => Json::Null,
        Value::Boolean(b) => Json::Bool(*b),
        Value::Integer(i) => Json::Number((*i).into()),
        Value::Number(f) => {
            Json::Number(Number::from_f64(*f).ok_or("NaN and infinity cannot be encoded")?)
        }
        Value::String(s) => Json::String(
            std::str::from_utf8(&s.as_bytes())
                .map_err(|_| {
                    "string is not valid UTF-8 (encode binary data with codec.base64_encode)"
                        .to_owned()
                })?
                .to_owned(),
        ),
        Value::Table(t) => {
            if depth >= MAX_DEPTH {
                return Err(format!("nested deeper than {MAX_DEPTH} (or a cycle)"));
            }
            table_to_json(t, array_mt, depth + 1)?
        }
        other => return Err(format!("{} cannot be encoded", kind(other))),
    })
}

fn table_to_json(t: &Table, array_mt: &Table, depth: usize) -> Result<Json, String> {
    let marked = t.metatable().is_some_and(|mt| mt == *array_mt);
    if marked {
        let items = (1..=t.raw_len())
            .map(|i| {
                let v: Value = t.raw_get(i).map_err(|e| e.to_string())?;
                to_json(&v, array_mt, depth)
            })
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Json::Array(items));
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
        let mut items = vec![Json::Null; n];
        for (k, v) in &entries {
            if let Value::Integer(i) = k {
                let idx = usize::try_from(*i - 1).map_err(|e| e.to_string())?;
                items[idx] = to_json(v, array_mt, depth)?;
            }
        }
        return Ok(Json::Array(items));
    }
    let mut map = Map::new();
    for (k, v) in &entries {
        let key = match k {
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
        map.insert(key, to_json(v, array_mt, depth)?);
    }
    Ok(Json::Object(map))
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
