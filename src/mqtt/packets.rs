//! Small packet and property conversions shared by the session code.

use super::codec::Version;
use crate::pipeline::{DropCode, Props, valid_filter};
use crate::router::protocol::*;

pub(super) fn valid_shared(filter: &str) -> bool {
    let mut parts = filter.splitn(3, '/');
    let (_, group, rest) = (parts.next(), parts.next(), parts.next());
    matches!((group, rest), (Some(g), Some(r)) if !g.is_empty() && !g.contains(['+', '#']) && valid_filter(r))
}

pub(super) fn pubrec(pkid: u16, refused: Option<DropCode>) -> Packet {
    let reason = match refused {
        None => PubRecReason::Success,
        Some(DropCode::Unspecified) => PubRecReason::UnspecifiedError,
        Some(DropCode::ImplementationSpecific) => PubRecReason::ImplementationSpecificError,
        Some(DropCode::NotAuthorized) => PubRecReason::NotAuthorized,
        Some(DropCode::TopicNameInvalid) => PubRecReason::TopicNameInvalid,
        Some(DropCode::QuotaExceeded | DropCode::PacketTooLarge) => PubRecReason::QuotaExceeded,
        Some(DropCode::PayloadFormatInvalid) => PubRecReason::PayloadFormatInvalid,
    };
    Packet::PubRec(PubRec { pkid, reason }, None)
}

pub(super) fn unsuback(pkid: u16, reasons: Vec<UnsubAckReason>, version: Version) -> Packet {
    let reasons = match version {
        Version::V5 => reasons,
        Version::V311 => vec![],
    };
    Packet::UnsubAck(UnsubAck { pkid, reasons }, None)
}

pub(super) fn strip_alias(mut p: PublishProperties) -> PublishProperties {
    p.topic_alias = None;
    p.subscription_identifiers.clear();
    p
}

/// Pipeline properties → router properties (None when empty, which keeps v5 packets small).
pub fn props_to_router(p: &Props) -> Option<PublishProperties> {
    if *p == Props::default() {
        return None;
    }
    Some(PublishProperties {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval,
        topic_alias: None,
        response_topic: p.response_topic.clone(),
        correlation_data: p.correlation_data.clone(),
        user_properties: p.user.clone(),
        subscription_identifiers: vec![],
        content_type: p.content_type.clone(),
    })
}

pub fn props_from_router(p: PublishProperties) -> Props {
    Props {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval,
        content_type: p.content_type,
        response_topic: p.response_topic,
        correlation_data: p.correlation_data,
        user: p.user_properties,
    }
}

pub(super) fn will_props(p: LastWillProperties) -> Props {
    Props {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval,
        content_type: p.content_type,
        response_topic: p.response_topic,
        correlation_data: p.correlation_data,
        user: p.user_properties,
    }
}
