"""A raw-socket SSE client for the tests: HTTP/1.1, chunked decoding, strict parsing.

Deliberately independent of the server's code, so it checks the wire format
rather than agreeing with it.
"""

from __future__ import annotations

import json
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit


@dataclass
class SSEEvent:
    id: str | None
    event: str
    data: str
    received_at: float = field(default=0.0, compare=False)

    def json(self):
        return json.loads(self.data)


class SSEStream:
    def __init__(
        self, sock: socket.socket, status: int, headers: dict[str, str], rest: bytes, chunked: bool
    ) -> None:
        self.sock = sock
        self.status = status
        self.headers = headers
        self.chunked = chunked
        self._raw = rest  # undecoded bytes (chunk framing still present)
        self._body = b""  # decoded body bytes not yet parsed into lines
        self.body_log = bytearray()  # every decoded body byte, for byte-exact tests
        self.retry: int | None = None
        self.ended = False
        self._lines: deque[str] = deque()
        self._decode()

    # -- transport ---------------------------------------------------------

    def _decode(self) -> None:
        if not self.chunked:
            self._body += self._raw
            self.body_log += self._raw
            self._raw = b""
            return
        while True:
            head, sep, tail = self._raw.partition(b"\r\n")
            if not sep:
                return
            size = int(head.split(b";")[0], 16)
            if size == 0:
                self.ended = True
                self._raw = b""
                return
            if len(tail) < size + 2:
                return
            chunk, self._raw = tail[:size], tail[size + 2 :]
            self._body += chunk
            self.body_log += chunk

    def _fill(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no SSE bytes before the deadline")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise TimeoutError("no SSE bytes before the deadline") from None
        if not data:
            self.ended = True
            raise ConnectionError("server closed the stream")
        self._raw += data
        self._decode()

    def read_bytes(self, n: int, timeout: float = 5) -> bytes:
        """The first `n` decoded body bytes (for byte-exact checks)."""
        deadline = time.monotonic() + timeout
        while len(self.body_log) < n:
            self._fill(deadline)
        return bytes(self.body_log[:n])

    # -- SSE parsing -------------------------------------------------------

    def next_event(self, timeout: float = 5) -> SSEEvent:
        deadline = time.monotonic() + timeout
        fields: dict[str, str | None] = {"id": None, "event": None}
        data: list[str] = []
        while True:
            line = self._next_line(deadline)
            if line == "":
                if data:
                    return SSEEvent(
                        fields["id"],
                        fields["event"] or "message",
                        "\n".join(data),
                        time.monotonic(),
                    )
                fields = {"id": None, "event": None}
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            elif name in ("id", "event"):
                fields[name] = value
            elif name == "retry":
                self.retry = int(value)

    def _next_line(self, deadline: float) -> str:
        # Split whole buffers at once: partitioning a multi-megabyte buffer line by
        # line would make the reader, not the server, the slow part.
        while not self._lines:
            if b"\n" in self._body:
                *lines, self._body = self._body.split(b"\n")
                self._lines.extend(line.decode().rstrip("\r") for line in lines)
                break
            if self.ended:
                raise ConnectionError("server closed the stream")
            self._fill(deadline)
        return self._lines.popleft()

    def events_until(
        self, predicate: Callable[[SSEEvent], bool], timeout: float = 5
    ) -> list[SSEEvent]:
        """Every event up to and including the first that satisfies `predicate`."""
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            event = self.next_event(max(0.001, deadline - time.monotonic()))
            seen.append(event)
            if predicate(event):
                return seen

    def data_events(self, count: int, timeout: float = 5) -> list[SSEEvent]:
        """The next `count` events that carry an id (skipping heartbeats)."""
        deadline = time.monotonic() + timeout
        out: list[SSEEvent] = []
        while len(out) < count:
            event = self.next_event(max(0.001, deadline - time.monotonic()))
            if event.id is not None:
                out.append(event)
        return out

    def data_events_within(self, seconds: float) -> list[SSEEvent]:
        """Every event with an id that arrives within `seconds` (heartbeats skipped)."""
        deadline = time.monotonic() + seconds
        out: list[SSEEvent] = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return out
            try:
                event = self.next_event(left)
            except TimeoutError:
                return out
            if event.id is not None:
                out.append(event)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> SSEStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_stream(
    base_url: str,
    connection_id: str | None,
    *,
    api_key: str | None = None,
    cookies: dict[str, str] | None = None,
    types: str | None = None,
    last_event_id: str | None = None,
    query_last_event_id: str | None = None,
    extra_params: dict[str, str] | None = None,
    timeout: float = 5,
    rcvbuf: int | None = None,
    headers: dict[str, str] | None = None,
) -> SSEStream:
    """Open `GET /api/events/stream` and read the status line and headers (`headers`:
    more request headers)."""
    parts = urlsplit(base_url)
    params: dict[str, str] = {}
    if connection_id is not None:
        params["connectionId"] = connection_id
    if types is not None:
        params["types"] = types
    if query_last_event_id is not None:
        params["lastEventId"] = query_last_event_id
    params.update(extra_params or {})
    path = "/api/events/stream" + ("?" + urlencode(params) if params else "")
    lines = [f"GET {path} HTTP/1.1", f"Host: {parts.netloc}", "Accept: text/event-stream"]
    if api_key:
        lines.append(f"Authorization: Bearer {api_key}")
    if cookies:
        lines.append("Cookie: " + "; ".join(f"{k}={v}" for k, v in cookies.items()))
    if last_event_id is not None:
        lines.append(f"Last-Event-ID: {last_event_id}")
    lines.extend(f"{name}: {value}" for name, value in (headers or {}).items())
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:  # before connect, so the advertised window is small from the start
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.connect((parts.hostname, parts.port))
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\r\n\r\n" not in buf:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed before headers")
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split()[1])
    answered: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        answered[name.strip().lower()] = value.strip()
    chunked = answered.get("transfer-encoding", "").lower() == "chunked"
    return SSEStream(sock, status, answered, rest, chunked)


def read_error_body(stream: SSEStream, timeout: float = 5) -> dict:
    """For a non-200 answer: the JSON error body."""
    length = int(stream.headers.get("content-length", "0"))
    deadline = time.monotonic() + timeout
    while len(stream.body_log) < length:
        stream._fill(deadline)
    return json.loads(bytes(stream.body_log[:length]))
