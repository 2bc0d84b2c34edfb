"""`GET /api/key` for producers: which connection (and scope) an API key has.

A key belongs to exactly one connection, so a producer given only Sluice's URL
and a key learns its connection id here, once, at start; a connection id it was
also given is checked against the key's. Network errors and 5xx/429 are retried
with backoff (a producer may start before Sluice does); 401 (an unknown,
revoked or rotated key), a read key (it cannot ingest) and a mismatching
connection id are refused at once with a message that says what to fix.

Standard library only (`http.client`), like the ingest sender.
"""

from __future__ import annotations

import http.client
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

log = logging.getLogger("sluice.client.keyinfo")

USER_AGENT = "sluice-keyinfo/1"


class KeyRefused(Exception):
    """The key cannot be used to ingest (or does not match); retrying will not help."""


class KeyLookupMissing(KeyRefused):
    """This Sluice has no `GET /api/key` (an older version: 404, 405 or 501)."""


class SluiceUnreachable(Exception):
    """Sluice could not be asked within the allowed time (network, 5xx, 429)."""


@dataclass(frozen=True)
class KeyInfo:
    connection_id: str
    name: str
    scope: str


def _get_key(url: str, api_key: str, timeout: float) -> tuple[int, bytes]:
    parts = urlsplit(url.rstrip("/"))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise KeyRefused(f"Sluice URL must be http(s)://host[:port]: {url!r}")
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(
            "GET",
            (parts.path or "") + "/api/key",
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": USER_AGENT},
        )
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _error_message(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return body[:200].decode("utf-8", "replace")


def key_info(
    url: str,
    api_key: str,
    *,
    timeout: float = 10.0,
    max_wait: float | None = None,
    backoff_initial: float = 0.5,
    backoff_max: float = 30.0,
    sleep: Callable[[float], object] = time.sleep,
) -> KeyInfo:
    """Ask `GET /api/key` what the key is, retrying network errors, 5xx and 429
    with backoff: for ever (`max_wait` None) or until the waits between tries
    would pass `max_wait` seconds (`SluiceUnreachable`; each try may also take
    up to `timeout`). A 401 or any other 4xx: `KeyRefused`."""
    waited = 0.0
    delay = backoff_initial
    while True:
        try:
            status, body = _get_key(url, api_key, timeout)
        except (OSError, http.client.HTTPException) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        else:
            if status == 200:
                try:
                    data = json.loads(body)
                    return KeyInfo(str(data["connectionId"]), str(data["name"]), str(data["scope"]))
                except (ValueError, KeyError, TypeError):
                    problem = f"an unexpected answer from GET /api/key: {body[:200]!r}"
            elif status == 401:
                raise KeyRefused(
                    f"Sluice at {url} refused the API key ({_error_message(body)}): it is "
                    "unknown, revoked, rotated or its connection was deleted; use the "
                    "connection's current ingest key"
                )
            elif status in (404, 405, 501):
                raise KeyLookupMissing(
                    f"Sluice at {url} has no GET /api/key (HTTP {status}): an older "
                    "version, or not Sluice; pass the connection id"
                )
            elif status == 429 or status >= 500:
                problem = f"HTTP {status}: {_error_message(body)}"
            else:
                raise KeyRefused(
                    f"Sluice at {url} answered {status} to GET /api/key "
                    f"({_error_message(body)}); is this the right URL and Sluice version?"
                )
        if max_wait is not None and waited + delay > max_wait:
            raise SluiceUnreachable(
                f"could not ask Sluice at {url} which connection the key belongs to "
                f"({problem}); gave up after {waited:.0f} s"
            )
        log.warning(
            "sluice: cannot reach %s to look up the API key (%s); retrying in %.1f s",
            url,
            problem,
            delay,
        )
        sleep(delay)
        waited += delay
        delay = min(backoff_max, delay * 2)


def resolve_connection(
    url: str,
    api_key: str,
    connection_id: str | None = None,
    **kwargs: object,
) -> KeyInfo:
    """The key's connection, for a producer that will ingest with it: `KeyRefused`
    for a read key, or when `connection_id` is given and is not the key's. A
    Sluice without `GET /api/key` (older) cannot check a given id: it is used as
    given (scope "unchecked"), with a warning."""
    try:
        info = key_info(url, api_key, **kwargs)  # type: ignore[arg-type]
    except KeyLookupMissing as exc:
        if connection_id is None:
            raise
        log.warning("sluice: %s; using connection %s as given, unchecked", exc, connection_id)
        return KeyInfo(connection_id, "", "unchecked")
    if info.scope != "write":
        raise KeyRefused(
            f"the API key is a {info.scope} key of connection {info.connection_id} "
            f"({info.name!r}): it cannot ingest; use the connection's ingest key"
        )
    if connection_id is not None and _canonical(connection_id) != info.connection_id:
        raise KeyRefused(
            f"connection id {connection_id!r} does not match the API key, which belongs to "
            f"connection {info.connection_id} ({info.name!r}); drop the connection id "
            "(the key is enough) or give the key of that connection"
        )
    return info


def _canonical(connection_id: str) -> str:
    try:
        return str(uuid.UUID(connection_id.strip()))
    except ValueError:
        return connection_id
