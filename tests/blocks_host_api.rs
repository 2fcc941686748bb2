//! The host API as scripts see it: json, kv, log, time, codec, crypto.

mod blocks_support;
use blocks_support as common;

use std::time::Duration;

use common::*;
use moonwire::blocks::{BlockEvent, DryRunOptions, KvValue, LogLevel, SideEffect, dry_run};
use moonwire::pipeline::Verdict;

fn check(d: &Dir, body: &str) -> moonwire::blocks::DryRunReport {
    let s = d.script(
        "api.lua",
        &format!("return {{ on_publish = function(msg, ctx)\n{body}\nend }}"),
    );
    let r = dry_run(
        &s,
        DryRunOptions {
            topic: Some("t".into()),
            payload: "p".into(),
            ..DryRunOptions::default()
        },
    )
    .unwrap();
    assert_eq!(r.error, None, "{body}");
    r
}

#[test]
fn json_round_trips_and_follows_the_array_rule() {
    let d = Dir::new();
    check(
        &d,
        r#"
        local v = assert(json.decode('{"a":1,"b":[1,2.5,"x",null,true],"c":{},"d":[]}'))
        assert(v.a == 1 and math.type(v.a) == "integer")
        assert(v.b[2] == 2.5 and v.b[3] == "x" and v.b[4] == json.null and v.b[5] == true)
        assert(#v.b == 5)
        assert(json.encode(v) == '{"a":1,"b":[1,2.5,"x",null,true],"c":{},"d":[]}', json.encode(v))
        assert(json.encode({}) == "{}")
        assert(json.encode(json.array()) == "[]")
        assert(json.encode({1, 2, 3}) == "[1,2,3]")
        assert(json.encode({[1] = "a", [3] = "c"}) == '{"1":"a","3":"c"}')
        assert(json.encode({z = 1, a = {x = false}}) == '{"a":{"x":false},"z":1}')
        assert(json.encode("caf\u{e9}") == '"caf\u{e9}"')
        assert(json.encode(nil) == "null" and json.encode(json.null) == "null")
        local big = json.decode("18446744073709551615")
        assert(math.type(big) == "float")
        "#,
    );
}

#[test]
fn json_errors_are_clear() {
    let d = Dir::new();
    check(
        &d,
        r#"
        local v, err = json.decode('{"a":')
        assert(v == nil and err:find("invalid JSON"), err)
        local v2, err2 = json.decode("\255\254")
        assert(v2 == nil and err2, err2)
        local ok, e = pcall(json.encode, { bin = "\255\0" })
        assert(not ok and tostring(e):find("not valid UTF%-8"), tostring(e))
        ok, e = pcall(json.encode, { f = print })
        assert(not ok and tostring(e):find("function"), tostring(e))
        ok, e = pcall(json.encode, 0/0)
        assert(not ok and tostring(e):find("NaN"), tostring(e))
        local t = {} t.self = t
        ok, e = pcall(json.encode, t)
        assert(not ok and tostring(e):find("deeper"), tostring(e))
        ok, e = pcall(json.encode, { [true] = 1 })
        assert(not ok and tostring(e):find("key"), tostring(e))
        "#,
    );
}

#[test]
fn codec_crypto_time() {
    let d = Dir::new();
    check(
        &d,
        r#"
        assert(codec.base64_encode("\0\255hi") == "AP9oaQ==")
        assert(codec.base64_decode("AP9oaQ==") == "\0\255hi")
        local v, err = codec.base64_decode("***")
        assert(v == nil and err:find("base64"), err)
        assert(codec.hex("\0\255") == "00ff")
        assert(crypto.sha256("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        assert(crypto.hmac_sha256("Jefe", "what do ya want for nothing?") ==
          "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        local now = time.now()
        assert(math.type(now) == "float" and now > 1.7e9 and math.abs(now - os.time()) < 5)
        "#,
    );
}

#[test]
fn kv_operations_and_side_effects() {
    let d = Dir::new();
    let r = check(
        &d,
        r#"
        assert(kv.get("missing") == nil)
        kv.set("s", "\0bin\255")
        kv.set("n", 1.5) kv.set("b", false) kv.set("i", 7)
        assert(kv.get("s") == "\0bin\255" and kv.get("n") == 1.5 and kv.get("b") == false)
        assert(kv.incr("i", 3) == 10 and kv.incr("i") == 11 and kv.incr("new", -2) == -2)
        local ok, e = pcall(kv.incr, "s", 1)
        assert(not ok and tostring(e):find("not an integer"), tostring(e))
        ok, e = pcall(kv.set, "t", {})
        assert(not ok and tostring(e):find("json.encode"), tostring(e))
        assert(kv.del("i") == true and kv.del("i") == false and kv.get("i") == nil)
        kv.set("ttl", "x", { ttl = 30 })
        kv.set("b", nil)
        assert(kv.get("b") == nil)
        log.info("done", 1, true, nil)
        print("printed")
        "#,
    );
    assert!(r.effects.contains(&SideEffect::KvSet {
        key: b"ttl".to_vec(),
        value: KvValue::Str(b"x".to_vec()),
        ttl: Some(Duration::from_secs(30)),
    }));
    assert!(r.effects.contains(&SideEffect::KvIncr {
        key: b"i".to_vec(),
        by: 3,
        result: 10
    }));
    assert!(r.effects.contains(&SideEffect::Log {
        level: LogLevel::Info,
        text: "done 1 true nil".into()
    }));
    assert!(r.effects.contains(&SideEffect::Log {
        level: LogLevel::Info,
        text: "printed".into()
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_ttl_namespaces_and_persistence() {
    let d = Dir::new();
    let s = d.script(
        "kv.lua",
        r#"return { on_publish = function(msg, ctx)
             local op = ctx.matches[1]
             if op == "set" then kv.set("k", msg.payload, { ttl = 0.2 }) end
             if op == "perm" then kv.set("p", msg.payload) end
             return { payload = tostring(kv.get(op == "get" and "k" or "p")) }
           end }"#,
    );
    let cfg = d.config(vec![
        block("one", &s, BlockEvent::BeforePublish, &["one/+"]),
        block("two", &s, BlockEvent::BeforePublish, &["two/+"]),
    ]);
    let e = start(cfg.clone(), Collect::new());
    let payload = |v: Verdict| match v {
        Verdict::Modify(m) => String::from_utf8(m.payload.to_vec()).unwrap(),
        v => panic!("{v:?}"),
    };
    let _ = e.before_publish(msg("one/set", "v1")).await;
    assert_eq!(payload(e.before_publish(msg("one/get", "")).await), "v1");
    assert_eq!(
        payload(e.before_publish(msg("two/get", "")).await),
        "nil",
        "namespaced per block"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        payload(e.before_publish(msg("one/get", "")).await),
        "nil",
        "ttl expired"
    );
    let _ = e.before_publish(msg("one/perm", "kept")).await;
    e.shutdown().await;
    drop(e);

    let e = start(cfg, Collect::new());
    assert_eq!(
        payload(e.before_publish(msg("one/read", "")).await),
        "kept",
        "survives a restart"
    );
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_incr_is_atomic_across_workers() {
    let d = Dir::new();
    let s = d.script(
        "c.lua",
        r#"return { on_publish = function(msg) return { payload = tostring(kv.incr("c")) } end }"#,
    );
    let mut cfg = d.config(vec![block("c", &s, BlockEvent::BeforePublish, &["#"])]);
    cfg.workers = Some(4);
    let e = start(cfg, Collect::new());
    let futs: Vec<_> = (0..400)
        .map(|i| e.before_publish(msg(&format!("t/{i}"), "")))
        .collect();
    let mut got: Vec<u64> = futures::future::join_all(futs)
        .await
        .into_iter()
        .map(|v| match v {
            Verdict::Modify(m) => std::str::from_utf8(&m.payload).unwrap().parse().unwrap(),
            v => panic!("{v:?}"),
        })
        .collect();
    got.sort();
    assert_eq!(got, (1..=400).collect::<Vec<_>>());
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_is_rate_limited_and_counted() {
    let d = Dir::new();
    let s = d.script(
        "chatty.lua",
        "return { on_publish = function() for i = 1, 500 do log.info('line', i) end end }",
    );
    let e = start(
        d.config(vec![block("chatty", &s, BlockEvent::BeforePublish, &["t"])]),
        Collect::new(),
    );
    let _ = e.before_publish(msg("t", "")).await;
    let suppressed = e.status()[0].counters.logs_suppressed;
    // A burst of 50 gets through, the rest is counted.
    assert!((440..=450).contains(&suppressed), "{suppressed}");
    e.shutdown().await;
}
