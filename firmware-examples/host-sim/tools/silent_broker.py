#!/usr/bin/env python3
"""A misbehaving MQTT broker for failure tests of the host simulators.

Accepts one connection on 127.0.0.1 (port chosen by the OS, printed on the
first line of stdout), answers CONNACK with --connack, then reads packets and
logs one line per PUBLISH ("publish pid=N dup=D qos=Q topic=T"). It acks only
the first --ack-first QoS 1 publishes, and with --ack-dup also acks resends
(DUP=1), so a client's PUBACK timeout and its resend path can both be tested.
Never answers PINGREQ. Exits when the client goes away or after --lifetime s.
"""
import argparse
import socket
import sys


def recv_exact(conn, n):
    buf = b""
    while len(buf) < n:
        more = conn.recv(n - len(buf))
        if not more:
            raise EOFError
        buf += more
    return buf


def read_packet(conn):
    first = recv_exact(conn, 1)[0]
    n, mult = 0, 1
    while True:
        b = recv_exact(conn, 1)[0]
        n += (b & 0x7F) * mult
        mult *= 128
        if not b & 0x80:
            break
    return first, recv_exact(conn, n)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--connack", type=int, default=0, help="CONNACK return code")
    ap.add_argument("--ack-first", type=int, default=0, help="QoS 1 publishes to ack")
    ap.add_argument("--ack-dup", action="store_true", help="also ack DUP resends")
    ap.add_argument("--lifetime", type=float, default=30.0)
    args = ap.parse_args()

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(args.lifetime)
    print(srv.getsockname()[1], flush=True)
    try:
        conn, _ = srv.accept()
    except socket.timeout:
        return 1
    conn.settimeout(args.lifetime)
    acked = 0
    try:
        first, _ = read_packet(conn)
        assert first == 0x10, "expected CONNECT"
        conn.sendall(bytes([0x20, 0x02, 0x00, args.connack]))
        while True:
            first, body = read_packet(conn)
            if first & 0xF0 != 0x30:
                continue
            qos, dup = (first >> 1) & 3, (first >> 3) & 1
            tlen = body[0] << 8 | body[1]
            topic = body[2:2 + tlen].decode()
            pid = body[2 + tlen] << 8 | body[3 + tlen] if qos else 0
            print("publish pid=%d dup=%d qos=%d topic=%s" % (pid, dup, qos, topic), flush=True)
            if qos == 1 and (acked < args.ack_first or (dup and args.ack_dup)):
                acked += 1
                conn.sendall(bytes([0x40, 0x02, pid >> 8, pid & 0xFF]))
    except (EOFError, socket.timeout, OSError):
        pass
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
