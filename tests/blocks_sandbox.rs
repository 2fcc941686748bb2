//! Scripts cannot crash, hang or starve the engine, and cannot reach outside the sandbox.

mod blocks_support;
use blocks_support as common;

use std::time::{Duration, Instant};

use common::*;
use moonwire::blocks::{BlockError, BlockEvent, ByteSize, DryRunOptions, dry_run};
use moonwire::pipeline::Verdict;

/// Runs `body` as an on_publish handler once in the dry-run sandbox; returns the error, if any.
fn run_handler(d: &Dir, body: &str) -> Option<String> {
    let s = d.script(
        "probe.lua",
        &format!("return {{ on_publish = function(msg, ctx)\n{body}\nend }}"),
    );
    let opts = DryRunOptions {
        topic: Some("t".into()),
        timeout: Duration::from_millis(200),
        memory: ByteSize::mib(8),
        ..DryRunOptions::default()
    };
    dry_run(&s, opts).unwrap().error
}

#[test]
fn dangerous_globals_are_gone() {
    let d = Dir::new();
    for expr in [
        "io",
        "debug",
        "package",
        "dofile",
        "loadfile",
        "load",
        "loadstring",
        "warn",
        "os.execute",
        "os.getenv",
        "os.remove",
        "os.rename",
        "os.exit",
        "os.tmpname",
        "string.dump",
    ] {
        let err = run_handler(&d, &format!("assert({expr} == nil, '{expr} is reachable')"));
        assert_eq!(err, None, "{expr}");
    }
    for expr in [
        "os.time",
        "os.clock",
        "os.date",
        "string.format",
        "table.concat",
        "math.floor",
        "utf8.char",
        "coroutine.wrap",
    ] {
        assert_eq!(
            run_handler(&d, &format!("assert(type({expr}) == 'function')")),
            None,
            "{expr}"
        );
    }
    assert_eq!(run_handler(&d, "assert(getmetatable('') == false)"), None);
}

#[test]
fn forbidden_calls_fail_cleanly() {
    let d = Dir::new();
    let cases = [
        ("os.execute('id')", "field 'execute'"),
        ("io.open('/etc/passwd')", "global 'io'"),
        ("debug.sethook()", "global 'debug'"),
        ("load(string.dump(print))", "field 'dump'"),
        ("load('return 1')", "global 'load'"),
        ("require('socket')", "module not found"),
        ("require('../probe')", "invalid module name"),
        ("collectgarbage('stop')", "not allowed"),
        ("setmetatable({}, { __gc = function() end })", "__gc"),
        ("getmetatable('').__index = {}", "attempt to index"),
    ];
    for (code, want) in cases {
        let err = run_handler(&d, code).unwrap_or_default();
        assert!(err.contains(want), "{code}: {err}");
        assert!(
            err.contains("probe.lua:2"),
            "{code}: location missing in {err}"
        );
    }
    assert_eq!(
        run_handler(
            &d,
            "collectgarbage(); collectgarbage('step'); assert(collectgarbage('count') > 0)"
        ),
        None
    );
}

#[test]
fn busy_loops_time_out_even_under_pcall() {
    let d = Dir::new();
    for body in [
        "while true do end",
        "while true do pcall(function() while true do end end) end",
        "while true do xpcall(function() while true do end end, function(e) return e end) end",
        "while true do coroutine.resume(coroutine.create(function() while true do end end)) end",
        "local t = {} for i = 1, 1e9 do t[i % 100] = i end",
        "local s = 'x' while true do s = string.format('%s', s) end",
        "while true do coroutine.yield() end",
    ] {
        let t0 = Instant::now();
        let err = run_handler(&d, body).unwrap_or_default();
        assert!(err.contains("timeout"), "{body}: {err}");
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "{body}: took {:?}",
            t0.elapsed()
        );
    }
}

#[test]
fn memory_is_capped_per_block() {
    let d = Dir::new();
    let err = run_handler(&d, "local s = string.rep('x', 1e9)").unwrap_or_default();
    assert!(err.contains("memory"), "{err}");
    let err = run_handler(&d, "local s = ('x'):rep(100 * 1024 * 1024)").unwrap_or_default();
    assert!(err.contains("memory"), "{err}");
    // A table-growing loop hits the 8 MiB limit long before the 200 ms deadline.
    let err = run_handler(
        &d,
        "local t = {} local i = 0 while true do i = i + 1 t[i] = {i} end",
    )
    .unwrap_or_default();
    assert!(err.contains("memory") || err.contains("timeout"), "{err}");
    let err = run_handler(&d, "local t = {} for i = 1, 1e8 do t[i] = i end").unwrap_or_default();
    assert!(err.contains("memory"), "{err}");
    // pcall catching the memory error does not help: the loop is then stopped by the deadline.
    let err = run_handler(&d, "while true do pcall(string.rep, 'x', 1e9) end").unwrap_or_default();
    assert!(err.contains("timeout"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_block_does_not_starve_the_engine() {
    let d = Dir::new();
    let hang = d.script(
        "hang.lua",
        "return { on_publish = function() while true do end end }",
    );
    let grow = d.script("grow.lua", "return { on_publish = function() local t = {} while true do t[#t+1] = ('x'):rep(1000) end end }");
    let park = d.script(
        "park.lua",
        "return { on_publish = function() __test_sleep(10000) end }",
    );
    let ok = d.script(
        "ok.lua",
        "return { on_publish = function(m) return { payload = 'ok' } end }",
    );
    let mut blocks = vec![
        block("hang", &hang, BlockEvent::BeforePublish, &["hang"]),
        block("grow", &grow, BlockEvent::BeforePublish, &["grow"]),
        block("park", &park, BlockEvent::BeforePublish, &["park"]),
        block("ok", &ok, BlockEvent::BeforePublish, &["ok"]),
    ];
    for b in &mut blocks[..3] {
        b.timeout = Duration::from_millis(100);
        b.memory = ByteSize::mib(4);
    }
    let mut cfg = d.config(blocks);
    cfg.workers = Some(1);
    let e = start(cfg, Collect::new());
    for _ in 0..3 {
        let t0 = Instant::now();
        let (a, b, c) = tokio::join!(
            e.before_publish(msg("hang", "")),
            e.before_publish(msg("grow", "")),
            e.before_publish(msg("park", "")),
        );
        assert_eq!((a, b, c), (Verdict::Pass, Verdict::Pass, Verdict::Pass));
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        let Verdict::Modify(m) = e.before_publish(msg("ok", "")).await else {
            panic!()
        };
        assert_eq!(&m.payload[..], b"ok");
    }
    let st = e.status();
    assert_eq!(st[0].counters.timeouts, 3);
    assert_eq!(st[2].counters.timeouts, 3, "parked in an async host call");
    assert_eq!(st[1].counters.errors + st[1].counters.timeouts, 3);
    assert!(
        st[0]
            .last_error
            .as_ref()
            .unwrap()
            .message
            .contains("hang.lua:1"),
        "{:?}",
        st[0].last_error
    );
    assert_eq!(st[3].counters.errors, 0);
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_do_not_share_globals() {
    let d = Dir::new();
    let a = d.script(
        "a.lua",
        "shared = 'a'; string.upper = nil; return { on_publish = function() end }",
    );
    let b = d.script(
        "b.lua",
        "return { on_publish = function() return { payload = tostring(shared) .. string.upper('x') } end }",
    );
    let e = start(
        d.config(vec![
            block("a", &a, BlockEvent::BeforePublish, &["t"]),
            block("b", &b, BlockEvent::BeforePublish, &["t"]),
        ]),
        Collect::new(),
    );
    let Verdict::Modify(m) = e.before_publish(msg("t", "")).await else {
        panic!()
    };
    assert_eq!(&m.payload[..], b"nilX");
    e.shutdown().await;
}

#[test]
fn syntax_errors_fail_start_with_file_and_line() {
    let d = Dir::new();
    let s = d.script(
        "broken.lua",
        "local M = {}\nfunction M.on_publish(\n  return nil\nend\nreturn M\n",
    );
    let cfg = d.config(vec![block("broken", &s, BlockEvent::BeforePublish, &["t"])]);
    let err = moonwire::blocks::BlockEngine::start(cfg, Collect::new())
        .err()
        .unwrap();
    let BlockError::Load(f) = &err else {
        panic!("{err}")
    };
    assert_eq!(f[0].block, "broken");
    assert!(f[0].message.contains("broken.lua:3"), "{}", f[0].message);

    let missing = d.script("nohandler.lua", "return { on_interval = function() end }");
    let cfg = d.config(vec![block(
        "n",
        &missing,
        BlockEvent::BeforePublish,
        &["t"],
    )]);
    let err = moonwire::blocks::BlockEngine::start(cfg, Collect::new())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("no `on_publish` function"), "{err}");

    let hang = d.script("hangload.lua", "while true do end");
    let cfg = d.config(vec![block("h", &hang, BlockEvent::BeforePublish, &["t"])]);
    let err = moonwire::blocks::BlockEngine::start(cfg, Collect::new())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("timeout"), "{err}");

    let cfg = d.config(vec![block(
        "gone",
        &d.scripts().join("nope.lua"),
        BlockEvent::BeforePublish,
        &["t"],
    )]);
    let err = moonwire::blocks::BlockEngine::start(cfg, Collect::new())
        .err()
        .unwrap();
    assert!(matches!(err, BlockError::ReadScript { .. }), "{err}");
}

#[test]
fn require_loads_only_from_lib() {
    let d = Dir::new();
    d.script(
        "lib/util/strings.lua",
        "local M = {} function M.shout(s) return s:upper() .. '!' end return M",
    );
    d.script("lib/cycle_a.lua", "return require('cycle_b')");
    d.script("lib/cycle_b.lua", "return require('cycle_a')");
    d.script("secret.lua", "return 'secret'");
    let opts = || DryRunOptions {
        topic: Some("t".into()),
        scripts_dir: Some(d.scripts()),
        ..DryRunOptions::default()
    };
    let s = d.script(
        "req.lua",
        "local u = require('util.strings') assert(require('util.strings') == u)
         return { on_publish = function(m) return { payload = u.shout('hi') } end }",
    );
    let r = dry_run(&s, opts()).unwrap();
    assert_eq!(r.error, None);
    assert_eq!(&r.message.unwrap().payload[..], b"HI!");
    for (name, want) in [
        ("secret", "module not found"),
        ("cycle_a", "require cycle"),
        ("util/strings", "invalid module name"),
    ] {
        let s = d.script(
            "req2.lua",
            &format!("require('{name}') return {{ on_publish = function() end }}"),
        );
        let err = dry_run(&s, opts()).err().unwrap().to_string();
        assert!(err.contains(want), "{name}: {err}");
    }
}
