//! Hot reload: atomic swaps under load, failed reloads keep the old version, the watcher,
//! and config changes.

mod blocks_support;
use blocks_support as common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use moonwire::blocks::{BlockError, BlockEvent};
use moonwire::pipeline::Verdict;

fn versioned(tag: &str, k: usize) -> String {
    format!(
        r#"return {{ on_publish = function(msg)
             msg.payload = msg.payload .. "|{tag}{k}"
             return msg
           end }}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_is_atomic_and_loses_nothing() {
    let d = Dir::new();
    let a = d.script("a.lua", &versioned("a", 0));
    let b = d.script("b.lua", &versioned("b", 0));
    let e = start(
        d.config(vec![
            block("a", &a, BlockEvent::BeforePublish, &["p/+/+"]),
            block("b", &b, BlockEvent::BeforePublish, &["p/+/+"]),
        ]),
        Collect::new(),
    );

    const PRODUCERS: usize = 4;
    const PER_PRODUCER: usize = 5_000;
    const TOPICS: usize = 25;
    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let e = e.clone();
        producers.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(PER_PRODUCER);
            for batch in 0..PER_PRODUCER / TOPICS {
                let futs: Vec<_> = (0..TOPICS)
                    .map(|t| e.before_publish(msg(&format!("p/{p}/{t}"), format!("{batch}"))))
                    .collect();
                for (t, v) in futures::future::join_all(futs)
                    .await
                    .into_iter()
                    .enumerate()
                {
                    out.push((t, batch, v));
                }
            }
            out
        }));
    }

    let mut ok = 0;
    for k in 1..=5 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        std::fs::write(&a, versioned("a", k)).unwrap();
        std::fs::write(&b, versioned("b", k)).unwrap();
        let r = e.reload_scripts().await.unwrap();
        assert_eq!(r.changed, ["a", "b"]);
        ok += 1;
        if k == 3 {
            // A broken edit in between: refused, version 3 keeps running.
            std::fs::write(&b, "return { on_publish = function(msg) return msg").unwrap();
            let err = e.reload_scripts().await.unwrap_err();
            assert!(matches!(err, BlockError::Load(_)), "{err}");
            std::fs::write(&b, versioned("b", k)).unwrap();
        }
    }

    let mut total = 0;
    let mut versions = std::collections::BTreeSet::new();
    for p in producers {
        let results = p.await.unwrap();
        let mut last: HashMap<usize, usize> = HashMap::new();
        for (t, batch, v) in results {
            total += 1;
            let Verdict::Modify(m) = v else {
                panic!("{v:?}")
            };
            let s = String::from_utf8(m.payload.to_vec()).unwrap();
            let parts: Vec<&str> = s.split('|').collect();
            assert_eq!(parts.len(), 3, "{s}");
            assert_eq!(
                parts[0],
                batch.to_string(),
                "exactly this message's verdict"
            );
            let ka: usize = parts[1][1..].parse().unwrap();
            let kb: usize = parts[2][1..].parse().unwrap();
            assert_eq!(ka, kb, "both blocks of one message from the same set: {s}");
            versions.insert(ka);
            let prev = last.insert(t, ka).unwrap_or(0);
            assert!(ka >= prev, "versions only move forward per topic");
        }
    }
    assert_eq!(total, PRODUCERS * PER_PRODUCER);
    assert!(
        versions.len() >= 4,
        "the reloads overlapped the load: {versions:?}"
    );
    let rs = e.reload_status();
    assert_eq!((rs.reloads_ok, rs.reloads_failed), (ok, 1));
    let st = e.status();
    assert_eq!(
        st[0].counters.invocations,
        (PRODUCERS * PER_PRODUCER) as u64
    );
    let Verdict::Modify(m) = e.before_publish(msg("p/0/0", "x")).await else {
        panic!()
    };
    assert_eq!(&m.payload[..], b"x|a5|b5");
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_reloads_and_keeps_the_old_version_on_errors() {
    let d = Dir::new();
    let s = d.script(
        "w.lua",
        "local tag = require('tag') return { on_publish = function(m) return { payload = tag .. '1' } end }",
    );
    d.script("lib/tag.lua", "return 'a'");
    let mut cfg = d.config(vec![block("w", &s, BlockEvent::BeforePublish, &["w"])]);
    cfg.hot_reload = true;
    let e = start(cfg, Collect::new());
    let answer = || async {
        match e.before_publish(msg("w", "")).await {
            Verdict::Modify(m) => String::from_utf8(m.payload.to_vec()).unwrap(),
            v => format!("{v:?}"),
        }
    };
    assert_eq!(answer().await, "a1");
    let v1 = e.status()[0].version.clone();

    std::fs::write(&s, "local tag = require('tag') return { on_publish = function(m) return { payload = tag .. '2' } end }").unwrap();
    assert!(eventually(Duration::from_secs(5), || e.status()[0].version != v1).await);
    assert_eq!(answer().await, "a2");

    // A library change reloads the blocks that use it.
    d.script("lib/tag.lua", "return 'b'");
    assert!(eventually(Duration::from_secs(5), || e.reload_status().reloads_ok >= 2).await);
    assert_eq!(answer().await, "b2");

    // Syntax error: refused, surfaced, old version answers.
    std::fs::write(&s, "return { on_publish = function(m)\n  return {\nend }").unwrap();
    assert!(
        eventually(Duration::from_secs(5), || e.reload_status().reloads_failed
            >= 1)
        .await
    );
    let st = &e.status()[0];
    let err = &st.last_error.as_ref().unwrap().message;
    assert!(
        err.contains("reload failed") && err.contains("w.lua:3"),
        "{err}"
    );
    assert!(
        e.reload_status()
            .last_error
            .unwrap()
            .message
            .contains("w.lua:3")
    );
    assert_eq!(answer().await, "b2");

    // Deleted while running: keeps running, the failed reload is counted.
    let failed = e.reload_status().reloads_failed;
    std::fs::remove_file(&s).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || e.reload_status().reloads_failed
            > failed)
        .await
    );
    assert_eq!(answer().await, "b2");
    assert!(
        e.status()[0]
            .last_error
            .as_ref()
            .unwrap()
            .message
            .contains("cannot read script")
    );
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reload_adds_removes_and_rebinds() {
    let d = Dir::new();
    let p = d.script(
        "p.lua",
        "return { on_publish = function(m) return { payload = 'p' } end }",
    );
    let q = d.script(
        "q.lua",
        "return { on_publish = function(m) return drop('q') end }",
    );
    let cfg = d.config(vec![block("p", &p, BlockEvent::BeforePublish, &["a/#"])]);
    let e = start(cfg.clone(), Collect::new());
    assert!(e.has_before_publish("a/1") && !e.has_before_publish("b/1"));
    let _ = e.before_publish(msg("a/1", "")).await;

    let noop = e.reload(cfg.clone()).await.unwrap();
    assert!(noop.noop && noop.unchanged == ["p"]);

    let mut next = d.config(vec![
        block("p", &p, BlockEvent::BeforePublish, &["b/#"]),
        block("q", &q, BlockEvent::BeforePublish, &["c"]),
    ]);
    next.workers = Some(3);
    let r = e.reload(next.clone()).await.unwrap();
    assert_eq!(
        (r.added.clone(), r.changed.clone(), r.removed.clone()),
        (vec!["q".to_string()], vec!["p".to_string()], vec![])
    );
    assert_eq!(r.restart_required, ["workers"]);
    assert!(
        !e.has_before_publish("a/1") && e.has_before_publish("b/1") && e.has_before_publish("c")
    );
    assert!(matches!(
        e.before_publish(msg("c", "")).await,
        Verdict::Drop { .. }
    ));
    assert_eq!(
        e.status()[0].counters.invocations,
        1,
        "counters survive a reload of the same name"
    );

    next.blocks.remove(0);
    let r = e.reload(next).await.unwrap();
    assert_eq!(r.removed, ["p"]);
    assert_eq!(e.status().len(), 1);
    assert_eq!(e.before_publish(msg("b/1", "")).await, Verdict::Pass);

    // Invalid config: refused with a typed error, nothing changes.
    let mut bad = cfg;
    bad.blocks.push(bad.blocks[0].clone());
    assert!(matches!(e.reload(bad).await, Err(BlockError::Config(_))));
    assert!(e.has_before_publish("c"));
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_reloads_under_load_lose_nothing() {
    let d = Dir::new();
    let a = d.script("a.lua", &versioned("a", 0));
    let mut cfg = d.config(vec![block("a", &a, BlockEvent::BeforePublish, &["p/#"])]);
    cfg.hot_reload = true;
    let e = start(cfg, Collect::new());
    const N: usize = 20_000;
    const TOPICS: usize = 20;
    let producer = {
        let e = e.clone();
        tokio::spawn(async move {
            let mut out = Vec::with_capacity(N);
            for batch in 0..N / TOPICS {
                let futs: Vec<_> = (0..TOPICS)
                    .map(|t| e.before_publish(msg(&format!("p/{t}"), batch.to_string())))
                    .collect();
                out.extend(
                    futures::future::join_all(futs)
                        .await
                        .into_iter()
                        .enumerate()
                        .map(|(t, v)| (t, batch, v)),
                );
            }
            out
        })
    };
    for k in 1..=4 {
        let before = e.status()[0].version.clone();
        std::fs::write(&a, versioned("a", k)).unwrap();
        assert!(
            eventually(Duration::from_secs(5), || e.status()[0].version != before).await,
            "reload {k}"
        );
        if producer.is_finished() {
            break;
        }
    }
    let results = producer.await.unwrap();
    assert_eq!(results.len(), N);
    let mut last: HashMap<usize, usize> = HashMap::new();
    let mut versions = std::collections::BTreeSet::new();
    for (t, batch, v) in results {
        let Verdict::Modify(m) = v else {
            panic!("{v:?}")
        };
        let s = String::from_utf8(m.payload.to_vec()).unwrap();
        let (b, k) = s.split_once("|a").unwrap();
        assert_eq!(b, batch.to_string());
        let k: usize = k.parse().unwrap();
        versions.insert(k);
        assert!(k >= last.insert(t, k).unwrap_or(0));
    }
    assert!(versions.len() >= 2, "{versions:?}");
    assert_eq!(e.status()[0].counters.invocations, N as u64);
    e.shutdown().await;
}
