//! How stored things are laid out in the database: messages as MQTT 5 PUBLISH frames behind a
//! small header (one codec, every v5 property kept in order), sessions as JSON (small, rare,
//! readable with any redb tool), and the byte keys of the queue and QoS 2 tables.

use crate::router::protocol::{Packet, Protocol, Publish, PublishProperties, V5};
use crate::router::{qos_from, route_publish};
use bytes::BytesMut;
use serde::{Deserialize, Serialize};

/// `qos u8 | stored_at_ms u64 LE`, then the frame.
const HEADER: usize = 9;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("record shorter than its header")]
    Short,
    #[error("record frame: {0}")]
    Frame(String),
    #[error("record is not a PUBLISH")]
    NotPublish,
    #[error("session record: {0}")]
    Session(#[from] serde_json::Error),
    #[error("key is malformed")]
    Key,
}

/// A message read back from the store.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    /// QoS it is owed at (published QoS for retained, delivery QoS for queued).
    pub qos: u8,
    pub stored_at_ms: u64,
    pub publish: Publish,
    pub props: Option<PublishProperties>,
}

impl StoredMessage {
    pub fn topic(&self) -> String {
        String::from_utf8_lossy(&self.publish.topic).into_owned()
    }

    /// Lowers the message expiry interval by the time spent in the store; `false` when it has
    /// expired [MQTT-3.3.2-5].
    pub fn age(&mut self, now_ms: u64) -> bool {
        let waited = (now_ms.saturating_sub(self.stored_at_ms) / 1000) as u32;
        match self
            .props
            .as_mut()
            .and_then(|p| p.message_expiry_interval.as_mut())
        {
            Some(left) if *left <= waited => false,
            Some(left) => {
                *left -= waited;
                true
            }
            None => true,
        }
    }
}

/// The frame part of a message record; shared by every session the message is queued for.
pub fn encode_frame(
    topic: &str,
    payload: &[u8],
    retain: bool,
    props: Option<PublishProperties>,
) -> Result<BytesMut, RecordError> {
    let p = route_publish(topic, payload, retain, qos_from(1));
    let mut out = BytesMut::with_capacity(16 + topic.len() + payload.len());
    V5.write(Packet::Publish(p, props), &mut out)
        .map_err(|e| RecordError::Frame(format!("{e:?}")))?;
    Ok(out)
}

/// Header plus frame.
pub fn message_record(qos: u8, stored_at_ms: u64, frame: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + frame.len());
    out.push(qos);
    out.extend_from_slice(&stored_at_ms.to_le_bytes());
    out.extend_from_slice(frame);
    out
}

pub fn decode_message(record: &[u8]) -> Result<StoredMessage, RecordError> {
    if record.len() < HEADER {
        return Err(RecordError::Short);
    }
    let qos = record[0].min(2);
    let mut at = [0u8; 8];
    at.copy_from_slice(&record[1..HEADER]);
    let mut frame = BytesMut::from(&record[HEADER..]);
    let max = frame.len() + 1;
    match V5.read_mut(&mut frame, max) {
        Ok(Packet::Publish(publish, props)) => Ok(StoredMessage {
            qos,
            stored_at_ms: u64::from_le_bytes(at),
            publish,
            props,
        }),
        Ok(_) => Err(RecordError::NotPublish),
        Err(e) => Err(RecordError::Frame(format!("{e:?}"))),
    }
}

/// Marks a queue record holding several messages. One commit writes every message it queues
/// for a session as one record: redb rewrites a branch page per insert, so one insert per
/// message would cap the store at about 125k messages/s on one core.
const BATCH: u8 = 0xB1;
/// Per entry: `seq u64 | qos u8 | stored_at_ms u64 | frame_len u32`, then the frame.
const ENTRY: usize = 21;

/// Appends one message to a queue record (started with [`batch_start`]).
pub fn batch_push(record: &mut Vec<u8>, seq: u64, qos: u8, stored_at_ms: u64, frame: &[u8]) {
    record.extend_from_slice(&seq.to_le_bytes());
    record.push(qos);
    record.extend_from_slice(&stored_at_ms.to_le_bytes());
    record.extend_from_slice(&(frame.len() as u32).to_le_bytes());
    record.extend_from_slice(frame);
}

pub fn batch_start() -> Vec<u8> {
    vec![BATCH]
}

/// One message in a queue record: (seq, qos, stored_at_ms, frame).
pub type Entry<'a> = (u64, u8, u64, &'a [u8]);

/// The entries of a queue record, without decoding frames.
pub fn batch_entries(record: &[u8]) -> Result<Vec<Entry<'_>>, RecordError> {
    if record.first() != Some(&BATCH) {
        return Err(RecordError::Frame("queue record without its marker".into()));
    }
    let mut out = Vec::new();
    let mut at = 1;
    while at < record.len() {
        let head = record.get(at..at + ENTRY).ok_or(RecordError::Short)?;
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&head[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let mut len = [0u8; 4];
        len.copy_from_slice(&head[17..21]);
        let len = u32::from_le_bytes(len) as usize;
        let frame = record
            .get(at + ENTRY..at + ENTRY + len)
            .ok_or(RecordError::Short)?;
        out.push((u64_at(0), head[8].min(2), u64_at(9), frame));
        at += ENTRY + len;
    }
    Ok(out)
}

/// Decodes a message from its parts in a queue record.
pub fn decode_entry(
    qos: u8,
    stored_at_ms: u64,
    frame: &[u8],
) -> Result<StoredMessage, RecordError> {
    let mut m = decode_message(&message_record(qos, stored_at_ms, frame))?;
    m.qos = qos;
    Ok(m)
}

/// One subscription of a persistent session, with the options it was made with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredFilter {
    pub path: String,
    pub qos: u8,
    #[serde(default)]
    pub no_local: bool,
    #[serde(default)]
    pub retain_as_published: bool,
    #[serde(default)]
    pub retain_handling: u8,
    #[serde(default)]
    pub id: Option<usize>,
}

/// A persistent session as stored.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Session Expiry Interval in seconds (`u32::MAX`: never).
    pub expiry: u32,
    /// When the client went away; `None` while it is connected.
    pub disconnected_at_ms: Option<u64>,
    pub filters: Vec<StoredFilter>,
    /// A will waiting for its delay interval when the client went away.
    #[serde(default)]
    pub will: Option<PendingWill>,
}

/// A delayed will, kept so that a restart neither loses nor repeats it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingWill {
    /// A message record ([`message_record`]).
    pub message: Vec<u8>,
    /// When it is due, in unix milliseconds.
    pub fire_at_ms: u64,
    /// The client's login, for the ACL check when it is published.
    pub username: Option<String>,
}

impl SessionRecord {
    /// When an offline session ends, in unix milliseconds (`None`: never, or online).
    pub fn expires_at_ms(&self) -> Option<u64> {
        let at = self.disconnected_at_ms?;
        (self.expiry != u32::MAX).then(|| at.saturating_add(self.expiry as u64 * 1000))
    }
}

/// Key of a queued message: `client id NUL seq (u64 BE)`. Client ids cannot contain NUL, so
/// one client's keys form one contiguous, ordered range.
pub fn queue_key(client: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(client.len() + 9);
    k.extend_from_slice(client.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Key of an incoming QoS 2 packet id waiting for PUBREL: `client id NUL pkid (u16 BE)`.
pub fn qos2_key(client: &str, pkid: u16) -> Vec<u8> {
    let mut k = Vec::with_capacity(client.len() + 3);
    k.extend_from_slice(client.as_bytes());
    k.push(0);
    k.extend_from_slice(&pkid.to_be_bytes());
    k
}

/// The key range holding every entry of `client` in a `client NUL …` keyed table.
pub fn client_range(client: &str) -> (Vec<u8>, Vec<u8>) {
    let mut lo = client.as_bytes().to_vec();
    lo.push(0);
    let mut hi = client.as_bytes().to_vec();
    hi.push(1);
    (lo, hi)
}

/// Splits a `client NUL suffix` key.
pub fn split_key(key: &[u8]) -> Result<(&str, &[u8]), RecordError> {
    let nul = key.iter().position(|&b| b == 0).ok_or(RecordError::Key)?;
    let client = std::str::from_utf8(&key[..nul]).map_err(|_| RecordError::Key)?;
    Ok((client, &key[nul + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_with_properties_and_age() {
        let props = PublishProperties {
            content_type: Some("text/plain".into()),
            user_properties: vec![("a".into(), "1".into()), ("b".into(), "2".into())],
            message_expiry_interval: Some(60),
            ..Default::default()
        };
        let frame = encode_frame("a/b", b"hello", true, Some(props)).unwrap();
        let rec = message_record(2, 1_000, &frame);
        let mut m = decode_message(&rec).unwrap();
        assert_eq!((m.qos, m.stored_at_ms), (2, 1_000));
        assert_eq!(
            (&m.publish.topic[..], &m.publish.payload[..]),
            (&b"a/b"[..], &b"hello"[..])
        );
        assert!(m.publish.retain);
        assert!(m.age(21_000));
        let p = m.props.clone().unwrap();
        assert_eq!(p.message_expiry_interval, Some(40));
        assert_eq!(p.user_properties[1], ("b".into(), "2".into()));
        assert!(!m.age(100_000));
    }

    #[test]
    fn broken_records_are_errors() {
        assert!(matches!(decode_message(&[1, 2]), Err(RecordError::Short)));
        assert!(decode_message(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0x30, 0x7f, 1]).is_err());
        assert!(split_key(b"nonul").is_err());
    }

    #[test]
    fn queue_records_hold_several_messages() {
        let mut rec = batch_start();
        let f1 = encode_frame("a", b"one", false, None).unwrap();
        let f2 = encode_frame("b", b"two", false, None).unwrap();
        batch_push(&mut rec, 7, 1, 100, &f1);
        batch_push(&mut rec, 8, 2, 200, &f2);
        let e = batch_entries(&rec).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!((e[1].0, e[1].1, e[1].2), (8, 2, 200));
        let m = decode_entry(e[1].1, e[1].2, e[1].3).unwrap();
        assert_eq!(&m.publish.payload[..], b"two");
        assert!(batch_entries(&rec[..rec.len() - 1]).is_err());
        assert!(batch_entries(b"x").is_err());
    }

    #[test]
    fn client_ranges_do_not_overlap() {
        let (lo, hi) = client_range("a");
        let inside = queue_key("a", u64::MAX);
        let other = queue_key("a0", 0);
        assert!(lo <= inside && inside < hi);
        assert!(!(lo <= other && other < hi));
    }
}
