"""The Celery app the test workers run (`celery -A tests.celery.celeryapp worker`).

Configured from the environment by rig.py: TEST_BROKER_URL, TEST_QUEUE and,
for the in-worker integration, TEST_SLUICE_INSTALL=1 with SLUICE_URL /
SLUICE_API_KEY / SLUICE_CONNECTION_ID / SLUICE_HEARTBEAT_INTERVAL.
"""

from __future__ import annotations

import os

from celery import Celery

app = Celery("sluice_test", broker=os.environ.get("TEST_BROKER_URL", "memory://"))
app.conf.update(
    task_default_queue=os.environ.get("TEST_QUEUE", "celery"),
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
    task_send_sent_event=True,
    result_backend=None,
    task_ignore_result=True,
    worker_hijack_root_logger=True,
)
if os.environ.get("TEST_SLUICE_INSTALL") == "1":
    import sluice.celery

    sluice.celery.install(app)


@app.task(name="sluice_test.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="sluice_test.boom")
def boom(message: str) -> None:
    raise ValueError(message)


@app.task(name="sluice_test.flaky", bind=True, max_retries=5)
def flaky(self, failures: int, countdown: float = 0.3) -> str:
    """Fails `failures` times (retrying after `countdown` seconds), then succeeds."""
    if self.request.retries < failures:
        error = RuntimeError(f"attempt {self.request.retries + 1} failed")
        raise self.retry(countdown=countdown, exc=error)
    return "ok"


@app.task(name="sluice_test.sleep")
def sleep(seconds: float) -> None:
    """Runs for `seconds` (the lost-jobs test kills its worker meanwhile)."""
    import time

    time.sleep(seconds)


@app.task(name="sluice_test.fail")
def fail(*args: object, **kwargs: object) -> None:
    """Fails whatever it is called with (the captured-call tests)."""
    raise RuntimeError("failed on purpose")


@app.task(name="sluice_test.fail_then_ok")
def fail_then_ok(path: str) -> str:
    """Fails the first time (leaving `path` behind), succeeds once `path` exists: a
    job an operator's retry (the same task, the same arguments) completes."""
    if os.path.exists(path):
        return "ok"
    with open(path, "w") as f:
        f.write("failed once\n")
    raise RuntimeError(f"first run: {path} did not exist")
