"""The WSGI entry point: `gunicorn -c python:sluice.gunicorn_conf sluice.wsgi:app`.

A wrong setting, or Redis unreachable when it is needed to boot (no
SECRET_KEY: the development secret lives in Redis), ends the process with one
line on stderr and exit status 4, which gunicorn's master takes as "App failed
to load" and stops on, instead of a traceback from every worker. (Under
sluice.gunicorn_conf the master refuses first, before any worker boots.)
"""

from __future__ import annotations

import os
import sys
import threading

from sluice.config import ConfigError
from sluice.store.client import STORE_ERRORS, redis_problem
from sluice.web.api.system import redis_warnings
from sluice.web.app import create_app

APP_LOAD_ERROR = 4  # gunicorn.arbiter.Arbiter.APP_LOAD_ERROR

try:
    app = create_app()
except ConfigError as exc:
    print(f"Not starting: {exc}", file=sys.stderr, flush=True)
    sys.exit(APP_LOAD_ERROR)
except STORE_ERRORS as exc:
    print(
        f"Not starting: {redis_problem(os.environ.get('REDIS_URL', ''), exc)}",
        file=sys.stderr,
        flush=True,
    )
    sys.exit(APP_LOAD_ERROR)

# Production: log (once, in the background so that a slow Redis does not hold up
# the boot) when Redis would lose or evict what Sluice keeps in it.
threading.Thread(target=redis_warnings, args=(app,), name="redis-warnings", daemon=True).start()
