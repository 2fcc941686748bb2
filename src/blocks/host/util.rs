//! Small pure helpers: `time.now()`, `codec.base64_encode/base64_decode/hex`,
//! `crypto.sha256/hmac_sha256`. All take and return Lua strings as bytes; digests are
//! lowercase hex text (so they can go straight into JSON or a topic).

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use mlua::{Lua, LuaString, Table, Value};
use sha2::{Digest, Sha256};

pub(crate) fn install(lua: &Lua, g: &Table) -> mlua::Result<()> {
    let time = lua.create_table()?;
    time.raw_set(
        "now",
        lua.create_function(|_, ()| {
            Ok(SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0))
        })?,
    )?;
    g.raw_set("time", time)?;

    let codec = lua.create_table()?;
    codec.raw_set(
        "base64_encode",
        lua.create_function(|_, s: LuaString| Ok(STANDARD.encode(s.as_bytes())))?,
    )?;
    // Bad input is data, not a script bug: `nil, err` rather than an error.
    codec.raw_set(
        "base64_decode",
        lua.create_function(|lua, s: LuaString| {
            match STANDARD.decode(s.as_bytes().as_ref() as &[u8]) {
                Ok(bytes) => Ok((Value::String(lua.create_string(&bytes)?), None)),
                Err(e) => Ok((Value::Nil, Some(format!("invalid base64: {e}")))),
            }
        })?,
    )?;
    codec.raw_set(
        "hex",
        lua.create_function(|_, s: LuaString| Ok(hex::encode(s.as_bytes())))?,
    )?;
    g.raw_set("codec", codec)?;

    let crypto = lua.create_table()?;
    crypto.raw_set(
        "sha256",
        lua.create_function(|_, s: LuaString| Ok(hex::encode(Sha256::digest(s.as_bytes()))))?,
    )?;
    crypto.raw_set(
        "hmac_sha256",
        lua.create_function(|_, (key, data): (LuaString, LuaString)| {
            let mut mac = Hmac::<Sha256>::new_from_slice(&key.as_bytes())
                .map_err(|e| mlua::Error::runtime(format!("crypto.hmac_sha256: {e}")))?;
            mac.update(&data.as_bytes());
            Ok(hex::encode(mac.finalize().into_bytes()))
        })?,
    )?;
    g.raw_set("crypto", crypto)
}
