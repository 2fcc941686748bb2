//! The sandbox every block state runs in: which standard libraries exist, what is removed or
//! wrapped, and `require`, which resolves only `scripts_dir/lib/<name>.lua`.
//!
//! Left in: `string` (without `dump`), `table`, `math`, `utf8`, `coroutine`, `os.time`,
//! `os.clock`, `os.date`, and the base functions except those below.
//! Removed: `io`, `debug`, `package`, `dofile`, `loadfile`, `load` (no runtime compilation at
//! all, so no binary chunks either), `warn`, the rest of `os`.
//! Wrapped: `pcall`, `xpcall` and `coroutine.resume` re-raise a timeout instead of returning
//! it (a script cannot swallow its deadline); `setmetatable` refuses `__gc` (finalizers would
//! run outside any deadline); `collectgarbage` accepts only `collect`, `step`, `count` and
//! `isrunning` (stopping or retuning the GC is the engine's business); the string metatable
//! is hidden (`getmetatable("")` is `false`). `print` becomes `log.info` (see `host::log`).

use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use mlua::chunk::ChunkMode;
use mlua::{Lua, MultiValue, StdLib, Table, Value};

use super::host::HostCtx;
use super::vm::Slot;

/// Libraries opened in a fresh state before [`harden`] trims them (`os` is cut to three
/// functions there).
pub(crate) fn libs() -> StdLib {
    StdLib::STRING | StdLib::TABLE | StdLib::MATH | StdLib::UTF8 | StdLib::COROUTINE | StdLib::OS
}

const PRELUDE: &str = r#"
local check = ...
local rawpcall, rawxpcall, rawresume = pcall, xpcall, coroutine.resume
local rawsetmt, rawgc, type, rawget, error, tostring = setmetatable, collectgarbage, type, rawget, error, tostring
getmetatable("").__metatable = false
string.dump = nil
pcall = function(...) return check(rawpcall(...)) end
xpcall = function(...) return check(rawxpcall(...)) end
coroutine.resume = function(...) return check(rawresume(...)) end
setmetatable = function(t, mt)
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    error("__gc metamethods are not allowed in blocks", 2)
  end
  return rawsetmt(t, mt)
end
local gc_ok = { collect = true, step = true, count = true, isrunning = true }
collectgarbage = function(opt, ...)
  if opt == nil or gc_ok[opt] then return rawgc(opt, ...) end
  error("collectgarbage('" .. tostring(opt) .. "') is not allowed in blocks", 2)
end
os = { time = os.time, clock = os.clock, date = os.date }
dofile, loadfile, load, loadstring, require, module, warn, print = nil, nil, nil, nil, nil, nil, nil, nil
io, debug, package = nil, nil, nil
"#;

/// Strips and wraps the standard library of a fresh state.
pub(crate) fn harden(lua: &Lua, slot: &Rc<Slot>) -> mlua::Result<()> {
    let slot = slot.clone();
    // Called with a protected call's results: re-raise when the invocation was aborted.
    let check = lua.create_function(move |_, rets: MultiValue| match slot.current() {
        Some(inv) if inv.aborted.get() => Err(inv.timeout_error()),
        _ => Ok(rets),
    })?;
    lua.load(PRELUDE)
        .set_name("=sandbox")
        .set_mode(ChunkMode::Text)
        .call::<()>(check)
}

/// `require(name)`: `name` is `[A-Za-z0-9_]` segments separated by dots; dots map to
/// directories under `scripts_dir/lib/`. Modules are cached per state, like `package.loaded`.
pub(crate) fn install_require(lua: &Lua, host: &Rc<HostCtx>) -> mlua::Result<()> {
    let loaded = lua.create_table()?;
    let host = host.clone();
    let require = lua.create_function(move |lua, name: mlua::LuaString| {
        let name = name.to_str()?.to_owned();
        if let Some(v) = cached(&loaded, &name)? {
            return Ok(v);
        }
        let path = resolve(&host.settings.scripts_dir, &name).map_err(mlua::Error::runtime)?;
        let source = host.libs.read(&path).map_err(|e| {
            mlua::Error::runtime(format!("require(\"{name}\"): module not found ({e})"))
        })?;
        // Mark as loading so a require cycle fails instead of recursing forever.
        loaded.raw_set(name.as_str(), false)?;
        let result = lua
            .load(&source[..])
            .set_name(format!("@{}", path.display()))
            .set_mode(ChunkMode::Text)
            .call::<Value>(name.as_str());
        let value = match result {
            Ok(Value::Nil) => Value::Boolean(true),
            Ok(v) => v,
            Err(e) => {
                loaded.raw_remove(name.as_str())?;
                return Err(e);
            }
        };
        loaded.raw_set(name.as_str(), value.clone())?;
        Ok(value)
    })?;
    lua.globals().raw_set("require", require)
}

fn cached(loaded: &Table, name: &str) -> mlua::Result<Option<Value>> {
    match loaded.raw_get::<Value>(name)? {
        Value::Nil => Ok(None),
        Value::Boolean(false) => Err(mlua::Error::runtime(format!(
            "require(\"{name}\"): require cycle"
        ))),
        v => Ok(Some(v)),
    }
}

/// Maps a module name to its file, refusing anything that could leave `scripts_dir/lib`.
pub(crate) fn resolve(scripts_dir: &Path, name: &str) -> Result<PathBuf, String> {
    let valid = !name.is_empty()
        && name.len() <= 128
        && name.split('.').all(|seg| {
            !seg.is_empty() && seg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
    if !valid {
        return Err(format!(
            "require(\"{name}\"): invalid module name (use letters, digits, `_`, dots between parts)"
        ));
    }
    let lib = scripts_dir.join("lib");
    let mut path = lib.clone();
    for seg in name.split('.') {
        path.push(seg);
    }
    path.set_extension("lua");
    debug_assert!(
        path.components()
            .all(|c| !matches!(c, Component::ParentDir))
    );
    // A symlink inside lib/ must not lead outside it. When nothing exists on disk there is no
    // link to follow: the read that follows finds a bundled example or reports "not found".
    let (Ok(real_lib), Ok(real)) = (lib.canonicalize(), path.canonicalize()) else {
        return Ok(path);
    };
    if !real.starts_with(&real_lib) {
        return Err(format!(
            "require(\"{name}\"): {} leaves the lib directory",
            path.display()
        ));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("lib/util")).unwrap();
        std::fs::write(dir.path().join("lib/util/json2.lua"), "return {}").unwrap();
        std::fs::write(dir.path().join("secret.lua"), "return {}").unwrap();
        assert!(resolve(dir.path(), "util.json2").is_ok());
        // A module that does not exist resolves inside lib/; reading it then fails.
        let missing = resolve(dir.path(), "socket").unwrap();
        assert!(missing.starts_with(dir.path().join("lib")) && !missing.exists());
        for bad in ["", "..", "../secret", "a/b", "util..json2", "x y", ".util"] {
            assert!(resolve(dir.path(), bad).is_err(), "{bad}");
        }
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(
                dir.path().join("secret.lua"),
                dir.path().join("lib/evil.lua"),
            )
            .unwrap();
            let err = resolve(dir.path(), "evil").unwrap_err();
            assert!(err.contains("leaves the lib directory"), "{err}");
        }
    }
}
