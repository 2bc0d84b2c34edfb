"""Settings, pure: load_settings over plain dicts (no subprocess, no Redis, no app)."""

from __future__ import annotations

import dataclasses
import re

import pytest

from sluice.config import (
    ConfigError,
    Settings,
    describe,
    load_settings,
    read_setting,
    require_redis_url_in_production,
    settings_table_markdown,
)
from tests.conftest import ROOT

PRODUCTION = {"SLUICE_ENV": "production", "SECRET_KEY": "s" * 64, "REDIS_URL": "redis://r:6379/0"}

#: The documented contract: env var -> (default, minimum). Changing one is deliberate.
EXPECTED = {
    "SLUICE_ENV": ("development", None),
    "REDIS_URL": (None, None),
    "SECRET_KEY": (None, None),
    "SLUICE_HEARTBEAT_SECONDS": (15.0, 0.05),
    "SLUICE_STREAM_MAXLEN": (10_000, 1),
    "SLUICE_STREAM_MAX_BYTES": (33_554_432, 65_536),
    "SLUICE_STREAM_MAX_SECONDS": (0.0, 0.0),
    "SLUICE_RETRY_MS": (2_000, 0),
    "SLUICE_LISTENER_BUFFER_BYTES": (4_194_304, 1024),
    "SLUICE_CATCHUP_BATCH": (500, 1),
    "SLUICE_READ_BLOCK_MS": (5_000, 1),
    "SLUICE_MAX_STREAMS_PER_CONNECTION": (10_000, 1),
    "SLUICE_STREAM_OPEN_CONCURRENCY": (32, 1),
    "SLUICE_MAX_BODY_BYTES": (1_048_576, 1),
    "SLUICE_BODY_READ_SECONDS": (10.0, 0.1),
    "SLUICE_MAX_BATCH_EVENTS": (1_000, 1),
    "SLUICE_MAX_EXTENSIONS_BYTES": (8_192, 0),
    "SLUICE_JOB_RETENTION_HOURS": (168.0, 0.001),
    "SLUICE_JOB_RETENTION_MAX": (1_000_000, 1),
    "SLUICE_JOB_INDEX_MAX_BYTES": (1_073_741_824, 1_048_576),
    "SLUICE_DEDUPE_TTL_SECONDS": (86_400, 1),
    "SLUICE_DEDUPE_MAX": (20_000, 1),
    "SLUICE_WORKER_EXPIRY_SECONDS": (30.0, 1.0),
    "SLUICE_LOGIN_RATE_LIMIT": ("30 per minute", None),
    "SLUICE_LOGIN_ACCOUNT_RATE_LIMIT": ("5 per minute;15 per 15 minutes", None),
    "SLUICE_INGEST_RATE_LIMIT": ("1000 per second", None),
    "SLUICE_ACTIONS_RATE_LIMIT": ("10 per second", None),
    "SLUICE_SESSION_DAYS": (14, 1),
    "SLUICE_REDIS_MAX_CONNECTIONS": (50, 2),
    "SLUICE_REDIS_CLUSTER": ("auto", None),
    "SLUICE_TRUSTED_PROXIES": (0, 0),
    "SLUICE_METRICS_TOKEN": (None, None),
    "SLUICE_METRICS_MAX_LABELS": (50, 1),
    "SLUICE_METRICS_MAX_CONNECTIONS": (1_000, 1),
    "SLUICE_READ_ONLY": (False, None),
    "SLUICE_DEBUG_STATS": (False, None),
    "SLUICE_LOG_FORMAT": ("text", None),
}

SETTINGS = describe()
BY_ENV = {info.env: info for info in SETTINGS}
NUMERIC = [info for info in SETTINGS if info.type in ("int", "float")]


def ids(infos):
    return [info.env for info in infos]


# -- Declarations ------------------------------------------------------------


def test_every_setting_is_declared_once_with_its_documented_default_and_minimum():
    assert [info.name for info in SETTINGS] == [f.name for f in dataclasses.fields(Settings)]
    assert len(BY_ENV) == len(SETTINGS), "two settings share an env var"
    assert {info.env: (info.default, info.minimum) for info in SETTINGS} == EXPECTED
    for info in SETTINGS:
        assert info.doc.strip(), f"{info.env} has no doc"
        assert type(info.default) is {"int": int, "float": float, "str": str, "bool": bool}.get(
            info.type, type(None)
        ), info
    assert all(info.minimum is not None for info in NUMERIC), "every number has a minimum"


def test_defaults_with_an_empty_environment():
    settings = load_settings({})
    assert settings == Settings()
    assert {info.env: getattr(settings, info.name) for info in SETTINGS} == {
        env: default for env, (default, _) in EXPECTED.items()
    }
    assert not settings.is_production
    assert settings.as_dict() == dataclasses.asdict(settings)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.stream_maxlen = 1  # type: ignore[misc]


def test_docs_document_every_setting_with_its_default():
    section = (ROOT / "docs" / "configuration.md").read_text()
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`"):
            for env in re.findall(r"`([A-Z_]+)`", cells[0]):
                rows[env] = cells[1]
    for info in SETTINGS:
        assert info.env in rows, f"docs/configuration.md lacks {info.env}"
        documented = rows[info.env]
        if info.default is None:
            assert "`" not in documented, (info.env, documented)
        elif isinstance(info.default, bool):
            assert documented == ("on" if info.default else "off"), (info.env, documented)
        else:
            number = info.default
            text = (
                str(int(number))
                if isinstance(number, float) and number.is_integer()
                else str(number)
            )
            assert documented.startswith(f"`{text}`"), (info.env, documented)


# -- Every env var is read ---------------------------------------------------


def other_value(info):
    """A valid non-default value for a setting, as (env text, parsed value)."""
    if info.type == "bool":
        return "1", True
    if info.type == "int":
        return str(info.default + 7), info.default + 7
    if info.type == "float":
        return str(info.default + 2.5), info.default + 2.5
    if info.choices:
        other = next(c for c in info.choices if c != info.default)
        return other, other
    return "7 per hour", "7 per hour"


@pytest.mark.parametrize("info", SETTINGS, ids=ids(SETTINGS))
def test_each_env_var_is_read(info):
    text, value = other_value(info)
    settings = load_settings({**PRODUCTION, info.env: text})
    assert getattr(settings, info.name) == value
    assert type(getattr(settings, info.name)) is type(value)


@pytest.mark.parametrize("info", NUMERIC, ids=ids(NUMERIC))
@pytest.mark.parametrize("blank", ["", "   "])
def test_a_blank_number_is_its_default(info, blank):
    assert getattr(load_settings({info.env: blank}), info.name) == info.default


def test_blank_strings_are_their_defaults():
    settings = load_settings(
        {"REDIS_URL": "", "SECRET_KEY": "", "SLUICE_ENV": "", "SLUICE_LOGIN_RATE_LIMIT": ""}
    )
    assert settings.redis_url is None and settings.secret_key is None
    assert settings.env == "development"
    assert settings.login_rate_limit == "30 per minute"


def test_ints_and_floats_keep_their_types():
    settings = load_settings({"SLUICE_HEARTBEAT_SECONDS": "2", "SLUICE_STREAM_MAXLEN": " 20 "})
    assert settings.heartbeat_seconds == 2.0 and type(settings.heartbeat_seconds) is float
    assert settings.stream_maxlen == 20 and type(settings.stream_maxlen) is int


# -- Minimums and malformed numbers -------------------------------------------


@pytest.mark.parametrize("info", NUMERIC, ids=ids(NUMERIC))
def test_each_minimum_is_enforced(info):
    minimum = info.minimum
    small_batches = {"SLUICE_MAX_BATCH_EVENTS": "1"}  # so SLUICE_DEDUPE_MAX may be 1
    assert getattr(load_settings({**small_batches, info.env: str(minimum)}), info.name) == minimum
    below = minimum - 1 if info.type == "int" else round(minimum - 0.01, 6)
    with pytest.raises(ConfigError) as raised:
        load_settings({info.env: str(below)})
    shown = int(minimum) if info.type == "int" else float(minimum)
    assert str(raised.value) == f"{info.env} must be >= {shown}, got {below}"


@pytest.mark.parametrize("info", NUMERIC, ids=ids(NUMERIC))
@pytest.mark.parametrize("raw", ["soon", "1 000", "0x10", "ten"])
def test_a_malformed_number_is_named(info, raw):
    what = "a whole number" if info.type == "int" else "a number"
    with pytest.raises(ConfigError) as raised:
        load_settings({info.env: raw})
    assert str(raised.value) == f"{info.env} must be {what}, got {raw!r}"


@pytest.mark.parametrize("raw", ["1.5", "1e3"])
def test_an_int_setting_refuses_a_fraction(raw):
    with pytest.raises(ConfigError, match=r"^SLUICE_STREAM_MAXLEN must be a whole number, got '"):
        load_settings({"SLUICE_STREAM_MAXLEN": raw})


@pytest.mark.parametrize(
    "name, value",
    [
        ("SLUICE_HEARTBEAT_SECONDS", "soon"),
        ("SLUICE_STREAM_MAXLEN", "0"),
        ("SLUICE_ENV", "staging"),
    ],
)
def test_malformed_setting_is_named(name, value):
    with pytest.raises(ConfigError) as raised:
        load_settings({name: value})
    assert name in str(raised.value)


# -- Bools and SLUICE_ENV --------------------------------------------------------


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", "True", "yes", "YES"])
def test_bool_on(raw):
    assert load_settings({"SLUICE_DEBUG_STATS": raw}).debug_stats is True


@pytest.mark.parametrize("raw", ["", "0", "false", "no", "off", "on", "2", " 1"])
def test_bool_off(raw):
    assert load_settings({"SLUICE_DEBUG_STATS": raw}).debug_stats is False


@pytest.mark.parametrize("raw", ["production", "PRODUCTION", " Production "])
def test_env_is_normalised(raw):
    settings = load_settings({**PRODUCTION, "SLUICE_ENV": raw})
    assert settings.env == "production" and settings.is_production


def test_env_must_be_development_or_production():
    with pytest.raises(ConfigError) as raised:
        load_settings({"SLUICE_ENV": " Staging"})
    assert str(raised.value) == "SLUICE_ENV must be 'development' or 'production', got 'staging'"


# -- Cross-setting rules -------------------------------------------------------


def test_dedupe_window_must_hold_a_whole_batch():
    """A retried batch must be recognised whole: the window cannot be smaller than a batch."""
    with pytest.raises(ConfigError, match="SLUICE_DEDUPE_MAX"):
        load_settings({"SLUICE_DEDUPE_MAX": "10", "SLUICE_MAX_BATCH_EVENTS": "11"})
    assert (
        load_settings({"SLUICE_DEDUPE_MAX": "10", "SLUICE_MAX_BATCH_EVENTS": "10"}).dedupe_max == 10
    )


def test_production_requires_secret_key():
    with pytest.raises(ConfigError) as raised:
        load_settings({"SLUICE_ENV": "production", "REDIS_URL": "redis://r:6379/0"})
    assert "SECRET_KEY is required" in str(raised.value)
    assert "secrets.token_hex(32)" in str(raised.value)


@pytest.mark.parametrize("redis_url", [None, ""])
def test_production_requires_redis_url(redis_url):
    env = {"SLUICE_ENV": "production", "SECRET_KEY": "x" * 64}
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    with pytest.raises(ConfigError) as raised:
        load_settings(env)
    assert str(raised.value) == "REDIS_URL is required when SLUICE_ENV=production"


def test_development_needs_neither_secret_key_nor_redis_url():
    settings = load_settings({"SLUICE_ENV": "development"})
    assert settings.secret_key is None and settings.redis_url is None


def test_production_with_both_loads():
    settings = load_settings(PRODUCTION)
    assert settings.is_production
    assert settings.secret_key == "s" * 64 and settings.redis_url == "redis://r:6379/0"


# -- The production REDIS_URL rule on its own -----------------------------------


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"SLUICE_ENV": "development"},
        {"SLUICE_ENV": "production", "REDIS_URL": "redis://r:6379/0"},
        {"SLUICE_ENV": " PRODUCTION ", "REDIS_URL": "redis://r:6379/0"},
    ],
)
def test_redis_url_rule_passes(env):
    require_redis_url_in_production(env)


@pytest.mark.parametrize(
    "env",
    [
        {"SLUICE_ENV": "production"},
        {"SLUICE_ENV": "production", "REDIS_URL": ""},
        {"SLUICE_ENV": " Production", "SECRET_KEY": "x"},
    ],
)
def test_redis_url_rule_refuses(env):
    with pytest.raises(ConfigError) as raised:
        require_redis_url_in_production(env)
    assert str(raised.value) == "REDIS_URL is required when SLUICE_ENV=production"


def test_redis_url_rule_checks_sluice_env():
    with pytest.raises(ConfigError, match="SLUICE_ENV must be"):
        require_redis_url_in_production({"SLUICE_ENV": "staging", "REDIS_URL": "redis://r"})


def test_redis_url_rule_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("SLUICE_ENV", "production")
    monkeypatch.delenv("REDIS_URL", raising=False)
    with pytest.raises(ConfigError, match="REDIS_URL is required"):
        require_redis_url_in_production()
    monkeypatch.setenv("REDIS_URL", "redis://r:6379/0")
    require_redis_url_in_production()


def test_load_settings_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("SLUICE_STREAM_MAXLEN", "123")
    assert load_settings().stream_maxlen == 123


# -- One setting on its own (gunicorn's logger) ---------------------------------


@pytest.mark.parametrize(
    "raw, value", [(None, "text"), ("", "text"), ("json", "json"), (" JSON ", "json")]
)
def test_read_setting_reads_one_setting_as_load_settings_does(raw, value):
    env = {} if raw is None else {"SLUICE_LOG_FORMAT": raw}
    assert read_setting("log_format", env) == value == load_settings(env).log_format


def test_read_setting_ignores_the_cross_setting_rules():
    assert read_setting("log_format", {"SLUICE_ENV": "production"}) == "text"
    with pytest.raises(ConfigError):
        load_settings({"SLUICE_ENV": "production"})


def test_read_setting_names_a_malformed_value():
    with pytest.raises(ConfigError) as raised:
        read_setting("log_format", {"SLUICE_LOG_FORMAT": "xml"})
    assert str(raised.value) == "SLUICE_LOG_FORMAT must be 'text' or 'json', got 'xml'"
    with pytest.raises(KeyError):
        read_setting("no_such_setting", {})


def test_read_setting_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("SLUICE_LOG_FORMAT", "json")
    assert read_setting("log_format") == "json"


# -- Overrides -------------------------------------------------------------------


def test_overrides_replace_what_the_environment_says():
    settings = load_settings({"SLUICE_STREAM_MAXLEN": "5"}, overrides={"stream_maxlen": 9})
    assert settings.stream_maxlen == 9


def test_an_unknown_override_is_refused():
    with pytest.raises(ConfigError) as raised:
        load_settings({}, overrides={"stream_max_len": 9})
    assert str(raised.value) == "unknown setting 'stream_max_len'"


def test_cross_setting_rules_apply_after_overrides():
    with pytest.raises(ConfigError, match="SLUICE_DEDUPE_MAX"):
        load_settings({}, overrides={"dedupe_max": 10, "max_batch_events": 11})
    with pytest.raises(ConfigError, match="REDIS_URL is required"):
        load_settings(PRODUCTION, overrides={"redis_url": None})
    production = {"env": "production", "secret_key": "k", "redis_url": "redis://r"}
    assert load_settings({}, overrides=production).is_production


# -- Docs ------------------------------------------------------------------------


def test_the_table_renders_every_setting_once():
    table = settings_table_markdown()
    lines = table.strip().splitlines()
    assert lines[:2] == ["| Variable | Default | Meaning |", "|---|---|---|"]
    assert len(lines) == 2 + len(SETTINGS)
    for line, info in zip(lines[2:], SETTINGS, strict=True):
        assert line.startswith(f"| `{info.env}` | "), line
        assert line.count(" | ") == 2 and line.endswith(f"{info.doc} |"), line
    rows = dict(line.split(" | ")[:2] for line in lines[2:])
    assert rows["| `SLUICE_STREAM_MAXLEN`"] == "`10000`"
    assert rows["| `SLUICE_HEARTBEAT_SECONDS`"] == "`15`"
    assert rows["| `SLUICE_DEBUG_STATS`"] == "off"
    assert rows["| `REDIS_URL`"] == "unset"
