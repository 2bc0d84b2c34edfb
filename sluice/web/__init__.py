"""The only package that knows Flask: the app factory, the domain-to-HTTP error
mapping, the JSON API (`api/`), the dashboard's pages, static files and templates."""

from __future__ import annotations

from .app import create_app

__all__ = ["create_app"]
