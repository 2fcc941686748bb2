#!/usr/bin/env python3
"""Run ../main.py under CPython 3.11 against a real broker, with the shims in
shims/ standing in for MicroPython's umqtt.simple, camera, machine, network,
esp32 and dht modules.

  run_under_cpython.py --host 127.0.0.1 --port 1883 --mode camera \\
      --frames a.jpg b.jpg --count 4
  run_under_cpython.py --host 127.0.0.1 --port 1883 --mode sensor --count 3

Camera mode publishes --count frames (cycling over --frames) as fchunk chunks
to cameras/<id>/frame. Sensor mode publishes --count readings to
home/<id>/sensors; with --deep-sleep every reading is one simulated boot
(machine.deepsleep() ends the run, the runner "wakes" the board again).

Exit 0 when main.py finished its run, 1 if it raised.
"""
import argparse
import os
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "shims"), os.path.dirname(HERE)]

import camera  # noqa: E402  (shims: importable only after the path change)
import dht  # noqa: E402
import machine  # noqa: E402

import config  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--mode", choices=("sensor", "camera"), required=True)
    ap.add_argument("--frames", nargs="*", default=[], metavar="FILE")
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--id", default=None, help="device id (default: cam1 / hall)")
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("--ca", metavar="PEM", help="MQTT_CA_FILE: enables TLS, verifies the broker")
    ap.add_argument("--qos", type=int, choices=(0, 1), default=None,
                    help="FRAME_QOS / SENSOR_QOS")
    ap.add_argument("--chunk", type=int, default=4000, help="CHUNK_SIZE")
    ap.add_argument("--fps", type=float, default=0.0, help="FPS (0: no pacing)")
    ap.add_argument("--interval", type=float, default=0.2, help="SENSOR_INTERVAL_S")
    ap.add_argument("--deep-sleep", action="store_true", help="sensor: sleep between readings")
    ap.add_argument("--motion", action="store_true", help="sensor: PIR high from boot")
    ap.add_argument("--motion-at", type=float, metavar="S",
                    help="sensor: PIR goes high S seconds after start (fires the IRQ)")
    ap.add_argument("--temperature", type=float, default=21.5)
    ap.add_argument("--humidity", type=float, default=40.2)
    args = ap.parse_args()

    config.ROLE = args.mode
    config.DEVICE_ID = args.id or ("cam1" if args.mode == "camera" else "hall")
    config.MQTT_HOST = args.host
    config.MQTT_PORT = args.port
    config.MQTT_USER = args.user
    config.MQTT_PASSWORD = args.password
    config.MQTT_CA_FILE = args.ca
    config.NTP_HOST = None
    config.BACKOFF_MIN_S = 1
    config.BACKOFF_MAX_S = 2
    config.CHUNK_SIZE = args.chunk
    config.FPS = args.fps
    config.SENSOR_INTERVAL_S = args.interval
    config.DEEP_SLEEP = args.deep_sleep
    if args.qos is not None:
        config.FRAME_QOS = config.SENSOR_QOS = args.qos
    # Deep sleep: one reading per boot, the runner counts boots.
    config.RUN_LIMIT = 0 if args.deep_sleep else args.count

    if args.mode == "camera":
        if not args.frames:
            ap.error("--mode camera needs --frames")
        camera._load(args.frames)
    dht.READING = (args.temperature, args.humidity)
    if args.motion:
        machine._levels[config.PIR_PIN] = 1
    if args.motion_at is not None:
        # From another thread, as an interrupt would arrive on the board.
        t = threading.Timer(args.motion_at, machine._set_level, (config.PIR_PIN, 1))
        t.daemon = True
        t.start()

    import main as node

    boots = 0
    while True:
        boots += 1
        try:
            node.run()
            return 0
        except machine.DeepSleep as s:
            print("runner: deepsleep(%d ms) after boot %d" % (s.ms, boots), flush=True)
            if boots >= args.count:
                return 0
            time.sleep(min(s.ms / 1000.0, 1.0))
            machine._reset_cause = machine.DEEPSLEEP_RESET
            machine._wake_reason = machine.EXT0_WAKE if args.motion else machine.TIMER_WAKE
        except Exception as e:  # what would make the board print and reset
            print("runner: main.py raised %r" % (e,), file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
