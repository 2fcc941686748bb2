//! Random and mutated packets thrown at a live listener: the broker never panics, never leaks a
//! connection, and keeps serving a well-behaved client measured alongside.

mod common;

use common::{TestBroker, raw, v4};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

fn seeds() -> Vec<Vec<u8>> {
    vec![
        raw::connect(4, "fz", 30),
        raw::connect(5, "fz", 30),
        raw::connect_with(5, "fz", 30, false, Some(("w/t", b"will"))),
        [
            raw::connect(4, "fz", 30),
            raw::publish(4, b"a/b", b"payload", 1, 1),
        ]
        .concat(),
        [
            raw::connect(5, "fz", 30),
            raw::publish(5, b"a/b", b"payload", 2, 1),
        ]
        .concat(),
        [raw::connect(5, "fz", 30), raw::subscribe(5, 3, "a/+", 1)].concat(),
        [
            raw::connect(4, "fz", 30),
            raw::subscribe(4, 3, "#", 2),
            vec![0xC0, 0],
            vec![0xE0, 0],
        ]
        .concat(),
    ]
}

/// A seed packet sequence with bytes flipped, inserted, truncated or a random tail.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    let seeds = seeds();
    (
        0..seeds.len(),
        proptest::collection::vec((any::<u16>(), any::<u8>(), 0u8..4), 0..8),
        any::<Vec<u8>>(),
    )
        .prop_map(move |(i, edits, tail)| {
            let mut p = seeds[i].clone();
            for (pos, byte, op) in edits {
                if p.is_empty() {
                    break;
                }
                let at = pos as usize % p.len();
                match op {
                    0 => p[at] = byte,
                    1 => p.insert(at, byte),
                    2 => p.truncate(at),
                    _ => p[at] ^= 1 << (byte % 8),
                }
            }
            p.extend(tail.into_iter().take(64));
            p
        })
}

fn fuzz(seed: Option<[u8; 32]>, cases: u32) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let b = rt.block_on(TestBroker::start_with(|c| {
        c.mqtt.connect_timeout = Duration::from_millis(300)
    }));
    let mut probe = rt.block_on(async {
        let mut s = v4::connect(v4::options(b.port(), "probe-sub")).await;
        s.subscribe("probe", v4::QoS::AtLeastOnce).await;
        s
    });
    let probe_pub = rt.block_on(v4::connect(v4::options(b.port(), "probe-pub")));
    let mut runner = match seed {
        Some(s) => TestRunner::new_with_rng(
            Config::with_cases(cases),
            TestRng::from_seed(RngAlgorithm::ChaCha, &s),
        ),
        None => TestRunner::new(Config::with_cases(cases)),
    };
    let addr = b.mqtt;
    runner
        .run(&mutated(), |bytes| {
            rt.block_on(async {
                let mut c = raw::Conn::open(addr).await;
                let _ = c.stream.write_all(&bytes).await;
                // Let the broker react, then leave abruptly.
                let _ = c.read(Duration::from_millis(20)).await;
            });
            Ok(())
        })
        .unwrap();
    rt.block_on(async {
        probe_pub
            .client
            .publish("probe", v4::QoS::AtLeastOnce, false, "still here")
            .await
            .unwrap();
        let got = probe
            .next_publish()
            .await
            .expect("well-behaved client still served");
        assert_eq!(&got.payload[..], b"still here");
        // Every fuzz connection is gone: only the two probes remain.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let m = b.metrics().await;
            if m.contains("moonwire_connections 2\n") {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "connections leaked:\n{m}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    rt.block_on(b.stop());
}

#[test]
fn mutated_packets_fixed_seed() {
    fuzz(Some([7; 32]), 300);
}

#[test]
fn mutated_packets_random_seed() {
    fuzz(None, 150);
}
