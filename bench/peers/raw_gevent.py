"""The raw gevent limit: no WSGI, no Flask, one shared XREAD per stream key.

Why it exists: it is the ceiling of this runtime (gevent + redis-py on one
core). Each XREAD batch is encoded once into one bytes object and written
to every socket with a non-blocking send; only a socket whose kernel buffer
is full gets a per-client pending list and a writer greenlet, and a client
whose pending bytes pass PENDING_LIMIT is cut off (it resumes with
Last-Event-ID: the handler reads its backlog with XRANGE while live batches
are held, then drops the held entries it already sent). The fan-out loop
yields every YIELD_EVERY sockets so one big batch cannot starve accepts.

Usage: python raw_gevent.py PORT REDIS_URL [HEARTBEAT_SECONDS]
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
from urllib.parse import parse_qs, urlsplit  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import gevent.server  # noqa: E402
import redis  # noqa: E402

PENDING_LIMIT = int(os.environ.get("BENCH_PENDING_LIMIT", 262144))
YIELD_EVERY = 256
BLOCK_MS = 5000
COUNT = 1000
HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n"
    b"Connection: close\r\n\r\nretry: 1000\n\n"
)
HEARTBEAT = b": hb\n\n"


def id_key(entry_id: bytes) -> tuple[int, int]:
    """Stream ids compare as (ms, seq) integers, not as strings."""
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


def encode(entry_id: bytes, fields: dict[bytes, bytes]) -> bytes:
    """The same frame layout as Sluice's wire format."""
    etype = fields.get(b"type", b"job:state_change")
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (entry_id, etype, fields[b"data"])


class Client:
    """A socket plus the state needed when its kernel buffer is full."""

    __slots__ = ("sock", "raw", "pending", "pbytes", "busy", "wake", "alive", "held")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.raw = sock._sock  # the real socket: a non-blocking send never yields
        self.pending: list[bytes] = []
        self.pbytes = 0
        self.busy = False
        self.wake = gevent.event.Event()
        self.alive = True
        self.held: list[tuple[tuple[int, int], bytes]] | None = None


class Hub:
    """All clients of one stream key, fed by one reader greenlet."""

    def __init__(self, r: redis.Redis, key: str) -> None:
        self.r = r
        self.key = key
        self.clients: dict[Client, None] = {}
        self.last_id = b"$"
        self.ready = gevent.event.Event()
        gevent.spawn(self.reader)

    def reader(self) -> None:
        """One XREAD for every listener of this key, forever."""
        r = self.r
        top = r.xrevrange(self.key, count=1)
        self.last_id = top[0][0] if top else b"0-0"
        self.ready.set()
        while True:
            resp = r.xread({self.key: self.last_id}, block=BLOCK_MS, count=COUNT)
            if not resp:
                continue
            entries = resp[0][1]
            self.last_id = entries[-1][0]
            frames = [(eid, encode(eid, f)) for eid, f in entries]
            self.broadcast(b"".join(fr for _, fr in frames), frames)

    def broadcast(self, data: bytes, frames: list | None = None) -> None:
        for i, c in enumerate(list(self.clients)):
            if c.held is not None:
                if frames is not None:
                    c.held.extend((id_key(eid), fr) for eid, fr in frames)
                continue
            send(c, data)
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                gevent.sleep(0)


def send(c: Client, data: bytes) -> None:
    """Write now if the kernel takes it; else queue for the writer greenlet."""
    if not c.alive:
        return
    if c.busy:
        c.pending.append(data)
        c.pbytes += len(data)
        if c.pbytes > PENDING_LIMIT:
            cut(c)
        return
    try:
        n = c.raw.send(data)
    except BlockingIOError:
        n = 0
    except OSError:
        cut(c)
        return
    if n < len(data):
        c.busy = True
        rest = data[n:]
        c.pending.append(rest)
        c.pbytes += len(rest)
        c.wake.set()


def cut(c: Client) -> None:
    c.alive = False
    c.wake.set()
    try:
        c.raw.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class Server:
    def __init__(self, redis_url: str, heartbeat: float) -> None:
        self.r = redis.Redis.from_url(redis_url, socket_timeout=None, max_connections=1000)
        self.hubs: dict[str, Hub] = {}
        self.heartbeat = heartbeat
        gevent.spawn(self.ticker)

    def ticker(self) -> None:
        while True:
            gevent.sleep(self.heartbeat)
            for hub in list(self.hubs.values()):
                hub.broadcast(HEARTBEAT)

    def hub(self, key: str) -> Hub:
        h = self.hubs.get(key)
        if h is None:
            h = self.hubs[key] = Hub(self.r, key)
        h.ready.wait()
        return h

    def handle(self, sock: socket.socket, addr: object) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        req = b""
        while b"\r\n\r\n" not in req:
            chunk = sock.recv(8192)
            if not chunk or len(req) > 65536:
                sock.close()
                return
            req += chunk
        head = req.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        target = head[0].split(" ")[1]
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])
        }
        q = parse_qs(urlsplit(target).query)
        key = q.get("stream", ["bench:stream:0"])[0]
        last = headers.get("last-event-id")
        hub = self.hub(key)
        c = Client(sock)
        sock.sendall(HEAD)
        if last:
            c.held = []
            hub.clients[c] = None
            self.catch_up(c, hub, last.encode())
        else:
            hub.clients[c] = None
        try:
            self.writer(c)
        finally:
            hub.clients.pop(c, None)
            c.alive = False
            sock.close()

    def catch_up(self, c: Client, hub: Hub, last: bytes) -> None:
        """Backlog from XRANGE, then the live entries held meanwhile, no dupes."""
        sent = id_key(last)
        start = b"(" + last
        while c.alive:
            entries = self.r.xrange(hub.key, min=start, max=b"+", count=COUNT)
            if not entries:
                break
            c.sock.sendall(b"".join(encode(eid, f) for eid, f in entries))
            sent = id_key(entries[-1][0])
            start = b"(" + entries[-1][0]
        held, c.held = c.held or [], None
        tail = b"".join(fr for k, fr in held if k > sent)
        if tail:
            send(c, tail)

    def writer(self, c: Client) -> None:
        """Flush pending bytes, joined into one write, while the client lives."""
        while c.alive:
            c.wake.wait()
            c.wake.clear()
            while c.pending and c.alive:
                data = b"".join(c.pending)
                c.pending.clear()
                c.pbytes = 0
                try:
                    c.sock.sendall(data)
                except OSError:
                    c.alive = False
            c.busy = False


def main() -> None:
    port = int(sys.argv[1])
    server = Server(sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 15.0)
    listener = gevent.server.StreamServer(("127.0.0.1", port), server.handle, backlog=4096)
    listener.serve_forever()


if __name__ == "__main__":
    main()
