"""Server restarts and expired sessions, seen from a real browser.

These tests restart the server, so they get their own (module-scoped) one.
"""

from __future__ import annotations

import pytest

pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: pip install -r requirements-dev.txt"
)

import os
import signal
from typing import Any

from playwright.sync_api import expect

from tests.browser.helpers import (
    RECORD_INDICATOR,
    event_count,
    load_to_the_end,
    login_cookie,
    open_live,
    row_ids,
    wait_counts,
)
from tests.util import ingest, job_event


@pytest.fixture(scope="module")
def own_server(start_server) -> Any:
    return start_server()


def send(server: Any, account: Any, events: list[dict]) -> None:
    response = ingest(server.url, account.api_key, account.connection_id, events)
    assert response.status_code == 202, response.text


def external_ids(page: Any) -> list[str]:
    return page.eval_on_selector_all(
        "[data-jobs-body] .job-row", "els => els.map(e => e.dataset.externalId)"
    )


def test_restart_reconnects_and_resumes_without_loss_or_duplicates(own_server, account, page):
    cid = account.connection_id
    streams: list[str] = []
    page.on("request", lambda r: streams.append(r.url) if "/api/events/stream" in r.url else None)
    login_cookie(page, own_server.url, account)
    open_live(page, own_server.url, cid)
    send(own_server, account, [job_event(cid, f"r-{i}", "queued") for i in range(20)])
    wait_counts(page, rows=20, events=20)
    page.evaluate(RECORD_INDICATOR)

    own_server.restart()  # SIGTERM (drain), then start again on the same port
    # Right after the restart, before or while the page reconnects:
    send(
        own_server,
        account,
        [job_event(cid, f"r-{i}", "queued") for i in range(20, 30)]
        + [job_event(cid, f"r-{i}", "active") for i in range(5)],
    )
    expect(page.locator("[data-indicator]")).to_have_attribute("data-state", "live")
    wait_counts(page, rows=30, events=35)
    states = page.evaluate("window.__states")
    assert "reconnecting" in states, states
    assert states[-1] == "live" and states.index("reconnecting") < len(states) - 1, states
    # The reconnect resumed from the last id seen, not from the start.
    resumed = streams[-1]
    assert "lastEventId=" in resumed and "lastEventId=0&" not in resumed + "&", streams
    # One more live event proves the stream is live and nothing arrives twice.
    send(own_server, account, [job_event(cid, "r-5", "completed")])
    expect(page.locator('.job-row[data-external-id="r-5"] .badge')).to_have_text("Completed")
    ids = external_ids(page)
    assert len(ids) == 30 and len(set(ids)) == 30
    assert event_count(page) == 36
    for i in range(5):
        expect(page.locator(f'.job-row[data-external-id="r-{i}"] .badge')).to_have_text("Active")


def test_signed_out_stream_sends_the_page_to_login(own_server, account, page):
    cid = account.connection_id
    login_cookie(page, own_server.url, account)
    open_live(page, own_server.url, cid)
    # Sign out from the page's own cookie jar, in a request of its own.
    response = page.context.request.post(own_server.url + "/api/auth/logout", data={})
    assert response.status == 204
    own_server.restart()  # forces the EventSource to reconnect, now without a session
    expect(page).to_have_url(f"{own_server.url}/login?next=/connections/{cid}")
    expect(page.locator("#email")).to_be_visible()


def test_silent_stream_shows_stale_then_recovers(own_server, account, page):
    """No byte for 2 x heartbeat -> "stale"; the page reopens the stream and goes live."""
    cid = account.connection_id
    login_cookie(page, own_server.url, account)
    open_live(page, own_server.url, cid)
    page.evaluate(RECORD_INDICATOR)
    pids = [own_server.pid, *own_server.worker_pids()]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)  # the socket stays open, but nothing is sent
    try:
        expect(page.locator("[data-indicator]")).to_have_attribute("data-state", "stale")
        expect(page.locator("[data-indicator-text]")).to_contain_text("Stale")
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    expect(page.locator("[data-indicator]")).to_have_attribute("data-state", "live")
    send(own_server, account, [job_event(cid, "after-stale", "queued")])
    wait_counts(page, rows=1, events=1)


def test_stream_reset_reloads_the_view_from_the_index(start_server, account, page, redis_client):
    """A resume point older than the retained history: the server says `stream:reset`,
    the page reloads its first page from the job index and joins the stream from there;
    what the stream no longer holds is still in the index, behind "Load more"."""
    import json

    from sluice.store.keys import Keys

    srv = start_server(SLUICE_STREAM_MAXLEN="50")
    cid = account.connection_id
    streams: list[str] = []
    page.on("request", lambda r: streams.append(r.url) if "/api/events/stream" in r.url else None)
    login_cookie(page, srv.url, account)
    open_live(page, srv.url, cid)
    send(srv, account, [job_event(cid, f"old-{i}", "queued") for i in range(10)])
    wait_counts(page, rows=10, events=10)

    # Hold the page off while the history it has not seen outgrows the retention.
    page.route("**/api/auth/me", lambda route: route.abort())
    srv.restart()
    # In batches: the newest batch is always kept whole (its events were acknowledged
    # and must reach live readers), so retention trims across batches.
    for start in range(0, 600, 50):
        send(srv, account, [job_event(cid, f"new-{i}", "queued") for i in range(start, start + 50)])
    retained = redis_client.xrange(Keys.stream(cid))
    kept = [json.loads(fields["d"])["externalId"] for _, fields in retained]
    assert 0 < len(kept) < 600 and "old-0" not in kept  # the page's resume point is gone
    page.unroute("**/api/auth/me")

    # The first page of the index (100 jobs), nothing replayed: the counter is unchanged.
    page.wait_for_function(
        "() => document.querySelector('[data-jobs-body] .job-row')?.dataset.externalId === 'new-599'",
        timeout=20_000,
    )
    wait_counts(page, rows=100, events=10)
    expect(page.locator("[data-indicator]")).to_have_attribute("data-state", "live")
    joined = streams[-1]
    assert "lastEventId=" in joined and "lastEventId=0&" not in joined + "&", streams
    expect(page.locator('.job-row[data-external-id="old-0"]')).to_have_count(0)
    # Live again: one more event arrives once.
    send(srv, account, [job_event(cid, "after-reset", "queued")])
    wait_counts(page, rows=101, events=11)
    # The whole history is in the index, long after the stream let it go.
    load_to_the_end(page)
    ids = row_ids(page)
    assert len(ids) == 611 and len(set(ids)) == 611
    assert ids[:2] == ["after-reset", "new-599"] and ids[-1] == "old-0"
