#!/usr/bin/env python3
"""Eclipse paho-mqtt 2.x (MQTT 5) client driven by tests/interop.rs.

Every event is printed to stdout as one JSON line, flushed at once, so the Rust test can wait
for an event (e.g. "subscribed") instead of sleeping:

  {"event": "connected", "reason_code": 0, "session_present": false}
  {"event": "subscribed", "granted": [1]}
  {"event": "message", "topic": ..., "payload": ..., "qos": 1, "retain": false, "props": {...}}
  {"event": "published", "mid": 1, "reason_code": 0, "payload": ...}
  {"event": "done"} / {"event": "timeout"} / {"event": "error", "error": ...}

Subcommands:
  pub     connect, publish each --payload in order (waiting for PUBACK/PUBCOMP), disconnect
  sub     connect (clean start unless --no-clean-start), subscribe, print --count messages
          (0: leave right after the SUBACK; -1: until killed or --timeout), disconnect
  resume  connect with clean_start=False, no SUBSCRIBE, print --count messages, disconnect
  will    connect with a will, print "connected", then wait to be killed (never disconnects)
  shared  sub on $share/<group>/<topic>

Exit codes: 0 done, 2 usage, 3 timeout, 4 connect refused / error.
"""

import argparse
import json
import os
import sys
import threading
import time

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

if int(paho.mqtt.__version__.split(".")[0]) < 2:
    print(json.dumps({"event": "error", "error": f"paho-mqtt {paho.mqtt.__version__} < 2"}))
    sys.exit(4)


def emit(**fields):
    print(json.dumps(fields, sort_keys=True), flush=True)


def text(b):
    if b is None:
        return None
    if isinstance(b, str):
        return b
    return bytes(b).decode("utf-8", errors="backslashreplace")


def rc_value(rc):
    """ReasonCode (or int) → int."""
    return getattr(rc, "value", rc)


def props_json(p):
    if p is None:
        return {}
    out = {}
    fields = [
        ("UserProperty", "user_properties", lambda v: [[k, val] for k, val in v]),
        ("ContentType", "content_type", str),
        ("ResponseTopic", "response_topic", str),
        ("CorrelationData", "correlation_data", text),
        ("PayloadFormatIndicator", "payload_format_indicator", int),
        ("MessageExpiryInterval", "message_expiry_interval", int),
        ("SubscriptionIdentifier", "subscription_identifier", list),
    ]
    for attr, key, conv in fields:
        if hasattr(p, attr):
            out[key] = conv(getattr(p, attr))
    return out


def user_props(pairs):
    out = []
    for kv in pairs or []:
        k, sep, v = kv.partition("=")
        if not sep:
            raise SystemExit(f"--user-prop wants k=v, got {kv!r}")
        out.append((k, v))
    return out


def publish_props(args, packet_type=PacketTypes.PUBLISH):
    p = Properties(packet_type)
    any_set = False
    if args.user_prop:
        p.UserProperty = user_props(args.user_prop)
        any_set = True
    if args.content_type is not None:
        p.ContentType = args.content_type
        any_set = True
    if getattr(args, "response_topic", None) is not None:
        p.ResponseTopic = args.response_topic
        any_set = True
    if getattr(args, "correlation_data", None) is not None:
        p.CorrelationData = args.correlation_data.encode()
        any_set = True
    if getattr(args, "payload_format_indicator", None) is not None:
        p.PayloadFormatIndicator = args.payload_format_indicator
        any_set = True
    if getattr(args, "message_expiry", None) is not None:
        p.MessageExpiryInterval = args.message_expiry
        any_set = True
    return p if any_set else None


class Runner:
    def __init__(self, args):
        self.args = args
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.finished = threading.Event()
        self.connect_rc = None
        self.received = 0
        self.published = {}
        self.pub_cond = threading.Condition()
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=args.id,
            protocol=mqtt.MQTTv5,
        )
        c.on_connect = self.on_connect
        c.on_subscribe = self.on_subscribe
        c.on_message = self.on_message
        c.on_publish = self.on_publish
        c.on_disconnect = self.on_disconnect
        self.client = c

    # ----- callbacks (network thread) -----

    def on_connect(self, client, userdata, flags, reason_code, properties):
        self.connect_rc = rc_value(reason_code)
        emit(
            event="connected",
            reason_code=self.connect_rc,
            session_present=bool(flags.session_present),
        )
        self.connected.set()

    def on_subscribe(self, client, userdata, mid, reason_codes, properties):
        emit(event="subscribed", granted=[rc_value(rc) for rc in reason_codes])
        self.subscribed.set()

    def on_message(self, client, userdata, msg):
        emit(
            event="message",
            topic=msg.topic,
            payload=text(msg.payload),
            qos=msg.qos,
            retain=bool(msg.retain),
            dup=bool(msg.dup),
            props=props_json(getattr(msg, "properties", None)),
        )
        self.received += 1
        if self.args.count is not None and 0 < self.args.count <= self.received:
            self.finished.set()

    def on_publish(self, client, userdata, mid, reason_code, properties):
        with self.pub_cond:
            self.published[mid] = rc_value(reason_code)
            self.pub_cond.notify_all()

    def on_disconnect(self, client, userdata, flags, reason_code, properties):
        emit(event="disconnected", reason_code=rc_value(reason_code))

    # ----- helpers (main thread) -----

    def deadline_left(self):
        return max(0.0, self.deadline - time.monotonic())

    def wait(self, ev, what):
        if not ev.wait(self.deadline_left()):
            emit(event="timeout", waiting_for=what)
            self.client.loop_stop()
            sys.exit(3)

    def connect(self, clean_start, will=None):
        a = self.args
        self.deadline = time.monotonic() + a.timeout
        if will is not None:
            topic, payload, qos, retain, props = will
            self.client.will_set(topic, payload, qos, retain, props)
        props = None
        if a.session_expiry is not None:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = a.session_expiry
        self.client.connect(
            a.host, a.port, keepalive=a.keepalive, clean_start=clean_start, properties=props
        )
        self.client.loop_start()
        self.wait(self.connected, "CONNACK")
        if self.connect_rc != 0:
            emit(event="error", error=f"CONNACK reason code {self.connect_rc}")
            self.client.loop_stop()
            sys.exit(4)

    def subscribe(self, filters):
        a = self.args
        opts = SubscribeOptions(
            qos=a.qos, noLocal=a.no_local, retainAsPublished=a.retain_as_published,
            retainHandling=a.retain_handling,
        )
        self.client.subscribe([(f, opts) for f in filters])
        self.wait(self.subscribed, "SUBACK")

    def receive_then_disconnect(self):
        a = self.args
        if a.count != 0:
            # count -1: until killed or the timeout (exit 3).
            self.wait(self.finished, f"{a.count} messages")
        self.client.disconnect()
        self.client.loop_stop()
        emit(event="done", received=self.received)


def cmd_pub(args):
    r = Runner(args)
    r.connect(clean_start=True)
    payloads = [b""] if args.empty else [p.encode() for p in (args.payload or [""])]
    props = publish_props(args)
    for payload in payloads:
        info = r.client.publish(args.topic, payload, args.qos, args.retain, props)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            emit(event="error", error=f"publish rc {info.rc}")
            sys.exit(4)
        # QoS 0: on_publish fires once written; QoS 1: PUBACK; QoS 2: PUBCOMP.
        with r.pub_cond:
            ok = r.pub_cond.wait_for(lambda: info.mid in r.published, r.deadline_left())
        if not ok:
            emit(event="timeout", waiting_for=f"ack of mid {info.mid}")
            sys.exit(3)
        emit(
            event="published", mid=info.mid, reason_code=r.published[info.mid],
            payload=text(payload),
        )
    r.client.disconnect()
    r.client.loop_stop()
    emit(event="done")


def cmd_sub(args, filters=None):
    r = Runner(args)
    will = None
    if args.will_topic is not None:
        will = (
            args.will_topic,
            (args.will_payload or "").encode(),
            args.will_qos,
            args.will_retain,
            will_props(args),
        )
    r.connect(clean_start=not args.no_clean_start, will=will)
    r.subscribe(filters or args.topic)
    r.receive_then_disconnect()


def cmd_shared(args):
    cmd_sub(args, [f"$share/{args.group}/{t}" for t in args.topic])


def cmd_resume(args):
    r = Runner(args)
    r.connect(clean_start=False)
    r.receive_then_disconnect()


def will_props(args):
    p = Properties(PacketTypes.WILLMESSAGE)
    any_set = False
    if args.will_user_prop:
        p.UserProperty = user_props(args.will_user_prop)
        any_set = True
    if args.will_content_type is not None:
        p.ContentType = args.will_content_type
        any_set = True
    if args.will_delay is not None:
        p.WillDelayInterval = args.will_delay
        any_set = True
    return p if any_set else None


def cmd_will(args):
    r = Runner(args)
    will = (
        args.will_topic,
        (args.will_payload or "").encode(),
        args.will_qos,
        args.will_retain,
        will_props(args),
    )
    r.connect(clean_start=True, will=will)
    # Stay connected (keep alive runs on the network thread) until killed; at the timeout,
    # drop the socket without DISCONNECT so the will still fires.
    time.sleep(r.deadline_left())
    emit(event="timeout", waiting_for="to be killed")
    sys.stdout.flush()
    os._exit(3)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--id", default="", help="client id ('' lets the broker assign one)")
    ap.add_argument("--timeout", type=float, default=10.0, help="overall limit in seconds")
    ap.add_argument("--keepalive", type=int, default=30)
    ap.add_argument("--session-expiry", type=int, default=None)
    sp = ap.add_subparsers(dest="cmd", required=True)

    def will_args(p, required=False):
        p.add_argument("--will-topic", required=required)
        p.add_argument("--will-payload")
        p.add_argument("--will-qos", type=int, default=0)
        p.add_argument("--will-retain", action="store_true")
        p.add_argument("--will-user-prop", action="append", metavar="K=V")
        p.add_argument("--will-content-type")
        p.add_argument("--will-delay", type=int)

    def sub_args(p, resume=False):
        if not resume:
            p.add_argument("--topic", action="append", required=True)
            p.add_argument("--qos", type=int, default=0)
            p.add_argument("--no-local", action="store_true")
            p.add_argument("--retain-as-published", action="store_true")
            p.add_argument("--retain-handling", type=int, default=0)
            p.add_argument("--no-clean-start", action="store_true")
            will_args(p)
        p.add_argument("--count", type=int, default=1, help="0: exit after SUBACK; -1: unbounded")

    p = sp.add_parser("pub")
    p.add_argument("--topic", required=True)
    p.add_argument("--qos", type=int, default=0)
    p.add_argument("--retain", action="store_true")
    p.add_argument("--payload", action="append", help="repeatable: one message each, in order")
    p.add_argument("--empty", action="store_true", help="one zero-length message")
    p.add_argument("--user-prop", action="append", metavar="K=V")
    p.add_argument("--content-type")
    p.add_argument("--response-topic")
    p.add_argument("--correlation-data")
    p.add_argument("--payload-format-indicator", type=int)
    p.add_argument("--message-expiry", type=int)
    p.set_defaults(func=cmd_pub, count=None)

    p = sp.add_parser("sub")
    sub_args(p)
    p.set_defaults(func=cmd_sub)

    p = sp.add_parser("shared")
    sub_args(p)
    p.add_argument("--group", required=True)
    p.set_defaults(func=cmd_shared)

    p = sp.add_parser("resume")
    sub_args(p, resume=True)
    p.set_defaults(func=cmd_resume)

    p = sp.add_parser("will")
    will_args(p, required=True)
    p.set_defaults(func=cmd_will, count=None)

    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
