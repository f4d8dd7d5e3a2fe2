"""Exit 0 when a Kafka broker answers a Metadata request listing at least one broker.

Standard library only, so deploy/local can use it before anything else is installed. An open port
is not enough: in KRaft mode the socket accepts connections before the broker has registered.
Usage: python deploy/kafka_ready.py HOST:PORT
"""

from __future__ import annotations

import socket
import struct
import sys


def metadata_brokers(host: str, port: int, timeout: float = 2.0) -> int:
    client_id = b"runstream-ready"
    # Metadata v0: api_key=3, api_version=0, correlation_id=1, client_id, topics=[] (all topics)
    body = struct.pack(">hhih", 3, 0, 1, len(client_id)) + client_id + struct.pack(">i", 0)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(body)) + body)
        (size,) = struct.unpack(">i", _read(sock, 4))
        resp = _read(sock, size)
    correlation_id, brokers = struct.unpack(">ii", resp[:8])
    if correlation_id != 1:
        raise RuntimeError("unexpected correlation id")
    return brokers


def _read(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        buf += chunk
    return buf


if __name__ == "__main__":
    host, _, port = sys.argv[1].rpartition(":")
    try:
        sys.exit(0 if metadata_brokers(host, int(port)) > 0 else 1)
    except (OSError, RuntimeError, struct.error):
        sys.exit(1)
