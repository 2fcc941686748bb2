//! The publish pipeline: every PUBLISH — from clients, wills, blocks and the broker itself —
//! passes through an ordered list of [`Stage`]s before the router, and is offered to the
//! after-publish [`Tap`]s once routed. Stages return a [`Verdict`]; the first drop or consume
//! ends the chain. The session code only knows this module, so ACL, limits, the frame
//! assembler and blocks plug in here without touching it.

mod limits;
mod message;

pub use limits::TopicBudgets;
pub use message::*;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// What a stage returns: most stages decide synchronously; a stage that must wait (a Lua
/// worker, the media pool) returns a boxed future.
#[allow(clippy::large_enum_variant)]
pub enum Step {
    Now(Verdict),
    Later(Pin<Box<dyn Future<Output = Verdict> + Send>>),
}

/// One pipeline stage.
pub trait Stage: Send + Sync + 'static {
    /// Short name for logs and metrics.
    fn name(&self) -> &'static str;
    /// A cheap test run for every publish; stages that return `false` are skipped, and when no
    /// stage wants a topic the session skips building a [`Message`] at all.
    fn wants(&self, topic: &str, payload_len: usize) -> bool;
    /// Decides what happens to the message.
    fn process(&self, msg: &Message) -> Step;
    /// Decides for several messages at once, in order: each message comes back with its
    /// verdict (`None` if the stage lost it). A stage whose work crosses threads (the blocks
    /// workers) implements it so a batch costs one hand-off and no copies; `Err` gives the
    /// messages back untouched, meaning "call [`process`](Self::process) per message".
    fn process_many(&self, msgs: Vec<Message>) -> Result<BatchFuture, Vec<Message>> {
        Err(msgs)
    }
}

/// The messages and verdicts of [`Stage::process_many`].
pub type BatchFuture = Pin<Box<dyn Future<Output = Vec<(Option<Message>, Verdict)>> + Send>>;

/// Observes messages after they were handed to the router. Must not block.
pub trait Tap: Send + Sync + 'static {
    fn wants(&self, topic: &str) -> bool;
    fn published(&self, msg: &Message);
}

/// The outcome of the whole pipeline for one message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Route this message (possibly modified).
    Route(Message),
    /// Do not route; acknowledge with this reason.
    Drop { code: DropCode, reason: String },
    /// Do not route; acknowledge as success.
    Consume,
}

/// The ordered stages and taps.
#[derive(Default, Clone)]
pub struct Pipeline {
    stages: Vec<Arc<dyn Stage>>,
    taps: Vec<Arc<dyn Tap>>,
}

impl Pipeline {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_stage(mut self, stage: Arc<dyn Stage>) -> Self {
        self.stages.push(stage);
        self
    }

    pub fn with_tap(mut self, tap: Arc<dyn Tap>) -> Self {
        self.taps.push(tap);
        self
    }

    /// Whether any stage wants to see this publish.
    pub fn wants(&self, topic: &str, payload_len: usize) -> bool {
        self.stages.iter().any(|s| s.wants(topic, payload_len))
    }

    /// Whether any tap wants to see this publish after routing.
    pub fn tapped(&self, topic: &str) -> bool {
        self.taps.iter().any(|t| t.wants(topic))
    }

    /// Runs every interested stage in order: a batch of one.
    pub async fn process(&self, msg: Message) -> Outcome {
        self.process_batch(vec![msg])
            .await
            .pop()
            .unwrap_or_else(no_verdict)
    }

    /// Runs a batch (the publishes of one socket read) through the stages: each stage sees
    /// every message still in play, in order, before the next stage runs, so a stage that
    /// batches ([`Stage::process_many`]) gets the whole batch at once. For each message the
    /// stages still run in order and the first drop or consume ends its chain.
    pub async fn process_batch(&self, msgs: Vec<Message>) -> Vec<Outcome> {
        let mut live: Vec<Result<Message, Outcome>> = msgs.into_iter().map(Ok).collect();
        for stage in &self.stages {
            let idx: Vec<usize> = live
                .iter()
                .enumerate()
                .filter_map(|(i, m)| match m {
                    Ok(m) if stage.wants(&m.topic, m.payload.len()) => Some(i),
                    _ => None,
                })
                .collect();
            if idx.is_empty() {
                continue;
            }
            // The stage gets the messages themselves; their slots wait with a "no verdict"
            // placeholder, which only a stage losing a message would leave in place.
            let mut taken = Vec::with_capacity(idx.len());
            for &i in &idx {
                if let Some(slot) = live.get_mut(i)
                    && let Ok(m) = std::mem::replace(slot, Err(no_verdict()))
                {
                    taken.push(m);
                }
            }
            let decided: Vec<(Option<Message>, Verdict)> = match stage.process_many(taken) {
                Ok(fut) => fut.await,
                Err(taken) => {
                    let steps: Vec<Step> = taken.iter().map(|m| stage.process(m)).collect();
                    let verdicts =
                        futures_util::future::join_all(steps.into_iter().map(|s| async move {
                            match s {
                                Step::Now(v) => v,
                                Step::Later(fut) => fut.await,
                            }
                        }))
                        .await;
                    taken.into_iter().map(Some).zip(verdicts).collect()
                }
            };
            for (i, (msg, verdict)) in idx.into_iter().zip(decided) {
                let Some(slot) = live.get_mut(i) else {
                    continue;
                };
                *slot = match (msg, verdict) {
                    (_, Verdict::Modify(m)) => Ok(m),
                    (Some(m), Verdict::Pass) => Ok(m),
                    (None, Verdict::Pass) => Err(no_verdict()),
                    (msg, Verdict::Drop { code, reason }) => {
                        if let Some(m) = msg {
                            tracing::debug!(stage = stage.name(), topic = %m.topic, %reason, "publish dropped");
                        }
                        Err(Outcome::Drop { code, reason })
                    }
                    (_, Verdict::Consume) => Err(Outcome::Consume),
                };
            }
        }
        live.into_iter()
            .map(|m| match m {
                Ok(m) => Outcome::Route(m),
                Err(o) => o,
            })
            .collect()
    }

    /// Offers a routed message to the taps.
    pub fn after_publish(&self, msg: &Message) {
        for tap in &self.taps {
            if tap.wants(&msg.topic) {
                tap.published(msg);
            }
        }
    }
}

/// What a message gets if the pipeline returned no outcome for it (a bug, never expected):
/// not routed, refused with a reason.
pub fn no_verdict() -> Outcome {
    Outcome::Drop {
        code: DropCode::Unspecified,
        reason: "pipeline returned no verdict".into(),
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// MQTT topic filter matching, including the rule that `+`/`#` at the first level do not match
/// topics starting with `$`. Filters are assumed valid.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    // Most filters share no literal prefix with most topics: reject those with one compare
    // before splitting anything (this runs for every publish).
    let lit = literal_prefix(filter);
    if lit == filter.len() {
        return filter == topic;
    }
    if !topic.as_bytes().starts_with(&filter.as_bytes()[..lit]) {
        return false;
    }
    let mut t = topic.split('/');
    for f in filter.split('/') {
        if f == "#" {
            return true;
        }
        match t.next() {
            Some(level) if f == "+" || f == level => {}
            _ => return false,
        }
    }
    t.next().is_none()
}

/// Length of the part of `filter` every matching topic starts with: everything before the
/// first wildcard, less the `/` before a `#` (`a/#` also matches `a`).
pub fn literal_prefix(filter: &str) -> usize {
    let f = filter.as_bytes();
    match f.iter().position(|&b| b == b'+' || b == b'#') {
        None => f.len(),
        Some(i) if f[i] == b'#' => i.saturating_sub(1),
        Some(i) => i,
    }
}

/// Checks a subscription filter: non-empty, `#` only last and alone, `+` alone in its level.
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    let last = levels.len() - 1;
    levels.iter().enumerate().all(|(i, l)| {
        (!l.contains('#') || (*l == "#" && i == last)) && (!l.contains('+') || *l == "+")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_like_the_spec() {
        assert!(filter_matches("a/+/c", "a/b/c"));
        assert!(filter_matches("a/#", "a"));
        assert!(filter_matches("a/#", "a/b/c"));
        assert!(filter_matches("#", "a/b"));
        assert!(!filter_matches("#", "$SYS/x"));
        assert!(!filter_matches("+/x", "$SYS/x"));
        assert!(filter_matches("$SYS/#", "$SYS/x"));
        assert!(!filter_matches("a/+", "a/b/c"));
        assert!(!filter_matches("a/b", "a"));
        assert!(filter_matches("a/+", "a/"));
    }

    /// An independent matcher, level lists recursively (spec §4.7), as the reference.
    fn reference_matches(filter: &str, topic: &str) -> bool {
        fn rec(f: &[&str], t: &[&str]) -> bool {
            match (f.first(), t.first()) {
                (Some(&"#"), _) => f.len() == 1,
                (Some(&"+"), Some(_)) => rec(&f[1..], &t[1..]),
                (Some(a), Some(b)) => a == b && rec(&f[1..], &t[1..]),
                (None, None) => true,
                _ => false,
            }
        }
        let wild_first = filter.starts_with('+') || filter.starts_with('#');
        if topic.starts_with('$') && wild_first {
            return false;
        }
        let f: Vec<&str> = filter.split('/').collect();
        let t: Vec<&str> = topic.split('/').collect();
        rec(&f, &t)
    }

    /// Every string up to `max` characters over `alphabet`.
    fn strings(alphabet: &[char], max: usize) -> Vec<String> {
        let mut all = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..max {
            last = last
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            all.extend(last.iter().cloned());
        }
        all
    }

    #[test]
    fn literal_prefix_shortcut_agrees_with_the_full_match() {
        let filters = strings(&['a', 'b', '/', '+', '#', '$'], 4);
        let topics = strings(&['a', 'b', '/', '$'], 4);
        for f in filters.iter().filter(|f| valid_filter(f)) {
            let parsed = crate::blocks::filter::TopicFilter::parse(f).unwrap();
            for t in &topics {
                let want = reference_matches(f, t);
                assert_eq!(filter_matches(f, t), want, "{f:?} on {t:?}");
                assert_eq!(parsed.matches(t), want, "{f:?} on {t:?}");
            }
        }
    }

    #[test]
    fn filter_validation() {
        for ok in ["#", "+", "a/#", "a/+/b", "+/+", "/a", "a//b"] {
            assert!(valid_filter(ok), "{ok}");
        }
        for bad in ["", "a#", "a/#/b", "a+/b", "a/b+", "##", "a/\0"] {
            assert!(!valid_filter(bad), "{bad}");
        }
    }

    struct DropAll;
    impl Stage for DropAll {
        fn name(&self) -> &'static str {
            "drop-all"
        }
        fn wants(&self, topic: &str, _: usize) -> bool {
            topic.starts_with("x/")
        }
        fn process(&self, _: &Message) -> Step {
            Step::Later(Box::pin(async {
                Verdict::Drop {
                    code: DropCode::QuotaExceeded,
                    reason: "no".into(),
                }
            }))
        }
    }

    fn msg(topic: &str) -> Message {
        Message {
            topic: topic.into(),
            payload: bytes::Bytes::from_static(b"p"),
            qos: 0,
            retain: false,
            props: Props::default(),
            origin: Origin {
                client_id: "c".into(),
                username: None,
                hop: 0,
            },
            received_at: 0,
        }
    }

    #[tokio::test]
    async fn stages_run_in_order_and_first_drop_wins() {
        let p = Pipeline::new().with_stage(Arc::new(DropAll));
        assert!(p.wants("x/1", 1));
        assert!(!p.wants("y/1", 1));
        assert!(matches!(
            p.process(msg("x/1")).await,
            Outcome::Drop {
                code: DropCode::QuotaExceeded,
                ..
            }
        ));
        assert_eq!(p.process(msg("y/1")).await, Outcome::Route(msg("y/1")));
    }

    /// Renames `a/…` to `x/…` and records how many messages each call saw.
    struct Rename {
        calls: std::sync::Mutex<Vec<usize>>,
    }
    impl Stage for Rename {
        fn name(&self) -> &'static str {
            "rename"
        }
        fn wants(&self, topic: &str, _: usize) -> bool {
            topic.starts_with("a/")
        }
        fn process(&self, _: &Message) -> Step {
            unreachable!("batched stages are called through process_many")
        }
        fn process_many(&self, msgs: Vec<Message>) -> Result<BatchFuture, Vec<Message>> {
            if let Ok(mut c) = self.calls.lock() {
                c.push(msgs.len());
            }
            let out = msgs
                .into_iter()
                .map(|m| {
                    let mut next = m.clone();
                    next.topic = next.topic.replacen("a/", "x/", 1);
                    (Some(m), Verdict::Modify(next))
                })
                .collect();
            Ok(Box::pin(async move { out }))
        }
    }

    #[tokio::test]
    async fn a_batch_reaches_a_batching_stage_once_and_later_stages_see_modified_topics() {
        let rename = Arc::new(Rename {
            calls: std::sync::Mutex::new(Vec::new()),
        });
        let p = Pipeline::new()
            .with_stage(rename.clone())
            .with_stage(Arc::new(DropAll));
        let out = p
            .process_batch(vec![msg("a/1"), msg("y/1"), msg("a/2"), msg("x/3")])
            .await;
        assert_eq!(*rename.calls.lock().unwrap(), vec![2]);
        assert_eq!(out.len(), 4);
        // a/1 became x/1, which the next stage drops; y/1 is untouched; x/3 dropped directly.
        assert!(matches!(out[0], Outcome::Drop { .. }), "{:?}", out[0]);
        assert_eq!(out[1], Outcome::Route(msg("y/1")));
        assert!(matches!(out[2], Outcome::Drop { .. }), "{:?}", out[2]);
        assert!(matches!(out[3], Outcome::Drop { .. }), "{:?}", out[3]);
        assert_eq!(p.process_batch(Vec::new()).await, Vec::new());
    }
}
