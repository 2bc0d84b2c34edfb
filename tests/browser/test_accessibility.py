"""Every control has an accessible name, and the live view works from the keyboard."""

from __future__ import annotations

import pytest

pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: pip install -r requirements-dev.txt"
)

from playwright.sync_api import expect

from tests.browser.helpers import login_cookie, open_live, wait_counts
from tests.util import ingest, job_event

UNNAMED = """() => [...document.querySelectorAll('input, select, button, a[href]')]
  .filter(el => el.offsetParent !== null || el.type === 'checkbox')
  .filter(el => {
    const labelled = (el.labels && el.labels.length) || el.getAttribute('aria-label')
      || el.getAttribute('aria-labelledby');
    const text = (el.textContent || '').trim();
    return !(labelled || (el.tagName !== 'INPUT' && el.tagName !== 'SELECT' && text));
  })
  .map(el => el.outerHTML.slice(0, 120))"""


def test_controls_have_accessible_names(server, account, page):
    page.goto(server.url + "/login")
    assert page.evaluate(UNNAMED) == []
    login_cookie(page, server.url, account)
    page.goto(server.url + "/")
    expect(page.locator(".conn-item")).to_have_count(1)
    assert page.evaluate(UNNAMED) == []
    open_live(page, server.url, account.connection_id)
    assert page.evaluate(UNNAMED) == []
    expect(page.locator("[data-indicator]")).to_have_attribute("role", "status")
    expect(page.locator("[data-indicator]")).to_have_attribute("aria-live", "polite")


def test_live_view_filters_from_the_keyboard(server, account, page):
    cid = account.connection_id
    ingest(
        server.url,
        account.api_key,
        cid,
        [job_event(cid, "k1", "failed", error="x"), job_event(cid, "k2", "completed")],
    )
    login_cookie(page, server.url, account)
    open_live(page, server.url, cid)
    wait_counts(page, rows=2, events=0)  # loaded from the job index
    page.locator('[data-state-filter="completed"]').focus()
    page.keyboard.press("Tab")
    expect(page.locator('[data-state-filter="failed"]')).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("[data-jobs-body] .job-row")).to_have_count(1)
    page.keyboard.press("Space")  # pressing the active filter again clears it
    expect(page.locator("[data-jobs-body] .job-row")).to_have_count(2)
    page.locator("[data-job-search]").focus()
    page.keyboard.type("nothing-matches")
    expect(page.locator("[data-jobs-empty]")).to_contain_text("No jobs match these filters.")


def test_job_drawer_and_filters_from_the_keyboard(server, account, page):
    cid = account.connection_id
    ingest(
        server.url,
        account.api_key,
        cid,
        [
            job_event(cid, "kd1", "failed", error="x", workerId="celery@k", queue="q1"),
            job_event(cid, "kd2", "completed", workerId="celery@k"),
        ],
    )
    login_cookie(page, server.url, account)
    page.goto(f"{server.url}/connections/{cid}?worker=celery%40k")
    expect(page.locator("[data-indicator]")).to_have_attribute("data-state", "live")
    wait_counts(page, rows=2, events=0)
    link = page.locator('.job-row[data-external-id="kd1"] a.job-link')
    link.focus()
    page.keyboard.press("Enter")
    drawer = page.locator("[data-drawer]")
    expect(drawer).to_be_visible()
    expect(page.locator("[data-drawer-title]")).to_be_focused()
    expect(drawer).to_have_attribute("role", "dialog")
    expect(drawer.locator("[data-detail-timeline] li")).to_have_count(1)
    assert page.evaluate(UNNAMED) == []  # the drawer, the filter pill, the rows' links
    page.keyboard.press("Tab")
    expect(page.locator("[data-drawer-close]")).to_be_focused()
    page.keyboard.press("Enter")
    expect(drawer).to_be_hidden()
    expect(link).to_be_focused()
    # The worker filter's pill is a named button; pressing it removes the filter.
    remove = page.locator('[data-scope="worker"] button')
    expect(remove).to_have_attribute("aria-label", "Remove the worker filter celery@k")
    remove.focus()
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{server.url}/connections/{cid}")
