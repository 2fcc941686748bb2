#!/usr/bin/env python3
"""A broken broker for failure tests: accepts one MQTT connection, answers
CONNACK with the given return code, then reads and ignores everything (no
PUBACK, no PINGRESP). Prints the port it listens on (127.0.0.1, port chosen by
the OS) on the first line, then exits when the client goes away or after
--lifetime seconds."""
import argparse
import socket
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--connack", type=int, default=0, help="CONNACK return code to send")
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
    try:
        conn.recv(4096)  # CONNECT; small enough to arrive in one read here
        conn.sendall(bytes([0x20, 0x02, 0x00, args.connack]))
        while conn.recv(65536):
            pass
    except (socket.timeout, OSError):
        pass
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
