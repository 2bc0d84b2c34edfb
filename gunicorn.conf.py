"""gunicorn settings: `gunicorn -c gunicorn.conf.py wsgi:app` from a checkout.

The settings live in the package (`sluice/gunicorn_conf.py`), so that an
installed Sluice runs the same way: `sluice serve`.
"""

from sluice.gunicorn_conf import *  # noqa: F403
