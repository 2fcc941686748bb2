//! The engine through its public API: verdicts, chains, ordering, async handlers, the other
//! events, the loop guard, limits on publishes, status and metrics.

mod blocks_support;
use blocks_support as common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use moonwire::blocks::{BlockEvent, ClientInfo, ConnectInfo, OnError};
use moonwire::pipeline::{DropCode, Verdict};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verdicts_pass_modify_drop_consume() {
    let d = Dir::new();
    let s = d.script(
        "v.lua",
        r#"
        local M = {}
        function M.on_publish(msg, ctx)
          local kind = ctx.matches[1]
          if kind == "pass" then return nil end
          if kind == "drop" then return drop("not today") end
          if kind == "consume" then return consume() end
          if kind == "same" then return msg end
          msg.topic = "out/" .. ctx.matches[2]
          msg.payload = msg.payload .. "!"
          msg.qos = 0
          msg.retain = true
          msg.props.content_type = "text/plain"
          msg.props.user.by = ctx.block
          return msg
        end
        return M
    "#,
    );
    let e = start(
        d.config(vec![block("v", &s, BlockEvent::BeforePublish, &["in/+/#"])]),
        Collect::new(),
    );
    assert_eq!(e.before_publish(msg("in/pass/x", "a")).await, Verdict::Pass);
    assert_eq!(e.before_publish(msg("in/same/x", "a")).await, Verdict::Pass);
    assert_eq!(
        e.before_publish(msg("in/drop/x", "a")).await,
        Verdict::Drop {
            code: DropCode::ImplementationSpecific,
            reason: "not today".into()
        }
    );
    assert_eq!(
        e.before_publish(msg("in/consume/x", "a")).await,
        Verdict::Consume
    );
    let Verdict::Modify(m) = e.before_publish(msg("in/mod/a/b", "a")).await else {
        panic!("expected modify")
    };
    assert_eq!(m.topic, "out/a/b");
    assert_eq!(&m.payload[..], b"a!");
    assert_eq!((m.qos, m.retain), (0, true));
    assert_eq!(m.props.content_type.as_deref(), Some("text/plain"));
    assert_eq!(m.props.user, vec![("by".to_string(), "v".to_string())]);
    assert_eq!(
        m.origin.client_id, "dev-1",
        "origin is not the script's to change"
    );

    let st = &e.status()[0];
    assert_eq!(st.counters.invocations, 5);
    assert_eq!(
        (
            st.counters.pass,
            st.counters.modify,
            st.counters.drop,
            st.counters.consume
        ),
        (2, 1, 1, 1)
    );
    assert_eq!(st.version.len(), 64);
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msg_and_ctx_fields_reach_the_script() {
    let d = Dir::new();
    let s = d.script(
        "f.lua",
        r#"
        local M = {}
        function M.on_publish(msg, ctx)
          local p = msg.props
          local out = table.concat({
            msg.topic, #msg.payload, msg.qos, tostring(msg.retain), msg.client_id,
            msg.username, msg.received_at, ctx.block, ctx.hop, #ctx.matches,
            ctx.matches[1], ctx.matches[2], p.content_type, p.user.k, #p.user.dup,
            p.user.dup[2], p.message_expiry_interval, p.payload_format_indicator,
          }, "|")
          return { payload = out }
        end
        return M
    "#,
    );
    let e = start(
        d.config(vec![block("f", &s, BlockEvent::BeforePublish, &["a/+/#"])]),
        Collect::new(),
    );
    let mut m = msg("a/b/c/d", "xyz");
    m.props.content_type = Some("application/json".into());
    m.props.message_expiry_interval = Some(60);
    m.props.payload_format_indicator = Some(1);
    m.props.user = vec![
        ("dup".into(), "1".into()),
        ("k".into(), "v".into()),
        ("dup".into(), "2".into()),
    ];
    m.origin.hop = 2;
    let Verdict::Modify(out) = e.before_publish(m.clone()).await else {
        panic!()
    };
    assert_eq!(
        std::str::from_utf8(&out.payload).unwrap(),
        "a/b/c/d|3|1|false|dev-1|alice|1700000000000|f|2|2|b|c/d|application/json|v|2|2|60|1"
    );
    // Untouched props survive exactly, including duplicate user keys and their order.
    assert_eq!(out.props, m.props);
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_runs_in_config_order_and_stops_at_drop() {
    let d = Dir::new();
    let a = d.script(
        "a.lua",
        r#"return { on_publish = function(msg) msg.payload = msg.payload .. "a"; return msg end }"#,
    );
    let b = d.script(
        "b.lua",
        r#"return { on_publish = function(msg)
             if msg.payload == "stopa" then return drop("b says no") end
             msg.payload = msg.payload .. "b"; return msg end }"#,
    );
    let c = d.script(
        "c.lua",
        r#"return { on_publish = function(msg) msg.payload = msg.payload .. "c"; return msg end }"#,
    );
    let e = start(
        d.config(vec![
            block("a", &a, BlockEvent::BeforePublish, &["t/#"]),
            block("b", &b, BlockEvent::BeforePublish, &["t/#"]),
            block("c", &c, BlockEvent::BeforePublish, &["t/x"]),
        ]),
        Collect::new(),
    );
    let Verdict::Modify(m) = e.before_publish(msg("t/x", "")).await else {
        panic!()
    };
    assert_eq!(&m.payload[..], b"abc");
    let Verdict::Modify(m) = e.before_publish(msg("t/y", "")).await else {
        panic!()
    };
    assert_eq!(&m.payload[..], b"ab", "c is not bound to t/y");
    assert!(matches!(
        e.before_publish(msg("t/x", "stop")).await,
        Verdict::Drop { .. }
    ));
    let st = e.status();
    assert_eq!(
        st[2].counters.invocations, 1,
        "c did not run after b dropped"
    );
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbound_topics_skip_the_workers() {
    let d = Dir::new();
    let s = d.script(
        "p.lua",
        "return { on_publish = function() return drop() end }",
    );
    let e = start(
        d.config(vec![block(
            "p",
            &s,
            BlockEvent::BeforePublish,
            &["home/+/sensors", "exact"],
        )]),
        Collect::new(),
    );
    assert!(e.has_before_publish("home/x/sensors"));
    assert!(e.has_before_publish("exact"));
    assert!(!e.has_before_publish("home/x/motion"));
    assert!(!e.has_after_publish("home/x/sensors"));
    assert_eq!(e.before_publish(msg("other", "")).await, Verdict::Pass);
    assert_eq!(e.status()[0].counters.invocations, 0);
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_returns_are_errors_with_location_and_on_error_applies() {
    let d = Dir::new();
    let src = r#"
        local M = {}
        function M.on_publish(msg, ctx)
          local what = ctx.matches[1]
          if what == "number" then return 42 end
          if what == "wild" then return { topic = "a/+" } end
          if what == "qos" then return { qos = 7 } end
          if what == "props" then return { props = { contentType = "x" } } end
          if what == "boom" then error("kaboom") end
          if what == "huge" then return { payload = string.rep("x", 1024 * 1024 + 1) } end
          return nil
        end
        return M
    "#;
    let s = d.script("bad.lua", src);
    let mut closed = block("closed", &s, BlockEvent::BeforePublish, &["closed/+"]);
    closed.on_error = OnError::Drop;
    let e = start(
        d.config(vec![
            block("open", &s, BlockEvent::BeforePublish, &["open/+"]),
            closed,
        ]),
        Collect::new(),
    );
    for what in ["number", "wild", "qos", "props", "boom", "huge"] {
        assert_eq!(
            e.before_publish(msg(&format!("open/{what}"), "")).await,
            Verdict::Pass,
            "{what}"
        );
        assert_eq!(
            e.before_publish(msg(&format!("closed/{what}"), "")).await,
            Verdict::Drop {
                code: DropCode::Unspecified,
                reason: "block `closed` failed".into()
            },
            "{what}"
        );
    }
    let st = e.status();
    assert_eq!(st[0].counters.errors, 6);
    let err = st[0].last_error.as_ref().unwrap().message.clone();
    assert!(err.contains("larger than max_payload"), "{err}");
    let _ = e.before_publish(msg("open/boom", "")).await;
    let st = e.status();
    let err = st[0].last_error.as_ref().unwrap().message.clone();
    assert!(err.contains("bad.lua:9: kaboom"), "{err}");
    let _ = e.before_publish(msg("open/number", "")).await;
    let err = e.status()[0].last_error.as_ref().unwrap().message.clone();
    assert!(
        err.contains("bad.lua:3") && err.contains("a number"),
        "{err}"
    );
    let _ = e.before_publish(msg("open/wild", "")).await;
    let err = e.status()[0].last_error.as_ref().unwrap().message.clone();
    assert!(err.contains("wildcard"), "{err}");
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_payloads_round_trip_byte_for_byte() {
    let d = Dir::new();
    let s = d.script(
        "bin.lua",
        r#"return { on_publish = function(msg)
             mqtt.publish("copy", msg.payload)
             msg.payload = msg.payload .. "\0\255"
             return msg end }"#,
    );
    let out = Collect::new();
    let e = start(
        d.config(vec![block("bin", &s, BlockEvent::BeforePublish, &["bin"])]),
        out.clone(),
    );
    let all: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    let Verdict::Modify(m) = e.before_publish(msg("bin", all.clone())).await else {
        panic!()
    };
    let mut want = all.clone();
    want.extend_from_slice(&[0, 255]);
    assert_eq!(&m.payload[..], &want[..]);
    assert_eq!(&out.take()[0].payload[..], &all[..]);
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_handler_does_not_stall_other_clients_and_order_holds_per_client() {
    let d = Dir::new();
    let s = d.script(
        "slow.lua",
        r#"
        local seq = {}
        return { on_publish = function(msg, ctx)
          local t = ctx.matches[1]
          if t == "slow" then __test_sleep(tonumber(msg.payload)) end
          seq[t] = (seq[t] or 0) + 1
          return { payload = tostring(seq[t]) }
        end }
    "#,
    );
    let mut cfg = d.config(vec![block("s", &s, BlockEvent::BeforePublish, &["x/+"])]);
    cfg.workers = Some(1);
    let e = start(cfg, Collect::new());

    // The slow topic: 5 messages with decreasing sleeps must still finish in order.
    let slow: Vec<_> = [120, 90, 60, 30, 1]
        .iter()
        .map(|ms| e.before_publish(msg("x/slow", ms.to_string())))
        .collect();
    let slow = tokio::spawn(futures::future::join_all(slow));
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Meanwhile another client's topic on the same (only) worker answers quickly. (The same
    // client's messages wait: they are processed in order, as its session applies them.)
    let t0 = Instant::now();
    for i in 1..=20 {
        let mut fast = msg("x/fast", "");
        fast.origin.client_id = "dev-2".into();
        let Verdict::Modify(m) = e.before_publish(fast).await else {
            panic!()
        };
        assert_eq!(m.payload, i.to_string());
    }
    let fast = t0.elapsed();
    assert!(
        fast < Duration::from_millis(150),
        "fast topic waited {fast:?}"
    );
    let slow = slow.await.unwrap();
    let got: Vec<String> = slow
        .into_iter()
        .map(|v| match v {
            Verdict::Modify(m) => String::from_utf8(m.payload.to_vec()).unwrap(),
            v => panic!("{v:?}"),
        })
        .collect();
    assert_eq!(got, ["1", "2", "3", "4", "5"]);
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn props_of_a_message_without_properties_can_be_read_and_set() {
    let d = Dir::new();
    let s = d.script(
        "p.lua",
        r#"
        return { on_publish = function(msg, ctx)
          if ctx.matches[1] == "read" then
            -- Reading the (empty) props must not count as a change.
            assert(msg.props.content_type == nil and next(msg.props.user) == nil)
            return msg
          end
          msg.props.content_type = "text/plain"
          msg.props.user.room = "hall"
          return msg
        end }
    "#,
    );
    let e = start(
        d.config(vec![block("p", &s, BlockEvent::BeforePublish, &["p/+"])]),
        Collect::new(),
    );
    assert_eq!(e.before_publish(msg("p/read", "x")).await, Verdict::Pass);
    let Verdict::Modify(m) = e.before_publish(msg("p/set", "x")).await else {
        panic!("expected a modify")
    };
    assert_eq!(m.props.content_type.as_deref(), Some("text/plain"));
    assert_eq!(m.props.user, vec![("room".to_string(), "hall".to_string())]);
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_from_several_clients_keeps_each_clients_order_and_its_slots() {
    let d = Dir::new();
    // Numbers each client's messages; unbound topics in the batch must pass untouched.
    let s = d.script(
        "n.lua",
        r#"
        local n = {}
        return { on_publish = function(msg)
          n[msg.client_id] = (n[msg.client_id] or 0) + 1
          if msg.payload == "drop" then return drop("asked") end
          return { payload = msg.client_id .. ":" .. n[msg.client_id] }
        end }
    "#,
    );
    let e = start(
        d.config(vec![block("n", &s, BlockEvent::BeforePublish, &["b/#"])]),
        Collect::new(),
    );
    let from = |client: &str, topic: &str, payload: &str| {
        let mut m = msg(topic, payload.to_string());
        m.origin.client_id = client.into();
        m
    };
    let batch = vec![
        from("c1", "b/1", ""),
        from("c2", "b/1", ""),
        from("c1", "unbound", "keep"),
        from("c1", "b/2", "drop"),
        from("c2", "b/9", ""),
        from("c1", "b/1", ""),
    ];
    let got = e.before_publish_many(batch).await;
    let payloads: Vec<String> = got
        .iter()
        .map(|v| match v {
            Verdict::Modify(m) => String::from_utf8(m.payload.to_vec()).unwrap(),
            Verdict::Pass => "pass".into(),
            Verdict::Drop { reason, .. } => format!("drop {reason}"),
            Verdict::Consume => "consume".into(),
        })
        .collect();
    assert_eq!(
        payloads,
        ["c1:1", "c2:1", "pass", "drop asked", "c2:2", "c1:3"]
    );
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_subscribe_blocks_decide() {
    let d = Dir::new();
    let c = d.script(
        "c.lua",
        r#"return { on_connect = function(client, ctx)
             if client.username == "mallory" then return false, "go away" end
             if client.client_id == "bad" then return "yes" end
             return client.peer == "127.0.0.1:1883" and client.cert_subject == "CN=dev"
           end }"#,
    );
    let s = d.script(
        "s.lua",
        r#"return { on_subscribe = function(client, filter, ctx)
             return filter ~= "cameras/#", "no wildcard cameras"
           end }"#,
    );
    let e = start(
        d.config(vec![
            block("conn", &c, BlockEvent::Connect, &[]),
            block("sub", &s, BlockEvent::Subscribe, &["cameras/#"]),
        ]),
        Collect::new(),
    );
    let info = |id: &str, user: &str| ConnectInfo {
        client_id: id.into(),
        username: Some(user.into()),
        peer: "127.0.0.1:1883".parse().unwrap(),
        cert_subject: Some("CN=dev".into()),
    };
    assert_eq!(e.on_connect(info("d1", "alice")).await, Ok(()));
    assert_eq!(
        e.on_connect(info("d1", "mallory")).await,
        Err("go away".into())
    );
    // A wrong return type is an error; on_error = pass lets the client in.
    assert_eq!(e.on_connect(info("bad", "alice")).await, Ok(()));
    let mut other = info("d2", "bob");
    other.cert_subject = None;
    assert_eq!(
        e.on_connect(other).await,
        Err("denied by block `conn`".into())
    );

    let client = ClientInfo {
        client_id: "d1".into(),
        username: None,
        peer: None,
    };
    assert_eq!(
        e.on_subscribe(client.clone(), "cameras/#".into()).await,
        Err("no wildcard cameras".into())
    );
    assert_eq!(
        e.on_subscribe(client.clone(), "cameras/c1/thumb".into())
            .await,
        Ok(())
    );
    assert_eq!(
        e.on_subscribe(client, "home/#".into()).await,
        Ok(()),
        "filter not covered"
    );
    assert_eq!(e.status()[0].counters.errors, 1);
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_blocks_tick_on_one_worker() {
    let d = Dir::new();
    let s = d.script(
        "tick.lua",
        r#"local n = 0
           return { on_interval = function(ctx)
             n = n + 1
             mqtt.publish("tick/" .. ctx.block, tostring(n))
           end }"#,
    );
    let mut b = block("tick", &s, BlockEvent::Interval, &[]);
    b.every = Some(Duration::from_millis(50));
    let out = Collect::new();
    let e = start(d.config(vec![b]), out.clone());
    assert!(eventually(Duration::from_secs(3), || out.len() >= 3).await);
    let got = out.take();
    // One worker owns the block: the counter is one sequence, not one per worker.
    let payloads: Vec<_> = got
        .iter()
        .map(|m| String::from_utf8(m.payload.to_vec()).unwrap())
        .collect();
    assert_eq!(&payloads[..3], ["1", "2", "3"]);
    assert_eq!(got[0].origin.hop, 1);
    assert_eq!(got[0].origin.username.as_deref(), Some("block:tick"));
    e.shutdown().await;
    let n = out.len();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(out.len() <= n + 1, "ticking stopped at shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_publish_runs_queued_and_counts_overflow() {
    let d = Dir::new();
    let s = d.script(
        "after.lua",
        r#"return { on_publish = function(msg)
             if msg.payload == "slow" then __test_sleep(150) end
             mqtt.publish("seen", msg.payload)
             return drop("ignored: after_publish cannot drop")
           end }"#,
    );
    let mut cfg = d.config(vec![block("after", &s, BlockEvent::AfterPublish, &["a"])]);
    cfg.workers = Some(1);
    cfg.after_queue_capacity = 2;
    cfg.queue_capacity = 1;
    let out = Collect::new();
    let e = start(cfg, out.clone());
    assert!(e.has_after_publish("a"));
    assert!(!e.has_before_publish("a"));
    let t0 = Instant::now();
    e.after_publish(msg("a", "slow"));
    for i in 0..50 {
        e.after_publish(msg("a", i.to_string()));
    }
    assert!(
        t0.elapsed() < Duration::from_millis(50),
        "after_publish never waits"
    );
    assert!(eventually(Duration::from_secs(3), || out.len() >= 2).await);
    let m = e.metrics();
    assert!(m.workers[0].after_overflow > 0, "{:?}", m.workers[0]);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let seen = out.len() as u64;
    assert_eq!(
        seen + m.workers[0].after_overflow,
        51,
        "every message is either seen or counted"
    );
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn republishing_to_its_own_topic_stops_at_max_hops() {
    let d = Dir::new();
    let s = d.script(
        "loop.lua",
        r#"return { on_publish = function(msg, ctx)
             local ok, err = mqtt.publish("loop", msg.payload)
             if not ok then log.warn("refused", err) end
           end }"#,
    );
    let lb = Arc::new(Loopback {
        engine: OnceLock::new(),
        handle: tokio::runtime::Handle::current(),
        seen: Mutex::new(Vec::new()),
    });
    let e = start(
        d.config(vec![block(
            "loop",
            &s,
            BlockEvent::BeforePublish,
            &["loop"],
        )]),
        lb.clone(),
    );
    let _ = lb.engine.set(e.clone());
    assert_eq!(e.before_publish(msg("loop", "x")).await, Verdict::Pass);
    assert!(
        eventually(Duration::from_secs(3), || e.status()[0]
            .counters
            .hop_refused
            == 1)
        .await
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let hops: Vec<u8> = lb
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|m| m.origin.hop)
        .collect();
    assert_eq!(hops, [1, 2, 3]);
    let st = &e.status()[0];
    assert_eq!(st.counters.invocations, 4);
    assert_eq!(st.counters.publishes, 3);
    assert_eq!(st.counters.hop_refused, 1);
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_limits_are_enforced() {
    let d = Dir::new();
    let s = d.script(
        "many.lua",
        r#"return { on_publish = function(msg, ctx)
             local what = ctx.matches[1]
             if what == "many" then for i = 1, 11 do mqtt.publish("o", "x") end end
             if what == "big" then mqtt.publish("o", string.rep("x", 2049)) end
             if what == "wild" then mqtt.publish("o/#", "x") end
             if what == "qos" then mqtt.publish("o", "x", { qos = 3 }) end
             if what == "ok" then
               assert(mqtt.publish("o", "x", { qos = 2, retain = true,
                 props = { content_type = "a/b", user = { k = "v" } } }))
             end
           end }"#,
    );
    let mut cfg = d.config(vec![block("many", &s, BlockEvent::BeforePublish, &["m/+"])]);
    cfg.max_publishes_per_call = 10;
    cfg.max_payload = moonwire::blocks::ByteSize(2048);
    let out = Collect::new();
    let e = start(cfg, out.clone());
    for what in ["many", "big", "wild", "qos"] {
        let _ = e.before_publish(msg(&format!("m/{what}"), "")).await;
        let err = e.status()[0].last_error.clone().unwrap().message;
        assert!(err.contains("mqtt.publish"), "{what}: {err}");
    }
    assert_eq!(e.status()[0].counters.errors, 4);
    assert_eq!(out.take().len(), 10, "the first 10 of `many` went out");
    let _ = e.before_publish(msg("m/ok", "")).await;
    let m = out.take().pop().unwrap();
    assert_eq!((m.qos, m.retain), (2, true));
    assert_eq!(m.props.content_type.as_deref(), Some("a/b"));
    assert_eq!(m.props.user, vec![("k".into(), "v".into())]);
    assert_eq!(m.origin.client_id, "block:many");
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_snapshot_has_blocks_and_workers() {
    let d = Dir::new();
    let s = d.script("p.lua", "return { on_publish = function() end }");
    let e = start(
        d.config(vec![block("p", &s, BlockEvent::BeforePublish, &["#"])]),
        Collect::new(),
    );
    for i in 0..10 {
        let _ = e.before_publish(msg(&format!("t/{i}"), "")).await;
    }
    let m = e.metrics();
    assert_eq!(m.blocks[0].0, "p");
    assert_eq!(m.blocks[0].1.latency.count, 10);
    assert_eq!(m.workers.len(), 2);
    assert!(
        eventually(Duration::from_secs(2), || e
            .metrics()
            .workers
            .iter()
            .map(|w| w.processed)
            .sum::<u64>()
            == 10)
        .await
    );
    assert_eq!(m.workers.iter().map(|w| w.wait.count).sum::<u64>(), 10);
    assert_eq!(m.workers[0].queue_capacity, 1024);
    e.shutdown().await;
    // After shutdown, publishes resolve to the fallback verdict instead of hanging.
    assert_eq!(e.before_publish(msg("t/1", "")).await, Verdict::Pass);
}

struct Panicky;
impl moonwire::blocks::Publisher for Panicky {
    fn publish(&self, _msg: moonwire::pipeline::Message) -> Result<(), String> {
        panic!("broker bug")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_publisher_does_not_kill_the_worker() {
    let d = Dir::new();
    let s = d.script(
        "p.lua",
        r#"return { on_publish = function(msg)
             local ok, err = mqtt.publish("x", "y")
             return { payload = tostring(ok) .. ":" .. tostring(err) }
           end }"#,
    );
    let mut cfg = d.config(vec![block("p", &s, BlockEvent::BeforePublish, &["t"])]);
    cfg.workers = Some(1);
    let e = start(cfg, Arc::new(Panicky));
    for _ in 0..2 {
        let Verdict::Modify(m) = e.before_publish(msg("t", "")).await else {
            panic!()
        };
        assert_eq!(&m.payload[..], b"false:the broker's publisher panicked");
    }
    e.shutdown().await;
}
