"""Every setting, read from the environment in one place.

Each limit the service enforces is a named setting here with a sane default, so
that an operator can find and change it without reading the code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any


class ConfigError(RuntimeError):
    """A setting is missing or malformed; the service refuses to start."""


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


@dataclass(frozen=True)
class Settings:
    """The service's configuration. Field names map to env vars in `ENV_NAMES`."""

    env: str = "development"
    redis_url: str | None = None
    secret_key: str | None = None
    # The stream.
    heartbeat_seconds: float = 15.0
    stream_maxlen: int = 10_000
    stream_max_bytes: int = 33_554_432  # bytes of events one connection's stream may hold
    stream_max_seconds: float = 0.0  # 0 = no lifetime cap
    retry_ms: int = 2_000
    listener_buffer_bytes: int = (
        4_194_304  # bytes pending for a client that is not reading, before it is cut off
    )
    catchup_batch: int = 500
    read_block_ms: int = 5_000  # how long the shared XREAD blocks before going round again
    max_streams_per_connection: int = 10_000
    stream_open_concurrency: int = 32  # stream opens doing Redis work at once per process
    # Ingest.
    max_body_bytes: int = 1_048_576
    body_read_seconds: float = 10.0  # a request body must arrive within this
    max_batch_events: int = 1_000
    max_extensions_bytes: int = 8_192
    dedupe_ttl_seconds: int = 86_400
    dedupe_max: int = 20_000  # producer ids remembered per connection
    # Auth.
    login_rate_limit: str = "30 per minute"  # login attempts per client IP
    login_account_rate_limit: str = "5 per minute;15 per 15 minutes"  # failures per account
    ingest_rate_limit: str = "100 per second"
    session_days: int = 14
    # Redis client.
    redis_max_connections: int = 50
    # Operations.
    trusted_proxies: int = 0  # proxies in front (Fly: 1) whose X-Forwarded-For/-Proto to trust
    debug_stats: bool = False  # /api/debug/stats (greenlets, listeners): tests and ops only

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Setting name -> environment variable.
ENV_NAMES: dict[str, str] = {
    "env": "SLUICE_ENV",
    "redis_url": "REDIS_URL",
    "secret_key": "SECRET_KEY",
    "heartbeat_seconds": "SLUICE_HEARTBEAT_SECONDS",
    "stream_maxlen": "SLUICE_STREAM_MAXLEN",
    "stream_max_bytes": "SLUICE_STREAM_MAX_BYTES",
    "stream_max_seconds": "SLUICE_STREAM_MAX_SECONDS",
    "retry_ms": "SLUICE_RETRY_MS",
    "listener_buffer_bytes": "SLUICE_LISTENER_BUFFER_BYTES",
    "catchup_batch": "SLUICE_CATCHUP_BATCH",
    "read_block_ms": "SLUICE_READ_BLOCK_MS",
    "max_streams_per_connection": "SLUICE_MAX_STREAMS_PER_CONNECTION",
    "stream_open_concurrency": "SLUICE_STREAM_OPEN_CONCURRENCY",
    "max_body_bytes": "SLUICE_MAX_BODY_BYTES",
    "body_read_seconds": "SLUICE_BODY_READ_SECONDS",
    "max_batch_events": "SLUICE_MAX_BATCH_EVENTS",
    "max_extensions_bytes": "SLUICE_MAX_EXTENSIONS_BYTES",
    "dedupe_ttl_seconds": "SLUICE_DEDUPE_TTL_SECONDS",
    "dedupe_max": "SLUICE_DEDUPE_MAX",
    "login_rate_limit": "SLUICE_LOGIN_RATE_LIMIT",
    "login_account_rate_limit": "SLUICE_LOGIN_ACCOUNT_RATE_LIMIT",
    "ingest_rate_limit": "SLUICE_INGEST_RATE_LIMIT",
    "session_days": "SLUICE_SESSION_DAYS",
    "redis_max_connections": "SLUICE_REDIS_MAX_CONNECTIONS",
    "debug_stats": "SLUICE_DEBUG_STATS",
    "trusted_proxies": "SLUICE_TRUSTED_PROXIES",
}


def load_settings(
    environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Read settings from the environment (and test overrides), validating each."""
    env = os.environ if environ is None else environ
    mode = (env.get("SLUICE_ENV") or "development").strip().lower()
    if mode not in ("development", "production"):
        raise ConfigError(f"SLUICE_ENV must be 'development' or 'production', got {mode!r}")
    values: dict[str, Any] = {
        "env": mode,
        "redis_url": env.get("REDIS_URL") or None,
        "secret_key": env.get("SECRET_KEY") or None,
        "heartbeat_seconds": _float(env, "SLUICE_HEARTBEAT_SECONDS", 15.0, 0.05),
        "stream_maxlen": _int(env, "SLUICE_STREAM_MAXLEN", 10_000, 1),
        "stream_max_bytes": _int(env, "SLUICE_STREAM_MAX_BYTES", 33_554_432, 65_536),
        "stream_max_seconds": _float(env, "SLUICE_STREAM_MAX_SECONDS", 0.0),
        "retry_ms": _int(env, "SLUICE_RETRY_MS", 2_000, 0),
        "listener_buffer_bytes": _int(env, "SLUICE_LISTENER_BUFFER_BYTES", 4_194_304, 1024),
        "catchup_batch": _int(env, "SLUICE_CATCHUP_BATCH", 500, 1),
        "read_block_ms": _int(env, "SLUICE_READ_BLOCK_MS", 5_000, 1),
        "max_streams_per_connection": _int(env, "SLUICE_MAX_STREAMS_PER_CONNECTION", 10_000, 1),
        "stream_open_concurrency": _int(env, "SLUICE_STREAM_OPEN_CONCURRENCY", 32, 1),
        "max_body_bytes": _int(env, "SLUICE_MAX_BODY_BYTES", 1_048_576, 1),
        "body_read_seconds": _float(env, "SLUICE_BODY_READ_SECONDS", 10.0, 0.1),
        "max_batch_events": _int(env, "SLUICE_MAX_BATCH_EVENTS", 1_000, 1),
        "max_extensions_bytes": _int(env, "SLUICE_MAX_EXTENSIONS_BYTES", 8_192, 0),
        "dedupe_ttl_seconds": _int(env, "SLUICE_DEDUPE_TTL_SECONDS", 86_400, 1),
        "dedupe_max": _int(env, "SLUICE_DEDUPE_MAX", 20_000, 1),
        "login_rate_limit": env.get("SLUICE_LOGIN_RATE_LIMIT") or "30 per minute",
        "login_account_rate_limit": env.get("SLUICE_LOGIN_ACCOUNT_RATE_LIMIT")
        or "5 per minute;15 per 15 minutes",
        "ingest_rate_limit": env.get("SLUICE_INGEST_RATE_LIMIT") or "100 per second",
        "session_days": _int(env, "SLUICE_SESSION_DAYS", 14, 1),
        "redis_max_connections": _int(env, "SLUICE_REDIS_MAX_CONNECTIONS", 50, 2),
        "debug_stats": (env.get("SLUICE_DEBUG_STATS") or "").lower() in ("1", "true", "yes"),
        "trusted_proxies": _int(env, "SLUICE_TRUSTED_PROXIES", 0, 0),
    }
    if overrides:
        known = {f.name for f in fields(Settings)}
        for key, value in overrides.items():
            if key not in known:
                raise ConfigError(f"unknown setting {key!r}")
            values[key] = value
    settings = Settings(**values)
    if settings.dedupe_max < settings.max_batch_events:
        raise ConfigError(
            f"SLUICE_DEDUPE_MAX ({settings.dedupe_max}) must be at least SLUICE_MAX_BATCH_EVENTS "
            f"({settings.max_batch_events}): a retried batch must be recognised whole"
        )
    if settings.is_production:
        if not settings.secret_key:
            raise ConfigError(
                "SECRET_KEY is required when SLUICE_ENV=production "
                '(generate one with: python -c "import secrets; print(secrets.token_hex(32))")'
            )
        if not settings.redis_url:
            raise ConfigError("REDIS_URL is required when SLUICE_ENV=production")
    return settings
