"""The JSON API's blueprints, one module per resource."""

from __future__ import annotations

from flask import Blueprint

from . import actions, auth, connections, events, ingest, jobs, system

BLUEPRINTS: tuple[Blueprint, ...] = (
    auth.bp,
    connections.bp,
    jobs.bp,
    actions.bp,
    ingest.bp,
    events.bp,
    system.bp,
)
