//! Retained messages, kept by the edge instead of the router.
//!
//! The router sends at most its in-flight window of retained messages per subscription and
//! silently drops the rest (rumqttd 0.20 truncates them), which breaks a Home Assistant
//! `homeassistant/#` subscription with a few hundred discovery topics. It also ignores
//! retain handling. So the edge never routes the retain flag: it keeps the last retained
//! message per topic here (mirrored to the store when persistence is on) and delivers the
//! matching ones itself after the SUBACK.

use crate::pipeline::filter_matches;
use crate::router::protocol::PublishProperties;
use bytes::Bytes;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;

/// One retained message.
#[derive(Debug)]
pub struct RetainedMessage {
    pub topic: Bytes,
    pub payload: Bytes,
    /// The QoS it was published with.
    pub qos: u8,
    pub props: Option<PublishProperties>,
    /// Unix milliseconds, for the message expiry interval.
    pub stored_at_ms: u64,
}

impl RetainedMessage {
    /// Properties to deliver now: expiry lowered by the time spent here; `None` once expired.
    pub fn props_now(&self, now_ms: u64) -> Option<Option<PublishProperties>> {
        let mut props = self.props.clone();
        if let Some(left) = props
            .as_mut()
            .and_then(|p| p.message_expiry_interval.as_mut())
        {
            let waited = (now_ms.saturating_sub(self.stored_at_ms) / 1000) as u32;
            if *left <= waited {
                return None;
            }
            *left -= waited;
        }
        Some(props)
    }
}

#[derive(Default)]
pub struct Retained {
    map: RwLock<HashMap<String, Arc<RetainedMessage>>>,
}

impl Retained {
    /// Sets (or, with an empty payload, clears) the retained message of `topic`
    /// [MQTT-3.3.1-10, -11].
    pub fn set(
        &self,
        topic: &str,
        payload: &[u8],
        qos: u8,
        props: Option<PublishProperties>,
        stored_at_ms: u64,
    ) {
        if payload.is_empty() {
            self.map.write().remove(topic);
            return;
        }
        let props = props.map(crate::mqtt::interest::for_storage);
        let m = RetainedMessage {
            topic: Bytes::copy_from_slice(topic.as_bytes()),
            payload: Bytes::copy_from_slice(payload),
            qos,
            props: props.filter(|p| *p != PublishProperties::default()),
            stored_at_ms,
        };
        self.map.write().insert(topic.to_string(), Arc::new(m));
    }

    /// Retained messages matching `filter`, in topic order.
    pub fn matching(&self, filter: &str) -> Vec<Arc<RetainedMessage>> {
        let map = self.map.read();
        if !filter.contains(['+', '#']) {
            return map.get(filter).cloned().into_iter().collect();
        }
        let mut out: Vec<_> = map
            .iter()
            .filter(|(t, _)| filter_matches(filter, t))
            .map(|(_, m)| m.clone())
            .collect();
        out.sort_by(|a, b| a.topic.cmp(&b.topic));
        out
    }

    /// Drops messages whose expiry interval has passed.
    pub fn purge_expired(&self, now_ms: u64) {
        self.map
            .write()
            .retain(|_, m| m.props_now(now_ms).is_some());
    }

    pub fn len(&self) -> usize {
        self.map.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_clear_and_match() {
        let r = Retained::default();
        r.set("a/b", b"1", 1, None, 0);
        r.set("a/c", b"2", 0, None, 0);
        r.set("$SYS/x", b"3", 0, None, 0);
        assert_eq!(r.matching("a/+").len(), 2);
        assert_eq!(r.matching("a/b").len(), 1);
        assert_eq!(r.matching("#").len(), 2, "# does not match $ topics");
        let forged = PublishProperties {
            user_properties: vec![(crate::mqtt::interest::META_KEY.into(), "s1".into())],
            ..Default::default()
        };
        r.set("a/c", b"2", 0, Some(forged), 0);
        assert!(
            r.matching("a/c")[0].props.is_none(),
            "reserved keys are not kept"
        );
        r.set("a/b", b"", 0, None, 0);
        assert_eq!(r.matching("a/#").len(), 1);
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn expired_messages_are_not_delivered() {
        let r = Retained::default();
        let props = PublishProperties {
            message_expiry_interval: Some(10),
            ..Default::default()
        };
        r.set("t", b"x", 0, Some(props), 1_000);
        let m = &r.matching("t")[0];
        let left = m.props_now(5_000).unwrap().unwrap();
        assert_eq!(left.message_expiry_interval, Some(6));
        assert!(m.props_now(11_000).is_none());
    }
}
