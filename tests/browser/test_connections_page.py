"""Login, logout and the connections page in a real browser."""

from __future__ import annotations

import pytest

pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: pip install -r requirements-dev.txt"
)

import re

from playwright.sync_api import expect

from tests.browser.helpers import login_ui, open_live, wait_counts
from tests.celery.conftest import broker_redis_url, queue  # noqa: F401  (fixtures)
from tests.util import ingest, job_event


def test_login_shows_a_clear_error_then_signs_in(server, account, page):
    page.goto(server.url + "/")
    expect(page).to_have_url(server.url + "/login?next=/")
    page.fill("#email", account.email)
    page.fill("#password", "wrong password")
    page.click("[data-login-submit]")
    error = page.locator("[data-login-error]")
    expect(error).to_be_visible()
    expect(error).to_have_text("Incorrect email or password.")
    expect(error).to_have_attribute("role", "alert")
    expect(page).to_have_url(re.compile(r"/login\?next=/$"))
    page.fill("#password", account.password)
    page.press("#password", "Enter")  # keyboard submit works
    expect(page).to_have_url(server.url + "/")
    expect(page.locator(f'[data-connection-id="{account.connection_id}"]')).to_contain_text(
        "Test cluster"
    )


def test_logout_returns_to_login_and_pages_need_a_session(server, account, page):
    login_ui(page, server.url, account)
    page.click("[data-action=logout]")
    expect(page).to_have_url(server.url + "/login")
    page.goto(f"{server.url}/connections/{account.connection_id}")
    expect(page).to_have_url(f"{server.url}/login?next=/connections/{account.connection_id}")


def test_create_connection_shows_key_once_and_curl_that_works(server, account, page):
    login_ui(page, server.url, account)
    page.fill("#conn-name", "Checkout workers")
    page.select_option("#conn-framework", "sidekiq")
    page.click("[data-create-submit]")
    panel = page.locator("[data-key-panel]")
    expect(panel).to_be_visible()
    expect(page.locator("[data-key-value]")).to_have_value(re.compile(r"^sk_live_"))
    key = page.locator("[data-key-value]").input_value()
    curl = page.locator("[data-curl]").inner_text()
    assert f"Bearer {key}" in curl and f"{server.url}/api/ingest" in curl
    item = page.locator(".conn-item", has_text="Checkout workers")
    expect(item).to_have_count(1)
    expect(item.locator(".chip")).to_have_text("Sidekiq")
    connection_id = item.get_attribute("data-connection-id")
    assert connection_id and connection_id in curl

    # The copy button copies the key (clipboard permission granted for the check).
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    page.click('[data-copy-target="#api-key-value"]')
    expect(page.locator('[data-copy-target="#api-key-value"]')).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == key

    # Dismissing forgets the key; a reload never shows it again.
    page.click("[data-key-dismiss]")
    expect(panel).to_be_hidden()
    page.reload()
    expect(page.locator("[data-key-panel]")).to_be_hidden()
    assert key not in page.content()

    # The shown key ingests into the new connection, which the live view shows.
    item = page.locator(f'[data-connection-id="{connection_id}"] .conn-main')
    item.click()
    expect(page).to_have_url(f"{server.url}/connections/{connection_id}")
    expect(page.locator("[data-indicator]")).to_have_attribute("data-state", "live")
    response = ingest(server.url, key, connection_id, [job_event(connection_id, "c1", "queued")])
    assert response.status_code == 202, response.text
    wait_counts(page, rows=1, events=1)


def test_delete_connection_asks_for_confirmation(server, account, page):
    login_ui(page, server.url, account)
    item = page.locator(f'[data-connection-id="{account.connection_id}"]')
    item.locator("[data-action=delete]").click()
    dialog = page.locator("[data-delete-dialog]")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("Delete Test cluster?")
    page.keyboard.press("Escape")  # cancel by keyboard
    expect(dialog).to_be_hidden()
    expect(item).to_have_count(1)

    item.locator("[data-action=delete]").click()
    page.click("[data-delete-confirm]")
    expect(dialog).to_be_hidden()
    expect(item).to_have_count(0)
    expect(page.locator("[data-conn-empty]")).to_be_visible()
    session = account.login(server.url)
    listed = session.get(server.url + "/api/connections", timeout=5).json()["data"]
    assert all(c["id"] != account.connection_id for c in listed)
    response = ingest(
        server.url,
        account.api_key,
        account.connection_id,
        [job_event(account.connection_id, "x", "queued")],
    )
    assert response.status_code == 401


def test_rotate_key_asks_for_confirmation_and_shows_the_new_key_once(server, account, page):
    login_ui(page, server.url, account)
    cid = account.connection_id
    item = page.locator(f'[data-connection-id="{cid}"]')
    item.locator("[data-action=rotate]").click()
    dialog = page.locator("[data-rotate-dialog]")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("Rotate the API key of Test cluster?")
    page.keyboard.press("Escape")  # cancel: nothing changes
    expect(dialog).to_be_hidden()
    assert ingest(server.url, account.api_key, cid, [job_event(cid, "a", "queued")]).ok

    item.locator("[data-action=rotate]").click()
    page.click("[data-rotate-confirm]")
    expect(dialog).to_be_hidden()
    panel = page.locator("[data-key-panel]")
    expect(panel).to_be_visible()
    value = page.locator("[data-key-value]")
    expect(value).to_have_value(re.compile(r"^sk_live_"))
    new_key = value.input_value()
    assert new_key != account.api_key
    expect(panel.locator("[data-curl]")).to_contain_text(new_key)
    # A Celery connection: the agent's command and install() have the new key too.
    expect(page.locator("[data-celery-agent]")).to_contain_text(f"--api-key {new_key}")
    expect(page.locator("[data-celery-install]")).to_contain_text(f'api_key="{new_key}"')
    assert ingest(server.url, new_key, cid, [job_event(cid, "b", "queued")]).ok
    assert (
        ingest(server.url, account.api_key, cid, [job_event(cid, "c", "queued")]).status_code == 401
    )
    page.click("[data-key-dismiss]")  # shown once: dismissed, it is gone from the page
    expect(panel).to_be_hidden()
    expect(value).to_have_value("")
    expect(page.locator("[data-celery-panel]")).to_be_hidden()
    assert new_key not in page.content()
    expect(item).to_have_count(1)


def test_live_view_of_a_deleted_connection_says_so(server, account, page):
    login_ui(page, server.url, account, f"/connections/{account.connection_id}")
    expect(page.locator("[data-indicator]")).to_have_attribute("data-state", "live")
    session = account.login(server.url)
    assert (
        session.delete(f"{server.url}/api/connections/{account.connection_id}").status_code == 204
    )
    expect(page.locator("[data-indicator]")).to_have_attribute("data-state", "gone")
    expect(page.locator("[data-indicator-text]")).to_have_text("Connection not found")


def test_phone_width_has_no_horizontal_page_scroll(server, account, phone_page):
    page = phone_page
    response = page.context.request.post(
        server.url + "/api/auth/login", data={"email": account.email, "password": account.password}
    )
    assert response.status == 200
    ingest(
        server.url,
        account.api_key,
        account.connection_id,
        [job_event(account.connection_id, "p1", "failed", error="E" * 400)],
    )
    open_live(page, server.url, account.connection_id)
    wait_counts(page, rows=1, events=0)  # loaded from the job index
    expect(page.locator(".job-error")).to_be_visible()
    for path in ("", "/", "/login"):
        if path:
            page.goto(server.url + path)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, (path, width)


def test_a_celery_connection_shows_the_agent_command_and_install_snippet_that_work(
    server,
    account,
    page,
    broker_redis_url,  # noqa: F811
    queue,  # noqa: F811
):
    """After creation the page shows, with the new key, the `celery-agent` command and
    the `install(app)` snippet. The agent command, as the page gives it (the broker
    typed in its field: the machine's Redis), run by a shell: it connects, and a
    real worker's task arrives under the new connection. Without the key (later),
    the commands say where the key is."""
    pytest.importorskip(
        "celery", reason="Celery is not installed: pip install -r requirements-celery.txt"
    )
    import os
    import signal
    import sys
    from pathlib import Path

    import requests

    from tests.celery.rig import CeleryWorker, Proc, cleanup_broker, publisher, redis_broker_url
    from tests.util import wait_until

    login_ui(page, server.url, account)
    page.fill("#conn-name", "Celery prod")
    page.select_option("#conn-framework", "celery")
    page.click("[data-create-submit]")
    key_field = page.locator("[data-key-value]")
    expect(key_field).to_have_value(re.compile(r"^sk_live_"))
    key = key_field.input_value()
    celery = page.locator("[data-celery-panel]")
    expect(celery).to_be_visible()
    agent_cmd = page.locator("[data-celery-agent]")
    expect(agent_cmd).to_contain_text(f"--api-key {key}")
    expect(agent_cmd).to_contain_text(f"--url {server.url}")
    expect(agent_cmd).to_contain_text("python -m sluice celery-agent")
    snippet = page.locator("[data-celery-install]")
    expect(snippet).to_contain_text("import sluice.celery")
    expect(snippet).to_contain_text(
        f'sluice.celery.install(app, url="{server.url}", api_key="{key}")'
    )
    expect(celery.locator('[data-copy-target="#celery-agent-cmd"]')).to_be_visible()
    expect(celery.locator('[data-copy-target="#celery-install"]')).to_be_visible()
    # The broker field makes the command exact.
    broker = redis_broker_url(broker_redis_url)
    page.fill("#celery-broker", broker)
    expect(agent_cmd).to_contain_text(f"--broker {broker}")
    command = agent_cmd.text_content()  # what the Copy button copies
    connection_id = page.locator(".conn-item", has_text="Celery prod").get_attribute(
        "data-connection-id"
    )

    # Pasted into a shell as it is (`python` is this environment's).
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    agent = Proc("agent-from-page", ["bash", "-c", command], {"PATH": path})
    worker = CeleryWorker(broker, queue)
    try:
        agent.start()
        agent.wait_for_output("capturing events", timeout=30)
        assert f"(connection {connection_id})" in agent.output()
        worker.start()
        task_id = publisher(broker, queue).send_task("sluice_test.add", (2, 3), queue=queue).id

        def completed():
            reply = requests.get(
                f"{server.url}/api/connections/{connection_id}/jobs/{task_id}",
                headers={"Authorization": f"Bearer {key}"},
                timeout=10,
            )
            return reply.status_code == 200 and reply.json()["data"]["state"] == "completed"

        wait_until(completed, 30, "the task completed under the new connection")
    finally:
        worker.stop()
        agent.stop(signal.SIGTERM)
        cleanup_broker(broker, queue)

    # The key leaves with its panel; later the commands say where the key is.
    page.click("[data-key-dismiss]")
    expect(celery).to_be_hidden()
    page.locator(".conn-item", has_text="Celery prod").locator("[data-action=celery-setup]").click()
    expect(celery).to_be_visible()
    expect(agent_cmd).to_contain_text("--api-key <YOUR_API_KEY>")
    expect(snippet).to_contain_text('api_key="<YOUR_API_KEY>"')
    expect(celery.locator("[data-celery-key-note]")).to_contain_text("Rotate key")
    assert key not in page.content()
