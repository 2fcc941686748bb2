//! `mqtt.publish(topic, payload, {qos, retain, props})`: hands a new message to the broker's
//! [`Publisher`](crate::blocks::Publisher), which re-injects it at pipeline stage 1 as the
//! block's identity. Returns `true`, or `false, reason` when the loop guard or the broker
//! refused it; raises on a script bug (bad topic, payload over `max_payload`, more than
//! `max_publishes_per_call` publishes in one invocation, publishing from the top level).

use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;

use mlua::{Lua, LuaString, Table, Value};

use super::{HostCtx, SideEffect};
use crate::blocks::filter::validate_topic_name;
use crate::blocks::kv::now_ms;
use crate::blocks::verdict::{payload_bytes, props_from_lua, qos, utf8};
use crate::pipeline::{Message, Origin, Props};

fn fail(e: impl std::fmt::Display) -> mlua::Error {
    mlua::Error::runtime(format!("mqtt.publish: {e}"))
}

pub(crate) fn install(lua: &Lua, g: &Table, host: &Rc<HostCtx>) -> mlua::Result<()> {
    let mqtt = lua.create_table()?;
    let h = host.clone();
    let publish = lua.create_function(
        move |_, (topic, payload, opts): (LuaString, Value, Option<Table>)| {
            publish(&h, &topic, &payload, opts)
        },
    )?;
    mqtt.raw_set("publish", publish)?;
    g.raw_set("mqtt", mqtt)
}

fn publish(
    h: &HostCtx,
    topic: &LuaString,
    payload: &Value,
    opts: Option<Table>,
) -> mlua::Result<(bool, Option<String>)> {
    let Some(inv) = h.current() else {
        return Err(fail("called outside a handler"));
    };
    if inv.loading {
        return Err(fail("not allowed while the script loads"));
    }
    let topic = utf8(topic, "topic")?;
    validate_topic_name(&topic).map_err(fail)?;
    let payload = payload_bytes(payload).map_err(|e| fail(format!("payload {e}")))?;
    if payload.len() > h.settings.max_payload {
        return Err(fail(format!(
            "payload of {} bytes is larger than max_payload ({} bytes)",
            payload.len(),
            h.settings.max_payload
        )));
    }
    let count = inv.publishes.get() + 1;
    if count > h.settings.max_publishes_per_call {
        return Err(fail(format!(
            "more than max_publishes_per_call ({}) publishes in one call",
            h.settings.max_publishes_per_call
        )));
    }
    inv.publishes.set(count);

    let (mut q, mut retain, mut props) = (0, false, Props::default());
    if let Some(o) = opts {
        match o.raw_get::<Value>("qos")? {
            Value::Nil => {}
            v => q = qos(&v).map_err(|e| fail(format!("qos {e}")))?,
        }
        match o.raw_get::<Value>("retain")? {
            Value::Nil => {}
            Value::Boolean(b) => retain = b,
            _ => return Err(fail("retain must be a boolean")),
        }
        match o.raw_get::<Value>("props")? {
            Value::Nil => {}
            Value::Table(p) => props = props_from_lua(&p, &Props::default()).map_err(fail)?,
            _ => return Err(fail("props must be a table")),
        }
    }

    let hop = inv.hop.saturating_add(1);
    if hop > h.settings.max_hops {
        let reason = format!("refused: max_hops ({}) exceeded", h.settings.max_hops);
        h.spec.metrics().hop_refused.fetch_add(1, Relaxed);
        h.record(|| SideEffect::PublishRefused {
            topic: topic.clone(),
            reason: reason.clone(),
        });
        return Ok((false, Some(reason)));
    }
    let msg = Message {
        topic,
        payload,
        qos: q,
        retain,
        props,
        origin: Origin {
            client_id: format!("block:{}", h.ns()),
            username: Some(h.spec.identity.clone()),
            hop,
        },
        received_at: now_ms(),
    };
    h.record(|| SideEffect::Publish(msg.clone()));
    // The publisher is the broker's code running inside a Lua callback: a panic there must not
    // unwind through the Lua state and take the worker thread down.
    let sent = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h.publisher.publish(msg)))
        .unwrap_or_else(|_| Err("the broker's publisher panicked".to_owned()));
    match sent {
        Ok(()) => {
            h.spec.metrics().publishes.fetch_add(1, Relaxed);
            Ok((true, None))
        }
        Err(reason) => Ok((false, Some(reason))),
    }
}
