"""Small helpers shared by the browser tests."""

from __future__ import annotations

import pytest

pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: pip install -r requirements-dev.txt"
)

from typing import Any

from playwright.sync_api import expect

from tests.conftest import Account

RECORD_INDICATOR = """() => {
  window.__states = [];
  const el = document.querySelector('[data-indicator]');
  new MutationObserver(() => window.__states.push(el.dataset.state))
    .observe(el, {attributes: true, attributeFilter: ['data-state']});
}"""


def login_ui(page: Any, base_url: str, account: Account, next_path: str = "/") -> None:
    """Sign in through the login form, coming back to `next_path`."""
    page.goto(base_url + next_path)
    expect(page).to_have_url(f"{base_url}/login?next={next_path}")
    page.fill("#email", account.email)
    page.fill("#password", account.password)
    page.click("[data-login-submit]")
    expect(page).to_have_url(base_url + next_path)


def login_cookie(page: Any, base_url: str, account: Account) -> None:
    """Sign in through the API from the page's own cookie jar (faster than the form)."""
    response = page.context.request.post(
        base_url + "/api/auth/login", data={"email": account.email, "password": account.password}
    )
    assert response.status == 200, response.text()


def open_live(page: Any, base_url: str, connection_id: str) -> None:
    page.goto(f"{base_url}/connections/{connection_id}")
    expect(page.locator("[data-indicator]")).to_have_attribute("data-state", "live")


def job_row(page: Any, external_id: str) -> Any:
    return page.locator(f'[data-jobs-body] .job-row[data-external-id="{external_id}"]')


def event_count(page: Any) -> int:
    return int(page.locator('[data-stat="events"]').get_attribute("data-count") or "0")


def wait_counts(page: Any, *, rows: int, events: int, timeout: float = 10_000) -> None:
    """Wait until the table has `rows` rows and the event counter says `events`."""
    page.wait_for_function(
        """([rows, events]) => {
            const n = document.querySelectorAll('[data-jobs-body] .job-row').length;
            const c = Number(document.querySelector('[data-stat="events"]').dataset.count || 0);
            return n === rows && c === events;
        }""",
        arg=[rows, events],
        timeout=timeout,
    )


def row_ids(page: Any) -> list[str]:
    """The external ids of the jobs table's rows, top to bottom."""
    return page.eval_on_selector_all(
        "[data-jobs-body] .job-row", "els => els.map(e => e.dataset.externalId)"
    )


SETTLED = """() => {
    const more = document.querySelector('[data-jobs-more]');
    const button = document.querySelector('[data-load-more]');
    const table = document.querySelector('[data-jobs-table]');
    return table.getAttribute('aria-busy') === 'false' && !button.disabled
        && more.dataset.more !== 'loading';
}"""


def load_more(page: Any) -> None:
    """Click "Load more" once and wait until what it asked for is shown."""
    before = len(row_ids(page))
    page.click("[data-load-more]")
    page.wait_for_function(
        f"""n => ({SETTLED})() && (
            document.querySelectorAll('[data-jobs-body] .job-row').length > n
            || document.querySelector('[data-jobs-more]').dataset.more === 'end')""",
        arg=before,
    )


def load_to_the_end(page: Any, max_clicks: int = 100) -> int:
    """Click "Load more" until the list reaches the end of the history; returns the clicks."""
    page.wait_for_function(SETTLED)
    for clicks in range(max_clicks):
        if page.locator("[data-jobs-more]").get_attribute("data-more") == "end":
            return clicks
        load_more(page)
    raise AssertionError(f"still more after {max_clicks} clicks")
