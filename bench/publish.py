"""Publisher process: appends sequenced, timestamped events at a fixed rate.

Why a separate process: pacing must not jitter with the harness's own work,
and its CPU is measured apart from the load generators'. Three ways in:
``ingest`` (Sluice's real POST /api/ingest, batched per tick and per
connection, over keep-alive HTTP), ``xadd`` (the peers reading a Redis
Stream) and ``pubsub`` (flask-sse's channel, in flask-sse's message format).
Every event carries ``"seq": n, "ts": <send time, µs>`` so the clients can
count gaps/repeats and latency, for every target the same way.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import resource
import socket
import time
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any

import redis

MAXLEN = 20000
PEER_DATA = (
    '{"id":"job-%d","externalId":"job-%d","name":"bench.tasks.fanout",'
    '"state":"completed","previousState":"active","timestamp":"%s",'
    '"queue":"default","extensions":{"seq":%d,"ts":%d%s}}'
)


def iso_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def sluice_event(
    conn_id: str, run: str, group: int, seq: int, ts: int, iso: str, pad: str = ""
) -> dict:
    """A valid job_state_change for POST /api/ingest; seq/ts ride in extensions."""
    ext: dict[str, Any] = {"seq": seq, "ts": ts}
    if pad:
        ext["pad"] = pad
    return {
        "type": "job_state_change",
        "timestamp": iso,
        "framework": "celery",
        "connectionId": conn_id,
        "id": f"bench-{run}-{group}-{seq}",
        "job": {
            "externalId": f"job-{seq}",
            "name": "bench.tasks.fanout",
            "state": "completed",
            "previousState": "active",
            "queue": "default",
            "extensions": ext,
        },
    }


class Publisher:
    """One sink per group (connection); ``emit`` appends a batch to a group."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.kind = cfg["kind"]
        self.run_id = cfg.get("run", str(os.getpid()))
        self.r = redis.Redis.from_url(cfg["redis_url"])
        self.keys: list[str] = cfg.get("keys", [])
        self.http: dict[int, http.client.HTTPConnection] = {}
        self.base = cfg.get("base")  # (host, port) for ingest
        self.api_keys: list[str] = cfg.get("api_keys", [])
        self.conn_ids: list[str] = cfg.get("conn_ids", [])
        # keep-alive HTTP connections: one per group by default; with
        # `http_pool` k, groups share k of them (the key is per request), so
        # (g)'s 10,000 connections do not need 10,000 sockets
        self.http_pool: int | None = cfg.get("http_pool")
        self.posts = 0
        self.errors = 0
        self.pad = ""

    def emit(self, group: int, seqs: range) -> None:
        ts = time.time_ns() // 1000
        iso = iso_now()
        if self.kind == "ingest":
            self._ingest(group, seqs, ts, iso)
            return
        self.pad_json = f',"pad":"{self.pad}"' if self.pad else ""
        pipe = self.r.pipeline(transaction=False)
        key = self.keys[group]
        for s in seqs:
            data = PEER_DATA % (s, s, iso, s, ts, self.pad_json)
            if self.kind == "xadd":
                pipe.xadd(
                    key, {"data": data, "type": "job:state_change"}, maxlen=MAXLEN, approximate=True
                )
            else:  # flask-sse's own publish() format
                msg = json.dumps({"data": data, "type": "job:state_change", "id": str(s)})
                pipe.publish(key, msg)
        pipe.execute()

    def _ingest(self, group: int, seqs: range, ts: int, iso: str) -> None:
        cid = self.conn_ids[group]
        for lo in range(seqs.start, seqs.stop, 100):
            chunk = range(lo, min(lo + 100, seqs.stop))
            body = json.dumps(
                {
                    "events": [
                        sluice_event(cid, self.run_id, group, s, ts, iso, self.pad) for s in chunk
                    ]
                }
            ).encode()
            self._post(group, body)

    def _post(self, group: int, body: bytes) -> None:
        slot = group % self.http_pool if self.http_pool else group
        self.posts += 1
        for _attempt in range(3):
            conn = self.http.get(slot)
            if conn is None:
                conn = self.http[slot] = http.client.HTTPConnection(*self.base, timeout=30)
                conn.connect()
                # http.client sends headers and body in two writes: without
                # NODELAY, Nagle + delayed ACK add ~40 ms to every POST
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                conn.request(
                    "POST",
                    "/api/ingest",
                    body=body,
                    headers={
                        "Authorization": f"Bearer {self.api_keys[group]}",
                        "Content-Type": "application/json",
                    },
                )
                resp = conn.getresponse()
                resp.read()
                if resp.status != 202:
                    self.errors += 1
                return
            except (OSError, http.client.HTTPException):
                conn.close()
                self.http.pop(slot, None)
        self.errors += 1

    def run(
        self, rates: list[float], duration: float, tick: float, seq0: list[int], pad: int = 0
    ) -> dict:
        """Publish rates[g] events/s to each group for duration seconds.

        `pad` adds that many bytes to each event (slow-client runs need volume).
        """
        self.pad = "x" * pad
        t_start = time.monotonic()
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        sent = [0] * len(rates)
        total = [int(rate * duration) for rate in rates]
        # Time-based: if a POST is slow the next batch is bigger (as a real
        # producer's buffer would be), so the rate holds while latency shows.
        k = 0
        while time.monotonic() - t_start < duration * 10 + 30:
            elapsed = time.monotonic() - t_start
            for g, rate in enumerate(rates):
                due = min(total[g], int(rate * elapsed)) - sent[g]
                if due > 0:
                    start = seq0[g] + sent[g]
                    self.emit(g, range(start, start + due))
                    sent[g] += due
            if sent == total:
                break
            k += 1
            delay = t_start + k * tick - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        elapsed = time.monotonic() - t_start
        self.pad = ""
        ru = resource.getrusage(resource.RUSAGE_SELF)
        cpu = ru.ru_utime - ru0.ru_utime + ru.ru_stime - ru0.ru_stime
        return {"published": sent, "elapsed": elapsed, "errors": self.errors, "cpu_s": cpu}

    def run_spread(
        self,
        groups: list[int],
        rate: float,
        duration: float,
        tick: float,
        seq0: dict[int, int],
        seed: int = 0,
    ) -> dict:
        """Publish `rate` events/s in total, each to a group drawn at random from
        `groups`; a tick's events are batched per group (one POST per group and
        tick: with many groups, mostly one event per POST).

        Time-based like `run`: a slow tick makes the next one bigger, so the
        achieved rate (published ÷ elapsed) shows whether the publisher kept up.
        """
        rng = random.Random(seed)
        t_start = time.monotonic()
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        posts0, errors0 = self.posts, self.errors
        nxt = dict(seq0)
        published: dict[int, int] = {}
        total = int(rate * duration)
        sent = k = 0
        late_ticks = 0
        while sent < total and time.monotonic() - t_start < duration * 10 + 30:
            due = min(total, int(rate * (time.monotonic() - t_start))) - sent
            if due > 0:
                batch: dict[int, int] = {}
                for g in rng.choices(groups, k=due):
                    batch[g] = batch.get(g, 0) + 1
                for g, n in batch.items():
                    self.emit(g, range(nxt[g], nxt[g] + n))
                    nxt[g] += n
                    published[g] = published.get(g, 0) + n
                sent += due
            k += 1
            delay = t_start + k * tick - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                late_ticks += 1
                k = int((time.monotonic() - t_start) / tick)  # do not burst to catch up ticks
        elapsed = time.monotonic() - t_start
        ru = resource.getrusage(resource.RUSAGE_SELF)
        cpu = ru.ru_utime - ru0.ru_utime + ru.ru_stime - ru0.ru_stime
        return {
            "published": published,
            "sent": sent,
            "elapsed": elapsed,
            "posts": self.posts - posts0,
            "errors": self.errors - errors0,
            "late_ticks": late_ticks,
            "ticks": k,
            "cpu_s": cpu,
        }


def main(conn: Connection, cfg: dict[str, Any]) -> None:
    """Process entry point: serve ("run", …) / ("emit", …) / ("quit",) commands."""
    pub = Publisher(cfg)
    deadline = time.monotonic() + 3600
    while time.monotonic() < deadline:
        if not conn.poll(5):
            if os.getppid() == 1:
                return
            continue
        msg = conn.recv()
        if msg[0] == "run":
            conn.send(("ok", pub.run(*msg[1:])))
        elif msg[0] == "run_spread":
            conn.send(("ok", pub.run_spread(*msg[1:])))
        elif msg[0] == "emit":
            for g, s in msg[1]:
                pub.emit(g, range(s, s + 1))
            conn.send(("ok", pub.errors))
        else:
            conn.send(("ok", None))
            return


def ingest_poster(cfg: dict[str, Any], duration: float, out: Connection, go: Any = None) -> None:
    """Hammer POST /api/ingest with batches of 100 for a while; report counts.

    Bodies are built before the clock starts (unique producer ids, so none is
    a duplicate): the posters share the 2 cores with the server, and JSON
    encoding 100 events per request in the poster would be measured as the
    server's slowness. With `go` (an Event), the poster says "ready" on `out`
    once its bodies are built and waits for it, so that no poster still
    building its bodies competes for the cores with the others' posting.
    """
    pub = Publisher(cfg)
    iso = iso_now()
    ts = time.time_ns() // 1000
    conn_id = cfg["conn_ids"][0]
    prebuilt = int(duration * cfg.get("max_batches_per_s", 120))
    seq = cfg["seq0"]
    bodies = []
    for _ in range(prebuilt):
        events = [sluice_event(conn_id, pub.run_id, 0, s, ts, iso) for s in range(seq, seq + 100)]
        bodies.append(json.dumps({"events": events}).encode())
        seq += 100
    if go is not None:
        out.send("ready")
        go.wait()
    accepted = batches = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < duration and batches < len(bodies):
        before = pub.errors
        pub._post(0, bodies[batches])
        batches += 1
        if pub.errors == before:
            accepted += 100
    out.send(
        {
            "accepted": accepted,
            "batches": batches,
            "errors": pub.errors,
            "elapsed": time.monotonic() - t0,
            "ran_out": batches >= len(bodies),
        }
    )
