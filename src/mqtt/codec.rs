//! Bytes ↔ packets for one connection: framing with our own size checks, protocol level
//! detection from CONNECT, and rumqttd's v4/v5 codecs for the packet bodies.

use crate::router::protocol::{
    self, Disconnect, DisconnectReasonCode, Packet, Protocol, QoS, V4, V5,
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
        check_body(kind, body, self.version)?;
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
        let r = match self.version {
            Version::V5 => V5.write(packet, out),
            Version::V311 => V4.write(strip_properties(packet), out),
        };
        r.map_err(|e| CodecError::Malformed(e.to_string()))
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

/// Checks rumqttd's readers skip: reserved bits and fields the specification makes malformed.
fn check_body(kind: u8, body: &[u8], version: Version) -> Result<(), CodecError> {
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
        }
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
