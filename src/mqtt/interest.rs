//! Which subscription options some session currently uses, by filter, so that a publish
//! carries the metadata those options need through the router only while a matching
//! subscription exists. With none in use, a publish pays one atomic load per kind.
//!
//! The metadata travels as reserved user properties (keys starting with NUL, which MQTT
//! strings cannot contain): [`ORIGIN_KEY`] (publisher's client id, for No Local) and
//! [`META_KEY`] (published QoS, retain flag). The edge strips every reserved
//! key from what clients send and from what it delivers, so clients never see or forge them.

use crate::pipeline::filter_matches;
use crate::router::protocol::PublishProperties;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;

/// Prefix of every reserved user property key.
pub const RESERVED_PREFIX: char = '\u{0}';
/// Publisher's client id, added while a No Local subscription could match.
pub const ORIGIN_KEY: &str = "\u{0}moonwire-origin";
/// `q<qos> r<retain> s<seq> x<ms>` parts, each present only when needed (`s`: the message's
/// sequence in the store's offline queues, so the session that delivers it can release the
/// stored copy when the client acknowledges it; `x`: when the message expires, in Unix ms).
/// Message expiry is the edge's, not the router's: the router would also drop an expired
/// message that it re-reads for a resend after a reconnect, which must still go out
/// [MQTT-4.3.3-7]. So the Message Expiry Interval is taken off before routing and the session
/// that delivers the message drops it or forwards the remaining interval [MQTT-3.3.2-5/6].
pub const META_KEY: &str = "\u{0}moonwire-meta";

/// Filters subscribed with one option, with how many sessions did.
#[derive(Default)]
pub struct FilterCounts {
    map: RwLock<HashMap<String, usize>>,
    filters: AtomicUsize,
}

impl FilterCounts {
    pub fn add(&self, filter: &str) {
        let mut map = self.map.write();
        *map.entry(filter.to_string()).or_insert(0) += 1;
        self.filters.store(map.len(), Relaxed);
    }

    pub fn remove(&self, filter: &str) {
        let mut map = self.map.write();
        if let Some(n) = map.get_mut(filter) {
            *n -= 1;
            if *n == 0 {
                map.remove(filter);
            }
        }
        self.filters.store(map.len(), Relaxed);
    }

    /// Whether some session's filter with this option matches `topic`.
    pub fn matches(&self, topic: &str) -> bool {
        if self.filters.load(Relaxed) == 0 {
            return false;
        }
        self.map
            .read()
            .keys()
            .any(|f| filter_matches(matched_filter(f), topic))
    }
}

/// The part of a subscription's filter that topics are matched against: a shared
/// subscription `$share/<group>/<filter>` matches like `<filter>`.
pub fn matched_filter(filter: &str) -> &str {
    filter
        .strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
        .map_or(filter, |(_, inner)| inner)
}

/// Subscription options that need publish metadata.
#[derive(Default)]
pub struct Interests {
    /// No Local (v5): needs the publisher.
    pub no_local: FilterCounts,
    /// QoS 2 subscriptions: need the published QoS to deliver QoS 1 publishes at QoS 1.
    pub qos2: FilterCounts,
    /// Retain As Published (v5): needs the retain flag.
    pub retain_as_published: FilterCounts,
}

/// Metadata read back from a routed publish.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Meta {
    pub origin: Option<String>,
    pub qos: Option<u8>,
    pub retain: bool,
    pub stored: Option<u64>,
    /// When the message expires (Unix ms).
    pub expires_at: Option<u64>,
}

impl Interests {
    /// Removes reserved keys a client sent, then adds what subscriptions need and moves the
    /// Message Expiry Interval into the metadata (see [`META_KEY`]).
    pub fn tag(
        &self,
        props: &mut Option<PublishProperties>,
        topic: &str,
        client_id: Option<&str>,
        qos: u8,
        retain: bool,
        stored: Option<u64>,
    ) {
        if let Some(p) = props.as_mut().filter(|p| {
            p.user_properties
                .iter()
                .any(|(k, _)| k.starts_with(RESERVED_PREFIX))
        }) {
            p.user_properties
                .retain(|(k, _)| !k.starts_with(RESERVED_PREFIX));
        }
        let mut meta = String::new();
        if qos == 1 && self.qos2.matches(topic) {
            meta.push_str("q1 ");
        }
        if retain && self.retain_as_published.matches(topic) {
            meta.push_str("r1 ");
        }
        if let Some(seq) = stored {
            meta.push_str(&format!("s{seq} "));
        }
        if let Some(secs) = props
            .as_mut()
            .and_then(|p| p.message_expiry_interval.take())
        {
            let at = crate::pipeline::now_ms().saturating_add(u64::from(secs) * 1000);
            meta.push_str(&format!("x{at} "));
        }
        let origin = client_id.filter(|_| self.no_local.matches(topic));
        if meta.is_empty() && origin.is_none() {
            return;
        }
        let p = props.get_or_insert_with(Default::default);
        if let Some(c) = origin {
            p.user_properties
                .push((ORIGIN_KEY.to_string(), c.to_string()));
        }
        if !meta.is_empty() {
            meta.pop();
            p.user_properties.push((META_KEY.to_string(), meta));
        }
    }
}

/// The properties of a publish as kept for later delivery (retained, queued): without the
/// per-connection topic alias and subscription identifiers, and without reserved keys.
pub fn for_storage(mut p: PublishProperties) -> PublishProperties {
    p.topic_alias = None;
    p.subscription_identifiers.clear();
    p.user_properties
        .retain(|(k, _)| !k.starts_with(RESERVED_PREFIX));
    p
}

/// Removes the reserved keys from a delivered publish's properties and returns what they said.
pub fn take_meta(props: &mut Option<PublishProperties>) -> Meta {
    let mut meta = Meta::default();
    let Some(p) = props.as_mut() else {
        return meta;
    };
    if !p
        .user_properties
        .iter()
        .any(|(k, _)| k.starts_with(RESERVED_PREFIX))
    {
        return meta;
    }
    p.user_properties.retain(|(k, v)| {
        if k == ORIGIN_KEY {
            meta.origin = Some(v.clone());
        } else if k == META_KEY {
            for part in v.split(' ') {
                match part.split_at_checked(1) {
                    Some(("q", n)) => meta.qos = n.parse().ok(),
                    Some(("r", n)) => meta.retain = n == "1",
                    Some(("s", n)) => meta.stored = n.parse().ok(),
                    Some(("x", n)) => meta.expires_at = n.parse().ok(),
                    _ => {}
                }
            }
        }
        !k.starts_with(RESERVED_PREFIX)
    });
    if *p == PublishProperties::default() {
        *props = None;
    }
    meta
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_only_what_subscriptions_need_and_strips_forgeries() {
        let i = Interests::default();
        let forged = PublishProperties {
            user_properties: vec![
                (ORIGIN_KEY.into(), "someone".into()),
                ("k".into(), "v".into()),
            ],
            ..Default::default()
        };
        let mut props = Some(forged);
        i.tag(&mut props, "a/b", Some("me"), 1, true, None);
        assert_eq!(
            props.as_ref().unwrap().user_properties,
            vec![("k".into(), "v".into())]
        );

        i.no_local.add("a/#");
        i.qos2.add("a/+");
        i.retain_as_published.add("#");
        let mut props = None;
        i.tag(&mut props, "a/b", Some("me"), 1, true, None);
        let meta = take_meta(&mut props);
        assert_eq!(
            meta,
            Meta {
                origin: Some("me".into()),
                qos: Some(1),
                retain: true,
                stored: None,
                expires_at: None,
            }
        );
        assert!(props.is_none(), "reserved keys removed, nothing else left");

        // The Message Expiry Interval travels as a deadline, never to the router as such.
        let mut props = Some(PublishProperties {
            message_expiry_interval: Some(30),
            ..Default::default()
        });
        let before = crate::pipeline::now_ms();
        i.tag(&mut props, "x/y", None, 0, false, None);
        assert_eq!(props.as_ref().unwrap().message_expiry_interval, None);
        let at = take_meta(&mut props).expires_at.unwrap();
        assert!((before + 30_000..=crate::pipeline::now_ms() + 30_000).contains(&at));
        assert!(props.is_none());

        i.no_local.remove("a/#");
        let mut none = None;
        i.tag(&mut none, "x/y", Some("me"), 2, false, None);
        assert!(none.is_none(), "nothing needed, nothing added");
    }
}
