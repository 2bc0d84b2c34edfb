"""What one ingested event costs, in instructions: the worker's (Python, the whole
`POST /api/ingest` request through Flask) and Redis's (the append script), each
counted by valgrind's callgrind, for several commits in one run.

    python bench/ingest_cost.py                                   # sluice@321ec7d,sluice@8e763bf,sluice
    python bench/ingest_cost.py --targets sluice@HEAD,sluice --events lifecycle

Instructions, not seconds: the same count for the same code and input whatever
else the machine is doing, so a shared 2-core machine still compares commits
(the events/s of `jobindex.py --parts ingest` move with the neighbours' load).
Per target: a `redis-server` of its own and a Python process running the
target's app with Flask's test client (no gunicorn, no network client), both
under callgrind with instrumentation switched on only around the measured
requests (`--requests` requests of 100 events, after 10 unmeasured ones).

Events (`--events`): `new` (every event a new job, completed: the ingest
scenario's) or `lifecycle` (each job queued, then active, then completed, a
batch per step). Needs `valgrind` (Debian's package) and `redis-server`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BATCH = 100
WARMUP = 10

#: Run inside the target's tree (its `sluice` package first on sys.path) under callgrind.
WORKER = r"""
import json, os, subprocess, sys, uuid
sys.path.insert(0, os.getcwd())
os.environ["SLUICE_INGEST_RATE_LIMIT"] = "1000000 per second"
from sluice.web.app import create_app
from sluice.store.users import create_user
from sluice.store.connections import create_connection
requests, kind, redis_pid, WARMUP = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
app = create_app()
r = app.extensions["sluice"].redis
user = create_user(r, f"cost-{uuid.uuid4().hex[:8]}@example.com", "correct horse battery staple")
conn = create_connection(r, user["id"], "cost")
cid, key = conn["id"], conn["apiKey"]
states = ["completed"] if kind == "new" else ["queued", "active", "completed"]

def body(first, state):
    events = []
    for i in range(first, first + 100):
        job = {"externalId": f"job-{i}", "name": "bench.tasks.cost", "state": state,
               "queue": "default", "extensions": {"seq": i, "ts": 1}}
        if state != "queued":
            job["workerId"] = "celery@w1"
        events.append({"type": "job_state_change", "timestamp": "2026-12-01T00:00:00.000Z",
                       "framework": "celery", "connectionId": cid,
                       "id": f"{state}-{i}", "job": job})
    return json.dumps({"events": events}).encode()

batches = [body(100 * (n // len(states)), states[n % len(states)])
           for n in range(len(states) * (requests + WARMUP))]
client = app.test_client()
headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
for b in batches[: len(states) * WARMUP]:
    assert client.post("/api/ingest", data=b, headers=headers).status_code == 202
def toggle(state):
    for pid in (os.getpid(), redis_pid):
        subprocess.run(["callgrind_control", "-i", state, str(pid)], capture_output=True, check=True)
toggle("on")
for b in batches[len(states) * WARMUP :]:
    client.post("/api/ingest", data=b, headers=headers)
toggle("off")
print(json.dumps({"events": len(batches[len(states) * WARMUP :]) * 100}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def total_instructions(out: Path) -> int:
    total = 0
    for path in out.parent.glob(out.name + "*"):
        for line in path.read_text().splitlines():
            m = re.match(r"(?:summary|totals): (\d+)", line)
            if m:
                total = max(total, int(m.group(1)))
    return total


def tree(target: str) -> Path:
    """The folder whose `sluice` package a target runs: this one, or a ref's export."""
    if target == "sluice":
        return ROOT
    ref = target.split("@", 1)[1]
    dest = Path(tempfile.mkdtemp(prefix="sluice-cost-"))
    archive = subprocess.run(
        ["git", "archive", ref, "sluice"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def measure(target: str, requests: int, events: str, work: Path) -> dict[str, Any]:
    folder = tree(target)
    port = free_port()
    label = re.sub(r"[^A-Za-z0-9]+", "-", target)
    redis_out = work / f"redis-{label}.out"
    worker_out = work / f"worker-{label}.out"
    redis = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={redis_out}"]
        + ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server under valgrind did not start") from None
                time.sleep(0.2)
        env = {
            **os.environ,
            "REDIS_URL": f"redis://127.0.0.1:{port}/0",
            "PYTHONHASHSEED": "0",
            "SLUICE_REDIS_CLUSTER": "no",
        }
        script = work / "worker.py"
        script.write_text(WORKER)
        run = subprocess.run(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
            + [f"--callgrind-out-file={worker_out}", sys.executable, str(script)]
            + [str(requests), events, str(redis.pid), str(WARMUP)],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
        )
        if run.returncode != 0:
            raise RuntimeError(f"{target}: {run.stderr[-2000:]}")
        measured = json.loads(run.stdout.strip().splitlines()[-1])["events"]
    finally:
        redis.terminate()
        redis.wait(60)
        if folder != ROOT:
            shutil.rmtree(folder, ignore_errors=True)
    return {
        "events": measured,
        "worker_instructions_per_event": round(total_instructions(worker_out) / measured),
        "redis_instructions_per_event": round(total_instructions(redis_out) / measured),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--targets", default="sluice@321ec7d,sluice@8e763bf,sluice")
    p.add_argument("--requests", type=int, default=30, help="measured requests of 100 events")
    p.add_argument("--events", choices=["new", "lifecycle"], default="new")
    p.add_argument("--out", type=Path, default=RESULTS / "ingest-cost.json")
    a = p.parse_args(argv)
    for tool in ("valgrind", "callgrind_control", "redis-server"):
        if shutil.which(tool) is None:
            print(f"{tool} not found: apt-get install valgrind redis-server", file=sys.stderr)
            return 2
    names = [t.strip() for t in a.targets.split(",") if t.strip()]
    results: dict[str, Any] = {"events": a.events, "batch": BATCH, "requests": a.requests}
    with tempfile.TemporaryDirectory(prefix="sluice-cost-") as tmp:
        for name in names:
            res = measure(name, a.requests, a.events, Path(tmp))
            results[name] = res
            total = res["worker_instructions_per_event"] + res["redis_instructions_per_event"]
            print(
                f"{name}: worker {res['worker_instructions_per_event']:,} + Redis "
                f"{res['redis_instructions_per_event']:,} = {total:,} instructions per event",
                flush=True,
            )
    first = results[names[0]]
    for name in names[1:]:
        results[f"{name}_over_{names[0]}"] = {
            key: round(results[name][key] / first[key], 3)
            for key in ("worker_instructions_per_event", "redis_instructions_per_event")
        }
        print(f"{name} / {names[0]}: {results[f'{name}_over_{names[0]}']}", flush=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    results["revision"] = {"commit": commit}
    a.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"JSON: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
