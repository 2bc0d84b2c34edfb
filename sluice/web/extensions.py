"""Extension objects, created unbound and initialised in `create_app`."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app, request
from flask_limiter import Limiter
from flask_login import LoginManager

from ..config import Settings
from ..fanout.hub import Hub
from ..store.client import Redis

login_manager = LoginManager()


def client_ip() -> str:
    return request.remote_addr or "unknown"


limiter = Limiter(key_func=client_ip, default_limits=[])


@dataclass
class SluiceState:
    """What one app holds: its settings, its Redis client, its stream hub."""

    settings: Settings
    redis: Redis
    hub: Hub


def state() -> SluiceState:
    """The current app's settings, Redis client and hub."""
    app_state: SluiceState = current_app.extensions["sluice"]
    return app_state
