"""A real Celery failure in the live view's job drawer.

A real `celery worker` runs a task that raises; the agent (`python -m sluice
celery-agent`, from Celery's events) reports it. Signed in as the connection's
owner, Chromium opens the failed job's drawer: the state, the timeline, the
exception and its traceback, and the argument (a marker string). With argument
capture off (`--no-args`), the drawer has no arguments and the marker is nowhere
on the page (tests/celery/test_debug_data.py proves it is nowhere in Redis).
"""

from __future__ import annotations

import re
import signal
import uuid
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

from tests.browser.helpers import job_row, login_cookie, open_live  # noqa: E402
from tests.celery.conftest import broker_redis_url, queue  # noqa: E402, F401  (fixtures)
from tests.celery.rig import (  # noqa: E402
    Agent,
    CeleryWorker,
    cleanup_broker,
    publisher,
    redis_broker_url,
)

#: A worker, the agent and the broker take a few seconds to carry a task's events.
CELERY_TIMEOUT_MS = 30_000


@pytest.fixture
def procs(broker_redis_url, queue):  # noqa: F811  (the fixtures imported above)
    started: list = []
    yield started
    for proc in reversed(started):
        proc.stop(signal.SIGKILL)
    cleanup_broker(redis_broker_url(broker_redis_url), queue)


#: The test app's tasks (tests/celery/celeryapp.py), in the order the view lists them.
APP_TASKS = sorted(
    line.split('"')[1]
    for line in (Path(__file__).parents[1] / "celery" / "celeryapp.py").read_text().splitlines()
    if line.startswith('@app.task(name="')
)


def start_agent_and_worker(
    server: Any, account: Any, broker: str, queue_name: str, procs: list, *, capture: bool
) -> None:
    """The agent (its argument capture on or off), then a worker sending task events."""
    args = ("--queue", queue_name) + (() if capture else ("--no-args",))
    agent = Agent(broker, server.url, account, *args)
    procs.append(agent.start())
    assert ("argument capture off" in agent.output()) is not capture
    procs.append(CeleryWorker(broker, queue_name, events=True).start())


def timeline_states(drawer: Any) -> list[str]:
    return drawer.locator("[data-detail-timeline] li").evaluate_all(
        "els => els.map(e => e.dataset.state)"
    )


def test_a_failed_celery_task_shows_its_traceback_and_arguments_in_the_drawer(
    server,
    account,
    broker_redis_url,  # noqa: F811
    queue,  # noqa: F811
    procs,
    page,
):
    broker = redis_broker_url(broker_redis_url)
    cid = account.connection_id
    start_agent_and_worker(server, account, broker, queue, procs, capture=True)
    login_cookie(page, server.url, account)
    open_live(page, server.url, cid)

    marker = f"marker-{uuid.uuid4().hex}"
    task_id = publisher(broker, queue).send_task("sluice_test.boom", (marker,), queue=queue).id
    # The job comes on the stream, live, and fails.
    row = job_row(page, task_id)
    expect(row).to_have_attribute("data-state", "failed", timeout=CELERY_TIMEOUT_MS)
    error = re.compile(rf"ValueError.*{marker}")  # as Celery's event gives it: a repr
    expect(row.locator(".job-error")).to_have_text(error)
    row.locator("a.job-link").click()

    drawer = page.locator("[data-drawer]")
    expect(drawer).to_be_visible()
    expect(page.locator("[data-drawer-title]")).to_have_text("sluice_test.boom")
    expect(drawer).to_have_attribute("data-state", "failed")
    expect(drawer.locator('[data-detail-field="state"] .badge')).to_have_text("Failed")
    expect(drawer.locator('[data-detail-field="externalId"]')).to_have_text(task_id)
    expect(drawer.locator('[data-detail-field="worker"] a')).to_have_text(
        procs[-1].nodename  # the worker's node name, a link to its jobs
    )
    # The timeline: queued, then active on the worker, then failed with its error.
    timeline = drawer.locator("[data-detail-timeline] li")
    expect(timeline.last).to_have_attribute("data-state", "failed")
    states = timeline_states(drawer)
    assert states[0] == "queued" and states[-2:] == ["active", "failed"], states
    expect(timeline.last).to_contain_text("from active")
    expect(timeline.last.locator(".timeline-error")).to_have_text(error)
    # The exception, its traceback and the argument.
    expect(drawer.locator("[data-detail-error]")).to_have_text(error)
    traceback = drawer.locator('[data-detail-section="traceback"] pre')
    expect(traceback).to_contain_text("Traceback (most recent call last)")
    expect(traceback).to_contain_text("raise ValueError(message)")
    expect(traceback).to_contain_text(f"ValueError: {marker}")
    expect(drawer.locator('[data-detail-section="args"] pre')).to_have_text(f"('{marker}',)")
    expect(drawer.locator('[data-detail-section="kwargs"] pre')).to_have_text("{}")
    expect(drawer.locator('[data-detail-section="result"]')).to_be_hidden()


def test_with_argument_capture_off_the_drawer_shows_no_arguments(
    server,
    account,
    broker_redis_url,  # noqa: F811
    queue,  # noqa: F811
    procs,
    page,
):
    broker = redis_broker_url(broker_redis_url)
    cid = account.connection_id
    start_agent_and_worker(server, account, broker, queue, procs, capture=False)
    login_cookie(page, server.url, account)
    open_live(page, server.url, cid)

    marker = f"marker-{uuid.uuid4().hex}"
    # str + int: a TypeError whose message and traceback do not hold the marker.
    task_id = publisher(broker, queue).send_task("sluice_test.add", (marker, 1), queue=queue).id
    row = job_row(page, task_id)
    expect(row).to_have_attribute("data-state", "failed", timeout=CELERY_TIMEOUT_MS)

    # A shared address opens the drawer on the task id.
    page.goto(f"{server.url}/connections/{cid}?job={task_id}")
    drawer = page.locator("[data-drawer]")
    expect(drawer).to_be_visible()
    expect(drawer.locator('[data-detail-field="externalId"]')).to_have_text(task_id)
    expect(drawer).to_have_attribute("data-state", "failed")
    expect(drawer.locator('[data-detail-field="state"] .badge')).to_have_text("Failed")
    expect(drawer.locator("[data-detail-timeline] li").last).to_have_attribute(
        "data-state", "failed"
    )
    assert "active" in timeline_states(drawer)
    # What is not argument data is still there to debug with…
    expect(drawer.locator("[data-detail-error]")).to_contain_text("TypeError")
    traceback = drawer.locator('[data-detail-section="traceback"] pre')
    expect(traceback).to_contain_text("Traceback (most recent call last)")
    expect(traceback).to_contain_text("return x + y")
    # …and no arguments, keyword arguments or result: not shown, not on the page.
    for key in ("args", "kwargs", "result"):
        section = drawer.locator(f'[data-detail-section="{key}"]')
        expect(section).to_be_hidden()
        expect(section.locator("pre")).to_have_text("")
    assert marker not in page.content()
    assert marker not in page.evaluate("() => document.body.innerText + location.href")


def test_the_worker_view_shows_pool_queues_processed_reserved_and_registered_tasks(
    server,
    account,
    broker_redis_url,  # noqa: F811
    queue,  # noqa: F811
    procs,
    page,
):
    """A real prefork worker (`-c 2 -Q a,b`) through the agent: its view (the jobs
    list filtered on it) says its pool and size, processed, active and reserved
    (a link to its queued jobs: the ones it prefetched), its queues and, folded,
    its registered tasks."""
    broker = redis_broker_url(broker_redis_url)
    cid = account.connection_id
    qa, qb = f"{queue}-a", f"{queue}-b"
    try:
        procs.append(Agent(broker, server.url, account).start())
        worker = CeleryWorker(broker, f"{qa},{qb}", events=True).start()
        procs.append(worker)
        app = publisher(broker, qa)
        app.send_task("sluice_test.add", (1, 2), queue=qa)
        login_cookie(page, server.url, account)
        page.goto(f"{server.url}/connections/{cid}?worker={worker.nodename}")
        expect(page.locator("[data-indicator]")).to_have_attribute("data-state", "live")
        view = page.locator(f'[data-worker-view="{worker.nodename}"]')
        fact = lambda key: view.locator(f'[data-worker-fact="{key}"]')  # noqa: E731
        expect(fact("pool")).to_have_text("prefork · size 2", timeout=CELERY_TIMEOUT_MS)
        expect(fact("queues")).to_have_text(", ".join(sorted([qa, qb])))
        expect(fact("processed")).to_have_text(re.compile(r"^[1-9]"), timeout=CELERY_TIMEOUT_MS)
        registered = view.locator("[data-worker-registered]")
        expect(registered.locator("summary")).to_have_text(f"Registered tasks ({len(APP_TASKS)})")
        expect(registered.locator("li").first).to_be_hidden()  # folded until opened
        registered.locator("summary").click()
        expect(registered.locator("li")).to_have_text(APP_TASKS)
        # Four slow tasks on two processes: two run, two wait reserved on this worker.
        ids = [app.send_task("sluice_test.sleep", (5.0,), queue=qb).id for _ in range(4)]
        expect(fact("active")).to_have_text("2", timeout=CELERY_TIMEOUT_MS)
        expect(fact("reserved")).to_have_text("2", timeout=CELERY_TIMEOUT_MS)
        expect(registered).to_have_attribute("open", "")  # updates keep it open
        fact("reserved").locator("a").click()
        expect(page).to_have_url(re.compile(r"[?&]state=queued(&|$)"))
        rows = page.locator("[data-jobs-body] .job-row")
        expect(rows).to_have_count(2)
        expect(registered).to_have_attribute("open", "")  # the same worker's view: still open
        held = rows.evaluate_all("els => els.map(e => e.dataset.externalId)")
        assert set(held) <= set(ids), held
        # They run, and processed grows with them.
        before = int(fact("processed").inner_text().replace(",", ""))
        expect(fact("reserved")).to_have_text("0", timeout=CELERY_TIMEOUT_MS)
        expect(fact("active")).to_have_text("0", timeout=CELERY_TIMEOUT_MS)
        page.wait_for_function(
            "([n]) => Number(document.querySelector('[data-worker-fact=processed]')"
            ".textContent.replace(/,/g, '')) >= n",
            arg=[before + 2],
            timeout=CELERY_TIMEOUT_MS,
        )
    finally:
        cleanup_broker(broker, qa)
        cleanup_broker(broker, qb)
