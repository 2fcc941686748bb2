//! Bytes ↔ packets for one connection: framing with our own size checks, protocol level
//! detection from CONNECT, and rumqttd's v4/v5 codecs for the packet bodies.

use crate::router::protocol::{
    self, Disconnect, DisconnectProperties, DisconnectReasonCode, Packet, Protocol, Publish,
    PublishProperties, QoS, V4, V5,
};
use bytes::BytesMut;
use std::panic::AssertUnwindSafe;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("packet of {size} bytes exceeds the maximum packet size {max}")]
    TooLarge { size: usize, max: usize },
    #[error("malformed packet: {0}")]
    Malformed(String),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("unsupported protocol level {0}")]
    UnsupportedVersion(u8),
    #[error("AUTH packets are not supported (no authentication method is configured)")]
    Auth,
}

/// MQTT protocol version of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V311,
    V5,
}

/// One decoded packet, with the QoS and packet id of a PUBLISH (which rumqttd keeps private).
pub struct Frame {
    pub packet: Packet,
    pub publish_meta: Option<(QoS, u16)>,
    /// Bytes the packet took on the wire.
    pub wire_len: usize,
}

/// Decodes the fixed header: (packet type byte, header length, remaining length).
/// `Ok(None)` means more bytes are needed.
fn fixed_header(buf: &[u8]) -> Result<Option<(u8, usize, usize)>, CodecError> {
    let Some(&byte1) = buf.first() else {
        return Ok(None);
    };
    let mut len = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        len |= ((b & 0x7F) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((byte1, 2 + i, len)));
        }
    }
    Err(CodecError::Malformed(
        "remaining length longer than 4 bytes".into(),
    ))
}

/// Reads the protocol level of a CONNECT at the start of `buf`, once enough bytes arrived.
pub fn detect_version(buf: &[u8], max: usize) -> Result<Option<Version>, CodecError> {
    let Some((byte1, hlen, rlen)) = fixed_header(buf)? else {
        return Ok(None);
    };
    if byte1 != 0x10 {
        return Err(CodecError::Protocol("first packet must be CONNECT"));
    }
    if rlen > max {
        return Err(CodecError::TooLarge { size: rlen, max });
    }
    let body = &buf[hlen..];
    if body.len() < 2 {
        return Ok(None);
    }
    let name_len = u16::from_be_bytes([body[0], body[1]]) as usize;
    let Some(&level) = body.get(2 + name_len) else {
        return Ok(if rlen < 3 + name_len {
            Err(CodecError::Malformed("CONNECT too short".into()))?
        } else {
            None
        });
    };
    let name = &body[2..2 + name_len];
    match (name, level) {
        (b"MQTT", 4) => Ok(Some(Version::V311)),
        (b"MQTT", 5) => Ok(Some(Version::V5)),
        (b"MQTT", l) | (b"MQIsdp", l) => Err(CodecError::UnsupportedVersion(l)),
        _ => Err(CodecError::Malformed("unknown protocol name".into())),
    }
}

/// A connection's codec.
pub struct Codec {
    pub version: Version,
    /// Largest remaining length we accept.
    pub max_incoming: usize,
}

impl Codec {
    pub fn new(version: Version, max_incoming: usize) -> Self {
        Codec {
            version,
            max_incoming,
        }
    }

    /// Takes the next complete packet off the front of `buf`, or `Ok(None)` if incomplete.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        let Some((byte1, hlen, rlen)) = fixed_header(buf)? else {
            return Ok(None);
        };
        if rlen > self.max_incoming {
            return Err(CodecError::TooLarge {
                size: rlen,
                max: self.max_incoming,
            });
        }
        let kind = byte1 >> 4;
        let flags = byte1 & 0x0F;
        match kind {
            0 => return Err(CodecError::Malformed("packet type 0 is reserved".into())),
            15 if self.version == Version::V5 => return Err(CodecError::Auth),
            15 => return Err(CodecError::Malformed("packet type 15 is reserved".into())),
            // SUBSCRIBE, UNSUBSCRIBE and PUBREL must carry flags 0010 [MQTT-2.2.2-1].
            6 | 8 | 10 if flags != 0b0010 => {
                return Err(CodecError::Malformed("reserved flags must be 0010".into()));
            }
            3 if (flags >> 1) & 0b11 == 3 => {
                return Err(CodecError::Malformed("PUBLISH with QoS 3".into()));
            }
            3 => {}
            _ if flags != 0 && !matches!(kind, 6 | 8 | 10) => {
                return Err(CodecError::Malformed("reserved flags must be 0".into()));
            }
            _ => {}
        }
        let wire_len = hlen + rlen;
        if buf.len() < wire_len {
            // Reserve once so a large packet is read without repeated reallocations.
            buf.reserve(wire_len - buf.len());
            return Ok(None);
        }
        let body = &buf[hlen..wire_len];
        check_body(kind, flags, body, self.version)?;
        if kind == 14 && self.version == Version::V5 && rlen == 1 {
            // Reason code without a property length is well-formed [§3.14.2.2.1]; rumqttd's
            // reader wants the length byte.
            let reason = disconnect_reason(body[0]);
            let _ = buf.split_to(wire_len);
            return Ok(Some(Frame {
                packet: Packet::Disconnect(
                    Disconnect {
                        reason_code: reason,
                    },
                    None,
                ),
                publish_meta: None,
                wire_len,
            }));
        }
        let publish_meta = if kind == 3 {
            Some(
                crate::router::peek_publish(&buf[..wire_len]).ok_or_else(|| {
                    CodecError::Malformed("PUBLISH too short for its packet id".into())
                })?,
            )
        } else {
            None
        };
        let max = self.max_incoming;
        let version = self.version;
        // rumqttd's codecs are not ours: contain any panic on hostile input to this connection.
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| match version {
            Version::V311 => V4.read_mut(buf, max),
            Version::V5 => V5.read_mut(buf, max),
        }));
        match result {
            Ok(Ok(packet)) => Ok(Some(Frame {
                packet,
                publish_meta,
                wire_len,
            })),
            // The whole frame was present, so a body that wants more bytes is malformed.
            Ok(Err(protocol::Error::InsufficientBytes(_))) => Err(CodecError::Malformed(
                "packet body shorter than its fields".into(),
            )),
            Ok(Err(e)) => Err(CodecError::Malformed(e.to_string())),
            Err(_) => Err(CodecError::Malformed("undecodable packet".into())),
        }
    }

    /// Appends a packet to `out`. v3.1.1 connections never see v5 properties.
    pub fn encode(&self, packet: Packet, out: &mut BytesMut) -> Result<usize, CodecError> {
        if let (Version::V5, Packet::Disconnect(d, props)) = (self.version, &packet) {
            let empty = |p: &DisconnectProperties| {
                p.session_expiry_interval.is_none()
                    && p.reason_string.is_none()
                    && p.user_properties.is_empty()
                    && p.server_reference.is_none()
            };
            if props.as_ref().is_none_or(empty) {
                // rumqttd writes a reason code without properties as `E0 00` (Normal
                // Disconnection) when given empty properties, and with a stray byte after the
                // packet when given none: reason code and an empty property section instead.
                out.extend_from_slice(&[0xE0, 2, disconnect_code(d.reason_code), 0]);
                return Ok(4);
            }
        }
        let r = match self.version {
            Version::V5 => V5.write(packet, out),
            Version::V311 => V4.write(strip_properties(packet), out),
        };
        r.map_err(|e| CodecError::Malformed(e.to_string()))
    }

    /// Appends a PUBLISH; like [`Codec::encode`] without first building a `Packet` from it.
    pub fn encode_publish(
        &self,
        publish: Publish,
        props: Option<PublishProperties>,
        out: &mut BytesMut,
    ) -> Result<usize, CodecError> {
        let r = match self.version {
            Version::V5 => V5.write(Packet::Publish(publish, props), out),
            Version::V311 => V4.write(Packet::Publish(publish, None), out),
        };
        r.map_err(|e| CodecError::Malformed(e.to_string()))
    }

    /// Appends a packet other than PUBLISH for a client whose Maximum Packet Size is `max`.
    /// A Reason String or User Property that would take the packet past it is left out, so
    /// the client still gets the packet and its reason code [MQTT-3.2.2-19] [MQTT-3.2.2-20]
    /// [MQTT-3.4.2-2] [MQTT-3.4.2-3] [MQTT-3.14.2-3] [MQTT-3.14.2-4] and the like.
    pub fn encode_within(
        &self,
        packet: Packet,
        max: Option<usize>,
        out: &mut BytesMut,
    ) -> Result<usize, CodecError> {
        let lean = match max {
            Some(_) if self.version == Version::V5 => without_problem_info(&packet),
            _ => None,
        };
        let (Some(max), Some(lean)) = (max, lean) else {
            return self.encode(packet, out);
        };
        let start = out.len();
        let n = self.encode(packet, out)?;
        if out.len() - start <= max {
            return Ok(n);
        }
        out.truncate(start);
        self.encode(lean, out)
    }
}

/// The packet without its Reason String and User Properties; `None` when it has neither.
fn without_problem_info(packet: &Packet) -> Option<Packet> {
    macro_rules! lean {
        ($variant:ident, $ack:expr, $props:expr) => {{
            if $props.reason_string.is_none() && $props.user_properties.is_empty() {
                return None;
            }
            let mut props = $props.clone();
            props.reason_string = None;
            props.user_properties.clear();
            Some(Packet::$variant($ack.clone(), Some(props)))
        }};
    }
    match packet {
        Packet::ConnAck(a, Some(p)) => lean!(ConnAck, a, p),
        Packet::PubAck(a, Some(p)) => lean!(PubAck, a, p),
        Packet::PubRec(a, Some(p)) => lean!(PubRec, a, p),
        Packet::PubRel(a, Some(p)) => lean!(PubRel, a, p),
        Packet::PubComp(a, Some(p)) => lean!(PubComp, a, p),
        Packet::SubAck(a, Some(p)) => lean!(SubAck, a, p),
        Packet::UnsubAck(a, Some(p)) => lean!(UnsubAck, a, p),
        Packet::Disconnect(d, Some(p)) => lean!(Disconnect, d, p),
        _ => None,
    }
}

fn strip_properties(packet: Packet) -> Packet {
    match packet {
        Packet::Publish(p, _) => Packet::Publish(p, None),
        Packet::ConnAck(a, _) => Packet::ConnAck(a, None),
        Packet::PubAck(a, _) => Packet::PubAck(a, None),
        Packet::PubRec(a, _) => Packet::PubRec(a, None),
        Packet::PubRel(a, _) => Packet::PubRel(a, None),
        Packet::PubComp(a, _) => Packet::PubComp(a, None),
        Packet::SubAck(a, _) => Packet::SubAck(a, None),
        Packet::UnsubAck(a, _) => Packet::UnsubAck(a, None),
        other => other,
    }
}

/// Checks rumqttd's readers skip: reserved bits, fields the specification makes malformed, and
/// properties given more than once (rumqttd keeps the last one silently).
fn check_body(kind: u8, flags: u8, body: &[u8], version: Version) -> Result<(), CodecError> {
    let bad = |why: &str| Err(CodecError::Malformed(why.into()));
    match kind {
        1 => {
            // Protocol name (2 + 4 bytes), level, then the flags.
            let Some(&flags) = body.get(7) else {
                return Ok(());
            };
            if flags & 0x01 != 0 {
                return bad("reserved CONNECT flag set [MQTT-3.1.2-3]");
            }
            if version == Version::V311 && flags & 0x40 != 0 && flags & 0x80 == 0 {
                return bad("password flag without the user name flag [MQTT-3.1.2-22]");
            }
            if version == Version::V5 {
                check_connect_properties(body, flags)?;
            }
        }
        3 if version == Version::V5 => check_publish_properties(body, flags)?,
        8 | 10 => {
            if body.get(..2) == Some(&[0, 0]) {
                return bad("packet identifier 0 [MQTT-2.2.1-3]");
            }
            let mut at = 2;
            if version == Version::V5 {
                let (len, n) = varint(body.get(at..).unwrap_or_default())?;
                at += n + len;
            }
            if at >= body.len() {
                return bad("no topic filter [MQTT-3.8.3-3] [MQTT-3.10.3-2]");
            }
            if kind == 8 {
                let reserved = match version {
                    Version::V5 => 0xC0,
                    Version::V311 => 0xFC,
                };
                while at + 2 <= body.len() {
                    let len = u16::from_be_bytes([body[at], body[at + 1]]) as usize;
                    let Some(&options) = body.get(at + 2 + len) else {
                        break;
                    };
                    if options & reserved != 0 {
                        return bad("reserved subscription option bits set [MQTT-3.8.3-5]");
                    }
                    at += 3 + len;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Property identifiers that may appear more than once in a packet: User Property and
/// Subscription Identifier [§2.2.2.2].
const REPEATABLE: u64 = 1 << 0x26 | 1 << 0x0B;

/// Refuses a property section (`props`, without its length) that names a single-occurrence
/// property twice: a Protocol Error [§3.1.2.11, §3.1.3.2, §3.3.2.3]. Allocation-free: property
/// ids are below 64, so one bit each. An unknown id or a truncated value ends the scan; rumqttd's
/// reader refuses those as malformed.
fn check_properties(props: &[u8]) -> Result<(), CodecError> {
    let mut seen = 0u64;
    let mut at = 0;
    while let Some(&id) = props.get(at) {
        at += 1;
        let Some(bit) = 1u64.checked_shl(id as u32) else {
            return Ok(());
        };
        if seen & bit & !REPEATABLE != 0 {
            return Err(CodecError::Protocol(
                "a property that may appear once is given twice",
            ));
        }
        seen |= bit;
        let two_byte_len = |at: usize| {
            props
                .get(at..at + 2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
        };
        let len = match id {
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => 1,
            0x13 | 0x21 | 0x22 | 0x23 => 2,
            0x02 | 0x11 | 0x18 | 0x27 => 4,
            0x0B => match varint(props.get(at..).unwrap_or_default()) {
                Ok((_, n)) => n,
                Err(_) => return Ok(()),
            },
            0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1A | 0x1C | 0x1F => {
                match two_byte_len(at) {
                    Some(n) => 2 + n,
                    None => return Ok(()),
                }
            }
            0x26 => {
                let Some(key) = two_byte_len(at) else {
                    return Ok(());
                };
                match two_byte_len(at + 2 + key) {
                    Some(value) => 4 + key + value,
                    None => return Ok(()),
                }
            }
            _ => return Ok(()),
        };
        at += len;
    }
    Ok(())
}

/// The property section that starts at `at` in `body` (without its length) and where it ends:
/// `None` when the packet ends first.
fn property_section(body: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let (len, n) = varint(body.get(at..)?).ok()?;
    let start = at + n;
    let end = start.checked_add(len)?;
    Some((body.get(start..end)?, end))
}

/// CONNECT properties and, with the will flag, will properties [MQTT-3.1.2-9].
fn check_connect_properties(body: &[u8], flags: u8) -> Result<(), CodecError> {
    let Some(name) = body.get(..2) else {
        return Ok(());
    };
    // Protocol name, level, flags, keep alive.
    let at = 2 + u16::from_be_bytes([name[0], name[1]]) as usize + 4;
    let Some((props, id_at)) = property_section(body, at) else {
        return Ok(());
    };
    check_properties(props)?;
    if flags & 0x04 == 0 {
        return Ok(());
    }
    // The client identifier follows the properties, then the will properties.
    let Some(id) = body.get(id_at..id_at + 2) else {
        return Ok(());
    };
    let will_at = id_at + 2 + u16::from_be_bytes([id[0], id[1]]) as usize;
    match property_section(body, will_at) {
        Some((will, _)) => check_properties(will),
        None => Ok(()),
    }
}

/// PUBLISH properties (the hot path: only a non-empty section is scanned).
fn check_publish_properties(body: &[u8], flags: u8) -> Result<(), CodecError> {
    let Some(topic) = body.get(..2) else {
        return Ok(());
    };
    let mut at = 2 + u16::from_be_bytes([topic[0], topic[1]]) as usize;
    if (flags >> 1) & 0b11 != 0 {
        at += 2;
    }
    match body.get(at) {
        None | Some(0) => Ok(()),
        Some(_) => match property_section(body, at) {
            Some((props, _)) => check_properties(props),
            None => Ok(()),
        },
    }
}

/// A variable byte integer: (value, bytes used).
fn varint(b: &[u8]) -> Result<(usize, usize), CodecError> {
    let mut v = 0usize;
    for (i, &byte) in b.iter().take(4).enumerate() {
        v |= ((byte & 0x7F) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((v, i + 1));
        }
    }
    Err(CodecError::Malformed("bad variable byte integer".into()))
}

/// The wire value of a DISCONNECT reason code.
fn disconnect_code(reason: DisconnectReasonCode) -> u8 {
    use DisconnectReasonCode::*;
    match reason {
        NormalDisconnection => 0x00,
        DisconnectWithWillMessage => 0x04,
        UnspecifiedError => 0x80,
        MalformedPacket => 0x81,
        ProtocolError => 0x82,
        ImplementationSpecificError => 0x83,
        NotAuthorized => 0x87,
        ServerBusy => 0x89,
        ServerShuttingDown => 0x8B,
        KeepAliveTimeout => 0x8D,
        SessionTakenOver => 0x8E,
        TopicFilterInvalid => 0x8F,
        TopicNameInvalid => 0x90,
        ReceiveMaximumExceeded => 0x93,
        TopicAliasInvalid => 0x94,
        PacketTooLarge => 0x95,
        MessageRateTooHigh => 0x96,
        QuotaExceeded => 0x97,
        AdministrativeAction => 0x98,
        PayloadFormatInvalid => 0x99,
        RetainNotSupported => 0x9A,
        QoSNotSupported => 0x9B,
        UseAnotherServer => 0x9C,
        ServerMoved => 0x9D,
        SharedSubscriptionNotSupported => 0x9E,
        ConnectionRateExceeded => 0x9F,
        MaximumConnectTime => 0xA0,
        SubscriptionIdentifiersNotSupported => 0xA1,
        WildcardSubscriptionsNotSupported => 0xA2,
    }
}

fn disconnect_reason(code: u8) -> DisconnectReasonCode {
    match code {
        0x00 => DisconnectReasonCode::NormalDisconnection,
        0x04 => DisconnectReasonCode::DisconnectWithWillMessage,
        0x80 => DisconnectReasonCode::UnspecifiedError,
        0x81 => DisconnectReasonCode::MalformedPacket,
        0x82 => DisconnectReasonCode::ProtocolError,
        0x83 => DisconnectReasonCode::ImplementationSpecificError,
        0x90 => DisconnectReasonCode::TopicNameInvalid,
        0x93 => DisconnectReasonCode::ReceiveMaximumExceeded,
        0x94 => DisconnectReasonCode::TopicAliasInvalid,
        0x95 => DisconnectReasonCode::PacketTooLarge,
        0x96 => DisconnectReasonCode::MessageRateTooHigh,
        0x97 => DisconnectReasonCode::QuotaExceeded,
        0x98 => DisconnectReasonCode::AdministrativeAction,
        0x99 => DisconnectReasonCode::PayloadFormatInvalid,
        _ => DisconnectReasonCode::UnspecifiedError,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect_bytes(level: u8) -> Vec<u8> {
        let mut v = vec![
            0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', level, 2, 0, 60, 0, 0,
        ];
        v[1] = (v.len() - 2) as u8;
        v
    }

    #[test]
    fn detects_versions() {
        assert_eq!(
            detect_version(&connect_bytes(4), 1024),
            Ok(Some(Version::V311))
        );
        assert_eq!(
            detect_version(&connect_bytes(5), 1024),
            Ok(Some(Version::V5))
        );
        assert_eq!(
            detect_version(&connect_bytes(3), 1024),
            Err(CodecError::UnsupportedVersion(3))
        );
        assert_eq!(detect_version(&connect_bytes(4)[..5], 1024), Ok(None));
        assert!(detect_version(b"GET / HTTP/1.1\r\n", 1024).is_err());
    }

    #[test]
    fn huge_remaining_length_is_refused_before_the_body_arrives() {
        let codec = Codec::new(Version::V311, 1 << 20);
        // PUBLISH claiming 256 MB.
        let mut buf = BytesMut::from(&[0x30u8, 0xFF, 0xFF, 0xFF, 0x7F][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(CodecError::TooLarge { .. })
        ));
        let mut buf = BytesMut::from(&[0x30u8, 0xFF, 0xFF, 0xFF, 0xFF, 0x01][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(CodecError::Malformed(_))
        ));
    }

    /// A v5 CONNECT (client id "c") with `props`, and a will with `will_props` when given.
    fn connect_v5(props: &[u8], will_props: Option<&[u8]>) -> BytesMut {
        let flags = if will_props.is_some() { 0x06 } else { 0x02 };
        let mut body = vec![
            0,
            4,
            b'M',
            b'Q',
            b'T',
            b'T',
            5,
            flags,
            0,
            60,
            props.len() as u8,
        ];
        body.extend_from_slice(props);
        body.extend_from_slice(&[0, 1, b'c']);
        if let Some(w) = will_props {
            body.push(w.len() as u8);
            body.extend_from_slice(w);
            body.extend_from_slice(&[0, 1, b't', 0, 1, b'x']);
        }
        let mut v = vec![0x10, body.len() as u8];
        v.extend_from_slice(&body);
        BytesMut::from(&v[..])
    }

    #[test]
    fn duplicated_single_properties_are_protocol_errors() {
        let codec = Codec::new(Version::V5, 1 << 20);
        let dup = |r: Result<Option<Frame>, CodecError>| matches!(r, Err(CodecError::Protocol(_)));
        for props in [
            &[0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2][..],
            &[0x21, 0, 1, 0x26, 0, 1, b'k', 0, 0, 0x21, 0, 2],
            &[0x15, 0, 1, b'm', 0x15, 0, 1, b'n'],
            &[0x17, 1, 0x17, 1],
        ] {
            assert!(
                dup(codec.decode(&mut connect_v5(props, None))),
                "{props:x?}"
            );
        }
        for will in [
            &[0x18, 0, 0, 0, 1, 0x18, 0, 0, 0, 1][..],
            &[0x03, 0, 0, 0x03, 0, 0],
        ] {
            assert!(
                dup(codec.decode(&mut connect_v5(&[], Some(will)))),
                "{will:x?}"
            );
        }
        // User Property may repeat.
        let up = [0x26, 0, 1, b'k', 0, 0, 0x26, 0, 1, b'k', 0, 0];
        assert!(codec.decode(&mut connect_v5(&up, Some(&up))).is_ok());
        // PUBLISH QoS 1, topic "t", packet id 1: two Message Expiry Intervals; two Subscription
        // Identifiers pass the codec (the session refuses them from a client).
        let publish = |props: &[u8]| {
            let mut v = vec![
                0x32,
                (6 + props.len()) as u8,
                0,
                1,
                b't',
                0,
                1,
                props.len() as u8,
            ];
            v.extend_from_slice(props);
            BytesMut::from(&v[..])
        };
        assert!(dup(
            codec.decode(&mut publish(&[0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 1]))
        ));
        assert!(codec.decode(&mut publish(&[0x0B, 1, 0x0B, 2])).is_ok());
        assert!(codec.decode(&mut publish(&[])).is_ok());
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let codec = Codec::new(Version::V5, 1 << 20);
        for bytes in [
            &[0x00u8, 0x00][..],
            &[0x82, 0x02, 0x00, 0x01],
            &[0x31, 0x01, 0xFF],
            &[0x82, 0x03, 0x00, 0x01, 0x00],
            &[0xF0, 0x00],
        ] {
            let mut buf = BytesMut::from(bytes);
            assert!(codec.decode(&mut buf).is_err(), "{bytes:?}");
        }
    }
}
