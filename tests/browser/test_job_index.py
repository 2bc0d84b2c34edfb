"""The live view on top of the job index: first page from the API, then the stream
from its `streamId`; filters in the URL; "Load more"; the job drawer; the worker view.

The server keeps only 50 stream entries (SLUICE_STREAM_MAXLEN), so most history
exists only in the index: whatever the page shows of it came from the API.
"""

from __future__ import annotations

import pytest

pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: pip install -r requirements-dev.txt"
)

import json
import re
import threading
from typing import Any
from urllib.parse import parse_qs, urlsplit

from playwright.sync_api import expect

from sluice.store.keys import Keys
from tests.browser.helpers import (
    event_count,
    job_row,
    load_more,
    load_to_the_end,
    login_cookie,
    open_live,
    row_ids,
    wait_counts,
)
from tests.util import ingest, job_event, worker_event

PAGE = 100  # jobs per page (static/js/live/view.js PAGE_SIZE)


@pytest.fixture(scope="module")
def short_server(start_server) -> Any:
    return start_server(SLUICE_STREAM_MAXLEN="50")


def send(server: Any, account: Any, events: list[dict], batch: int = 50) -> None:
    for start in range(0, len(events), batch):
        response = ingest(
            server.url, account.api_key, account.connection_id, events[start : start + batch]
        )
        assert response.status_code == 202, response.text


def query(page: Any) -> dict[str, list[str]]:
    return parse_qs(urlsplit(page.url).query)


def open_row_drawer(page: Any, external_id: str) -> tuple[Any, Any, Any]:
    """Open a listed job's drawer from its row: (row, drawer, timeline entries)."""
    row = job_row(page, external_id)
    row.locator("a.job-link").click()
    drawer = page.locator("[data-drawer]")
    return row, drawer, drawer.locator("[data-detail-timeline] li")


def watch_streams(page: Any) -> list[str]:
    streams: list[str] = []
    page.on("request", lambda r: streams.append(r.url) if "/api/events/stream" in r.url else None)
    return streams


def test_first_page_from_the_index_then_load_more_to_the_oldest(
    short_server, account, page, redis_client
):
    cid = account.connection_id
    send(short_server, account, [job_event(cid, f"job-{i:03d}", "queued") for i in range(300)])
    assert redis_client.xlen(Keys.stream(cid)) <= 50  # the stream no longer has most of them
    api_calls: list[str] = []
    page.on("request", lambda r: api_calls.append(r.url) if "/jobs" in r.url else None)
    streams = watch_streams(page)
    login_cookie(page, short_server.url, account)
    open_live(page, short_server.url, cid)

    # The first page, from the API; the stream joined at its streamId (not replayed).
    wait_counts(page, rows=PAGE, events=0)
    ids = row_ids(page)
    assert ids[0] == "job-299" and ids[-1] == f"job-{300 - PAGE:03d}"
    assert len(api_calls) == 1 and "limit=100" in api_calls[0] and "cursor" not in api_calls[0]
    last_entry = redis_client.xrevrange(Keys.stream(cid), count=1)[0][0]
    assert streams == [
        f"{short_server.url}/api/events/stream?connectionId={cid}&lastEventId={last_entry}"
    ]
    expect(page.locator('[data-stat="jobs"]')).to_have_text("300")  # the index's, not the list's
    more = page.locator("[data-jobs-more]")
    expect(more).to_have_attribute("data-more", "history")

    load_more(page)
    wait_counts(page, rows=2 * PAGE, events=0)
    assert "cursor=" in api_calls[-1]
    assert load_to_the_end(page) == 1
    ids = row_ids(page)
    assert len(ids) == 300 and len(set(ids)) == 300
    assert ids == [f"job-{i:03d}" for i in range(299, -1, -1)]  # newest update first
    expect(more).to_have_attribute("data-more", "end")
    expect(more).to_contain_text("the end of the retained history")
    expect(page.locator("[data-load-more]")).to_be_hidden()
    expect(page.locator('[data-stat="jobs"]')).to_have_text("300")

    # Live on top of the history: an old job changes in place, a new one comes on top.
    handle = job_row(page, "job-007").element_handle()
    send(
        short_server,
        account,
        [job_event(cid, "job-007", "active"), job_event(cid, "new", "queued")],
    )
    expect(job_row(page, "job-007").locator(".badge")).to_have_text("Active")
    assert handle.evaluate("el => el.isConnected && el.dataset.state") == "active"
    wait_counts(page, rows=301, events=2)
    assert row_ids(page)[0] == "new"
    assert len(streams) == 1, streams  # never reopened


def chip_count(page: Any, state: str) -> Any:
    return page.locator(f'[data-state-filter="{state}"] .chip-count')


def test_header_and_chips_show_the_connections_exact_counts_kept_live(short_server, account, page):
    """More jobs than the first page holds: the figures are the index's counts, not
    the loaded rows'; new events move them without a reload (the counts are asked for
    again, throttled)."""
    cid = account.connection_id
    send(
        short_server,
        account,
        [job_event(cid, f"cf-{i:02d}", "failed", error="x") for i in range(15)]
        + [job_event(cid, f"ca-{i:02d}", "active") for i in range(5)]
        + [job_event(cid, f"cc-{i:03d}", "completed") for i in range(100)],
    )
    counts_calls: list[str] = []
    page.on(
        "request",
        lambda r: counts_calls.append(r.url) if re.search(r"/jobs\?limit=1$", r.url) else None,
    )
    login_cookie(page, short_server.url, account)
    open_live(page, short_server.url, cid)
    # The first page holds the 100 completed jobs only; the figures are the connection's.
    wait_counts(page, rows=PAGE, events=0)
    assert set(
        page.eval_on_selector_all(
            "[data-jobs-body] .job-row", "els => els.map(e => e.dataset.state)"
        )
    ) == {"completed"}
    expect(page.locator('[data-stat="jobs"]')).to_have_text("120")
    expect(page.locator('[data-stat="active"]')).to_have_text("5")
    expect(page.locator('[data-stat="failed"]')).to_have_text("15")
    expected = {"all": "120", "completed": "100", "failed": "15", "active": "5", "queued": "0"}
    for state, text in expected.items():
        expect(chip_count(page, state)).to_have_text(text)
    failed = page.locator('[data-state-filter="failed"]')
    expect(failed).to_have_attribute("aria-label", "Failed, 15 jobs")
    expect(failed).to_have_attribute("aria-pressed", "false")
    expect(page.locator('[data-state-filter="all"]')).to_have_attribute(
        "aria-label", "All, 120 jobs"
    )
    assert counts_calls == []  # the first page carried them

    # Three new failures, through the API: the figures follow without a reload.
    send(short_server, account, [job_event(cid, f"cn-{i}", "failed", error="y") for i in range(3)])
    expect(chip_count(page, "failed")).to_have_text("18")
    expect(page.locator('[data-stat="failed"]')).to_have_text("18")
    expect(page.locator('[data-stat="jobs"]')).to_have_text("123")
    expect(chip_count(page, "all")).to_have_text("123")
    expect(failed).to_have_attribute("aria-label", "Failed, 18 jobs")
    # A loaded job moves between states; a filter changes the rows, not the figures.
    send(short_server, account, [job_event(cid, "cc-099", "failed", error="z")])
    expect(chip_count(page, "failed")).to_have_text("19")
    expect(chip_count(page, "completed")).to_have_text("99")
    failed.click()
    expect(page.locator("[data-jobs-body] .job-row")).to_have_count(19)
    expect(failed).to_have_attribute("aria-pressed", "true")
    expect(page.locator('[data-stat="jobs"]')).to_have_text("123")
    expect(chip_count(page, "completed")).to_have_text("99")
    # Asked for again after the events, not once per event.
    assert 1 <= len(counts_calls) <= 4, counts_calls


def test_filters_live_in_the_url_and_survive_reload_and_back(short_server, account, page):
    cid = account.connection_id
    send(
        short_server,
        account,
        [
            job_event(cid, "f-1", "failed", name="billing.charge", queue="billing", error="x"),
            job_event(cid, "f-2", "failed", name="emails.send", queue="emails", error="y"),
            job_event(cid, "f-3", "completed", name="billing.refund", queue="billing"),
            job_event(cid, "f-4", "queued", name="emails.digest", queue="emails"),
        ],
    )
    login_cookie(page, short_server.url, account)
    base = f"{short_server.url}/connections/{cid}"
    open_live(page, short_server.url, cid)
    rows = page.locator("[data-jobs-body] .job-row")
    expect(rows).to_have_count(4)

    page.click('[data-state-filter="failed"]')
    expect(page).to_have_url(f"{base}?state=failed")
    expect(rows).to_have_count(2)
    page.fill("[data-job-search]", "billing.")
    expect(page).to_have_url(f"{base}?state=failed&q=billing.")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-external-id", "f-1")

    # A reload keeps the filters: the same page from the API, the controls in step.
    page.reload()
    expect(page.locator("[data-indicator]")).to_have_attribute("data-state", "live")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-external-id", "f-1")
    expect(page.locator('[data-state-filter="failed"]')).to_have_attribute("aria-pressed", "true")
    expect(page.locator("[data-job-search]")).to_have_value("billing.")

    # Back: the search goes (typing made one entry), then the state filter.
    page.go_back()
    expect(page).to_have_url(f"{base}?state=failed")
    expect(rows).to_have_count(2)
    expect(page.locator("[data-job-search]")).to_have_value("")
    page.go_back()
    expect(page).to_have_url(base)
    expect(rows).to_have_count(4)
    expect(page.locator('[data-state-filter="all"]')).to_have_attribute("aria-pressed", "true")
    page.go_forward()
    expect(page).to_have_url(f"{base}?state=failed")
    expect(rows).to_have_count(2)

    # A shared address with a queue: its pill removes it.
    page.goto(f"{base}?queue=emails")
    expect(rows).to_have_count(2)
    scope = page.locator('[data-scope="queue"]')
    expect(scope).to_contain_text("emails")
    page.click('[data-scope="queue"] button')
    expect(page).to_have_url(base)
    expect(rows).to_have_count(4)
    expect(scope).to_have_count(0)
    # An unknown state in an address is dropped, not sent to the API.
    page.goto(f"{base}?state=bogus&name=emails.send")
    expect(page).to_have_url(f"{base}?name=emails.send")
    expect(rows).to_have_count(1)
    expect(page.locator('[data-scope="name"]')).to_contain_text("emails.send")


def test_live_events_outside_the_filters_are_not_listed(short_server, account, page):
    cid = account.connection_id
    send(
        short_server,
        account,
        [
            job_event(cid, "l-1", "failed", name="a.one", workerId="celery@w1"),
            job_event(cid, "l-2", "failed", name="a.two", workerId="celery@w2"),
        ],
    )
    login_cookie(page, short_server.url, account)
    page.goto(f"{short_server.url}/connections/{cid}?state=failed&worker=celery@w1")
    expect(page.locator("[data-indicator]")).to_have_attribute("data-state", "live")
    wait_counts(page, rows=1, events=0)
    send(
        short_server,
        account,
        [
            job_event(cid, "l-3", "failed", name="a.three", workerId="celery@w2"),  # other worker
            job_event(cid, "l-4", "completed", name="a.four", workerId="celery@w1"),  # other state
            job_event(cid, "l-5", "failed", name="a.five", workerId="celery@w1"),  # matches
        ],
    )
    wait_counts(page, rows=2, events=3)
    assert row_ids(page) == ["l-5", "l-1"]
    # A listed job that changes out of the filter leaves the list.
    send(short_server, account, [job_event(cid, "l-1", "retrying", workerId="celery@w1")])
    wait_counts(page, rows=1, events=4)
    assert row_ids(page) == ["l-5"]
    # Search: the start of an external id or a task name, applied to live events too.
    page.goto(f"{short_server.url}/connections/{cid}?q=a.t")
    expect(page.locator("[data-indicator]")).to_have_attribute("data-state", "live")
    wait_counts(page, rows=2, events=0)  # a.two, a.three
    send(
        short_server,
        account,
        [
            job_event(cid, "l-6", "queued", name="a.ten"),
            job_event(cid, "l-7", "queued", name="b.t"),
        ],
    )
    wait_counts(page, rows=3, events=2)
    assert row_ids(page)[0] == "l-6" and "l-7" not in row_ids(page)
    send(short_server, account, [job_event(cid, "a.tx-9", "queued", name="zzz")])  # external id
    wait_counts(page, rows=4, events=3)


def failing_job(cid: str, xid: str) -> list[dict]:
    name = "app.tasks.charge"
    return [
        job_event(
            cid,
            xid,
            "queued",
            name=name,
            queue="billing",
            extensions={"args": "(42, 'EUR')", "kwargs": "{'retry': True}"},
        ),
        job_event(cid, xid, "active", name=name, workerId="celery@w1", attempt=1, queue="billing"),
        job_event(
            cid,
            xid,
            "failed",
            name=name,
            workerId="celery@w1",
            queue="billing",
            attempt=1,
            error="ValueError('<b>card declined</b>')",
            stacktrace='Traceback (most recent call last):\n  File "tasks.py", line 9\nValueError',
        ),
    ]


def test_job_drawer_shows_timeline_arguments_traceback_and_links(short_server, account, page):
    cid = account.connection_id
    send(short_server, account, failing_job(cid, "d-1") + [job_event(cid, "d-2", "queued")])
    login_cookie(page, short_server.url, account)
    base = f"{short_server.url}/connections/{cid}"
    open_live(page, short_server.url, cid)
    wait_counts(page, rows=2, events=0)

    link = job_row(page, "d-1").locator("a.job-link")
    link.click()
    drawer = page.locator("[data-drawer]")
    expect(drawer).to_be_visible()
    assert re.fullmatch(r"[0-9a-f-]{36}", query(page)["job"][0])
    expect(job_row(page, "d-1")).to_have_class(re.compile(r"\bis-open\b"))
    expect(page.locator("[data-drawer-title]")).to_have_text("app.tasks.charge")
    expect(page.locator("[data-drawer-title]")).to_be_focused()
    timeline = drawer.locator("[data-detail-timeline] li")
    expect(timeline).to_have_count(3)
    assert timeline.evaluate_all("els => els.map(e => e.dataset.state)") == [
        "queued",
        "active",
        "failed",
    ]
    expect(timeline.nth(2)).to_contain_text("on celery@w1")
    expect(drawer.locator('[data-detail-section="args"] pre')).to_have_text("(42, 'EUR')")
    expect(drawer.locator('[data-detail-section="kwargs"] pre')).to_have_text("{'retry': True}")
    expect(drawer.locator('[data-detail-section="result"]')).to_be_hidden()
    expect(drawer.locator('[data-detail-section="traceback"] pre')).to_contain_text(
        'File "tasks.py", line 9'
    )
    # Untrusted text is text.
    expect(drawer.locator("[data-detail-error]")).to_have_text("ValueError('<b>card declined</b>')")
    assert drawer.locator("b").count() == 0
    expect(drawer.locator('[data-detail-field="externalId"]')).to_have_text("d-1")

    # The queue link applies the queue filter (and closes the drawer); back reopens it.
    drawer.locator('[data-detail-field="queue"] a').click()
    expect(page).to_have_url(f"{base}?queue=billing")
    expect(drawer).to_be_hidden()
    expect(page.locator("[data-jobs-body] .job-row")).to_have_count(1)
    page.go_back()
    expect(drawer).to_be_visible()
    expect(page.locator("[data-jobs-body] .job-row")).to_have_count(2)
    drawer.locator('[data-detail-field="worker"] a').click()
    expect(page).to_have_url(f"{base}?worker=celery%40w1")
    expect(page.locator('[data-scope="worker"]')).to_contain_text("celery@w1")
    page.go_back()
    expect(drawer).to_be_visible()

    # A filter changed while it is open leaves it open, and focus where it was.
    page.click('[data-state-filter="failed"]')
    expect(page).to_have_url(re.compile(r"\?state=failed&job="))
    expect(page.locator('[data-state-filter="failed"]')).to_be_focused()
    expect(drawer).to_be_visible()
    page.click('[data-state-filter="failed"]')
    expect(page).to_have_url(re.compile(r"\?job="))
    page.locator("[data-drawer-title]").focus()
    # Escape closes it, focus returns to the row's link, the address loses `job`.
    page.keyboard.press("Escape")
    expect(drawer).to_be_hidden()
    expect(page).to_have_url(base)
    expect(link).to_be_focused()
    # A shared address may name the job by its external id.
    page.goto(f"{base}?job=d-2")
    expect(drawer).to_be_visible()
    expect(drawer.locator('[data-detail-field="externalId"]')).to_have_text("d-2")
    expect(job_row(page, "d-2")).to_have_class(re.compile(r"\bis-open\b"))
    page.click("[data-drawer-close]")
    expect(page).to_have_url(base)
    page.goto(f"{base}?job=no-such-job")
    expect(page.locator("[data-drawer-title]")).to_have_text("Job not found")


def test_live_change_updates_the_open_row_and_drawer_then_streams_exactly(
    short_server, account, page
):
    cid = account.connection_id
    send(
        short_server,
        account,
        [
            job_event(cid, "x-1", "queued", queue="default", extensions={"args": "(1,)"}),
            job_event(cid, "x-1", "active", workerId="celery@w1", queue="default"),
        ],
    )
    login_cookie(page, short_server.url, account)
    open_live(page, short_server.url, cid)
    wait_counts(page, rows=1, events=0)
    row, drawer, timeline = open_row_drawer(page, "x-1")
    handle = row.element_handle()
    expect(timeline).to_have_count(2)

    send(
        short_server,
        account,
        [
            job_event(
                cid,
                "x-1",
                "completed",
                workerId="celery@w1",
                queue="default",
                extensions={"result": "'done'"},
            )
        ],
    )
    expect(row.locator(".badge")).to_have_text("Completed")
    assert handle.evaluate("el => el.isConnected")
    expect(drawer.locator('[data-detail-field="state"] .badge')).to_have_text("Completed")
    expect(timeline).to_have_count(3)
    expect(timeline.nth(2)).to_contain_text("from active")
    expect(drawer.locator('[data-detail-section="result"] pre')).to_have_text("'done'")
    expect(drawer.locator('[data-detail-section="args"] pre')).to_have_text("(1,)")

    # Then a burst: every event once, in order, nothing missing.
    events = []
    for i in range(60):
        events += [job_event(cid, f"y-{i:02d}", "queued"), job_event(cid, f"y-{i:02d}", "active")]
    events += [job_event(cid, "x-1", "failed", error="late", workerId="celery@w1")]
    send(short_server, account, events, batch=25)
    wait_counts(page, rows=61, events=1 + len(events))
    ids = row_ids(page)
    assert ids[:2] == ["y-59", "y-58"] and ids[-1] == "x-1" and len(set(ids)) == 61
    states = page.eval_on_selector_all(
        "[data-jobs-body] .job-row", "els => els.map(e => e.dataset.state)"
    )
    assert states == ["active"] * 60 + ["failed"]
    expect(timeline).to_have_count(4)
    expect(drawer.locator("[data-detail-error]")).to_have_text("late")
    assert event_count(page) == 1 + len(events)


def test_a_late_event_joins_the_drawers_timeline_without_changing_the_job(
    short_server, account, page
):
    """A publisher's `queued` that arrives after the worker's `completed` (several
    processes report one job): the open drawer keeps the job completed and puts
    the late entry first in its timeline, as the server's index does (a reload
    shows the same timeline)."""
    from datetime import UTC, datetime, timedelta

    base = datetime.now(UTC)  # one base: the late event is older however slow the sends

    def at(seconds: float) -> str:
        when = base + timedelta(seconds=seconds)
        return when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"

    def stamped(event: dict, when: str) -> dict:
        event["timestamp"] = when
        return event

    cid = account.connection_id
    send(
        short_server,
        account,
        [
            stamped(job_event(cid, "late-1", "active", workerId="celery@w1"), at(-2)),
            stamped(job_event(cid, "late-1", "completed", workerId="celery@w1"), at(-1)),
        ],
    )
    login_cookie(page, short_server.url, account)
    open_live(page, short_server.url, cid)
    row, drawer, timeline = open_row_drawer(page, "late-1")
    expect(timeline).to_have_count(2)

    send(
        short_server,
        account,
        [stamped(job_event(cid, "late-1", "queued", extensions={"args": "(7,)"}), at(-3))],
    )
    expect(timeline).to_have_count(3)
    expect(drawer.locator('[data-detail-field="state"] .badge')).to_have_text("Completed")
    expect(drawer).to_have_attribute("data-state", "completed")
    expect(row.locator(".badge")).to_have_text("Completed")
    expect(drawer.locator('[data-detail-section="args"] pre')).to_have_text("(7,)")
    live = timeline.all_inner_texts()
    assert "Queued" in live[0] and "Completed" in live[2], live
    page.reload()
    expect(timeline).to_have_count(3)
    assert timeline.all_inner_texts() == live


def test_worker_view_from_the_workers_panel(short_server, account, page):
    cid = account.connection_id
    send(
        short_server,
        account,
        [
            worker_event(
                cid,
                "celery@w1",
                "busy",
                hostname="w1",
                activeJobs=2,
                concurrency=4,
                queues=["default", "mail"],
            ),
            worker_event(cid, "celery@w2", "online", hostname="w2"),
            job_event(cid, "w-1", "active", workerId="celery@w1"),
            job_event(cid, "w-2", "completed", workerId="celery@w2"),
            job_event(cid, "w-3", "completed", workerId="celery@w1"),
        ],
    )
    login_cookie(page, short_server.url, account)
    base = f"{short_server.url}/connections/{cid}"
    open_live(page, short_server.url, cid)
    wait_counts(page, rows=3, events=0)
    worker = page.locator('[data-workers] li[data-external-id="celery@w1"]')
    worker.locator("a.worker-host").click()
    expect(page).to_have_url(f"{base}?worker=celery%40w1")
    expect(worker).to_have_class(re.compile(r"\bis-selected\b"))
    expect(worker.locator("a.worker-host")).to_have_attribute("aria-current", "true")
    detail = page.locator('[data-scope-detail="worker"]')
    expect(detail).to_contain_text("busy · 2 / 4 active · queues: default, mail")
    wait_counts(page, rows=2, events=0)
    assert row_ids(page) == ["w-3", "w-1"]
    send(
        short_server,
        account,
        [
            job_event(cid, "w-4", "active", workerId="celery@w2"),
            job_event(cid, "w-5", "active", workerId="celery@w1"),
            worker_event(cid, "celery@w1", "busy", hostname="w1", activeJobs=3, concurrency=4),
        ],
    )
    wait_counts(page, rows=3, events=3)
    assert row_ids(page) == ["w-5", "w-3", "w-1"]
    expect(detail).to_contain_text("3 / 4 active")
    page.click('[data-scope="worker"] button')
    expect(page).to_have_url(base)
    wait_counts(page, rows=5, events=3)


def test_joins_the_stream_without_gaps_while_events_flow(short_server, account, page):
    """Filters change (each a reload and a re-join) while events keep arriving: in the
    end every job is listed once, in its latest state."""
    cid = account.connection_id
    half = threading.Event()
    failures: list[str] = []

    def produce() -> None:
        try:
            for batch in range(40):
                events = []
                for i in range(batch * 2, batch * 2 + 2):
                    events += [job_event(cid, f"g-{i:03d}", s) for s in ("queued", "completed")]
                send(short_server, account, events)
                if batch == 20:
                    half.set()
        except Exception as exc:  # reported by the test below
            failures.append(repr(exc))
            half.set()

    login_cookie(page, short_server.url, account)
    open_live(page, short_server.url, cid)
    producer = threading.Thread(target=produce)
    producer.start()
    page.click('[data-state-filter="queued"]')
    page.click('[data-state-filter="completed"]')
    assert half.wait(30)
    page.click('[data-state-filter="all"]')  # the last re-join happens mid-flow
    producer.join(60)
    assert not failures, failures
    page.wait_for_function(
        """() => {
            const rows = [...document.querySelectorAll('[data-jobs-body] .job-row')];
            return rows.length === 80 && rows.every(r => r.dataset.state === 'completed');
        }""",
        timeout=15_000,
    )
    ids = row_ids(page)
    assert sorted(ids) == [f"g-{i:03d}" for i in range(80)]
    # And the API agrees with what the page shows.
    response = page.context.request.get(
        f"{short_server.url}/api/connections/{cid}/jobs?limit=200&state=completed"
    )
    listed = json.loads(response.text())["data"]
    assert len(listed) == 80


def test_an_unavailable_index_is_retried(short_server, account, page):
    cid = account.connection_id
    send(short_server, account, [job_event(cid, "u-1", "queued")])
    calls: list[str] = []

    def unavailable(route: Any) -> None:
        calls.append(route.request.url)
        route.fulfill(
            status=503,
            headers={"Retry-After": "2"},
            content_type="application/json",
            body=json.dumps(
                {"error": {"code": "UNAVAILABLE", "message": "Redis is away.", "details": {}}}
            ),
        )

    page.route("**/api/connections/*/jobs?*", unavailable)
    login_cookie(page, short_server.url, account)
    page.goto(f"{short_server.url}/connections/{cid}")
    alert = page.locator("[data-jobs-error]")
    expect(alert).to_contain_text("Could not load the jobs: Redis is away. Trying again in")
    expect(page.locator("[data-indicator]")).to_have_attribute("data-state", "reconnecting")
    expect(page.locator("[data-jobs-empty]")).to_contain_text("Loading jobs…")
    page.unroute("**/api/connections/*/jobs?*")
    expect(page.locator("[data-indicator]")).to_have_attribute("data-state", "live")
    wait_counts(page, rows=1, events=0)
    expect(alert).to_be_hidden()
    assert calls
    send(short_server, account, [job_event(cid, "u-1", "active")])
    expect(job_row(page, "u-1").locator(".badge")).to_have_text("Active")
