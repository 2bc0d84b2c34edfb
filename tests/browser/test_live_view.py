"""The live view in a real browser against the real gunicorn+gevent server and Redis."""

from __future__ import annotations

import pytest

pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: pip install -r requirements-dev.txt"
)

import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from playwright.sync_api import expect

from sluice.contract import JOB_STATES
from tests.browser.helpers import (
    event_count,
    job_row,
    login_cookie,
    login_ui,
    open_live,
    wait_counts,
)
from tests.util import ingest, job_event, queue_event, worker_event


def iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def send(server: Any, account: Any, events: list[dict]) -> None:
    response = ingest(server.url, account.api_key, account.connection_id, events)
    assert response.status_code == 202, response.text


def test_job_row_appears_within_a_second_then_changes_state(server, account, page):
    login_ui(page, server.url, account, f"/connections/{account.connection_id}")
    expect(page.locator("[data-indicator]")).to_have_attribute("data-state", "live")
    expect(page.locator("[data-conn-name]")).to_have_text("Test cluster")
    cid = account.connection_id

    send(server, account, [job_event(cid, "job-1", "queued", queue="emails", attempt=1)])
    row = job_row(page, "job-1")
    expect(row).to_be_visible(timeout=1000)
    expect(row.locator(".badge")).to_have_text("Queued")
    expect(row.locator(".job-name")).to_have_text("app.tasks.send_email")
    expect(row.locator(".c-queue")).to_have_text("emails")

    started = datetime.now(UTC)
    send(
        server,
        account,
        [job_event(cid, "job-1", "active", workerId="celery@w1", startedAt=iso(started))],
    )
    expect(row.locator(".badge")).to_have_text("Active", timeout=1000)
    expect(row.locator(".c-worker")).to_have_text("celery@w1")

    finished = started + timedelta(milliseconds=1500)
    send(server, account, [job_event(cid, "job-1", "completed", finishedAt=iso(finished))])
    expect(row.locator(".badge")).to_have_text("Completed", timeout=1000)
    expect(row.locator(".c-duration")).to_have_text("1.5 s")

    send(
        server,
        account,
        [
            job_event(cid, "job-2", "queued"),
            job_event(cid, "job-2", "failed", error="ValueError: <b>not markup</b>"),
        ],
    )
    failed = job_row(page, "job-2")
    expect(failed.locator(".badge")).to_have_text("Failed", timeout=1000)
    # Untrusted text is text, never HTML.
    expect(failed.locator(".job-error")).to_have_text("ValueError: <b>not markup</b>")
    assert failed.locator(".job-error b").count() == 0
    # Newest first, one row per job, every event counted once.
    expect(page.locator("[data-jobs-body] .job-row")).to_have_count(2)
    assert (
        page.locator("[data-jobs-body] .job-row").first.get_attribute("data-external-id") == "job-2"
    )
    wait_counts(page, rows=2, events=5)


def test_all_eight_states_have_badges(server, account, page):
    states = list(JOB_STATES)
    cid = account.connection_id
    send(server, account, [job_event(cid, f"s-{s}", s) for s in states])
    login_cookie(page, server.url, account)
    open_live(page, server.url, cid)  # a fresh page replays the retained history
    for state in states:
        badge = job_row(page, f"s-{state}").locator(".badge")
        expect(badge).to_have_text(state.capitalize())
        expect(badge).to_have_class(re.compile(rf"\bbadge-{state}\b"))
    colors = page.eval_on_selector_all(
        "[data-jobs-body] .badge", "els => els.map(e => getComputedStyle(e).color)"
    )
    assert len(set(colors)) >= 6, colors  # states are told apart by colour too


def test_fresh_page_loads_jobs_workers_and_queues_from_the_index(server, account, page):
    """No replay of the stream's history: the page asks the job index API, then
    joins the stream from the `streamId` of those answers."""
    cid = account.connection_id
    send(
        server,
        account,
        [job_event(cid, f"h-{i}", "completed") for i in range(5)]
        + [worker_event(cid, "celery@w1", "online", activeJobs=2, concurrency=4)]
        + [queue_event(cid, "default", 12, consumers=3)],
    )
    streams: list[str] = []
    page.on("request", lambda r: streams.append(r.url) if "/api/events/stream" in r.url else None)
    login_cookie(page, server.url, account)
    started = time.monotonic()
    page.goto(f"{server.url}/connections/{cid}")
    wait_counts(page, rows=5, events=0, timeout=1000)  # nothing came on the stream
    assert time.monotonic() - started < 3
    expect(page.locator('[data-workers] [data-state="online"] .worker-jobs')).to_have_text(
        "2 / 4 active"
    )
    expect(page.locator('[data-queue-name="default"] .queue-depth')).to_have_text("12")
    expect(page.locator("[data-indicator]")).to_have_attribute("data-state", "live")
    assert len(streams) == 1, streams
    resume = re.search(r"lastEventId=([0-9-]+)", streams[0])
    assert resume and resume[1] not in ("0", "0-0"), streams


def test_worker_going_offline_is_greyed(server, account, page):
    cid = account.connection_id
    login_cookie(page, server.url, account)
    open_live(page, server.url, cid)
    send(
        server,
        account,
        [worker_event(cid, "celery@w9", "online", hostname="celery@w9", activeJobs=1)],
    )
    worker = page.locator("[data-workers] li.worker")
    expect(worker).to_have_count(1)
    expect(worker).to_have_attribute("data-state", "online")
    expect(worker.locator(".worker-ago")).to_have_text(re.compile(r"^last heartbeat \d+ s ago$"))
    opacity_online = float(worker.evaluate("el => getComputedStyle(el).opacity"))

    send(
        server,
        account,
        [
            worker_event(
                cid, "celery@w9", "offline", kind="worker_state_change", previousState="online"
            )
        ],
    )
    expect(worker).to_have_attribute("data-state", "offline", timeout=1000)
    expect(worker).to_have_class(re.compile(r"\bis-offline\b"))
    expect(worker.locator(".worker-state")).to_have_text("offline")
    opacity_offline = float(worker.evaluate("el => getComputedStyle(el).opacity"))
    assert opacity_offline < opacity_online
    expect(page.locator('[data-stat="workers"]')).to_have_text("0")


def test_two_workers_on_one_host_are_told_apart(server, account, page):
    """Workers are labelled by their full name (`w1@host`), the host beside it:
    `celery multi` or several `-n` workers on one machine are distinct entries."""
    cid = account.connection_id
    send(server, account, [worker_event(cid, "w1@host", "online", hostname="host")])
    login_cookie(page, server.url, account)
    open_live(page, server.url, cid)
    send(
        server,
        account,
        [worker_event(cid, "w2@host", "busy", hostname="host", activeJobs=1)]
        + [job_event(cid, "on-w2", "active", workerId="w2@host")],
    )
    workers = page.locator("[data-workers] li.worker")
    expect(workers).to_have_count(2)
    for name in ("w1@host", "w2@host"):
        item = page.locator(f'[data-workers] li.worker[data-external-id="{name}"]')
        expect(item.locator(".worker-host")).to_have_text(name)
        expect(item.locator(".worker-hostname")).to_have_text("on host")
    expect(page.locator('[data-stat="workers"]')).to_have_text("2")
    # The worker's view and the job row name the same worker.
    expect(job_row(page, "on-w2").locator(".c-worker")).to_have_text("w2@host")
    page.locator('[data-external-id="w2@host"] .worker-host').click()
    expect(page).to_have_url(re.compile(r"\?worker=w2%40host$"))
    expect(page.locator('[data-scope="worker"] .scope-value')).to_have_text("w2@host")
    expect(page.locator("[data-workers] li.worker.is-selected .worker-host")).to_have_text(
        "w2@host"
    )


def test_a_worker_whose_heartbeats_stopped_shows_offline(start_server, account, page):
    """The page applies the server's expiry (from GET /api/config) itself, every
    second: a worker loaded with an old heartbeat is offline, and a live one whose
    heartbeats stop goes offline with no event at all; a new heartbeat brings it back."""
    server = start_server(SLUICE_WORKER_EXPIRY_SECONDS="4")
    cid = account.connection_id
    old = iso(datetime.now(UTC) - timedelta(seconds=95))
    dead = worker_event(cid, "dead@h", "busy", hostname="h", activeJobs=2, concurrency=2)
    dead["timestamp"] = old
    send(server, account, [dead])
    login_cookie(page, server.url, account)
    open_live(page, server.url, cid)
    item = page.locator('[data-workers] li.worker[data-external-id="dead@h"]')
    expect(item).to_have_attribute("data-state", "offline")
    expect(item).to_have_attribute("data-offline-reason", "heartbeat_expired")
    expect(item).to_have_class(re.compile(r"\bis-offline\b"))
    expect(item.locator(".worker-state")).to_have_text("offline")
    expect(item.locator(".worker-jobs")).to_have_text("0 / 2 active")
    expect(item.locator(".worker-ago")).to_have_text(re.compile(r"^no heartbeat for 9\d s$"))
    expect(page.locator('[data-stat="workers"]')).to_have_text("0")

    send(server, account, [worker_event(cid, "live@h", "busy", hostname="h", activeJobs=1)])
    live = page.locator('[data-workers] li.worker[data-external-id="live@h"]')
    expect(live).to_have_attribute("data-state", "busy")
    expect(page.locator('[data-stat="workers"]')).to_have_text("1")
    expect(page.locator("[data-workers-count]")).to_have_text("1 online · 1 offline")
    # Its heartbeats stop: offline after the expiry (4 s), by the page's own timer.
    expect(live).to_have_attribute("data-state", "offline", timeout=8000)
    expect(live.locator(".worker-ago")).to_have_text(re.compile(r"^no heartbeat for \d+ s$"))
    expect(page.locator('[data-stat="workers"]')).to_have_text("0")
    expect(page.locator("[data-workers-count]")).to_have_text("0 online · 2 offline")
    # A new heartbeat: online again.
    send(server, account, [worker_event(cid, "dead@h", "idle", hostname="h")])
    expect(item).to_have_attribute("data-state", "idle")
    expect(item.locator(".worker-ago")).to_have_text(re.compile(r"^last heartbeat \d+ s ago$"))
    expect(page.locator('[data-stat="workers"]')).to_have_text("1")


def test_jobs_held_by_an_offline_worker_are_marked_lost(start_server, account, page):
    """A job active on, or reserved by (queued with a workerId), a worker that is
    offline or whose heartbeats stopped is marked Lost, at load and live."""
    server = start_server(SLUICE_WORKER_EXPIRY_SECONDS="4")
    cid = account.connection_id
    dead = worker_event(cid, "dead@h", "busy", hostname="h", activeJobs=1)
    dead["timestamp"] = iso(datetime.now(UTC) - timedelta(seconds=95))
    send(
        server,
        account,
        [
            dead,
            job_event(cid, "run-dead", "active", workerId="dead@h"),
            job_event(cid, "held-dead", "queued", workerId="dead@h"),
            job_event(cid, "in-broker", "queued"),
            job_event(cid, "done-dead", "completed", workerId="dead@h"),
        ],
    )
    login_cookie(page, server.url, account)
    open_live(page, server.url, cid)
    for ref in ("run-dead", "held-dead"):
        expect(job_row(page, ref)).to_have_attribute("data-lost", "true")
        expect(job_row(page, ref).locator(".lost-tag")).to_have_text("Lost")
    for ref in ("in-broker", "done-dead"):
        expect(job_row(page, ref)).not_to_have_attribute("data-lost", "true")
        expect(job_row(page, ref).locator(".lost-tag")).to_have_count(0)

    # Live: a job on a beating worker; the worker goes silent, the job is lost.
    send(
        server,
        account,
        [
            worker_event(cid, "live@h", "busy", hostname="h", activeJobs=1),
            job_event(cid, "run-live", "active", workerId="live@h"),
        ],
    )
    row = job_row(page, "run-live")
    expect(row.locator(".badge")).to_have_text("Active")
    expect(row).not_to_have_attribute("data-lost", "true")
    expect(row).to_have_attribute("data-lost", "true", timeout=8000)
    row.locator(".job-link").click()
    drawer = page.locator("[data-drawer]")
    expect(drawer).to_have_attribute("data-lost", "true")
    expect(drawer.locator("[data-drawer-sub] .lost-tag")).to_have_text("Lost")
    # The dead worker comes back: its jobs are no longer lost.
    send(server, account, [worker_event(cid, "dead@h", "busy", hostname="h", activeJobs=1)])
    expect(job_row(page, "run-dead")).not_to_have_attribute("data-lost", "true")
    expect(job_row(page, "run-dead").locator(".lost-tag")).to_have_count(0)


def test_queue_depth_and_sparkline(server, account, page):
    cid = account.connection_id
    login_cookie(page, server.url, account)
    open_live(page, server.url, cid)
    for depth in (3, 9, 5):
        send(server, account, [queue_event(cid, "emails", depth, consumers=2)])
    item = page.locator('[data-queue-name="emails"]')
    expect(item.locator(".queue-depth")).to_have_text("5")
    expect(item.locator(".queue-consumers")).to_have_text("2 consumers")
    path = item.locator("svg .spark-line")
    expect(path).to_have_attribute("d", re.compile(r"^M[\d.]+ [\d.]+(L[\d.]+ [\d.]+)+$"))


def test_search_and_state_filter(server, account, page):
    cid = account.connection_id
    send(
        server,
        account,
        [
            job_event(cid, "a1", "completed", name="billing.charge_card"),
            job_event(cid, "a2", "failed", name="billing.refund", error="boom"),
            job_event(cid, "a3", "failed", name="emails.send"),
            job_event(cid, "a4", "queued", name="emails.digest"),
        ],
    )
    login_cookie(page, server.url, account)
    open_live(page, server.url, cid)
    rows = page.locator("[data-jobs-body] .job-row")
    expect(rows).to_have_count(4)
    page.fill("[data-job-search]", "billing")
    expect(rows).to_have_count(2)
    page.click('[data-state-filter="failed"]')
    expect(page.locator('[data-state-filter="failed"]')).to_have_attribute("aria-pressed", "true")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-external-id", "a2")
    page.fill("[data-job-search]", "")
    expect(rows).to_have_count(2)
    # A live event that matches the filter shows up; one that does not, does not.
    send(
        server,
        account,
        [job_event(cid, "a5", "failed", name="x.y"), job_event(cid, "a6", "completed", name="x.z")],
    )
    expect(rows).to_have_count(3)
    expect(job_row(page, "a6")).to_have_count(0)
    page.click('[data-state-filter="all"]')
    expect(rows).to_have_count(6)


def test_rows_are_capped_with_a_count_of_the_rest(server, account, page):
    cid = account.connection_id
    login_cookie(page, server.url, account)
    open_live(page, server.url, cid)
    send(server, account, [job_event(cid, f"cap-{i:04d}", "queued") for i in range(520)])
    wait_counts(page, rows=500, events=520)
    more = page.locator("[data-jobs-more]")
    expect(more).to_have_attribute("data-hidden-count", "20")
    expect(more).to_contain_text("20 more not shown")
    # Newest first: the newest job is on top, the 20 oldest are the ones left out.
    first = page.locator("[data-jobs-body] .job-row").first
    expect(first).to_have_attribute("data-external-id", "cap-0519")
    expect(job_row(page, "cap-0019")).to_have_count(0)
    expect(job_row(page, "cap-0020")).to_have_count(1)
    # A state change of a visible job updates its row in place (same element).
    handle = job_row(page, "cap-0300").element_handle()
    send(server, account, [job_event(cid, "cap-0300", "active")])
    expect(job_row(page, "cap-0300").locator(".badge")).to_have_text("Active")
    assert handle.evaluate("el => el.isConnected")
    assert handle.evaluate("el => el.dataset.state") == "active"
    # "Load more" shows the rows left out (the page already has them).
    page.click("[data-load-more]")
    wait_counts(page, rows=520, events=521)
    expect(more).to_have_attribute("data-more", "end")
    expect(page.locator("[data-load-more]")).to_be_hidden()


def test_type_filters_reopen_the_stream_with_types(server, account, page):
    cid = account.connection_id
    send(
        server,
        account,
        [
            job_event(cid, "t1", "queued"),
            worker_event(cid, "celery@t", "online"),
            queue_event(cid, "default", 4),
        ],
    )
    streams: list[str] = []
    page.on("request", lambda r: streams.append(r.url) if "/api/events/stream" in r.url else None)
    login_cookie(page, server.url, account)
    open_live(page, server.url, cid)
    wait_counts(page, rows=1, events=0)  # from the index, not a replay
    expect(page.locator('[data-queue-name="default"] .queue-depth')).to_have_text("4")
    with page.expect_request(lambda r: "/api/events/stream" in r.url) as reopened:
        page.uncheck('[data-type-filter][value="queue"]')
    assert "types=job%2Cworker" in reopened.value.url, streams
    assert re.search(r"lastEventId=\d+-\d+", reopened.value.url), streams  # joined, not replayed
    page.wait_for_function("() => document.body.classList.contains('hide-queues')")
    expect(page.locator("[data-indicator]")).to_have_attribute("data-state", "live")
    send(server, account, [queue_event(cid, "default", 5), job_event(cid, "t2", "queued")])
    wait_counts(page, rows=2, events=1)  # the queue event was not delivered
    page.uncheck('[data-type-filter][value="worker"]')
    # The last checked type cannot be unchecked (empty would mean "all").
    expect(page.locator('[data-type-filter][value="job"]')).to_be_disabled()
    page.check('[data-type-filter][value="queue"]')
    with page.expect_request(lambda r: "/api/events/stream" in r.url and "types=" not in r.url):
        page.check('[data-type-filter][value="worker"]')
    # Back on: what the queue panel missed comes from the index, not from a replay.
    expect(page.locator('[data-queue-name="default"] .queue-depth')).to_have_text("5")
    expect(page.locator("[data-indicator]")).to_have_attribute("data-state", "live")
    wait_counts(page, rows=2, events=1)
    assert "types=" not in streams[-1], streams
    send(server, account, [queue_event(cid, "default", 6)])
    expect(page.locator('[data-queue-name="default"] .queue-depth')).to_have_text("6")
    assert event_count(page) == 2
