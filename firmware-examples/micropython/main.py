# moonwire MicroPython node for ESP32: a sensor node (DHT + PIR) or a camera
# node (OV2640 via the `camera` module), chosen by config.ROLE.
#
# Topics (see ../README.md):
#   home/<id>/sensors        {"temperature":21.5,"humidity":40.2,"motion":false,"ts":1700000000}
#   home/<id>/motion         {"motion":true,"ts":1700000000}
#   cameras/<id>/frame       fchunk v1 chunks (fchunk.py)
#   <root>/<id>/availability retained "online"/"offline", "offline" is the last will
import gc
import time

import machine
import network
from umqtt.simple import MQTTClient, MQTTException

import config
import fchunk

try:
    from time import sleep_ms, ticks_add, ticks_diff, ticks_ms
except ImportError:  # CPython (tests/run_under_cpython.py)
    def sleep_ms(ms):
        time.sleep(ms / 1000)

    def ticks_ms():
        return int(time.monotonic() * 1000)

    def ticks_add(t, delta):
        return t + delta

    def ticks_diff(a, b):
        return a - b

try:
    from random import getrandbits
except ImportError:
    def getrandbits(n):
        return ticks_ms() & ((1 << n) - 1)

# Ports whose epoch is 2000-01-01 (older ESP32 builds) report time.time()
# 30 years short; the broker wants unix seconds.
_EPOCH_OFFSET = 946684800 if time.gmtime(0)[0] == 2000 else 0


def unix_now():
    return int(time.time()) + _EPOCH_OFFSET


def topic(root, leaf):
    return "%s/%s/%s" % (root, config.DEVICE_ID, leaf)


def wifi_up():
    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    if wlan.isconnected():
        return
    wlan.connect(config.WIFI_SSID, config.WIFI_PASSWORD)
    t0 = ticks_ms()
    while not wlan.isconnected():
        if ticks_diff(ticks_ms(), t0) > config.WIFI_TIMEOUT_S * 1000:
            raise OSError("wifi: no connection after %d s" % config.WIFI_TIMEOUT_S)
        sleep_ms(200)


def sync_clock():
    # The RTC keeps time through deep sleep: sync after power-on only.
    if not config.NTP_HOST or machine.reset_cause() == machine.DEEPSLEEP_RESET:
        return
    try:
        import ntptime
        ntptime.host = config.NTP_HOST
        ntptime.settime()
    except Exception as e:  # no clock is better than no readings
        print("ntp:", e)


def tls_context():
    if not config.MQTT_CA_FILE:
        return None
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=config.MQTT_CA_FILE)
    return ctx


class Link:
    """One MQTT session with last will, retained availability and reconnect
    with exponential backoff."""

    def __init__(self, root):
        self.avail = topic(root, "availability")
        self.client = None
        self.backoff = config.BACKOFF_MIN_S

    def up(self, attempts=0):
        """Connects if needed. Retries with backoff; `attempts` 0 = forever,
        else raises after that many failures (a sleepy node would rather go
        back to sleep than drain its battery retrying)."""
        failures = 0
        while self.client is None:
            try:
                wifi_up()
                c = MQTTClient(config.DEVICE_ID, config.MQTT_HOST, config.MQTT_PORT,
                               config.MQTT_USER, config.MQTT_PASSWORD,
                               keepalive=config.MQTT_KEEPALIVE_S, ssl=tls_context())
                c.set_last_will(self.avail, "offline", retain=True, qos=1)
                self.client = c  # before connect(), so drop() closes a half-open socket
                c.connect()
                self.publish(self.avail, "online", retain=True, qos=1)
                self.backoff = config.BACKOFF_MIN_S
                print("mqtt: connected to %s:%d" % (config.MQTT_HOST, config.MQTT_PORT))
            except (OSError, MQTTException) as e:
                self.drop()
                failures += 1
                if attempts and failures >= attempts:
                    raise
                # Jitter 50-100 %: a power cut must not reconnect every device
                # in the house in the same second.
                wait_ms = self.backoff * (512 + getrandbits(9)) * 1000 // 1024
                print("mqtt: %r; retry in %d ms" % (e, wait_ms))
                sleep_ms(wait_ms)
                self.backoff = min(self.backoff * 2, config.BACKOFF_MAX_S)
        return self.client

    def publish(self, t, msg, retain=False, qos=0):
        c = self.client
        # umqtt.simple never wraps its packet id; at 65536 it would send the
        # invalid id 0 and the broker would close the connection.
        if c.pid >= 65535:
            c.pid = 0
        # umqtt.simple waits for a PUBACK with no timeout and turns the socket
        # back to blocking after each read, so set the timeout every time.
        try:
            c.sock.settimeout(config.SOCKET_TIMEOUT_S)
        except AttributeError:  # TLS sockets on some ports
            pass
        c.publish(t, msg, retain, qos)

    def keepalive(self):
        """PINGREQ, and read any PINGRESP so they do not pile up unread."""
        if self.client is not None:
            self.client.ping()
            self.client.check_msg()  # drain the PINGRESP

    def drop(self):
        """Forget a broken connection (no DISCONNECT: the will fires)."""
        if self.client is not None:
            try:
                self.client.sock.close()
            except Exception:
                pass
        self.client = None

    def close(self, offline):
        """Clean shutdown. offline=False keeps "online" retained: a node that
        deep-sleeps between readings is still in service."""
        if self.client is None:
            return
        try:
            if offline:
                self.publish(self.avail, "offline", retain=True, qos=1)
            self.client.disconnect()
        except (OSError, MQTTException):
            pass
        self.client = None


def idle(link, ms, on_tick=None):
    """Sleep ms in short steps, pinging the broker and calling on_tick()."""
    end = ticks_add(ticks_ms(), ms)
    last_ping = ticks_ms()
    while ticks_diff(end, ticks_ms()) > 0:
        if on_tick is not None:
            on_tick()
        if ticks_diff(ticks_ms(), last_ping) > config.MQTT_KEEPALIVE_S * 500:
            try:
                link.keepalive()
            except (OSError, MQTTException):
                link.drop()
            last_ping = ticks_ms()
        sleep_ms(min(100, max(0, ticks_diff(end, ticks_ms()))))


def sensor_node():
    import hw
    climate = hw.Climate(config.DHT_PIN, config.DHT_TYPE)
    pir = hw.Motion(config.PIR_PIN)
    link = Link("home")
    t_motion = topic("home", "motion")
    t_sensors = topic("home", "sensors")
    # Woken from deep sleep by the PIR: that is a motion event.
    woke_by_pir = config.DEEP_SLEEP and machine.wake_reason() == machine.EXT0_WAKE
    motion = woke_by_pir    # motion seen since the last reading
    pending = woke_by_pir   # motion event not yet published
    sent = 0

    def poll_pir():
        nonlocal motion, pending
        if pir.started():
            motion = pending = True
        if pending and link.client is not None:
            try:
                link.publish(t_motion, fchunk.motion_json(True, unix_now()), qos=config.SENSOR_QOS)
                pending = False
            except (OSError, MQTTException) as e:
                print("motion event:", e)
                link.drop()

    while True:
        try:
            temperature, humidity = climate.read()
        except OSError as e:
            print("sensor read failed:", e)
            temperature = None
        poll_pir()
        try:
            link.up(attempts=3 if config.DEEP_SLEEP else 0)
            poll_pir()
            if temperature is not None:
                link.publish(t_sensors,
                             fchunk.sensor_json(temperature, humidity, motion or pir.active(),
                                                unix_now()),
                             qos=config.SENSOR_QOS)
                motion = False
        except (OSError, MQTTException) as e:
            print("publish failed:", e)
            link.drop()
        sent += 1
        if config.RUN_LIMIT and sent >= config.RUN_LIMIT:
            link.close(offline=True)
            return
        if config.DEEP_SLEEP:
            link.close(offline=False)
            if not pir.active():
                # Waking on a pin that is already high would wake at once.
                import esp32
                esp32.wake_on_ext0(pir.pin, esp32.WAKEUP_ANY_HIGH)
            machine.deepsleep(config.SENSOR_INTERVAL_S * 1000)
        idle(link, config.SENSOR_INTERVAL_S * 1000, poll_pir)


def camera_node():
    import camera
    camera.init(0, format=camera.JPEG, fb_location=camera.PSRAM)
    camera.framesize(getattr(camera, "FRAME_" + config.CAMERA_FRAMESIZE))
    camera.quality(config.CAMERA_QUALITY)
    link = Link("cameras")
    t_frame = topic("cameras", "frame")
    # One chunk buffer for the life of the program: no per-chunk allocation.
    buf = bytearray(fchunk.HEADER_LEN + config.CHUNK_SIZE)
    period_ms = int(1000 / config.FPS) if config.FPS > 0 else 0
    frame_id = 0  # partial frames live in the broker per session: a reboot may reuse ids
    sent = 0
    due = ticks_ms()

    def publish(payload):
        link.publish(t_frame, payload, qos=config.FRAME_QOS)

    while not config.RUN_LIMIT or sent < config.RUN_LIMIT:
        wait = ticks_diff(due, ticks_ms())
        if wait > 0:
            idle(link, wait)
        due = ticks_add(due if wait > -period_ms else ticks_ms(), period_ms)
        frame = camera.capture()
        if not frame:
            print("capture failed")
            continue
        width, height = fchunk.jpeg_size(frame)
        link.up()
        try:
            chunks = fchunk.send_frame(publish, frame, frame_id, buf, width, height)
            print("frame %d: %d bytes, %d chunks" % (frame_id, len(frame), chunks))
            sent += 1
        except (OSError, MQTTException) as e:
            # The broker drops the partial frame with the session; a fresh
            # frame after reconnecting is worth more than this one.
            print("frame %d lost: %r" % (frame_id, e))
            link.drop()
        frame_id = (frame_id + 1) & 0xFFFF
        frame = None
        gc.collect()  # frames are large: free the last one before the next capture
    link.close(offline=True)


def run():
    try:
        wifi_up()
        sync_clock()
    except OSError as e:
        print("wifi:", e)  # Link.up() keeps trying
    if config.ROLE == "camera":
        camera_node()
    else:
        sensor_node()


def main():
    try:
        run()
    except Exception as e:
        # Unattended device: log, wait, start over rather than sit dead.
        print("fatal:", repr(e))
        sleep_ms(10000)
        machine.reset()


if __name__ == "__main__":
    main()
