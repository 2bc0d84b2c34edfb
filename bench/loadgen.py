"""Load-generator process: many raw SSE client sockets on one epoll loop.

Why raw sockets and per-chunk (not per-event) Python work: the peers and
Sluice push hundreds of thousands of deliveries per second, and a client
that parses each event in Python would be the bottleneck on a 2-core box.
Each recv() is split at the last complete frame; sequence numbers and send
timestamps are pulled out with one regex and checked with C-level
``map``/``range`` comparisons; latencies land in a ``Counter`` of 0.1 ms
buckets. The loop measures its own busy fraction so the harness can tell
whether the generator, not the server, was the limit.
"""

from __future__ import annotations

import os
import re
import resource
import select
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

# "seq": N, "ts": MICROS — tolerant of json.dumps' default separators.
PAIR_RE = re.compile(rb'"seq": ?(\d+), ?"ts": ?(\d+)')
SEQ_TAG = b'"seq":'
ID_RE = re.compile(rb"(?:^|\n)id: ?([^\r\n]+)")
BUCKET_US = 100  # latency histogram resolution: 0.1 ms
RECV_SIZE = 262144
EXACT_MAX = 32  # chunks up to this many events get a per-event sequence check
LAT_SAMPLES = 16  # latency samples per big recv, weighted by its event count
IP_BIND_ADDRESS_NO_PORT = 24
MAX_LIFETIME_S = 3600.0  # a generator never outlives this, whatever happens

# client states
CONNECTING, HEADERS, STREAMING, CLOSED = range(4)
READER, STALLER = 0, 1


@dataclass
class ClientSpec:
    """What one client connects to; the harness builds these."""

    host: str
    port: int
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    group: int = 0
    kind: int = READER
    src_ip: str | None = None
    rcvbuf: int | None = None


class Client:
    """One SSE client socket and its per-phase counters."""

    __slots__ = (
        "spec",
        "sock",
        "fd",
        "state",
        "buf",
        "next_seq",
        "rx",
        "gaps",
        "repeats",
        "last_id",
        "last_rx",
        "max_gap",
        "status",
        "ever_rx",
        "reconnects",
        "eof_count",
        "registered",
        "stalled",
    )

    def __init__(self, spec: ClientSpec) -> None:
        self.spec = spec
        self.sock: socket.socket | None = None
        self.fd = -1
        self.state = CLOSED
        self.buf = b""
        self.next_seq: int | None = None
        self.rx = 0
        self.gaps = 0
        self.repeats = 0
        self.last_id: bytes | None = None
        self.last_rx = 0.0
        self.max_gap = 0.0
        self.status = 0
        self.ever_rx = 0
        self.reconnects = 0
        self.eof_count = 0
        self.registered = False
        self.stalled = False


class LoadGen:
    """The epoll loop of one generator process, driven by harness commands."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.ep = select.epoll()
        self.clients: dict[int, Client] = {}
        self.all: list[Client] = []
        self.pending: list[Client] = []  # waiting to start connecting
        self.inflight = 0
        self.max_inflight = 256
        self.connect_rate = 4000.0  # per second, per process
        self.lat = [Counter(), Counter()]  # per kind
        self.busy = 0.0
        self.phase_t0 = time.monotonic()
        self.ru0 = resource.getrusage(resource.RUSAGE_SELF)
        self.errors: Counter[str] = Counter()
        self.track_ids = False
        self.now_us = 0
        self.reconnect_on_eof = False
        self.ep.register(conn.fileno(), select.EPOLLIN)

    # ---- connection management -------------------------------------------
    def _open(self, c: Client) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        if c.spec.rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, c.spec.rcvbuf)
        if c.spec.src_ip:
            s.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind((c.spec.src_ip, 0))
        try:
            s.connect((c.spec.host, c.spec.port))
        except BlockingIOError:
            pass
        except OSError as exc:
            self.errors[f"connect:{exc.errno}"] += 1
            s.close()
            return
        c.sock, c.fd, c.state, c.buf = s, s.fileno(), CONNECTING, b""
        self.clients[c.fd] = c
        self.ep.register(c.fd, select.EPOLLOUT)
        c.registered = True
        self.inflight += 1

    def _request(self, c: Client) -> bytes:
        hdrs = dict(c.spec.headers)
        if c.last_id is not None:
            hdrs["Last-Event-ID"] = c.last_id.decode()
        lines = [f"GET {c.spec.path} HTTP/1.1", f"Host: {c.spec.host}:{c.spec.port}"]
        lines += [f"{k}: {v}" for k, v in hdrs.items()]
        lines += ["Accept: text/event-stream", "", ""]
        return "\r\n".join(lines).encode()

    def _close(self, c: Client, reason: str | None = None) -> None:
        if c.state == CONNECTING:
            self.inflight = max(0, self.inflight - 1)
        if c.registered:
            try:
                self.ep.unregister(c.fd)
            except OSError:
                pass
            c.registered = False
        self.clients.pop(c.fd, None)
        if c.sock is not None:
            c.sock.close()
        c.sock, c.state = None, CLOSED
        if reason:
            self.errors[reason] += 1

    def _on_writable(self, c: Client) -> None:
        err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._close(c, f"connect:{err}")
            return
        try:
            c.sock.send(self._request(c))
        except OSError as exc:
            self._close(c, f"send:{exc.errno}")
            return
        c.state = HEADERS
        self.inflight = max(0, self.inflight - 1)
        self.ep.modify(c.fd, select.EPOLLIN)

    def _on_readable(self, c: Client, now: float) -> None:
        try:
            data = c.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._on_eof(c, f"recv:{exc.errno}")
            return
        if not data:
            self._on_eof(c, None)
            return
        if c.last_rx:
            gap = now - c.last_rx
            if gap > c.max_gap:
                c.max_gap = gap
        c.last_rx = now
        if c.state == HEADERS:
            data = c.buf + data
            end = data.find(b"\r\n\r\n")
            if end < 0:
                c.buf = data
                return
            head, data = data[:end], data[end + 4 :]
            try:
                c.status = int(head.split(b" ", 2)[1])
            except (IndexError, ValueError):
                c.status = -1
            if c.status != 200:
                self._close(c, f"status:{c.status}")
                return
            c.state, c.buf = STREAMING, b""
            if not data:
                return
        buf = c.buf + data if c.buf else data
        # frames end with a blank line: "\n\n" or "\r\n\r\n" (sse-starlette)
        end = buf.rfind(b"\n\n")
        end_crlf = buf.rfind(b"\n\r\n")
        if end_crlf > end:
            end = end_crlf + 1
        if end < 0:
            c.buf = buf
            return
        chunk = buf[:end]
        c.buf = buf[end + 2 :]
        if self.track_ids and c.spec.kind == STALLER:
            ids = ID_RE.findall(chunk)
            if ids:
                c.last_id = ids[-1]
        n = chunk.count(SEQ_TAG)
        if not n:
            return
        hist = self.lat[c.spec.kind]
        nxt = c.next_seq
        if n <= EXACT_MAX:  # small chunk: every event's seq and latency
            pairs = PAIR_RE.findall(chunk)
            n = len(pairs)
            if not n:
                return
            first = int(pairs[0][0])
            seqs = [int(p[0]) for p in pairs]
            ok = seqs == list(range(first, first + n))
            w = 1.0
        else:
            # Big chunk: count + first/last seq (exact unless a repeat and a gap
            # cancel out inside one recv) and an even, weighted latency sample,
            # so the cost per recv does not grow with the events in it.
            seqs = None
            search = PAIR_RE.search
            m_first = search(chunk)
            m_last = search(chunk, chunk.rfind(SEQ_TAG))
            if m_first is None or m_last is None:
                return
            first = int(m_first.group(1))
            ok = int(m_last.group(1)) == first + n - 1
            size = len(chunk)
            pairs = []
            for i in range(LAT_SAMPLES):
                m = search(chunk, i * size // LAT_SAMPLES)
                if m is not None:
                    pairs.append(m.groups())
            w = n / max(len(pairs), 1)
        if ok and (nxt is None or first == nxt):
            c.next_seq = first + n
            c.rx += n
        else:
            self._slow_seq(c, seqs or [int(p[0]) for p in PAIR_RE.findall(chunk)])
        c.ever_rx += n
        now_us = time.time_ns() // 1000
        for p in pairs:
            hist[(now_us - int(p[1])) // BUCKET_US] += w

    def _slow_seq(self, c: Client, seqs: list[int]) -> None:
        """Exact gap/repeat accounting, only when the fast check fails."""
        for s in seqs:
            nxt = c.next_seq
            if nxt is None or s == nxt:
                c.next_seq = s + 1
                c.rx += 1
            elif s > nxt:
                c.gaps += s - nxt
                c.next_seq = s + 1
                c.rx += 1
            else:
                c.repeats += 1

    def _on_eof(self, c: Client, reason: str | None) -> None:
        c.eof_count += 1
        self._close(c, reason or "eof")
        if self.reconnect_on_eof:
            c.reconnects += 1
            self.pending.append(c)

    # ---- commands ----------------------------------------------------------
    def _snapshot(self, reset: bool) -> dict[str, Any]:
        now = time.monotonic()
        ru = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (ru.ru_utime - self.ru0.ru_utime) + (ru.ru_stime - self.ru0.ru_stime)
        wall = now - self.phase_t0
        per_client = []
        for c in self.all:
            gap = c.max_gap
            if c.state == STREAMING and c.last_rx and not c.stalled:
                gap = max(gap, now - c.last_rx)
            per_client.append(
                (
                    c.spec.group,
                    c.spec.kind,
                    c.rx,
                    c.gaps,
                    c.repeats,
                    round(gap, 3),
                    c.state == STREAMING,
                    c.ever_rx > 0,
                    c.reconnects,
                    c.next_seq,
                )
            )
        out = {
            "pid": os.getpid(),
            "cpu_s": cpu,
            "wall_s": wall,
            "busy_s": self.busy,
            "lat": [dict(self.lat[0]), dict(self.lat[1])],
            "clients": per_client,
            "errors": dict(self.errors),
            "open": sum(1 for c in self.all if c.state == STREAMING),
        }
        if reset:
            self.phase_t0, self.ru0, self.busy = now, ru, 0.0
            self.lat = [Counter(), Counter()]
            self.errors = Counter()
            for c in self.all:
                c.rx = c.gaps = c.repeats = 0
                c.max_gap = 0.0
                if c.last_rx:
                    c.last_rx = now
        return out

    def _command(self, msg: tuple) -> bool:
        op = msg[0]
        if op == "add":
            specs: list[ClientSpec] = msg[1]
            self.connect_rate = msg[2]
            for spec in specs:
                c = Client(spec)
                self.all.append(c)
                self.pending.append(c)
            self.conn.send(("ok", len(specs)))
        elif op == "status":
            live = sum(1 for c in self.all if c.state == STREAMING)
            got = sum(1 for c in self.all if c.ever_rx > 0)
            connected = sum(1 for c in self.all if c.state in (HEADERS, STREAMING))
            self.conn.send(
                (
                    "ok",
                    {
                        "live": live,
                        "got": got,
                        "connected": connected,
                        "pending": len(self.pending),
                        "errors": dict(self.errors),
                    },
                )
            )
        elif op == "snapshot":
            self.conn.send(("ok", self._snapshot(reset=msg[1])))
        elif op == "stall":
            n = 0
            for c in self.all:
                if c.spec.kind == STALLER and c.registered:
                    self.ep.unregister(c.fd)
                    c.registered, c.stalled = False, True
                    n += 1
            self.conn.send(("ok", n))
        elif op == "unstall":
            n = 0
            now = time.monotonic()
            for c in self.all:
                if c.stalled:
                    c.stalled = False
                    c.last_rx = now
                    if c.sock is not None:
                        self.ep.register(c.fd, select.EPOLLIN)
                        c.registered = True
                    n += 1
            self.conn.send(("ok", n))
        elif op == "options":
            self.track_ids = msg[1].get("track_ids", self.track_ids)
            self.reconnect_on_eof = msg[1].get("reconnect_on_eof", self.reconnect_on_eof)
            self.conn.send(("ok", None))
        elif op == "close_all":
            for c in list(self.all):
                self._close(c)
            self.all.clear()
            self.pending.clear()
            self.inflight = 0
            self.conn.send(("ok", None))
        elif op == "quit":
            self.conn.send(("ok", None))
            return False
        return True

    # ---- loop --------------------------------------------------------------
    def run(self) -> None:
        start = time.monotonic()
        last_connect = start
        budget = 0.0
        ppid = os.getppid()
        pipe_fd = self.conn.fileno()
        running = True
        while running and time.monotonic() - start < MAX_LIFETIME_S:
            events = self.ep.poll(0.05 if not self.pending else 0.005)
            t0 = time.monotonic()
            self.now_us = time.time_ns() // 1000
            for fd, ev in events:
                if fd == pipe_fd:
                    try:
                        running = self._command(self.conn.recv())
                    except EOFError:
                        running = False
                    continue
                c = self.clients.get(fd)
                if c is None:
                    continue
                if c.state == CONNECTING:
                    self._on_writable(c)
                elif ev & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                    self._on_readable(c, t0)
            if self.pending:
                budget = min(budget + (t0 - last_connect) * self.connect_rate, 512.0)
                while self.pending and budget >= 1 and self.inflight < self.max_inflight:
                    self._open(self.pending.pop())
                    budget -= 1
            last_connect = t0
            if events:
                self.busy += time.monotonic() - t0
            if os.getppid() != ppid:
                break
        for c in list(self.all):
            self._close(c)


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(conn: Connection) -> None:
    """Process entry point (multiprocessing target)."""
    _raise_nofile()
    LoadGen(conn).run()
