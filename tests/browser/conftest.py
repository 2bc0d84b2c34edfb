"""Browser fixtures: Debian's chromium driven by Playwright, one fresh context per test.

Skips (never passes) when /usr/bin/chromium or the playwright package is missing.
On failure the page is saved to test-artifacts/<test>.png.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .chromium import CHROMIUM, CHROMIUM_ARGS

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    """Keep each phase's report on the item so fixtures can see whether the test failed."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)")
    sync_api = pytest.importorskip(
        "playwright.sync_api",
        reason="playwright is not installed (pip install -r requirements-dev.txt)",
    )
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class PageErrors:
    """Uncaught exceptions and CSP violations seen by a page: both are bugs."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def attach(self, page: Any) -> None:
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on(
            "console",
            lambda msg: (
                self.errors.append(f"console: {msg.text}")
                if msg.type == "error" and "Content Security Policy" in msg.text
                else None
            ),
        )


@pytest.fixture
def page_errors() -> PageErrors:
    return PageErrors()


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(10_000)
    yield ctx
    ctx.close()


def _finish(page: Any, request: pytest.FixtureRequest, errors: PageErrors) -> None:
    """Screenshot on failure; on success, fail on uncaught page errors or CSP violations."""
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        ARTIFACTS.mkdir(exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid)[-150:]
        try:
            page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        except Exception as exc:  # the page may be gone; the report is what matters
            print(f"screenshot failed: {exc}")
    elif report is not None and report.passed:
        assert not errors.errors, errors.errors


@pytest.fixture
def page(context: Any, request: pytest.FixtureRequest, page_errors: PageErrors) -> Iterator[Any]:
    page = context.new_page()
    page_errors.attach(page)
    yield page
    _finish(page, request, page_errors)


@pytest.fixture
def phone_page(
    browser: Any, request: pytest.FixtureRequest, page_errors: PageErrors
) -> Iterator[Any]:
    """A page in a phone-sized context (375 px wide, touch)."""
    ctx = browser.new_context(
        viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True
    )
    ctx.set_default_timeout(10_000)
    page = ctx.new_page()
    page_errors.attach(page)
    yield page
    _finish(page, request, page_errors)
    ctx.close()
