//! The pipeline seam, driven by a test-only interceptor stage: drop, modify and consume
//! verdicts, acks only after the verdict (with the reason code for v5), order preserved across
//! slow stages, wills through the pipeline, and the after-publish tap.

mod common;

use common::{TestBroker, WAIT, raw, test_config, v4};
use moonwire::app::App;
use moonwire::pipeline::{DropCode, Message, Stage, Step, Tap, Verdict};
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;

struct Interceptor;

impl Stage for Interceptor {
    fn name(&self) -> &'static str {
        "test-interceptor"
    }
    fn wants(&self, topic: &str, _: usize) -> bool {
        topic.starts_with("seam/")
    }
    fn process(&self, msg: &Message) -> Step {
        match msg.topic.as_str() {
            "seam/drop" => Step::Now(Verdict::Drop {
                code: DropCode::ImplementationSpecific,
                reason: "rejected by test".into(),
            }),
            "seam/consume" => Step::Now(Verdict::Consume),
            "seam/modify" => {
                let mut m = msg.clone();
                m.topic = "seam/modified".into();
                m.payload = msg.payload.to_ascii_uppercase().into();
                Step::Now(Verdict::Modify(m))
            }
            "seam/slow" => {
                // Later messages finish sooner; order must still hold.
                let delay = 40u64.saturating_sub(msg.payload[0] as u64 * 4);
                Step::Later(Box::pin(async move {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    Verdict::Pass
                }))
            }
            _ => Step::Now(Verdict::Pass),
        }
    }
}

#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl Tap for Recorder {
    fn wants(&self, _: &str) -> bool {
        true
    }
    fn published(&self, msg: &Message) {
        self.0.lock().push(msg.topic.clone());
    }
}

async fn broker() -> (TestBroker, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    let app = App::new(test_config())
        .stage(Arc::new(Interceptor))
        .tap(rec.clone());
    (TestBroker::start_app(app).await, rec)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_is_acked_with_the_reason_code_and_not_routed() {
    let (b, _) = broker().await;
    let mut watcher = v4::connect(v4::options(b.port(), "w")).await;
    watcher.subscribe("seam/#", v4::QoS::AtLeastOnce).await;

    let mut c = raw::Conn::open(b.mqtt).await;
    c.send(&raw::connect(5, "p5", 30)).await;
    c.read(WAIT).await.unwrap();
    c.send(&raw::publish(5, b"seam/drop", b"x", 1, 5)).await;
    let (first, body) = c.read(WAIT).await.unwrap();
    assert_eq!(
        (first, &body[..3]),
        (0x40, &[0u8, 5, 0x83][..]),
        "PUBACK 0x83"
    );
    assert!(
        String::from_utf8_lossy(&body).contains("rejected by test"),
        "reason string"
    );
    // QoS 2: PUBREC with the failure ends the flow.
    c.send(&raw::publish(5, b"seam/drop", b"x", 2, 6)).await;
    let (first, body) = c.read(WAIT).await.unwrap();
    assert_eq!((first, &body[..3]), (0x50, &[0u8, 6, 0x83][..]));

    // v3.1.1 cannot be told: plain PUBACK, still not routed.
    let mut c4 = raw::Conn::open(b.mqtt).await;
    c4.send(&raw::connect(4, "p4", 30)).await;
    c4.read(WAIT).await.unwrap();
    c4.send(&raw::publish(4, b"seam/drop", b"x", 1, 9)).await;
    assert_eq!(c4.read(WAIT).await.unwrap(), (0x40, vec![0, 9]));
    c4.send(&raw::publish(4, b"seam/ok", b"y", 1, 10)).await;
    assert_eq!(c4.read(WAIT).await.unwrap(), (0x40, vec![0, 10]));
    let got = watcher.next_publish().await.unwrap();
    assert_eq!(&got.topic, "seam/ok", "dropped messages were routed");
    assert!(
        b.metrics()
            .await
            .contains("moonwire_drops_total{reason=\"pipeline\"} 3")
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modify_and_consume() {
    let (b, rec) = broker().await;
    let mut watcher = v4::connect(v4::options(b.port(), "w")).await;
    watcher.subscribe("seam/#", v4::QoS::AtLeastOnce).await;
    let mut p = v4::connect(v4::options(b.port(), "p")).await;
    p.publish_acked("seam/consume", false, "eaten").await;
    p.publish_acked("seam/modify", false, "shout").await;
    let got = watcher.next_publish().await.unwrap();
    assert_eq!(
        (&got.topic[..], &got.payload[..]),
        ("seam/modified", &b"SHOUT"[..])
    );
    assert!(
        watcher
            .next_publish_within(Duration::from_millis(300))
            .await
            .is_none()
    );
    // The tap saw what was routed, after modification, and not the consumed message.
    assert_eq!(*rec.0.lock(), vec!["seam/modified".to_string()]);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_holds_across_slow_stages_and_acks_follow_verdicts() {
    let (b, _) = broker().await;
    let mut watcher = v4::connect(v4::options(b.port(), "w")).await;
    watcher.subscribe("seam/slow", v4::QoS::AtLeastOnce).await;
    let mut c = raw::Conn::open(b.mqtt).await;
    c.send(&raw::connect(4, "orderly", 30)).await;
    c.read(WAIT).await.unwrap();
    let mut burst = Vec::new();
    for i in 0..10u8 {
        burst.extend(raw::publish(4, b"seam/slow", &[i], 1, 100 + i as u16));
    }
    c.send(&burst).await;
    for i in 0..10u16 {
        assert_eq!(
            c.read(WAIT).await.unwrap(),
            (0x40, (100 + i).to_be_bytes().to_vec()),
            "acks in order"
        );
    }
    for i in 0..10u8 {
        assert_eq!(
            watcher.next_publish().await.unwrap().payload[0],
            i,
            "delivery in order"
        );
    }
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wills_pass_through_the_pipeline() {
    let (b, rec) = broker().await;
    let mut watcher = v4::connect(v4::options(b.port(), "w")).await;
    watcher.subscribe("seam/#", v4::QoS::AtLeastOnce).await;
    for (id, topic) in [("a", "seam/drop"), ("b", "seam/modify")] {
        let mut c = raw::Conn::open(b.mqtt).await;
        c.send(&raw::connect_with(4, id, 30, true, Some((topic, b"bye"))))
            .await;
        c.read(WAIT).await.unwrap();
        drop(c);
    }
    let got = watcher.next_publish().await.unwrap();
    assert_eq!(
        (&got.topic[..], &got.payload[..]),
        ("seam/modified", &b"BYE"[..])
    );
    assert!(
        watcher
            .next_publish_within(Duration::from_millis(300))
            .await
            .is_none()
    );
    assert_eq!(*rec.0.lock(), vec!["seam/modified".to_string()]);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_budgets_refuse_oversized_payloads() {
    let b = TestBroker::start_with(|c| {
        c.limits
            .topic_payload
            .insert("home/#".into(), moonwire::config::ByteSize(8));
    })
    .await;
    let mut watcher = v4::connect(v4::options(b.port(), "w")).await;
    watcher.subscribe("home/#", v4::QoS::AtLeastOnce).await;
    let mut c = raw::Conn::open(b.mqtt).await;
    c.send(&raw::connect(5, "big", 30)).await;
    c.read(WAIT).await.unwrap();
    c.send(&raw::publish(5, b"home/t", b"0123456789", 1, 1))
        .await;
    let (first, body) = c.read(WAIT).await.unwrap();
    assert_eq!(
        (first, &body[..3]),
        (0x40, &[0u8, 1, 0x97][..]),
        "quota exceeded"
    );
    c.send(&raw::publish(5, b"home/t", b"small", 1, 2)).await;
    assert_eq!(c.read(WAIT).await.unwrap().1[..2], [0, 2]);
    assert_eq!(&watcher.next_publish().await.unwrap().payload[..], b"small");
    b.stop().await;
}
