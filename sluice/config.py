"""Every setting, read from the environment in one place.

Each limit the service enforces is a named setting here with a sane default, so
that an operator can find and change it without reading the code. A setting is
declared once, as a field of `Settings`: its environment variable, default,
minimum (or allowed values) and a one-line description all sit on that field, and
`load_settings` reads every field the same way. `describe()` and
`settings_table_markdown()` list the same declarations for the docs.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Mapping
from dataclasses import Field, asdict, dataclass, field, fields
from typing import Any, TypeVar

_T = TypeVar("_T")

#: Values of a bool setting that mean "on" (compared lower-cased); anything else is off.
TRUE_VALUES = ("1", "true", "yes")

#: Values SLUICE_ENV may take.
MODES = ("development", "production")

#: Values SLUICE_LOG_FORMAT may take.
LOG_FORMATS = ("text", "json")


class ConfigError(RuntimeError):
    """A setting is missing or malformed; the service refuses to start."""


def setting(
    env: str,
    default: _T,
    *,
    minimum: float | None = None,
    choices: tuple[str, ...] | None = None,
    doc: str,
) -> _T:
    """Declare one setting: a dataclass field carrying its env var, bounds and doc.

    `minimum` applies to int and float settings; `choices` to str settings, whose
    value is then stripped and lower-cased before it is checked.
    """
    metadata = {"env": env, "min": minimum, "choices": choices, "doc": doc}
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Settings:
    """The service's configuration: one field per setting, each naming its env var."""

    env: str = setting(
        "SLUICE_ENV",
        "development",
        choices=MODES,
        doc="`production` requires `SECRET_KEY` and `REDIS_URL`, and marks cookies `Secure`.",
    )
    redis_url: str | None = setting(
        "REDIS_URL",
        None,
        doc="Redis >= 7 (or Valkey). Unset outside production: an embedded Valkey server is started.",
    )
    secret_key: str | None = setting(
        "SECRET_KEY",
        None,
        doc="Signs session cookies. Required in production; unset in development: "
        "a random key, kept in Redis.",
    )
    # The stream.
    heartbeat_seconds: float = setting(
        "SLUICE_HEARTBEAT_SECONDS",
        15.0,
        minimum=0.05,
        doc="No client waits longer than this without bytes.",
    )
    stream_maxlen: int = setting(
        "SLUICE_STREAM_MAXLEN",
        10_000,
        minimum=1,
        doc="Events retained per connection.",
    )
    stream_max_bytes: int = setting(
        "SLUICE_STREAM_MAX_BYTES",
        33_554_432,
        minimum=65_536,
        doc="Bytes of events retained per connection (oldest trimmed first).",
    )
    stream_max_seconds: float = setting(
        "SLUICE_STREAM_MAX_SECONDS",
        0.0,
        minimum=0.0,
        doc="Optional lifetime cap of one stream response (0 = none); the client resumes.",
    )
    retry_ms: int = setting(
        "SLUICE_RETRY_MS",
        2_000,
        minimum=0,
        doc="The `retry:` hint sent first on every stream.",
    )
    listener_buffer_bytes: int = setting(
        "SLUICE_LISTENER_BUFFER_BYTES",
        4_194_304,
        minimum=1024,
        doc="Bytes that may pile up for a client whose write is blocked before it is "
        "cut off (it resumes).",
    )
    catchup_batch: int = setting(
        "SLUICE_CATCHUP_BATCH",
        500,
        minimum=1,
        doc="Entries per history read when a client resumes.",
    )
    read_block_ms: int = setting(
        "SLUICE_READ_BLOCK_MS",
        5_000,
        minimum=1,
        doc="How often every watched stream is read without a notification (the safety net).",
    )
    max_streams_per_connection: int = setting(
        "SLUICE_MAX_STREAMS_PER_CONNECTION",
        10_000,
        minimum=1,
        doc="Open streams per connection per worker (429 past it).",
    )
    stream_open_concurrency: int = setting(
        "SLUICE_STREAM_OPEN_CONCURRENCY",
        32,
        minimum=1,
        doc="Stream opens doing their Redis work at once per worker; a reconnect burst "
        "queues instead of exhausting the pool.",
    )
    # Ingest.
    max_body_bytes: int = setting(
        "SLUICE_MAX_BODY_BYTES",
        1_048_576,
        minimum=1,
        doc="Request body limit (413).",
    )
    body_read_seconds: float = setting(
        "SLUICE_BODY_READ_SECONDS",
        10.0,
        minimum=0.1,
        doc="A request body must arrive within this (408).",
    )
    max_batch_events: int = setting(
        "SLUICE_MAX_BATCH_EVENTS",
        1_000,
        minimum=1,
        doc="Events per ingest batch (413).",
    )
    max_extensions_bytes: int = setting(
        "SLUICE_MAX_EXTENSIONS_BYTES",
        8_192,
        minimum=0,
        doc="JSON size of one payload's `extensions` (400).",
    )
    job_index_max_bytes: int = setting(
        "SLUICE_JOB_INDEX_MAX_BYTES",
        1_073_741_824,
        minimum=1_048_576,
        doc="Bytes of job data the index keeps per connection (as counted at ingest; Redis "
        "uses up to about three times that); past it the least recently updated jobs go first.",
    )
    dedupe_ttl_seconds: int = setting(
        "SLUICE_DEDUPE_TTL_SECONDS",
        86_400,
        minimum=1,
        doc="How long a producer event `id` is remembered for de-duplication.",
    )
    job_retention_hours: float = setting(
        "SLUICE_JOB_RETENTION_HOURS",
        168.0,
        minimum=0.001,
        doc="Jobs in the index (history, search, detail) are kept this long after their last event.",
    )
    job_retention_max: int = setting(
        "SLUICE_JOB_RETENTION_MAX",
        1_000_000,
        minimum=1,
        doc="Jobs kept in the index per connection; the least recently updated go first.",
    )
    worker_expiry_seconds: float = setting(
        "SLUICE_WORKER_EXPIRY_SECONDS",
        30.0,
        minimum=1.0,
        doc="A worker whose last event (heartbeat or state change) is older than "
        "this counts as offline.",
    )
    dedupe_max: int = setting(
        "SLUICE_DEDUPE_MAX",
        20_000,
        minimum=1,
        doc="Producer event ids remembered per connection (the newest); at least "
        "SLUICE_MAX_BATCH_EVENTS.",
    )
    # Auth.
    login_rate_limit: str = setting(
        "SLUICE_LOGIN_RATE_LIMIT",
        "30 per minute",
        doc="Login attempts per client IP, whatever the account (429 + `Retry-After`).",
    )
    login_account_rate_limit: str = setting(
        "SLUICE_LOGIN_ACCOUNT_RATE_LIMIT",
        "5 per minute;15 per 15 minutes",
        doc="*Failed* logins per account, from any IP: a stepped backoff; right "
        "passwords do not count.",
    )
    ingest_rate_limit: str = setting(
        "SLUICE_INGEST_RATE_LIMIT",
        "1000 per second",
        doc="Ingest requests per API key, shared by every producer process of a deployment "
        "(batching producers post at most about 5 per second each, plus one per 100 events "
        "of a burst; docs/configuration.md has the arithmetic).",
    )
    actions_rate_limit: str = setting(
        "SLUICE_ACTIONS_RATE_LIMIT",
        "10 per second",
        doc="Operator actions (`POST …/actions`) per connection, from its owner's session "
        "(429 + `Retry-After`).",
    )
    session_days: int = setting(
        "SLUICE_SESSION_DAYS",
        14,
        minimum=1,
        doc="Session lifetime.",
    )
    # Redis client.
    redis_max_connections: int = setting(
        "SLUICE_REDIS_MAX_CONNECTIONS",
        50,
        minimum=2,
        doc="Command pool size per worker (callers wait for a free one).",
    )
    redis_cluster: str = setting(
        "SLUICE_REDIS_CLUSTER",
        "auto",
        choices=("auto", "yes", "no"),
        doc="Whether `REDIS_URL` names a node of a Redis Cluster: `auto` asks it "
        "(`INFO cluster`) at start; `yes` for a cluster that may be down when a process starts.",
    )
    # Operations.
    trusted_proxies: int = setting(
        "SLUICE_TRUSTED_PROXIES",
        0,
        minimum=0,
        doc="Proxies in front whose `X-Forwarded-For`/`-Proto` are trusted for the "
        "client IP (`1` on Fly).",
    )
    metrics_token: str | None = setting(
        "SLUICE_METRICS_TOKEN",
        None,
        doc="When set, `GET /metrics` answers only `Authorization: Bearer <this token>` "
        "(404 otherwise). Unset: open in development, 404 in production.",
    )
    metrics_max_labels: int = setting(
        "SLUICE_METRICS_MAX_LABELS",
        50,
        minimum=1,
        doc="Queue names, and task names, that get their own label in a connection's job "
        "metrics: the first this many seen, for good; the rest are `other`.",
    )
    metrics_max_connections: int = setting(
        "SLUICE_METRICS_MAX_CONNECTIONS",
        1_000,
        minimum=1,
        doc="Connections with job series of their own per worker process (the rest are "
        "`other`), and the most recently active whose queue and worker gauges a scrape reads.",
    )
    read_only: bool = setting(
        "SLUICE_READ_ONLY",
        False,
        doc="A read-only instance: ingest, actions and every change to connections and "
        "their keys get 403; login, pages, streams and the job API keep working.",
    )
    debug_stats: bool = setting(
        "SLUICE_DEBUG_STATS",
        False,
        doc="Enables `GET /api/debug/stats` (greenlets, listeners) for tests and operators.",
    )
    log_format: str = setting(
        "SLUICE_LOG_FORMAT",
        "text",
        choices=LOG_FORMATS,
        doc="`json`: one JSON object per line (the app, gunicorn's error and access logs), "
        "with a request id; `text`: human-readable.",
    )

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------
# Reading the environment.


def _number(
    kind: type[int] | type[float], name: str, raw: str, minimum: float | None
) -> int | float:
    try:
        value = kind(raw)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ConfigError(f"{name} must be {what}, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be >= {kind(minimum)}, got {value}")
    return value


def _choice(name: str, raw: str, choices: tuple[str, ...]) -> str:
    value = raw.strip().lower()
    if value not in choices:
        allowed = " or ".join(repr(c) for c in choices)
        raise ConfigError(f"{name} must be {allowed}, got {value!r}")
    return value


def _parse(f: Field[Any], kind: Any, env: Mapping[str, str]) -> Any:
    """One setting's value from `env`, by the field's declared type."""
    name: str = f.metadata["env"]
    raw = env.get(name)
    if kind is bool:
        return (raw or "").lower() in TRUE_VALUES
    if kind in (int, float):
        if raw is None or raw.strip() == "":
            return f.default
        return _number(kind, name, raw, f.metadata["min"])
    if kind is str:
        if not raw:
            return f.default
        choices = f.metadata["choices"]
        return _choice(name, raw, choices) if choices else raw
    if kind == str | None:
        return raw or None
    raise TypeError(f"setting {f.name}: unsupported type {kind!r}")  # a declaration bug


def _types() -> dict[str, Any]:
    # `from __future__ import annotations` leaves field types as strings; resolve them.
    return typing.get_type_hints(Settings)


def _check_redis_url(mode: str, redis_url: str | None) -> None:
    # Outside production an unset REDIS_URL means an embedded server.
    if mode == "production" and not redis_url:
        raise ConfigError("REDIS_URL is required when SLUICE_ENV=production")


def require_redis_url_in_production(env: Mapping[str, str] | None = None) -> None:
    """The one production REDIS_URL rule: SLUICE_ENV=production needs REDIS_URL.

    For callers that run before the settings are loaded (gunicorn.conf.py, cli.py).
    SLUICE_ENV and REDIS_URL are read exactly as `load_settings` reads them (default
    `os.environ`). Raises ConfigError when the rule is broken or SLUICE_ENV is malformed.
    """
    env = os.environ if env is None else env
    types = _types()
    read = {
        f.name: _parse(f, types[f.name], env)
        for f in fields(Settings)
        if f.name in ("env", "redis_url")
    }
    _check_redis_url(read["env"], read["redis_url"])


def read_setting(name: str, env: Mapping[str, str] | None = None) -> Any:
    """One setting (by field name), read and checked as `load_settings` reads it, without
    the cross-setting rules: for gunicorn's logger, made before the settings are loaded.
    Raises ConfigError when it is malformed, KeyError for an unknown name."""
    env = os.environ if env is None else env
    declared = {f.name: f for f in fields(Settings)}
    return _parse(declared[name], _types()[name], env)


def load_settings(
    environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Read settings from the environment (and test overrides), validating each.

    `overrides` maps field names to values, which replace what the environment
    says (unchecked against minimums); the cross-setting rules apply after them.
    """
    env = os.environ if environ is None else environ
    types = _types()
    values: dict[str, Any] = {f.name: _parse(f, types[f.name], env) for f in fields(Settings)}
    if overrides:
        for key, value in overrides.items():
            if key not in values:
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
        _check_redis_url(settings.env, settings.redis_url)
    return settings


# ---------------------------------------------------------------------------
# Listing the settings (for the docs).


@dataclass(frozen=True)
class SettingInfo:
    """One setting as declared: for docs and checks, not for reading values."""

    name: str  # the Settings field
    env: str  # the environment variable
    type: str  # "int", "float", "str", "bool" or "str | None"
    default: Any
    minimum: float | None
    choices: tuple[str, ...] | None
    doc: str


def _type_name(kind: Any) -> str:
    return kind.__name__ if isinstance(kind, type) else str(kind)


def describe() -> list[SettingInfo]:
    """Every setting, in declaration order."""
    types = _types()
    return [
        SettingInfo(
            name=f.name,
            env=f.metadata["env"],
            type=_type_name(types[f.name]),
            default=f.default,
            minimum=f.metadata["min"],
            choices=f.metadata["choices"],
            doc=f.metadata["doc"],
        )
        for f in fields(Settings)
    ]


def _default_text(info: SettingInfo) -> str:
    if info.default is None:
        return "unset"
    if isinstance(info.default, bool):
        return "on" if info.default else "off"
    if isinstance(info.default, float) and info.default.is_integer():
        return f"`{int(info.default)}`"
    return f"`{info.default}`"


def settings_table_markdown() -> str:
    """The settings as a Markdown table: env var | default | meaning."""
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for info in describe():
        meaning = info.doc.replace("|", "\\|")
        rows.append(f"| `{info.env}` | {_default_text(info)} | {meaning} |")
    return "\n".join(rows) + "\n"
