"""Celery → Sluice: the in-worker integration, the agent and the one mapping both use.

    import sluice.celery            # or: from sluice.integrations.celery import install
    sluice.celery.install(app)

- `mapping`: the pure functions that build ingest events from Celery facts;
- `integration`: `install(app)` and the signal handlers, inside workers and publishers;
- `state`: the agent's memory of tasks and workers (Celery event dicts → ingest events);
- `agent`: the `celery-agent` command, which watches a deployment from outside.

Importing this package imports neither Celery nor the server's dependencies
(Flask, gevent, redis): Celery workers import it.
"""

from __future__ import annotations

from .integration import SluiceCelery, install

__all__ = ["install", "SluiceCelery"]
