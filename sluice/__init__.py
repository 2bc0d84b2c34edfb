"""Sluice: a real-time monitoring stream for background-job systems.

Importing the package stays cheap and Flask-free, so that `sluice.celery`
(which Celery workers import) does not pull in the web server's dependencies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

__version__ = "0.1.0"


def create_app(overrides: dict[str, Any] | None = None) -> Flask:
    """The app factory (see `sluice.web.app.create_app`)."""
    from .web.app import create_app as _create_app

    return _create_app(overrides)


__all__ = ["create_app", "__version__"]
