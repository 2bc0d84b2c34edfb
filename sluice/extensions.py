"""Extension objects, created unbound and initialised in `create_app`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis
from flask import current_app, request
from flask_limiter import Limiter
from flask_login import LoginManager

from .config import Settings

if TYPE_CHECKING:
    from .events.hub import Hub

login_manager = LoginManager()


def _client_ip() -> str:
    return request.remote_addr or "unknown"


limiter = Limiter(key_func=_client_ip, default_limits=[])


@dataclass
class SluiceState:
    """What one app holds: its settings, its Redis client, its stream hub."""

    settings: Settings
    redis: redis.Redis
    hub: Hub


def state() -> SluiceState:
    return current_app.extensions["sluice"]
