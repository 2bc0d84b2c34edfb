"""Operator actions in the live view (issue 13 item 8; docs/api.md, "Actions").

Real Chromium, the real gunicorn+gevent server, real Redis. A click POSTs the
action with the owner's session; the command it makes is read back from the
command stream as the agent reads it (`GET /api/connections/<id>/commands` with
the write key); its result comes back through the real ingest path
(`POST /api/ingest`, a `command_result` event, what the agent sends) and the
page shows pending → done / failed. The end-to-end tests with a real Celery
worker and the real agent are in test_actions_celery.py.
"""

from __future__ import annotations

import pytest

pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: pip install -r requirements-dev.txt"
)

import time
from typing import Any

import requests
from playwright.sync_api import expect

from tests.browser.helpers import job_row, login_cookie, open_live
from tests.util import _event, ingest, job_event, worker_event


def send(server: Any, account: Any, events: list[dict]) -> None:
    response = ingest(server.url, account.api_key, account.connection_id, events)
    assert response.status_code == 202, response.text


def commands(server: Any, account: Any) -> list[dict]:
    """The connection's commands of the last minute, as the agent reads them."""
    response = requests.get(
        f"{server.url}/api/connections/{account.connection_id}/commands",
        headers={"Authorization": f"Bearer {account.api_key}"},
        params={"wait": "0"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response.json()["data"]


def wait_commands(server: Any, account: Any, n: int, timeout: float = 10) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = commands(server, account)
        if len(found) >= n or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def send_result(
    server: Any, account: Any, command: dict, status: str, detail: dict | None = None
) -> None:
    """What the agent does once it carried a command out: a `command_result` event."""
    result = {
        "commandId": command["commandId"],
        "action": command["action"],
        "status": status,
        "detail": detail or {},
    }
    send(
        server, account, [_event("command_result", account.connection_id, "command", result, None)]
    )


def open_drawer(page: Any, server: Any, account: Any, external_id: str) -> Any:
    page.goto(f"{server.url}/connections/{account.connection_id}?job={external_id}")
    expect(page.locator("[data-indicator]")).to_have_attribute("data-state", "live")
    drawer = page.locator("[data-drawer]")
    expect(drawer.locator('[data-detail-field="externalId"]')).to_have_text(external_id)
    return drawer


def test_revoke_from_the_drawer_sends_one_command_and_shows_its_result(server, account, page):
    cid = account.connection_id
    send(server, account, [job_event(cid, "rv-1", "queued", queue="emails")])
    login_cookie(page, server.url, account)
    drawer = open_drawer(page, server, account, "rv-1")
    revoke = drawer.locator('[data-job-action="revoke"]')
    expect(revoke).to_be_visible()
    expect(revoke).to_have_text("Revoke")
    # A queued job is revoked, not terminated or retried.
    expect(drawer.locator('[data-job-action="terminate"]')).to_be_hidden()
    expect(drawer.locator('[data-job-action="retry"]')).to_be_hidden()

    revoke.dblclick()  # a double click makes one command
    status = drawer.locator("[data-action-status]")
    expect(status).to_have_text("Revoke: pending…")
    expect(status).to_have_attribute("role", "status")
    expect(revoke).to_be_disabled()
    [command] = wait_commands(server, account, 1)
    time.sleep(0.5)
    assert len(commands(server, account)) == 1
    assert command["action"] == "revoke"
    assert command["job"]["externalId"] == "rv-1" and command["job"]["queue"] == "emails"
    assert command["job"]["name"] == "app.tasks.send_email"

    send_result(server, account, command, "done")
    expect(status).to_have_text("Revoke: done")
    expect(status).to_have_attribute("data-status", "done")
    expect(revoke).to_be_enabled()
    # The job the agent revoked is cancelled: it may be retried now.
    send(server, account, [job_event(cid, "rv-1", "cancelled")])
    expect(drawer.locator('[data-job-action="retry"]')).to_be_visible()
    expect(revoke).to_be_hidden()
    expect(status).to_have_text("Revoke: done")  # the status stays with the job


def test_terminate_sends_the_chosen_signal_and_shows_a_failure(server, account, page):
    cid = account.connection_id
    send(
        server,
        account,
        [job_event(cid, "tm-1", "queued"), job_event(cid, "tm-1", "active", workerId="w1@h")],
    )
    login_cookie(page, server.url, account)
    drawer = open_drawer(page, server, account, "tm-1")
    terminate = drawer.locator('[data-job-action="terminate"]')
    expect(terminate).to_be_visible()
    select = drawer.locator("[data-terminate-signal]")
    expect(select).to_have_value("SIGTERM")  # the default
    expect(drawer.get_by_label("Signal")).to_be_visible()
    select.select_option("SIGKILL")
    terminate.click()
    [command] = wait_commands(server, account, 1)
    assert command["action"] == "terminate" and command["signal"] == "SIGKILL"
    assert command["job"]["externalId"] == "tm-1"
    expect(terminate).to_be_disabled()
    send_result(server, account, command, "failed", {"error": "no worker answered"})
    status = drawer.locator("[data-action-status]")
    expect(status).to_have_text("Terminate: failed: no worker answered")
    expect(status).to_have_attribute("data-status", "failed")
    expect(terminate).to_be_enabled()


def test_retry_links_to_the_new_job_and_the_new_job_links_back(server, account, page):
    cid = account.connection_id
    send(server, account, [job_event(cid, "rt-1", "failed", error="ValueError('x')")])
    login_cookie(page, server.url, account)
    drawer = open_drawer(page, server, account, "rt-1")
    retry = drawer.locator('[data-job-action="retry"]')
    retry.click()
    [command] = wait_commands(server, account, 1)
    assert command["action"] == "retry" and command["job"]["externalId"] == "rt-1"
    # The agent re-sent it: the new job is queued, then the result says which it is.
    send(server, account, [job_event(cid, "rt-2", "queued", extensions={"retryOf": "rt-1"})])
    send_result(server, account, command, "done", {"newJobId": "rt-2"})
    status = drawer.locator("[data-action-status]")
    expect(status).to_have_text("Retry: done")
    link = drawer.locator("[data-new-job]")
    expect(link).to_have_text("Open the new job")
    link.click()
    expect(drawer.locator('[data-detail-field="externalId"]')).to_have_text("rt-2")
    assert "job=rt-2" in page.url
    back = drawer.locator("[data-retry-of]")
    expect(back).to_have_text("rt-1")
    back.click()
    expect(drawer.locator('[data-detail-field="externalId"]')).to_have_text("rt-1")


def test_a_retry_without_captured_arguments_says_so(server, account, page):
    cid = account.connection_id
    send(server, account, [job_event(cid, "nc-1", "failed", error="x")])
    login_cookie(page, server.url, account)
    drawer = open_drawer(page, server, account, "nc-1")
    drawer.locator('[data-job-action="retry"]').click()
    [command] = wait_commands(server, account, 1)
    error = "arguments not captured: start the workers with sluice.celery.install(app, capture_call=True)"
    send_result(server, account, command, "failed", {"error": error})
    expect(drawer.locator("[data-action-status]")).to_have_text(f"Retry: failed: {error}")
    expect(drawer.locator("[data-new-job]")).to_have_count(0)


def test_worker_view_pool_and_shutdown_ask_first(server, account, page):
    cid = account.connection_id
    send(server, account, [worker_event(cid, "w1@host", "online", hostname="host", concurrency=2)])
    login_cookie(page, server.url, account)
    open_live(page, server.url, cid)
    page.locator('.worker[data-external-id="w1@host"] a.worker-host').click()
    bar = page.locator("[data-worker-actions]")
    expect(bar).to_be_visible()
    expect(bar).to_have_attribute("aria-label", "Actions on worker w1@host")
    grow = bar.locator('[data-worker-action="pool_grow"]')
    expect(grow).to_have_text("Pool +1")
    grow.click()
    [command] = wait_commands(server, account, 1)
    assert command["action"] == "pool_grow" and command["n"] == 1
    assert command["worker"]["externalId"] == "w1@host"
    status = bar.locator("[data-action-status]")
    expect(status).to_have_text("Pool +1: pending…")
    send_result(server, account, command, "done", {"replies": {"w1@host": "ok"}})
    expect(status).to_have_text("Pool +1: done (w1@host: ok)")

    # A command whose result arrived leaves the command stream.
    assert commands(server, account) == []

    bar.locator('[data-worker-action="pool_shrink"]').click()
    found = wait_commands(server, account, 1)
    assert [c["action"] for c in found] == ["pool_shrink"]
    expect(status).to_have_text("Pool −1: pending…")
    # While a command of the worker waits for its result, its buttons wait too.
    expect(bar.locator('[data-worker-action="shutdown"]')).to_be_disabled()
    send_result(server, account, found[0], "failed", {"error": "no reply from w1@host"})
    expect(status).to_have_text("Pool −1: failed: no reply from w1@host")

    # Shut down asks first; Escape cancels (and leaves the page as it was).
    shutdown = bar.locator('[data-worker-action="shutdown"]')
    shutdown.click()
    dialog = page.locator("[data-confirm-dialog]")
    expect(dialog).to_be_visible()
    expect(dialog.locator("[data-confirm-title]")).to_have_text("Shut down w1@host?")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(bar).to_be_visible()
    time.sleep(0.5)
    assert commands(server, account) == []
    # Confirmed, it is sent.
    shutdown.click()
    dialog.locator("[data-confirm-ok]").click()
    found = wait_commands(server, account, 1)
    assert found[-1]["action"] == "shutdown"
    assert found[-1]["worker"]["externalId"] == "w1@host"


def test_retry_all_failed_asks_first_and_sends_the_filter(server, account, page):
    cid = account.connection_id
    events = [job_event(cid, f"bf-{i}", "failed", error="x", queue="emails") for i in range(3)]
    events.append(job_event(cid, "bf-ok", "completed", queue="emails"))
    send(server, account, events)
    login_cookie(page, server.url, account)
    open_live(page, server.url, cid)
    bulk = page.locator("[data-bulk-retry]")
    expect(bulk).to_be_hidden()  # not on an unfiltered list
    page.locator('[data-state-filter="failed"]').click()
    expect(bulk).to_have_text("Retry all 3 failed")
    bulk.click()
    dialog = page.locator("[data-confirm-dialog]")
    expect(dialog.locator("[data-confirm-title]")).to_have_text("Retry all 3 failed jobs?")
    dialog.locator("[data-confirm-cancel]").click()
    expect(dialog).to_be_hidden()
    time.sleep(0.3)
    assert commands(server, account) == []
    bulk.click()
    dialog.locator("[data-confirm-ok]").click()
    [command] = wait_commands(server, account, 1)
    assert command["action"] == "bulk_retry"
    assert command["filter"] == {"state": "failed"}
    status = page.locator("[data-bulk-actions] [data-action-status]")
    expect(status).to_have_text("Retry all: pending…")
    expect(bulk).to_be_disabled()
    send_result(
        server, account, command, "done", {"retried": 3, "failed": 0, "newJobIds": ["a", "b", "c"]}
    )
    expect(status).to_have_text("Retry all: done: 3 retried")


def test_a_refused_action_shows_the_server_message(server, account, page):
    cid = account.connection_id
    login_cookie(page, server.url, account)
    # The worker view of a worker nobody has seen: the server answers 404.
    page.goto(f"{server.url}/connections/{cid}?worker=nobody@nowhere")
    bar = page.locator("[data-worker-actions]")
    bar.locator('[data-worker-action="pool_grow"]').click()
    status = bar.locator("[data-action-status]")
    expect(status).to_have_attribute("data-status", "error")
    expect(status).to_contain_text("Pool +1: ")
    assert "pending" not in status.inner_text()
    expect(bar.locator('[data-worker-action="pool_grow"]')).to_be_enabled()
    assert commands(server, account) == []


@pytest.fixture(scope="module")
def read_only_server(start_server):
    return start_server(SLUICE_READ_ONLY="1")


def test_read_only_mode_shows_no_action_buttons(read_only_server, server, account, page):
    cid = account.connection_id
    send(
        server,
        account,
        [
            job_event(cid, "ro-q", "queued"),
            job_event(cid, "ro-f", "failed", error="x"),
            worker_event(cid, "ro@host", "online"),
        ],
    )
    login_cookie(page, read_only_server.url, account)
    drawer = open_drawer(page, read_only_server, account, "ro-f")
    expect(drawer.locator("[data-detail-timeline] li")).to_have_count(1)
    expect(page.locator("body")).to_have_attribute("data-actions", "off")
    assert page.locator("[data-job-actions] button:visible").count() == 0
    visible = "els => els.filter(e => e.offsetParent !== null).length"
    page.goto(f"{read_only_server.url}/connections/{cid}?state=failed")
    expect(job_row(page, "ro-f")).to_be_visible()
    expect(page.locator("body")).to_have_attribute("data-actions", "off")
    expect(page.locator("[data-bulk-actions]")).to_be_hidden()
    page.goto(f"{read_only_server.url}/connections/{cid}?worker=ro@host")
    expect(page.locator('[data-scope="worker"]')).to_be_visible()
    expect(page.locator("body")).to_have_attribute("data-actions", "off")
    expect(page.locator("[data-worker-actions]")).to_be_hidden()
    buttons = page.locator("[data-worker-action], [data-bulk-retry], [data-job-action]")
    assert buttons.evaluate_all(visible) == 0
    # The server refuses anyway (an old page, a script).
    session = account.login(read_only_server.url)
    refused = session.post(
        f"{read_only_server.url}/api/connections/{cid}/jobs/ro-f/actions",
        json={"action": "retry"},
        headers={"X-Requested-With": "fetch"},
    )
    assert refused.status_code == 403


def test_results_arrive_with_a_types_filter_on(server, account, page):
    """The page's stream always carries command results, whatever panels are shown."""
    cid = account.connection_id
    send(server, account, [job_event(cid, "tf-1", "queued")])
    login_cookie(page, server.url, account)
    drawer = open_drawer(page, server, account, "tf-1")
    with page.expect_request(lambda r: "/api/events/stream" in r.url and "types=" in r.url) as req:
        page.locator('[data-type-filter][value="queue"]').uncheck()
    assert "command" in req.value.url.split("types=")[1].split("&")[0].split("%2C")
    expect(page.locator("[data-indicator]")).to_have_attribute("data-state", "live")
    drawer.locator('[data-job-action="revoke"]').click()
    [command] = wait_commands(server, account, 1)
    send_result(server, account, command, "done")
    expect(drawer.locator("[data-action-status]")).to_have_text("Revoke: done")


@pytest.fixture(scope="module")
def limited_server(start_server):
    return start_server(SLUICE_ACTIONS_RATE_LIMIT="1 per minute")


def test_a_rate_limited_action_shows_the_server_message(limited_server, account, page):
    server = limited_server
    cid = account.connection_id
    send(server, account, [worker_event(cid, "rl@host", "online")])
    login_cookie(page, server.url, account)
    page.goto(f"{server.url}/connections/{cid}?worker=rl@host")
    bar = page.locator("[data-worker-actions]")
    status = bar.locator("[data-action-status]")
    bar.locator('[data-worker-action="pool_grow"]').click()
    [command] = wait_commands(server, account, 1)
    send_result(server, account, command, "done")
    expect(status).to_have_text("Pool +1: done")
    bar.locator('[data-worker-action="pool_shrink"]').click()
    expect(status).to_have_text("Pool −1: Too many requests; retry later")
    expect(status).to_have_attribute("data-status", "error")
    # The refused click issued nothing (the answered pool_grow left the stream).
    assert commands(server, account) == []


def test_action_controls_are_named_and_work_from_the_keyboard(server, account, page):
    from tests.browser.test_accessibility import UNNAMED

    cid = account.connection_id
    send(
        server,
        account,
        [
            job_event(cid, "kb-f", "failed", error="x", workerId="kb@host"),
            job_event(cid, "kb-a", "active", workerId="kb@host"),
            worker_event(cid, "kb@host", "busy", activeJobs=1),
        ],
    )
    login_cookie(page, server.url, account)
    page.goto(f"{server.url}/connections/{cid}?state=failed&worker=kb@host&job=kb-a")
    expect(page.locator('[data-job-action="terminate"]')).to_be_visible()
    expect(page.locator('[data-worker-action="pool_grow"]')).to_be_visible()
    expect(page.locator("[data-bulk-retry]")).to_have_text("Retry all 1 failed")
    assert page.evaluate(UNNAMED) == []
    for region in page.locator("[data-action-status]").all():
        assert region.get_attribute("role") == "status"
        assert region.get_attribute("aria-live") == "polite"
    # From the keyboard: the signal select, then Terminate.
    page.locator("[data-terminate-signal]").focus()
    page.keyboard.press("Tab")
    expect(page.locator('[data-job-action="terminate"]')).to_be_focused()
    page.keyboard.press("Enter")
    [command] = wait_commands(server, account, 1)
    assert command["action"] == "terminate" and command["signal"] == "SIGTERM"
    # The bulk retry's question: Escape cancels it, the drawer stays open.
    page.locator("[data-bulk-retry]").focus()
    page.keyboard.press("Enter")
    dialog = page.locator("[data-confirm-dialog]")
    expect(dialog).to_be_visible()
    expect(dialog.locator("[data-confirm-cancel]")).to_be_focused()
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(page.locator("[data-drawer]")).to_be_visible()
    expect(page.locator("[data-bulk-retry]")).to_be_focused()
    assert len(commands(server, account)) == 1
