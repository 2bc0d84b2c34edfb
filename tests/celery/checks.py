"""Checks shared by the Celery tests: events the server's own validator accepts."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

CONN = "7d3f2d8e-1111-4222-8333-444455556666"


def validate(events: list[dict], connection_id: str = CONN) -> None:
    """Fail unless `POST /api/ingest` would accept every one of `events`."""
    from sluice.config import load_settings
    from sluice.schema import validate_batch

    validate_batch(events, connection_id, load_settings({}).max_extensions_bytes)


#: What a module imported by Celery workers, publishers or the CLI must not pull in.
HEAVY = frozenset({"celery", "kombu", "flask", "gevent", "redis", "requests", "click"})


def heavy_imports(module: str) -> set[str]:
    """The packages of `HEAVY` that importing `module` imports, in a fresh interpreter."""
    code = (
        f"import sys, {module}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=ROOT,
    )
    return set(out.stdout.split()) & HEAVY
