"""Screenshot of the live view with realistic traffic, for the README.

    python scripts/screenshot.py [--out docs/live-view.png] [--dark] [--warmup 25]

Starts Redis (embedded unless REDIS_URL is set) and the real gunicorn+gevent
server on a free port, feeds it the demo's synthetic Celery traffic through the
ingest API, then signs in with Debian's chromium (Playwright) and saves the
page. Needs /usr/bin/chromium and `pip install -r requirements-dev.txt`.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sluice.demo import (  # noqa: E402
    Producer,
    demo_account,
    gunicorn_command,
    stop_server,
    wait_healthy,
)
from sluice.store.embedded import start_embedded  # noqa: E402
from tests.browser.chromium import CHROMIUM, CHROMIUM_ARGS  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "live-view.png"))
    parser.add_argument("--dark", action="store_true", help="dark colour scheme")
    parser.add_argument("--width", type=int, default=1440)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=40.0, help="synthetic events per second")
    parser.add_argument(
        "--warmup", type=float, default=25.0, help="seconds of traffic before the page opens"
    )
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} not found: apt-get install chromium", file=sys.stderr)
        return 2
    from playwright.sync_api import expect, sync_playwright

    redis_url = os.environ.get("REDIS_URL") or start_embedded()
    email, password, connection_id, api_key = demo_account(redis_url)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = dict(
        os.environ,
        REDIS_URL=redis_url,
        PORT=str(port),
        HOST="127.0.0.1",
        WEB_CONCURRENCY="1",
        SLUICE_INGEST_RATE_LIMIT="100000 per minute",
    )
    server = subprocess.Popen(gunicorn_command(), env=env, cwd=ROOT)
    stop = threading.Event()
    try:
        wait_healthy(base_url, server)
        producer = Producer(base_url, api_key, connection_id, args.rate)
        thread = threading.Thread(target=producer.run, args=(lambda: not stop.is_set(),))
        thread.start()
        time.sleep(args.warmup)  # let history, sparklines and a worker toggle build up
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            context = browser.new_context(
                viewport={"width": args.width, "height": args.height},
                color_scheme="dark" if args.dark else "light",
                device_scale_factor=1,
            )
            page = context.new_page()
            page.goto(f"{base_url}/connections/{connection_id}")
            page.fill("#email", email)
            page.fill("#password", password)
            page.click("[data-login-submit]")
            expect(page.locator("[data-indicator]")).to_have_attribute(
                "data-state", "live", timeout=10_000
            )
            page.wait_for_timeout(6_000)  # a few seconds of live updates and events/s
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=args.out)
            browser.close()
        print(f"saved {args.out}")
        return 0
    finally:
        stop.set()
        stop_server(server)


if __name__ == "__main__":
    sys.exit(main())
