"""Connections (one monitored job system each) and their API keys in Redis."""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

from ..contract import FRAMEWORKS, MAX_CONNECTION_NAME
from ..errors import Conflict, Invalid, NotFound
from ..timefmt import iso_from_ms
from .client import Redis, text, transaction
from .commands import purge as purge_commands
from .events import close_stream
from .jobmetrics import forget_connection
from .jobs import purge as purge_index
from .keys import Keys
from .users import (
    API_KEY_PREFIX,
    INGEST_KEY_ID,
    READ_SCOPE,
    WRITE_SCOPE,
    grant_value,
    hash_api_key,
    new_api_key,
)

MAX_CONNECTIONS_PER_USER = 100
DEFAULT_FRAMEWORK = "celery"
#: API keys one connection may hold: its ingest key and up to 19 read keys.
MAX_KEYS_PER_CONNECTION = 20
#: Scopes `POST /api/connections/<id>/keys` creates. A connection has exactly one
#: write key, its ingest key, which is rotated rather than added to.
NEW_KEY_SCOPES = (READ_SCOPE,)
#: Characters of a key shown in listings: `sk_live_` and 4 of its 43 random ones.
KEY_PREFIX_CHARS = len(API_KEY_PREFIX) + 4
#: Longest key id looked up (ours are UUIDs); anything longer is simply not found.
MAX_KEY_ID = 64
#: Seconds the key lock lives at most (if its holder dies, it frees itself).
KEY_LOCK_SECONDS = 10

_UNLOCK = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


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
        "keyPrefix": api_key[:KEY_PREFIX_CHARS],
        "keyCreatedAt": str(now_ms),
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


@contextmanager
def _keys_locked(r: Redis, connection_id: str) -> Iterator[None]:
    """Hold the connection's key lock: changes to its keys (rotate, add, revoke,
    delete the connection) happen one at a time, on one node or a cluster (where
    `transaction` is not atomic). A change already under way: 409, retry."""
    token = secrets.token_hex(16)
    if not r.set(Keys.key_lock(connection_id), token, nx=True, ex=KEY_LOCK_SECONDS):
        raise Conflict("The connection's keys are being changed; retry", retry_after=1)
    try:
        yield
    finally:
        r.eval(_UNLOCK, 1, Keys.key_lock(connection_id), token)


def rotate_api_key(r: Redis, connection_id: str, owner_id: str | None = None) -> str:
    """A new ingest key for the connection; the old one stops working at once (no
    grace period). The connection id, its stream, job index and read keys stay.
    `owner_id`: `NotFound` unless the connection is theirs (None: trusted callers)."""
    with _keys_locked(r, connection_id):
        if owner_id is None:
            fields = cast(dict[bytes, bytes], r.hgetall(Keys.connection(connection_id)))
            if not fields:
                raise NotFound("Connection not found")
        else:
            fields = owned_connection(r, owner_id, connection_id)
        api_key = new_api_key()
        new_hash = hash_api_key(api_key)
        # Order (one MULTI on one node; on a cluster these run one by one, so a
        # failure half-way leaves a prefix of them done): the old key's lookup
        # goes first, so it can never outlive the rotation; the connection then
        # records the new hash; the new key's lookup comes last, so it works only
        # once the connection names it. Every prefix is safe: at worst the
        # connection has no working key (an error was returned; rotating again
        # mends it), never a second live key that nothing records and so nothing
        # could revoke (which writing the new key first could leave). The key
        # lock keeps two rotations from interleaving.
        pipe = transaction(r)
        old_hash = fields.get(b"keyHash")
        if old_hash:
            pipe.delete(Keys.api_key(old_hash.decode()))
        pipe.hset(
            Keys.connection(connection_id),
            mapping={
                "keyHash": new_hash,
                "keyPrefix": api_key[:KEY_PREFIX_CHARS],
                "keyCreatedAt": str(int(time.time() * 1000)),
            },
        )
        pipe.set(Keys.api_key(new_hash), grant_value(connection_id))
        pipe.execute()
    return api_key


def validate_new_key(body: dict[str, Any]) -> str:
    """The scope of a new key from its request body, or `Invalid` naming what is wrong."""
    details: dict[str, str] = {}
    scope = body.get("scope")
    if scope == WRITE_SCOPE:
        details["scope"] = (
            "only read keys can be added; the connection's one write key is rotated "
            "(POST /api/connections/{id}/rotate-key)"
        )
    elif scope not in NEW_KEY_SCOPES:
        details["scope"] = "required: " + ", ".join(f'"{s}"' for s in NEW_KEY_SCOPES)
    unknown = sorted(k for k in body if k != "scope")
    if unknown:
        details[unknown[0][:100]] = "unknown field"
    if details:
        raise Invalid("Invalid key", details)
    assert isinstance(scope, str)
    return scope


def create_key(r: Redis, owner_id: str, connection_id: str, body: dict[str, Any]) -> dict[str, str]:
    """A new read key for the owner's connection: {"id", "apiKey", "scope",
    "prefix", "createdAt"}; the secret is returned only here (stored hashed)."""
    scope = validate_new_key(body)
    with _keys_locked(r, connection_id):
        owned_connection(r, owner_id, connection_id)
        if r.hlen(Keys.connection_keys(connection_id)) + 1 >= MAX_KEYS_PER_CONNECTION:
            raise Conflict(
                f"A connection may have at most {MAX_KEYS_PER_CONNECTION} API keys "
                "(its ingest key included); revoke one first"
            )
        key_id = str(uuid.uuid4())
        api_key = new_api_key()
        now_ms = int(time.time() * 1000)
        record: dict[str, Any] = {
            "scope": scope,
            "createdAt": now_ms,
            "prefix": api_key[:KEY_PREFIX_CHARS],
            "hash": hash_api_key(api_key),
        }
        pipe = transaction(r)  # the record first, the working lookup last
        pipe.hset(Keys.connection_keys(connection_id), key_id, json.dumps(record))
        pipe.set(Keys.api_key(record["hash"]), grant_value(connection_id, scope, key_id))
        pipe.execute()
    return {
        "id": key_id,
        "apiKey": api_key,
        "scope": scope,
        "prefix": record["prefix"],
        "createdAt": iso_from_ms(now_ms),
    }


def _key_public(key_id: str, record: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": key_id,
        "scope": record["scope"],
        "prefix": record["prefix"],
        "createdAt": iso_from_ms(int(record["createdAt"])),
    }


def list_keys(r: Redis, owner_id: str, connection_id: str) -> list[dict[str, Any]]:
    """The connection's keys, never their secrets or hashes: its ingest key
    (`id` "ingest", scope "write") first, then its read keys, oldest first."""
    fields = owned_connection(r, owner_id, connection_id)
    prefix = fields.get(b"keyPrefix")
    created = fields.get(b"keyCreatedAt") or fields[b"createdAt"]
    ingest = {
        "id": INGEST_KEY_ID,
        "scope": WRITE_SCOPE,
        # None for a key made before prefixes were kept (rotating it sets one).
        "prefix": prefix.decode() if prefix else None,
        "createdAt": iso_from_ms(int(created)),
    }
    raw = cast(dict[bytes, bytes], r.hgetall(Keys.connection_keys(connection_id)))
    others = sorted(
        (_key_public(text(k), json.loads(v)) for k, v in raw.items()),
        key=lambda key: (key["createdAt"], key["id"]),
    )
    return [ingest, *others]


def delete_key(r: Redis, owner_id: str, connection_id: str, key_id: str) -> None:
    """Revoke one read key: it stops working at once. The ingest key is rotated,
    never deleted (409)."""
    with _keys_locked(r, connection_id):
        owned_connection(r, owner_id, connection_id)
        if key_id == INGEST_KEY_ID:
            raise Conflict(
                "The ingest key cannot be deleted; rotate it "
                "(POST /api/connections/{id}/rotate-key)"
            )
        raw = (
            r.hget(Keys.connection_keys(connection_id), key_id)
            if len(key_id) <= MAX_KEY_ID
            else None
        )
        if raw is None:
            raise NotFound("Key not found")
        pipe = transaction(r)  # the working lookup first, then the record
        pipe.delete(Keys.api_key(json.loads(raw)["hash"]))
        pipe.hdel(Keys.connection_keys(connection_id), key_id)
        pipe.execute()


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
    """Delete a connection: its keys (ingest and read) stop working at once and its
    open streams end (a closing entry is appended, which every reader on every
    server sees)."""
    with _keys_locked(r, connection_id):
        fields = owned_connection(r, owner_id, connection_id)
        extra = cast(dict[bytes, bytes], r.hgetall(Keys.connection_keys(connection_id)))
        pipe = transaction(r)  # the keys first: they stop working before anything else goes
        pipe.delete(Keys.api_key(fields[b"keyHash"].decode()))
        for record in extra.values():
            pipe.delete(Keys.api_key(json.loads(record)["hash"]))
        pipe.delete(Keys.connection_keys(connection_id))
        pipe.delete(Keys.connection(connection_id))
        pipe.zrem(Keys.user_connections(owner_id), connection_id)
        close_stream(pipe, connection_id)
        forget_connection(pipe, connection_id)
        pipe.execute()
    purge_index(r, connection_id)
    purge_commands(r, connection_id)
