"""Two lines in a Celery app, and its tasks and workers show up live in Sluice.

    import sluice.celery
    sluice.celery.install(app)   # url/api_key/connection_id or SLUICE_URL, SLUICE_API_KEY, SLUICE_CONNECTION_ID

The code lives in `sluice.integrations.celery` (see `integration`); this
module keeps the import path users and Celery workers know. Importing it
imports neither Celery nor Flask, gevent or redis.
"""

from __future__ import annotations

from .integrations.celery import SluiceCelery, install

__all__ = ["install", "SluiceCelery"]
