//! Pipeline stage 2: per-topic payload budgets (`limits.topic_payload`). The most specific
//! matching filter wins: fewer wildcards first, then more levels.

use super::{DropCode, Message, Stage, Step, Verdict, filter_matches};

/// Payload size limits keyed by topic filter.
pub struct TopicBudgets {
    /// Sorted most specific first.
    rules: Vec<(String, usize)>,
}

impl TopicBudgets {
    pub fn new(rules: impl IntoIterator<Item = (String, usize)>) -> Self {
        let mut rules: Vec<(String, usize)> = rules.into_iter().collect();
        rules.sort_by_key(|(f, _)| {
            let wild = f.split('/').filter(|l| *l == "+" || *l == "#").count();
            let hash = f.ends_with('#') as usize;
            (hash, wild, usize::MAX - f.split('/').count())
        });
        TopicBudgets { rules }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The budget that applies to a topic, if any.
    pub fn budget(&self, topic: &str) -> Option<usize> {
        self.rules
            .iter()
            .find(|(f, _)| filter_matches(f, topic))
            .map(|(_, n)| *n)
    }
}

impl Stage for TopicBudgets {
    fn name(&self) -> &'static str {
        "limits"
    }

    fn wants(&self, topic: &str, payload_len: usize) -> bool {
        self.budget(topic).is_some_and(|b| payload_len > b)
    }

    fn process(&self, msg: &Message) -> Step {
        match self.budget(&msg.topic) {
            Some(b) if msg.payload.len() > b => Step::Now(Verdict::Drop {
                code: DropCode::PacketTooLarge,
                reason: format!(
                    "payload of {} bytes exceeds the {b}-byte budget of this topic",
                    msg.payload.len()
                ),
            }),
            _ => Step::Now(Verdict::Pass),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_specific_filter_wins() {
        let b = TopicBudgets::new([
            ("#".to_string(), 100),
            ("home/#".to_string(), 10),
            ("home/+/big".to_string(), 1000),
            ("home/kitchen/big".to_string(), 5),
        ]);
        assert_eq!(b.budget("home/kitchen/big"), Some(5));
        assert_eq!(b.budget("home/hall/big"), Some(1000));
        assert_eq!(b.budget("home/hall/small"), Some(10));
        assert_eq!(b.budget("garden"), Some(100));
        assert!(b.wants("home/hall/small", 11));
        assert!(!b.wants("home/hall/small", 10));
    }
}
