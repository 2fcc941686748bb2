"""CPython stand-in for MicroPython's umqtt.simple (micropython-lib).

Same API and the same wire behaviour as the real module, so main.py runs
unchanged: a minimal MQTT 3.1.1 client over a plain socket. Like the real one
it blocks in publish() until the PUBACK for QoS 1, has no QoS 2, never pings
on its own, and wait_msg() puts the socket back into blocking mode after its
first read. Sockets are wrapped to offer MicroPython's read()/write().
"""
import socket
import struct


class MQTTException(Exception):
    pass


class _Sock:
    """A CPython socket with MicroPython stream semantics."""

    def __init__(self, s):
        self._s = s

    def write(self, buf, n=None):
        if isinstance(buf, str):
            buf = buf.encode()
        data = memoryview(buf)[:n] if n is not None else memoryview(buf)
        self._s.sendall(data)
        return len(data)

    def read(self, n):
        """Up to n bytes, b"" at EOF; None if non-blocking and nothing is
        waiting (as MicroPython returns)."""
        out = b""
        while len(out) < n:
            try:
                more = self._s.recv(n - len(out))
            except BlockingIOError:
                return out or None
            if not more:
                break
            out += more
        return out

    def setblocking(self, flag):
        self._s.setblocking(flag)

    def settimeout(self, t):
        self._s.settimeout(t)

    def close(self):
        self._s.close()


class MQTTClient:
    def __init__(self, client_id, server, port=0, user=None, password=None,
                 keepalive=0, ssl=None):
        if port == 0:
            port = 8883 if ssl else 1883
        self.client_id = client_id
        self.sock = None
        self.server = server
        self.port = port
        self.ssl = ssl
        self.pid = 0
        self.cb = None
        self.user = user
        self.pswd = password
        self.keepalive = keepalive
        self.lw_topic = None
        self.lw_msg = None
        self.lw_qos = 0
        self.lw_retain = False

    @staticmethod
    def _b(s):
        return s.encode() if isinstance(s, str) else bytes(s)

    def _send_str(self, s):
        s = self._b(s)
        self.sock.write(struct.pack("!H", len(s)))
        self.sock.write(s)

    @staticmethod
    def _varlen(n):
        out = bytearray()
        while True:
            b = n & 0x7F
            n >>= 7
            out.append(b | 0x80 if n else b)
            if not n:
                return bytes(out)

    def _recv_len(self):
        n = sh = 0
        while True:
            b = self.sock.read(1)[0]
            n |= (b & 0x7F) << sh
            if not b & 0x80:
                return n
            sh += 7

    def set_callback(self, f):
        self.cb = f

    def set_last_will(self, topic, msg, retain=False, qos=0):
        assert 0 <= qos <= 2 and topic
        self.lw_topic = topic
        self.lw_msg = msg
        self.lw_qos = qos
        self.lw_retain = retain

    def connect(self, clean_session=True):
        raw = socket.socket()
        addr = socket.getaddrinfo(self.server, self.port)[0][-1]
        raw.connect(addr)
        if self.ssl:
            raw = self.ssl.wrap_socket(raw, server_hostname=self.server)
        self.sock = _Sock(raw)
        flags = clean_session << 1
        sz = 10 + 2 + len(self._b(self.client_id))
        if self.user:
            sz += 2 + len(self._b(self.user)) + 2 + len(self._b(self.pswd))
            flags |= 0xC0
        if self.lw_topic:
            sz += 2 + len(self._b(self.lw_topic)) + 2 + len(self._b(self.lw_msg))
            flags |= 0x4 | (self.lw_qos & 0x3) << 3 | bool(self.lw_retain) << 5
        self.sock.write(b"\x10" + self._varlen(sz))
        self.sock.write(b"\x00\x04MQTT\x04" + bytes([flags]) + struct.pack("!H", self.keepalive))
        self._send_str(self.client_id)
        if self.lw_topic:
            self._send_str(self.lw_topic)
            self._send_str(self.lw_msg)
        if self.user:
            self._send_str(self.user)
            self._send_str(self.pswd)
        resp = self.sock.read(4)
        if len(resp) != 4 or resp[0] != 0x20 or resp[1] != 0x02:
            raise MQTTException("bad CONNACK %r" % resp)
        if resp[3] != 0:
            raise MQTTException(resp[3])
        return resp[2] & 1

    def disconnect(self):
        self.sock.write(b"\xe0\0")
        self.sock.close()

    def ping(self):
        self.sock.write(b"\xc0\0")

    def publish(self, topic, msg, retain=False, qos=0):
        assert qos in (0, 1), "QoS 2 not supported (nor by the real umqtt.simple)"
        sz = 2 + len(self._b(topic)) + len(msg) + (2 if qos else 0)
        assert sz < 2097152
        self.sock.write(bytes([0x30 | qos << 1 | bool(retain)]) + self._varlen(sz))
        self._send_str(topic)
        if qos:
            self.pid += 1
            pid = self.pid
            # "!H" raises above 65535 here; MicroPython's struct truncates
            # silently to 0 instead. main.py wraps pid before that point.
            self.sock.write(struct.pack("!H", pid))
        self.sock.write(msg)
        if qos == 1:
            while True:
                op = self.wait_msg()
                if op == 0x40:
                    sz = self.sock.read(1)
                    assert sz == b"\x02"
                    rcv = self.sock.read(2)
                    if pid == rcv[0] << 8 | rcv[1]:
                        return

    def subscribe(self, topic, qos=0):
        assert self.cb is not None, "Subscribe callback is not set"
        self.pid += 1
        t = self._b(topic)
        self.sock.write(b"\x82" + self._varlen(2 + 2 + len(t) + 1) + struct.pack("!H", self.pid))
        self._send_str(t)
        self.sock.write(bytes([qos]))
        while True:
            op = self.wait_msg()
            if op == 0x90:
                resp = self.sock.read(4)
                if resp[3] == 0x80:
                    raise MQTTException(resp[3])
                return

    def wait_msg(self):
        res = self.sock.read(1)
        self.sock.setblocking(True)
        if res is None:
            return None
        if res == b"":
            raise OSError(-1)
        if res == b"\xd0":  # PINGRESP
            assert self.sock.read(1)[0] == 0
            return None
        op = res[0]
        if op & 0xF0 != 0x30:
            return op
        sz = self._recv_len()
        tl = self.sock.read(2)
        tl = tl[0] << 8 | tl[1]
        topic = self.sock.read(tl)
        sz -= tl + 2
        pid = 0
        if op & 6:
            p = self.sock.read(2)
            pid = p[0] << 8 | p[1]
            sz -= 2
        msg = self.sock.read(sz)
        self.cb(topic, msg)
        if op & 6 == 2:
            self.sock.write(b"\x40\x02" + struct.pack("!H", pid))
        return op

    def check_msg(self):
        self.sock.setblocking(False)
        return self.wait_msg()
