"""A real HTTP server that stands in for Sluice's ingest endpoint in unit tests.

It records every batch and answers like the server does (202 with accepted /
duplicates, producer ids de-duplicated), or with a scripted failure status,
so the sender's retries, splitting and idempotence are tested over a socket.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class CaptureServer:
    def __init__(self) -> None:
        self.batches: list[list[dict]] = []
        self.events: list[dict] = []  # accepted, in order, without duplicates
        self.seen_ids: set[str] = set()
        self.statuses: list[int] = []  # scripted answers, consumed one per request
        self.reject_if = (
            None  # callable(event) -> bool: answer 400 for batches holding such an event
        )
        self.requests = 0
        self.retry_after = "0"  # the Retry-After of a scripted 429
        self.request_times: list[float] = []  # time.monotonic() of each request
        self.auth: list[str] = []
        self.cond = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status, answer = outer._answer(
                    self.path, self.headers.get("Authorization", ""), body
                )
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 429:
                    self.send_header("Retry-After", outer.retry_after)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def _answer(self, path: str, auth: str, body: bytes) -> tuple[int, dict]:
        with self.cond:
            self.requests += 1
            self.request_times.append(time.monotonic())
            self.auth.append(auth)
            if path != "/api/ingest":
                return 404, {"error": {"code": "NOT_FOUND"}}
            if self.statuses:
                status = self.statuses.pop(0)
                return status, {"error": {"code": "SCRIPTED", "message": str(status)}}
            batch = json.loads(body)["events"]
            if self.reject_if is not None and any(self.reject_if(e) for e in batch):
                return 400, {"error": {"code": "VALIDATION_ERROR"}}
            self.batches.append(batch)
            accepted = duplicates = 0
            for event in batch:
                if event.get("id") in self.seen_ids:
                    duplicates += 1
                    continue
                self.seen_ids.add(event.get("id"))
                self.events.append(event)
                accepted += 1
            self.cond.notify_all()
            return 202, {"accepted": accepted, "duplicates": duplicates}

    def wait_for(self, predicate, timeout: float = 10.0) -> list[dict]:
        """Wait until predicate(events) is true; returns the events."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate(self.events):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"timed out; got {len(self.events)} events: {self.events[-5:]}"
                    )
                self.cond.wait(remaining)
            return list(self.events)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
