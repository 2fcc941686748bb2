//! Crossing the Lua boundary with messages: `Message` → `msg` table, `ctx` and `client`
//! tables, the `drop`/`consume` helpers, and the rules that turn a handler's return values
//! back into a verdict (validating everything a script wrote).
//!
//! Reading what a script returned uses raw table access only, so no script code (metamethods)
//! runs outside the invocation's deadline.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::Bytes;
use mlua::{AnyUserData, Lua, LuaString, MultiValue, Table, UserData, Value};

use super::filter::validate_topic_name;
use crate::pipeline::{Message, Props};

/// What one block decided about a message. (Unboxed like `Verdict`: it moves once.)
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Outcome {
    Pass,
    Modify(Message),
    Drop(String),
    Consume,
}

/// The value `drop(reason)` / `consume()` return; only the engine can make one.
#[derive(Debug, Clone)]
pub(crate) enum VerdictMarker {
    Drop(String),
    Consume,
}

impl UserData for VerdictMarker {}

pub(crate) const DEFAULT_DROP_REASON: &str = "dropped by block";

/// Installs the global `drop(reason)` and `consume()` helpers.
pub(crate) fn install_helpers(lua: &Lua, g: &Table) -> mlua::Result<()> {
    let drop = lua.create_function(|lua, reason: Option<Value>| {
        let reason = match reason {
            None | Some(Value::Nil) => DEFAULT_DROP_REASON.to_owned(),
            Some(Value::String(s)) => s.to_string_lossy(),
            Some(v) => v.to_string()?,
        };
        lua.create_userdata(VerdictMarker::Drop(reason))
    })?;
    g.raw_set("drop", drop)?;
    let consume = lua.create_function(|lua, ()| lua.create_userdata(VerdictMarker::Consume))?;
    g.raw_set("consume", consume)
}

fn marker(ud: &AnyUserData) -> Option<VerdictMarker> {
    ud.borrow::<VerdictMarker>().ok().map(|m| m.clone())
}

/// The last few short strings a state was given (topics, client ids, wildcard captures), so a
/// burst of one device's messages does not make them again: with a memory limit set, every
/// string made from Rust is a protected call into Lua, the largest cost of a pass-through
/// block. Payloads are never cached.
#[derive(Default)]
pub(crate) struct StrCache {
    entries: std::cell::RefCell<Vec<(Box<[u8]>, LuaString)>>,
    next: std::cell::Cell<usize>,
}

impl StrCache {
    const SLOTS: usize = 8;
    /// Longer strings are rarely repeated and not worth comparing.
    const MAX_LEN: usize = 128;

    pub(crate) fn get(&self, lua: &Lua, s: &[u8]) -> mlua::Result<LuaString> {
        if s.len() > Self::MAX_LEN {
            return lua.create_string(s);
        }
        let mut entries = self.entries.borrow_mut();
        if let Some((_, v)) = entries.iter().find(|(k, _)| &k[..] == s) {
            return Ok(v.clone());
        }
        let v = lua.create_string(s)?;
        if entries.len() < Self::SLOTS {
            entries.push((s.into(), v.clone()));
        } else {
            let i = self.next.get() % Self::SLOTS;
            self.next.set(i + 1);
            if let Some(slot) = entries.get_mut(i) {
                *slot = (s.into(), v.clone());
            }
        }
        Ok(v)
    }
}

/// Arguments of the `on_publish` entry function (see `vm::PUBLISH_ENTRY`): the message's
/// fields flat, then `block`, `hop` and the wildcard captures.
pub(crate) fn publish_args(
    lua: &Lua,
    cache: &StrCache,
    msg: &Message,
    block: &LuaString,
    matches: &[String],
) -> mlua::Result<MultiValue> {
    let p = &msg.props;
    let opt_str = |s: &Option<String>| -> mlua::Result<Value> {
        Ok(match s {
            Some(s) => Value::String(lua.create_string(s)?),
            None => Value::Nil,
        })
    };
    let mut args = Vec::with_capacity(15 + matches.len());
    args.push(Value::String(cache.get(lua, msg.topic.as_bytes())?));
    args.push(Value::String(lua.create_string(&msg.payload)?));
    args.push(Value::Integer(msg.qos.into()));
    args.push(Value::Boolean(msg.retain));
    args.push(Value::String(
        cache.get(lua, msg.origin.client_id.as_bytes())?,
    ));
    args.push(opt_str(&msg.origin.username)?);
    args.push(Value::Integer(
        i64::try_from(msg.received_at).unwrap_or(i64::MAX),
    ));
    args.push(if p.user.is_empty() {
        Value::Nil
    } else {
        Value::Table(user_to_lua(lua, &p.user)?)
    });
    args.push(opt_str(&p.content_type)?);
    args.push(opt_str(&p.response_topic)?);
    args.push(match &p.correlation_data {
        Some(c) => Value::String(lua.create_string(c)?),
        None => Value::Nil,
    });
    args.push(
        p.message_expiry_interval
            .map_or(Value::Nil, |v| Value::Integer(v.into())),
    );
    args.push(
        p.payload_format_indicator
            .map_or(Value::Nil, |v| Value::Integer(v.into())),
    );
    args.push(Value::String(block.clone()));
    args.push(Value::Integer(msg.origin.hop.into()));
    for m in matches {
        args.push(Value::String(cache.get(lua, m.as_bytes())?));
    }
    Ok(MultiValue::from_vec(args))
}

/// User properties as a map; a key that occurs several times maps to an array of its values.
fn user_to_lua(lua: &Lua, pairs: &[(String, String)]) -> mlua::Result<Table> {
    let user = lua.create_table()?;
    for (k, vs) in group(pairs) {
        if let [one] = vs.as_slice() {
            user.raw_set(k, one.as_str())?;
        } else {
            user.raw_set(k, lua.create_sequence_from(vs)?)?;
        }
    }
    Ok(user)
}

fn group(pairs: &[(String, String)]) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in pairs {
        m.entry(k.clone()).or_default().push(v.clone());
    }
    m
}

pub(crate) fn ctx_table(
    lua: &Lua,
    block: &str,
    hop: u8,
    matches: &[String],
) -> mlua::Result<Table> {
    let t = lua.create_table_with_capacity(0, 3)?;
    t.raw_set("block", block)?;
    t.raw_set("hop", hop)?;
    t.raw_set(
        "matches",
        lua.create_sequence_from(matches.iter().map(String::as_str))?,
    )?;
    Ok(t)
}

pub(crate) fn client_table(
    lua: &Lua,
    client_id: &str,
    username: Option<&str>,
    peer: Option<SocketAddr>,
    cert_subject: Option<&str>,
) -> mlua::Result<Table> {
    let t = lua.create_table_with_capacity(0, 4)?;
    t.raw_set("client_id", client_id)?;
    t.raw_set("username", username)?;
    t.raw_set("peer", peer.map(|p| p.to_string()))?;
    t.raw_set("cert_subject", cert_subject)?;
    Ok(t)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::UserData(_) | Value::LightUserData(_) => "a userdata",
        Value::Boolean(_) => "a boolean",
        Value::Integer(_) | Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Function(_) => "a function",
        Value::Thread(_) => "a thread",
        Value::Table(_) => "a table",
        _ => "an unsupported value",
    }
}

/// Interprets `on_publish`'s return values. `Err` is a one-line description of what is wrong.
pub(crate) fn interpret_publish(values: MultiValue, current: &Message) -> Result<Outcome, String> {
    match values.into_iter().next() {
        None | Some(Value::Nil) => Ok(Outcome::Pass),
        Some(Value::UserData(ud)) => match marker(&ud) {
            Some(VerdictMarker::Drop(r)) => Ok(Outcome::Drop(r)),
            Some(VerdictMarker::Consume) => Ok(Outcome::Consume),
            None => Err(expected("a userdata")),
        },
        Some(Value::Table(t)) => {
            let next = table_to_message(&t, current)?;
            Ok(if &next == current {
                Outcome::Pass
            } else {
                Outcome::Modify(next)
            })
        }
        Some(other) => Err(expected(type_name(&other))),
    }
}

fn expected(got: &str) -> String {
    format!("{got}; expected nil (pass), a message table (modify), drop(reason) or consume()")
}

/// Interprets `on_connect`/`on_subscribe`: `true`/`nil` allow, `false[, reason]` denies.
pub(crate) fn interpret_allow(
    values: MultiValue,
    block: &str,
) -> Result<Result<(), String>, String> {
    let mut it = values.into_iter();
    match it.next() {
        None | Some(Value::Nil) | Some(Value::Boolean(true)) => Ok(Ok(())),
        Some(Value::Boolean(false)) => Ok(Err(match it.next() {
            Some(Value::String(s)) => s.to_string_lossy(),
            _ => format!("denied by block `{block}`"),
        })),
        Some(other) => Err(format!(
            "{}; expected true, false or false, reason",
            type_name(&other)
        )),
    }
}

/// Builds the modified message: fields the table leaves out keep their current values;
/// `client_id`, `username` and `received_at` are the broker's and cannot be changed.
pub(crate) fn table_to_message(t: &Table, current: &Message) -> Result<Message, String> {
    let mut next = current.clone();
    let get =
        |k: &str| -> Result<Value, String> { t.raw_get::<Value>(k).map_err(|e| e.to_string()) };
    match get("topic")? {
        Value::Nil => {}
        Value::String(s) => {
            let topic = s
                .to_str()
                .map_err(|_| "msg.topic is not valid UTF-8".to_owned())?
                .to_owned();
            validate_topic_name(&topic).map_err(|e| format!("msg.topic: {e}"))?;
            next.topic = topic;
        }
        v => return Err(format!("msg.topic is {}, expected a string", type_name(&v))),
    }
    match get("payload")? {
        Value::Nil => {}
        v => next.payload = payload_bytes(&v).map_err(|e| format!("msg.payload {e}"))?,
    }
    match get("qos")? {
        Value::Nil => {}
        v => next.qos = qos(&v).map_err(|e| format!("msg.qos {e}"))?,
    }
    match get("retain")? {
        Value::Nil => {}
        Value::Boolean(b) => next.retain = b,
        v => {
            return Err(format!(
                "msg.retain is {}, expected a boolean",
                type_name(&v)
            ));
        }
    }
    match get("props")? {
        Value::Nil => {}
        Value::Table(p) => next.props = props_from_lua(&p, &current.props)?,
        v => return Err(format!("msg.props is {}, expected a table", type_name(&v))),
    }
    Ok(next)
}

/// Payloads are Lua strings (any bytes); numbers are accepted and written as text.
pub(crate) fn payload_bytes(v: &Value) -> Result<Bytes, String> {
    match v {
        Value::String(s) => Ok(Bytes::copy_from_slice(&s.as_bytes())),
        Value::Integer(i) => Ok(Bytes::from(i.to_string())),
        Value::Number(n) => Ok(Bytes::from(n.to_string())),
        v => Err(format!("is {}, expected a string", type_name(v))),
    }
}

pub(crate) fn qos(v: &Value) -> Result<u8, String> {
    let n = match v {
        Value::Integer(i) => *i,
        Value::Number(f) if f.fract() == 0.0 => *f as i64,
        v => return Err(format!("is {}, expected 0, 1 or 2", type_name(v))),
    };
    match n {
        0..=2 => Ok(n as u8),
        _ => Err(format!("is {n}, expected 0, 1 or 2")),
    }
}

fn int_in<T: TryFrom<i64>>(v: &Value, what: &str) -> Result<T, String> {
    let n = match v {
        Value::Integer(i) => Some(*i),
        Value::Number(f) if f.fract() == 0.0 => Some(*f as i64),
        _ => None,
    };
    n.and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| format!("{what} is out of range or not an integer"))
}

fn opt_string(v: Value, what: &str) -> Result<Option<String>, String> {
    match v {
        Value::Nil => Ok(None),
        Value::String(s) => s
            .to_str()
            .map(|s| Some(s.to_owned()))
            .map_err(|_| format!("{what} is not valid UTF-8")),
        v => Err(format!("{what} is {}, expected a string", type_name(&v))),
    }
}

const PROP_KEYS: [&str; 6] = [
    "payload_format_indicator",
    "message_expiry_interval",
    "content_type",
    "response_topic",
    "correlation_data",
    "user",
];

/// Reads a `props` table. `original` only steers the order of user properties.
pub(crate) fn props_from_lua(t: &Table, original: &Props) -> Result<Props, String> {
    for pair in t.pairs::<Value, Value>() {
        let (k, _) = pair.map_err(|e| e.to_string())?;
        let known = match &k {
            Value::String(s) => PROP_KEYS
                .iter()
                .any(|p| s.as_bytes().as_ref() == p.as_bytes()),
            _ => false,
        };
        if !known {
            return Err(format!(
                "msg.props has unknown key {}; known: {}",
                k.to_string().unwrap_or_else(|_| "?".into()),
                PROP_KEYS.join(", ")
            ));
        }
    }
    let get =
        |k: &str| -> Result<Value, String> { t.raw_get::<Value>(k).map_err(|e| e.to_string()) };
    let payload_format_indicator = match get("payload_format_indicator")? {
        Value::Nil => None,
        v => match int_in::<u8>(&v, "props.payload_format_indicator")? {
            i @ 0..=1 => Some(i),
            _ => return Err("props.payload_format_indicator must be 0 or 1".into()),
        },
    };
    let message_expiry_interval = match get("message_expiry_interval")? {
        Value::Nil => None,
        v => Some(int_in::<u32>(&v, "props.message_expiry_interval")?),
    };
    let content_type = opt_string(get("content_type")?, "props.content_type")?;
    let response_topic = opt_string(get("response_topic")?, "props.response_topic")?;
    if let Some(rt) = &response_topic {
        validate_topic_name(rt).map_err(|e| format!("props.response_topic: {e}"))?;
    }
    let correlation_data = match get("correlation_data")? {
        Value::Nil => None,
        Value::String(s) => Some(Bytes::copy_from_slice(&s.as_bytes())),
        v => {
            return Err(format!(
                "props.correlation_data is {}, expected a string",
                type_name(&v)
            ));
        }
    };
    let user = match get("user")? {
        Value::Nil => Vec::new(),
        Value::Table(u) => user_from_lua(&u, &original.user)?,
        v => return Err(format!("props.user is {}, expected a table", type_name(&v))),
    };
    Ok(Props {
        payload_format_indicator,
        message_expiry_interval,
        content_type,
        response_topic,
        correlation_data,
        user,
    })
}

fn text(v: &Value, what: &str) -> Result<String, String> {
    match v {
        Value::String(s) => s
            .to_str()
            .map(|s| s.to_owned())
            .map_err(|_| format!("{what} is not valid UTF-8")),
        Value::Integer(i) => Ok(i.to_string()),
        Value::Number(n) => Ok(n.to_string()),
        v => Err(format!("{what} is {}, expected a string", type_name(v))),
    }
}

/// User properties come back either as a map (`{key = "v"}` or `{key = {"v1", "v2"}}`) or as
/// an ordered list of pairs (`{{"key", "v"}, ...}`). For a map, keys that existed keep their
/// original order and new keys follow sorted, so an untouched map round-trips exactly.
fn user_from_lua(
    t: &Table,
    original: &[(String, String)],
) -> Result<Vec<(String, String)>, String> {
    let len = t.raw_len();
    if len > 0 {
        let mut out = Vec::with_capacity(len);
        for i in 1..=len {
            let pair: Value = t.raw_get(i).map_err(|e| e.to_string())?;
            let Value::Table(p) = pair else {
                return Err("props.user list entries must be {key, value} pairs".into());
            };
            let k: Value = p.raw_get(1).map_err(|e| e.to_string())?;
            let v: Value = p.raw_get(2).map_err(|e| e.to_string())?;
            out.push((text(&k, "props.user key")?, text(&v, "props.user value")?));
        }
        return Ok(out);
    }
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pair in t.pairs::<Value, Value>() {
        let (k, v) = pair.map_err(|e| e.to_string())?;
        let key = text(&k, "props.user key")?;
        let values = match &v {
            Value::Table(list) => (1..=list.raw_len())
                .map(|i| {
                    let item: Value = list.raw_get(i).map_err(|e| e.to_string())?;
                    text(&item, "props.user value")
                })
                .collect::<Result<Vec<_>, _>>()?,
            v => vec![text(v, "props.user value")?],
        };
        map.insert(key, values);
    }
    if map == group(original) {
        return Ok(original.to_vec());
    }
    let mut out = Vec::new();
    for (k, _) in original {
        if let Some(vs) = map.remove(k) {
            out.extend(vs.into_iter().map(|v| (k.clone(), v)));
        }
    }
    for (k, vs) in map {
        out.extend(vs.into_iter().map(|v| (k.clone(), v)));
    }
    Ok(out)
}

/// `LuaString` → owned UTF-8 `String`, or a message naming `what`.
pub(crate) fn utf8(s: &LuaString, what: &str) -> mlua::Result<String> {
    s.to_str()
        .map(|s| s.to_owned())
        .map_err(|_| mlua::Error::runtime(format!("{what} is not valid UTF-8")))
}
