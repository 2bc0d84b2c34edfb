"""A background sender for `POST /api/ingest` that never blocks or raises into its caller.

Producers (the Celery agent, the in-worker integration) hand events to
`IngestSender.submit`, which only appends to a bounded in-memory buffer. One
daemon thread per process drains it in batches: a batch is posted when it
holds `DEFAULT_BATCH` (100) events or when its oldest event has waited
`DEFAULT_LINGER` (0.2 s), whichever comes first, never one request per event
(`flush`/`close` post at once). Events of one process go out in the order they
were submitted. While Sluice is unreachable or rate-limits (429, honouring
`Retry-After`) the batch in flight is kept and retried with backoff, and the
buffer keeps the newest events and drops the oldest (counted and logged), so
memory stays bounded. Only events not yet acknowledged are ever dropped: a
batch leaves memory only after a 2xx (or a 400/413 naming that one event).
Every event carries a producer id, so a batch that is resent after a lost
response is not appended twice.

Only the standard library is used (`http.client`), so the sender works under
gevent's monkey patching and in a Celery worker without extra dependencies.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger("sluice.client.ingest")

#: Events kept in memory per process while Sluice is unreachable (then the oldest go).
DEFAULT_BUFFER = 10_000
#: A batch is posted as soon as it holds this many events (the server takes up to
#: SLUICE_MAX_BATCH_EVENTS, 1,000 by default) ...
DEFAULT_BATCH = 100
#: ... or once its oldest event has waited this many seconds: at most 5 requests/s
#: per process in steady state.
DEFAULT_LINGER = 0.2
USER_AGENT = "sluice-ingest/1"


@dataclass
class SenderStats:
    """Counters a user can read (and the logs report) to see what happened to events."""

    submitted: int = 0
    accepted: int = 0
    duplicates: int = 0
    dropped: int = 0  # buffer full: the oldest events were discarded
    rejected: int = 0  # the server refused the event itself (400/413 on a single event)
    failed_posts: int = 0
    rate_limited: int = 0  # posts answered 429 (the batch was kept and retried)
    posts: int = 0  # requests that got a 2xx
    last_error: str | None = None


class _Outcome:
    OK, RETRY, SPLIT, DROP = range(4)


class IngestSender:
    """Bounded, batching, retrying sender of ingest events on a daemon thread."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        max_buffer: int = DEFAULT_BUFFER,
        batch_size: int = DEFAULT_BATCH,
        linger: float = DEFAULT_LINGER,
        timeout: float = 10.0,
        backoff_initial: float = 0.25,
        backoff_max: float = 30.0,
        name: str = "sluice-ingest",
    ) -> None:
        parts = urlsplit(url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"Sluice URL must be http(s)://host[:port]: {url!r}")
        self.url = url.rstrip("/")
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port
        self._path = (parts.path or "") + "/api/ingest"
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
        }
        self.max_buffer = max(1, int(max_buffer))
        self.batch_size = max(1, int(batch_size))
        self.linger = max(0.0, float(linger))
        self.timeout = timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.name = name
        self._init_runtime()
        # A forked child (Celery prefork) must not share the parent's socket,
        # lock or buffer: start afresh there, lazily, on the first submit.
        ref = weakref.ref(self)

        def after_fork() -> None:
            sender = ref()
            if sender is not None:
                sender._init_runtime()

        os.register_at_fork(after_in_child=after_fork)

    def _init_runtime(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._idle = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._buffer: deque[tuple[float, dict]] = deque()  # (monotonic time queued, event)
        self._flushing = 0  # flush() callers waiting: no lingering meanwhile
        self._inflight: list[dict] = []
        self._thread: threading.Thread | None = None
        self._conn: http.client.HTTPConnection | None = None
        self._last_drop_log = 0.0
        self._drops_unlogged = 0
        self._failing_since: float | None = None
        self.stats = SenderStats()

    # -- producer side: cheap, never raises, never blocks on the network --

    def submit(self, event: dict) -> None:
        """Queue one ingest event; drops the oldest buffered event when full."""
        self.submit_many((event,))

    def submit_many(self, events: Any) -> None:
        """Queue several events in order (same rules as `submit`)."""
        try:
            dropped = 0
            now = time.monotonic()
            with self._lock:
                was_empty = not self._buffer
                for event in events:
                    if len(self._buffer) >= self.max_buffer:
                        self._buffer.popleft()  # never acknowledged: nothing delivered is lost
                        dropped += 1
                    self._buffer.append((now, event))
                    self.stats.submitted += 1
                self.stats.dropped += dropped
                self._drops_unlogged += dropped
                # The thread waits for the first event, then for a full batch or the
                # linger to end: wake it only when one of those may have changed.
                wake = was_empty or len(self._buffer) >= self.batch_size
            if dropped:
                self._log_drops()
            self._ensure_thread()
            if wake:
                self._wake.set()
        except Exception:  # never let a monitoring hiccup reach the caller
            log.debug("sluice: could not queue an event", exc_info=True)

    def _log_drops(self) -> None:
        now = time.monotonic()
        if now - self._last_drop_log < 10.0:
            return
        self._last_drop_log = now
        with self._lock:
            count, self._drops_unlogged = self._drops_unlogged, 0
        log.warning(
            "sluice: buffer full (%d events): dropped the %d oldest events (%d in all); "
            "is Sluice at %s reachable? last error: %s",
            self.max_buffer,
            count,
            self.stats.dropped,
            self.url,
            self.stats.last_error,
        )

    def pending(self) -> int:
        """Events not yet confirmed by the server."""
        with self._lock:
            return len(self._buffer) + len(self._inflight)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait (bounded) until everything queued so far was delivered; True if it was."""
        if self._thread is None or self._pid != os.getpid():
            return self.pending() == 0
        deadline = time.monotonic() + timeout
        with self._idle:
            self._flushing += 1
            try:
                self._wake.set()
                while self._buffer or self._inflight:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._idle.wait(min(remaining, 0.1))
            finally:
                self._flushing -= 1
        return True

    def close(self, timeout: float = 5.0) -> bool:
        """Flush (bounded), then stop the thread; True if nothing was left behind."""
        delivered = self.flush(timeout)
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=1.0)
        left = self.pending()
        if left:
            log.warning("sluice: %d events were not delivered to %s before exit", left, self.url)
        return delivered and not left

    def summary(self) -> str:
        """One line of what happened to this process's events (logged at shutdown)."""
        s = self.stats
        return (
            f"{s.submitted} events submitted, {s.accepted} accepted, {s.duplicates} duplicates, "
            f"{s.dropped} dropped, {s.rejected} rejected, {s.posts} posts, "
            f"{s.rate_limited} rate-limited (429), {s.failed_posts} failed posts, "
            f"{self.pending()} pending"
        )

    def _due(self, now: float) -> float | None:
        """Seconds until the buffer must be posted (0: now), None when it is empty.
        Called with the lock held."""
        if not self._buffer:
            return None
        if len(self._buffer) >= self.batch_size or self._flushing or self._stop.is_set():
            return 0.0
        return max(0.0, self._buffer[0][0] + self.linger - now)

    def _ensure_thread(self) -> None:
        if self._pid != os.getpid():  # forked without the at-fork hook (should not happen)
            self._init_runtime()
        thread = self._thread
        if thread is not None and thread.is_alive():
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    # -- the sender thread --

    def _run(self) -> None:
        limit = self.batch_size
        delay = self.backoff_initial
        while True:
            try:
                wait: float | None = None
                with self._lock:
                    if not self._inflight:  # a batch being retried goes first, as it is
                        wait = self._due(time.monotonic())
                        if wait == 0:
                            while len(self._inflight) < self.batch_size and self._buffer:
                                self._inflight.append(self._buffer.popleft()[1])
                    batch = self._inflight[:limit]
                    if not batch:
                        if not self._buffer:
                            self._idle.notify_all()
                        self._wake.clear()
                if not batch:
                    if self._stop.is_set() and wait is None:
                        return
                    self._wake.wait(1.0 if wait is None else wait)
                    continue
                outcome, retry_after = self._post(batch)
                if outcome == _Outcome.OK:
                    with self._lock:
                        del self._inflight[: len(batch)]
                        self._idle.notify_all()
                    if self._failing_since is not None:
                        log.info(
                            "sluice: delivering to %s again after %.0f s",
                            self.url,
                            time.monotonic() - self._failing_since,
                        )
                        self._failing_since = None
                    delay = self.backoff_initial
                    limit = min(self.batch_size, limit * 2)
                elif outcome == _Outcome.SPLIT:
                    limit = max(1, len(batch) // 2)
                elif outcome == _Outcome.DROP:
                    with self._lock:
                        del self._inflight[: len(batch)]
                        self.stats.rejected += len(batch)
                        self._idle.notify_all()
                else:
                    if self._failing_since is None:
                        self._failing_since = time.monotonic()
                    # Backoff with jitter, never sooner than the server's Retry-After.
                    pause = delay * random.uniform(0.8, 1.2)
                    if retry_after is not None:
                        pause = max(pause, retry_after)
                    delay = min(self.backoff_max, delay * 2)
                    if self._stop.wait(pause):
                        return
            except Exception:  # the thread must survive anything
                log.exception("sluice: sender error")
                if self._stop.wait(1.0):
                    return

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = (
                http.client.HTTPSConnection
                if self._scheme == "https"
                else http.client.HTTPConnection
            )
            self._conn = cls(self._host, self._port, timeout=self.timeout)
        return self._conn

    def _post(self, batch: list[dict]) -> tuple[int, float | None]:
        """One POST; returns what to do with the batch and an optional wait."""
        body = json.dumps({"events": batch}, separators=(",", ":"), default=str).encode()
        for fresh in (self._conn is None, True):
            try:
                conn = self._connection()
                conn.request("POST", self._path, body=body, headers=self._headers)
                resp = conn.getresponse()
                payload = resp.read()
                status = resp.status
                retry_after = resp.getheader("Retry-After")
                break
            except Exception as exc:
                self._reset_connection()
                if fresh:  # a kept-alive socket the server had closed gets one quick retry
                    return self._failure(f"{type(exc).__name__}: {exc}"), None
        if resp.will_close:
            self._reset_connection()
        if 200 <= status < 300:
            self.stats.posts += 1
            try:
                answer = json.loads(payload)
                self.stats.accepted += int(answer.get("accepted", 0))
                self.stats.duplicates += int(answer.get("duplicates", 0))
            except Exception:
                self.stats.accepted += len(batch)
            return _Outcome.OK, None
        text = payload[:500].decode("utf-8", "replace")
        if status in (400, 413):
            if len(batch) > 1:  # find the offending event by halving
                return _Outcome.SPLIT, None
            log.error(
                "sluice: the server rejected an event (%s): %s; event dropped: %.500s",
                status,
                text,
                batch[0],
            )
            return _Outcome.DROP, None
        if status == 429:
            self.stats.rate_limited += 1
            try:
                wait = float(retry_after or 1)
            except ValueError:
                wait = 1.0
            return self._failure(f"HTTP 429 rate limited, retry after {wait:g} s"), min(
                wait, self.backoff_max
            )
        if status in (401, 403, 404):
            return self._failure(
                f"HTTP {status} {text} (check the API key and connection id)"
            ), self.backoff_max
        return self._failure(f"HTTP {status} {text}"), None

    def _failure(self, message: str) -> int:
        self.stats.failed_posts += 1
        first = self.stats.last_error is None or self._failing_since is None
        self.stats.last_error = message
        if first:
            log.warning(
                "sluice: could not deliver events to %s (%s); retrying with backoff",
                self.url,
                message,
            )
        else:
            log.debug("sluice: delivery failed again: %s", message)
        return _Outcome.RETRY

    def _reset_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass
