"""How Sluice's browser tests and scripts launch Debian's Chromium (one place).

The flags keep headless Chromium quiet on a machine with no network beyond
loopback; it never downloads a browser of its own (no `playwright install`).
"""

from __future__ import annotations

import os

CHROMIUM = os.environ.get("SLUICE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
