"""Connections (one monitored job system each) and their API keys in Redis."""

from __future__ import annotations

import time
import uuid
from typing import Any, cast

from ..contract import FRAMEWORKS, MAX_CONNECTION_NAME
from ..errors import Conflict, Invalid, NotFound
from ..timefmt import iso_from_ms
from .client import Redis, text, transaction
from .events import close_stream
from .jobmetrics import forget_connection
from .jobs import purge as purge_index
from .keys import Keys
from .users import hash_api_key, new_api_key

MAX_CONNECTIONS_PER_USER = 100
DEFAULT_FRAMEWORK = "celery"


def public(fields: dict[bytes, bytes]) -> dict[str, str]:
    """A stored connection as clients see it (never its key hash or owner)."""
    return {
        "id": text(fields[b"id"]),
        "name": fields[b"name"].decode(),
        "framework": fields[b"framework"].decode(),
        "createdAt": iso_from_ms(int(fields[b"createdAt"])),
    }


def validate_new_connection(name: Any, framework: Any) -> tuple[str, str]:
    """(name, framework) of a new connection, or `Invalid` naming what is wrong."""
    details = {}
    if not isinstance(name, str) or not name.strip() or len(name.strip()) > MAX_CONNECTION_NAME:
        details["name"] = f"required string of 1 to {MAX_CONNECTION_NAME} characters"
    if framework is None:
        framework = DEFAULT_FRAMEWORK
    if framework not in FRAMEWORKS:
        details["framework"] = "one of " + ", ".join(FRAMEWORKS)
    if details:
        raise Invalid("Invalid connection", details)
    assert isinstance(name, str) and isinstance(framework, str)
    return name.strip(), framework


def create_connection(
    r: Redis, owner_id: str, name: Any, framework: Any = DEFAULT_FRAMEWORK
) -> dict[str, str]:
    """Create a connection and its API key; the key is returned only here."""
    name, framework = validate_new_connection(name, framework)
    if r.zcard(Keys.user_connections(owner_id)) >= MAX_CONNECTIONS_PER_USER:
        raise Conflict(f"A user may have at most {MAX_CONNECTIONS_PER_USER} connections")
    connection_id = str(uuid.uuid4())
    api_key = new_api_key()
    now_ms = int(time.time() * 1000)
    fields: dict[str, str] = {
        "id": connection_id,
        "name": name,
        "framework": framework,
        "ownerId": owner_id,
        "createdAt": str(now_ms),
        "keyHash": hash_api_key(api_key),
    }
    # The key last: it works only once the connection exists.
    pipe = transaction(r)
    pipe.hset(Keys.connection(connection_id), mapping=cast(dict[Any, Any], fields))
    pipe.zadd(Keys.user_connections(owner_id), {connection_id: now_ms})
    pipe.set(Keys.api_key(fields["keyHash"]), connection_id)
    pipe.execute()
    created = public({k.encode(): v.encode() for k, v in fields.items()})
    return {**created, "apiKey": api_key}


def list_connections(r: Redis, owner_id: str) -> list[dict[str, str]]:
    """The owner's connections, oldest first."""
    ids = r.zrange(Keys.user_connections(owner_id), 0, -1)
    pipe = r.pipeline(transaction=False)
    for connection_id in ids:
        pipe.hgetall(Keys.connection(text(connection_id)))
    return [public(fields) for fields in pipe.execute() if fields]


def find_by_name(r: Redis, owner_id: str, name: str) -> str | None:
    """The id of the owner's connection called `name`, if any."""
    return next((c["id"] for c in list_connections(r, owner_id) if c["name"] == name), None)


def rotate_api_key(r: Redis, connection_id: str) -> str:
    """A new API key for the connection; the old one stops working at once."""
    old_hash = r.hget(Keys.connection(connection_id), "keyHash")
    if old_hash is None:
        raise NotFound("Connection not found")
    api_key = new_api_key()
    pipe = transaction(r)
    pipe.delete(Keys.api_key(text(old_hash)))
    pipe.set(Keys.api_key(hash_api_key(api_key)), connection_id)
    pipe.hset(Keys.connection(connection_id), "keyHash", hash_api_key(api_key))
    pipe.execute()
    return api_key


def owned_connection(r: Redis, owner_id: str, connection_id: str) -> dict[bytes, bytes]:
    """The connection if it exists and belongs to the owner; `NotFound` otherwise
    (never "forbidden", so that nobody learns which ids exist)."""
    fields = cast(dict[bytes, bytes], r.hgetall(Keys.connection(connection_id)))
    if not fields or fields.get(b"ownerId", b"").decode() != owner_id:
        raise NotFound("Connection not found")
    return fields


def connection_exists(r: Redis, connection_id: str) -> bool:
    return bool(r.exists(Keys.connection(connection_id)))


def delete_connection(r: Redis, owner_id: str, connection_id: str) -> None:
    """Delete a connection: its key stops working at once and its open streams end
    (a closing entry is appended, which every reader on every server sees)."""
    fields = owned_connection(r, owner_id, connection_id)
    pipe = transaction(r)  # the key first: it stops working before anything else goes
    pipe.delete(Keys.api_key(fields[b"keyHash"].decode()))
    pipe.delete(Keys.connection(connection_id))
    pipe.zrem(Keys.user_connections(owner_id), connection_id)
    close_stream(pipe, connection_id)
    forget_connection(pipe, connection_id)
    pipe.execute()
    purge_index(r, connection_id)
