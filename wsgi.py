"""The WSGI entry point from a checkout: `gunicorn -c gunicorn.conf.py wsgi:app`
(the app is made in `sluice/wsgi.py`)."""

from sluice.wsgi import app

__all__ = ["app"]
