//! The message that flows through the publish pipeline, and the verdict each stage returns.
use bytes::Bytes;

/// MQTT v5 publish properties that blocks may read and change. v3.1.1 publishes carry none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Props {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub user: Vec<(String, String)>,
}

/// Who a message came from: a connected client, a block, or the broker itself (wills, media).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub client_id: String,
    pub username: Option<String>,
    /// Number of block republishes that led to this message (0 for client publishes).
    pub hop: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub props: Props,
    pub origin: Origin,
    /// Unix milliseconds when the broker received the message.
    pub received_at: u64,
}

/// MQTT v5 reason codes a stage may use to refuse a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropCode {
    Unspecified = 0x80,
    ImplementationSpecific = 0x83,
    NotAuthorized = 0x87,
    TopicNameInvalid = 0x90,
    QuotaExceeded = 0x97,
    PacketTooLarge = 0x95,
    PayloadFormatInvalid = 0x99,
}

// Returned once per message and moved, never stored in bulk: boxing would add an
// allocation per publish on the hot path.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Modify(Message),
    Drop { code: DropCode, reason: String },
    Consume,
}
