"""Operator actions end to end, from a click in Chromium to Celery doing it.

A real prefork `celery worker` (one process; `sluice.celery.install(app,
capture_call=True)`, so failed jobs carry their call), the real `celery-agent`
carrying out commands, the real gunicorn server and Redis. Signed in as the
connection's owner, the page: retries a failed job (the new job completes, the
page links to it and it links back), revokes a queued job (it is cancelled
without running), terminates a running one (cancelled), and grows the worker's
pool by one (Celery's own stats say so); then retries every failed job of a
filtered list at once (each new job completes, linked to its original), shrinks
the pool by one and shuts the worker down (its process exits). The rig is
tests/celery/test_actions.py's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: pip install -r requirements-dev.txt"
)
pytest.importorskip(
    "celery", reason="Celery is not installed: pip install -r requirements-celery.txt"
)

from playwright.sync_api import expect  # noqa: E402

from tests.browser.helpers import login_cookie  # noqa: E402
from tests.celery.conftest import broker_redis_url, queue  # noqa: E402, F401  (fixtures)
from tests.celery.rig import wait_until  # noqa: E402
from tests.celery.test_actions import (  # noqa: E402, F401  (acting, procs: fixtures)
    acting,
    job_in,
    pool_size,
    procs,
)

#: A command goes to the agent (long poll), to Celery, and its result back.
ACTION_TIMEOUT_MS = 45_000


def open_job(page: Any, rig: Any, ref: str, state: str) -> Any:
    """The live view with `ref`'s drawer open, once the drawer shows it in `state`."""
    page.goto(f"{rig.server.url}/connections/{rig.account.connection_id}?job={ref}")
    drawer = page.locator("[data-drawer]")
    expect(drawer.locator('[data-detail-field="externalId"]')).to_have_text(ref)
    expect(drawer).to_have_attribute("data-state", state, timeout=ACTION_TIMEOUT_MS)
    return drawer


def test_retry_revoke_terminate_and_pool_grow_from_the_page(
    acting,  # noqa: F811  (the fixture imported above)
    page,
    tmp_path: Path,
):
    worker = acting.worker("-c", "1")  # one process: a second job waits behind the first
    acting.agent()
    server, account = acting.server, acting.account
    login_cookie(page, server.url, account)

    # Retry a failed job: it runs again with the same argument and completes.
    original = acting.send("sluice_test.fail_then_ok", str(tmp_path / "once"))
    job_in(server, account, original, "failed")
    drawer = open_job(page, acting, original, "failed")
    drawer.locator('[data-job-action="retry"]').click()
    status = drawer.locator("[data-action-status]")
    expect(status).to_have_text("Retry: done", timeout=ACTION_TIMEOUT_MS)
    link = drawer.locator("[data-new-job]")
    new_id = link.get_attribute("data-new-job")
    assert new_id and new_id != original
    link.click()
    expect(drawer.locator('[data-detail-field="externalId"]')).to_have_text(new_id)
    expect(drawer).to_have_attribute("data-state", "completed", timeout=ACTION_TIMEOUT_MS)
    expect(drawer.locator("[data-retry-of]")).to_have_text(original)
    drawer.locator("[data-retry-of]").click()
    expect(drawer.locator('[data-detail-field="externalId"]')).to_have_text(original)
    expect(drawer).to_have_attribute("data-state", "failed")  # the original stays failed

    # Revoke a queued job (behind a running one) and terminate the running one.
    running = acting.send("sluice_test.sleep", 60)
    job_in(server, account, running, "active")
    waiting = acting.send("sluice_test.add", 1, 2)
    job_in(server, account, waiting, "queued")
    drawer = open_job(page, acting, waiting, "queued")
    drawer.locator('[data-job-action="revoke"]').click()
    # A revoke is a broadcast: every worker on the broker replies (others may share it).
    status = drawer.locator("[data-action-status]")
    expect(status).to_contain_text("Revoke: done (", timeout=ACTION_TIMEOUT_MS)
    # Our worker's reply, when it came in time, says ok (a loaded broker may miss
    # the reply window); that the revoke worked is what Celery does next (below).
    assert f"{worker.nodename}: " not in status.inner_text() or (
        f"{worker.nodename}: ok" in status.inner_text()
    )
    drawer = open_job(page, acting, running, "active")
    drawer.locator("[data-terminate-signal]").select_option("SIGKILL")
    drawer.locator('[data-job-action="terminate"]').click()
    expect(drawer.locator("[data-action-status]")).to_contain_text(
        "Terminate: done", timeout=ACTION_TIMEOUT_MS
    )
    # Celery kills the process running it: the job is cancelled, live in the drawer…
    expect(drawer).to_have_attribute("data-state", "cancelled", timeout=ACTION_TIMEOUT_MS)
    # …and the revoked job, its turn come, is cancelled without ever running.
    revoked = job_in(server, account, waiting, "cancelled", "completed")
    assert revoked["state"] == "cancelled", revoked
    assert "active" not in [entry["state"] for entry in revoked["timeline"]]

    # Pool +1 from the worker's view: Celery's pool has two processes.
    wait_until(lambda: pool_size(acting.pub, worker.nodename) == 1, 20, "a pool of 1")
    page.goto(f"{server.url}/connections/{account.connection_id}?worker={worker.nodename}")
    bar = page.locator("[data-worker-actions]")
    bar.locator('[data-worker-action="pool_grow"]').click()
    expect(bar.locator("[data-action-status]")).to_have_text(
        f"Pool +1: done ({worker.nodename}: ok)", timeout=ACTION_TIMEOUT_MS
    )
    wait_until(lambda: pool_size(acting.pub, worker.nodename) == 2, 30, "a pool of 2")


def test_bulk_retry_pool_shrink_and_shutdown_from_the_page(
    acting,  # noqa: F811  (the fixture imported above)
    page,
    tmp_path: Path,
):
    worker = acting.worker()  # -c 2
    acting.agent()
    server, account = acting.server, acting.account
    originals = [acting.send("sluice_test.fail_then_ok", str(tmp_path / f"f{i}")) for i in range(3)]
    for ref in originals:
        job_in(server, account, ref, "failed")
    login_cookie(page, server.url, account)

    # Retry all failed jobs of the queue: the filtered list's button, confirmed.
    page.goto(f"{server.url}/connections/{account.connection_id}?state=failed&queue={acting.queue}")
    bulk = page.locator("[data-bulk-retry]")
    expect(bulk).to_have_text("Retry all 3 failed")
    bulk.click()
    page.locator("[data-confirm-dialog] [data-confirm-ok]").click()
    status = page.locator("[data-bulk-actions] [data-action-status]")
    expect(status).to_have_text("Retry all: done: 3 retried", timeout=ACTION_TIMEOUT_MS)
    # Celery ran each one again: three new jobs complete, each linked to its original.
    page.goto(
        f"{server.url}/connections/{account.connection_id}?state=completed&queue={acting.queue}"
    )
    rows = page.locator("[data-jobs-body] .job-row")
    expect(rows).to_have_count(3, timeout=ACTION_TIMEOUT_MS)
    links = set()
    for external_id in rows.evaluate_all("rows => rows.map(r => r.dataset.externalId)"):
        links.add(job_in(server, account, external_id, "completed")["extensions"]["retryOf"])
    assert links == set(originals)

    # Pool −1 from the worker's view: Celery's pool goes from two processes to one.
    wait_until(lambda: pool_size(acting.pub, worker.nodename) == 2, 20, "a pool of 2")
    page.goto(f"{server.url}/connections/{account.connection_id}?worker={worker.nodename}")
    bar = page.locator("[data-worker-actions]")
    bar.locator('[data-worker-action="pool_shrink"]').click()
    worker_status = bar.locator("[data-action-status]")
    expect(worker_status).to_have_text(
        f"Pool −1: done ({worker.nodename}: ok)", timeout=ACTION_TIMEOUT_MS
    )
    wait_until(lambda: pool_size(acting.pub, worker.nodename) == 1, 30, "a pool of 1")

    # Shut down, confirmed: the worker process exits, and the page says so.
    bar.locator('[data-worker-action="shutdown"]').click()
    page.locator("[data-confirm-dialog] [data-confirm-ok]").click()
    expect(worker_status).to_contain_text("Shut down: done", timeout=ACTION_TIMEOUT_MS)
    wait_until(lambda: worker.process.poll() is not None, 30, "the worker to exit")
    assert "Got shutdown from remote" in worker.output()
