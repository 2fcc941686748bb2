//! Packet ids of router deliveries as the client sees them, and what a persistent session
//! carries from one connection to the next so unfinished deliveries are resent as the
//! specification wants: the PUBLISH with DUP 1 and its original packet id, or the PUBREL when
//! the client had already sent PUBREC [MQTT-4.4.0-1] [MQTT-3.3.1-1].
//!
//! The router numbers its deliveries afresh on every connection (from 1) and, on reconnect,
//! re-reads the unacknowledged ones from its log as new deliveries (DUP 0, new packet id). It
//! also resends the PUBRELs it owes, under its old packet ids. So the edge remembers, when a
//! connection of a persistent session ends, which messages the client had and under which ids;
//! on the next connection it recognises the router's re-sent copies and translates packet ids
//! between the client and the router where they differ. A message is recognised by the
//! address of its topic and payload buffers: the router hands out clones of the buffers in its
//! log, and the carried copies keep those buffers alive, so an address cannot be reused by
//! another message meanwhile.
//!
//! The session's own bookkeeping (ack order, QoS 2 state, stored copies) stays keyed by the
//! router's packet ids; only the packets to and from the client are translated. With nothing
//! carried and no translated id in use, every lookup is one emptiness check.

use bytes::Bytes;
use std::collections::HashMap;

/// First packet id the edge gives a router delivery whose own id the client still uses for
/// another message. Below the ids of the edge's own deliveries (`durable::REPLAY_BASE`) and
/// above the router's (1–100).
const ALIAS_BASE: u16 = 0x4000;
const ALIAS_LAST: u16 = 0x7FFF;

/// A router delivery the client was sent: its packet id there and the message (for a resend
/// after a reconnect). Only kept for persistent sessions.
pub(super) struct Shown {
    pub(super) client_pkid: u16,
    pub(super) topic: Bytes,
    pub(super) payload: Bytes,
}

impl Shown {
    fn is(&self, topic: &Bytes, payload: &Bytes) -> bool {
        self.topic.as_ptr() == topic.as_ptr()
            && self.topic.len() == topic.len()
            && self.payload.as_ptr() == payload.as_ptr()
            && self.payload.len() == payload.len()
    }
}

/// What the client is owed for a delivery the router will send again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Owed {
    /// The PUBLISH again, with DUP 1 and the same packet id.
    Publish,
    /// The PUBREL: the client sent PUBREC, the router never got it.
    PubRel,
    /// Nothing: the client acknowledged it, the router never got the ack; the edge finishes
    /// the router's flow in the client's place.
    Nothing,
}

struct Carried {
    shown: Shown,
    owed: Owed,
}

/// What a persistent session hands to its next connection (kept in the registry meanwhile).
#[derive(Default)]
pub(crate) struct Carry {
    /// Deliveries the router will re-read from its log, in its order.
    deliveries: Vec<Carried>,
    /// PUBRELs the router will resend, by its (old) packet id: the client's packet id, or
    /// `None` when the client already completed the flow and the edge answers for it.
    rels: HashMap<u16, Option<u16>>,
}

impl Carry {
    pub(crate) fn is_empty(&self) -> bool {
        self.deliveries.is_empty() && self.rels.is_empty()
    }

    pub(super) fn push(&mut self, shown: &Shown, owed: Owed) {
        self.deliveries.push(Carried {
            shown: Shown {
                client_pkid: shown.client_pkid,
                topic: shown.topic.clone(),
                payload: shown.payload.clone(),
            },
            owed,
        });
    }

    pub(super) fn push_rel(&mut self, router_pkid: u16, client_pkid: Option<u16>) {
        self.rels.insert(router_pkid, client_pkid);
    }
}

/// How the client sees one router delivery.
pub(super) struct Assigned {
    pub(super) client_pkid: u16,
    /// Set when this is the resend of a delivery of an earlier connection.
    pub(super) owed: Option<Owed>,
}

/// Packet ids between the client and the router, for one connection.
#[derive(Default)]
pub(super) struct Pkids {
    /// Client packet id → router packet id, for flows whose ids differ or were carried over;
    /// removed when the flow ends.
    to_router: HashMap<u16, u16>,
    /// Carried deliveries not yet re-sent by the router; their client ids stay reserved.
    carried: Vec<Carried>,
    /// PUBRELs the router will resend (see [`Carry::rels`]).
    rels: HashMap<u16, Option<u16>>,
    next_alias: u16,
}

impl Pkids {
    /// Starts a connection with what the previous one carried.
    pub(super) fn resume(carry: Carry) -> Pkids {
        let mut to_router = HashMap::new();
        for (&router, &client) in &carry.rels {
            if let Some(client) = client {
                to_router.insert(client, router);
            }
        }
        Pkids {
            to_router,
            carried: carry.deliveries,
            rels: carry.rels,
            next_alias: ALIAS_BASE,
        }
    }

    fn reserved(&self, client_pkid: u16) -> bool {
        self.to_router.contains_key(&client_pkid)
            || self
                .carried
                .iter()
                .any(|c| c.shown.client_pkid == client_pkid)
    }

    /// Whether this message (topic and payload as the router holds them) is a delivery of an
    /// earlier connection that the router has not re-sent yet.
    pub(super) fn carries(&self, (topic, payload): &(Bytes, Bytes)) -> bool {
        self.carried.iter().any(|c| c.shown.is(topic, payload))
    }

    /// The client's packet id for a router delivery (`msg`: its topic and payload, known for
    /// persistent sessions), and whether it re-sends a delivery of an earlier connection.
    pub(super) fn assign(&mut self, router_pkid: u16, msg: Option<&(Bytes, Bytes)>) -> Assigned {
        if self.to_router.is_empty() && self.carried.is_empty() {
            return Assigned {
                client_pkid: router_pkid,
                owed: None,
            };
        }
        let found = msg.and_then(|(topic, payload)| {
            self.carried.iter().position(|c| c.shown.is(topic, payload))
        });
        if let Some(i) = found {
            let c = self.carried.remove(i);
            if c.owed != Owed::Nothing {
                // The client will answer under its id (the edge finishes `Nothing` itself).
                self.to_router.insert(c.shown.client_pkid, router_pkid);
            }
            return Assigned {
                client_pkid: c.shown.client_pkid,
                owed: Some(c.owed),
            };
        }
        if !self.reserved(router_pkid) {
            return Assigned {
                client_pkid: router_pkid,
                owed: None,
            };
        }
        // The client still uses the router's id for another message: give this one an id of
        // the alias range. At most a few hundred flows are open, so a free one is near.
        let mut alias = self.next_alias;
        for _ in ALIAS_BASE..=ALIAS_LAST {
            if !self.reserved(alias) {
                break;
            }
            alias = if alias >= ALIAS_LAST {
                ALIAS_BASE
            } else {
                alias + 1
            };
        }
        self.next_alias = if alias >= ALIAS_LAST {
            ALIAS_BASE
        } else {
            alias + 1
        };
        self.to_router.insert(alias, router_pkid);
        Assigned {
            client_pkid: alias,
            owed: None,
        }
    }

    /// The router's packet id for an ack from the client; `done` when the ack ends the flow.
    pub(super) fn router_pkid(&mut self, client_pkid: u16, done: bool) -> u16 {
        if self.to_router.is_empty() {
            return client_pkid;
        }
        let found = if done {
            self.to_router.remove(&client_pkid)
        } else {
            self.to_router.get(&client_pkid).copied()
        };
        found.unwrap_or(client_pkid)
    }

    /// The client's packet id of a flow by the router's id (for a carry; a linear search,
    /// run once per open flow when a connection ends).
    pub(super) fn client_pkid(&self, router_pkid: u16) -> u16 {
        self.to_router
            .iter()
            .find(|&(_, &r)| r == router_pkid)
            .map(|(&c, _)| c)
            .unwrap_or(router_pkid)
    }

    /// A PUBREL the router resends for a flow of an earlier connection: `Some(Some(id))` to
    /// forward under the client's id, `Some(None)` when the client already completed it.
    pub(super) fn resent_rel(&mut self, router_pkid: u16) -> Option<Option<u16>> {
        if self.rels.is_empty() {
            return None;
        }
        self.rels.remove(&router_pkid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(s: &'static str) -> (Bytes, Bytes) {
        let b = Bytes::from_static(s.as_bytes());
        (b.slice(..1), b.slice(1..))
    }

    #[test]
    fn identity_without_carry() {
        let mut p = Pkids::default();
        let a = p.assign(7, Some(&msg("tx")));
        assert_eq!((a.client_pkid, a.owed), (7, None));
        assert_eq!(p.router_pkid(7, true), 7);
    }

    #[test]
    fn carried_deliveries_keep_their_ids_and_new_ones_avoid_them() {
        let (one, two) = (msg("a1"), msg("b2"));
        let mut carry = Carry::default();
        let shown = |m: &(Bytes, Bytes), id| Shown {
            client_pkid: id,
            topic: m.0.clone(),
            payload: m.1.clone(),
        };
        carry.push(&shown(&one, 2), Owed::Publish);
        carry.push(&shown(&two, 3), Owed::Nothing);
        carry.push_rel(1, Some(1));
        let mut p = Pkids::resume(carry);
        assert_eq!(p.resent_rel(1), Some(Some(1)));
        // The router re-sends "a1" as its 1: the client sees 2 again, with DUP.
        let a = p.assign(1, Some(&one));
        assert_eq!((a.client_pkid, a.owed), (2, Some(Owed::Publish)));
        // A new message the router numbers 2 (or 3, still reserved) gets an alias.
        let b = p.assign(2, Some(&msg("c3")));
        assert_eq!(b.client_pkid, ALIAS_BASE);
        assert_eq!(p.assign(3, None).client_pkid, ALIAS_BASE + 1);
        // Acks map back.
        assert_eq!(p.router_pkid(2, true), 1);
        assert_eq!(p.router_pkid(ALIAS_BASE, true), 2);
        assert_eq!(p.router_pkid(1, true), 1);
        // The same bytes at another address are another message.
        let copy = (
            Bytes::copy_from_slice(&two.0),
            Bytes::copy_from_slice(&two.1),
        );
        assert_eq!(p.assign(4, Some(&copy)).owed, None);
        assert_eq!(p.assign(5, Some(&two)).owed, Some(Owed::Nothing));
    }
}
