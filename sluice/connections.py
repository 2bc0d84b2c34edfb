"""Connections (monitored deployments) and their API keys."""

from __future__ import annotations

import json
import time
import uuid

import redis
from flask import Blueprint, Response, jsonify
from flask_login import current_user, login_required

from .auth import hash_api_key, new_api_key
from .errors import ApiError
from .events.sse import CLOSED_EVENT, encode_entry_fields
from .extensions import state
from .redis import Keys
from .timefmt import iso_from_ms
from .validation import parse_uuid, read_json_object, require_json_content_type

bp = Blueprint("connections", __name__, url_prefix="/api/connections")

FRAMEWORKS = ("celery", "bullmq", "sidekiq")
MAX_NAME = 200
MAX_CONNECTIONS_PER_USER = 100


def _public(fields: dict[bytes, bytes]) -> dict[str, str]:
    return {
        "id": fields[b"id"].decode(),
        "name": fields[b"name"].decode(),
        "framework": fields[b"framework"].decode(),
        "createdAt": iso_from_ms(int(fields[b"createdAt"])),
    }


def validate_new_connection(name: object, framework: object) -> tuple[str, str]:
    details = {}
    if not isinstance(name, str) or not name.strip() or len(name.strip()) > MAX_NAME:
        details["name"] = f"required string of 1 to {MAX_NAME} characters"
    if framework is None:
        framework = "celery"
    if framework not in FRAMEWORKS:
        details["framework"] = "one of " + ", ".join(FRAMEWORKS)
    if details:
        raise ApiError(400, "Invalid connection", details)
    return name.strip(), framework  # type: ignore[union-attr,return-value]


def create_connection(
    r: redis.Redis, owner_id: str, name: str, framework: str = "celery"
) -> dict[str, str]:
    """Create a connection and its API key; the key is returned only here."""
    name, framework = validate_new_connection(name, framework)
    if r.zcard(Keys.user_connections(owner_id)) >= MAX_CONNECTIONS_PER_USER:
        raise ApiError(409, f"A user may have at most {MAX_CONNECTIONS_PER_USER} connections")
    connection_id = str(uuid.uuid4())
    api_key = new_api_key()
    now_ms = int(time.time() * 1000)
    fields = {
        "id": connection_id,
        "name": name,
        "framework": framework,
        "ownerId": owner_id,
        "createdAt": str(now_ms),
        "keyHash": hash_api_key(api_key),
    }
    pipe = r.pipeline(transaction=True)
    pipe.hset(Keys.connection(connection_id), mapping=fields)
    pipe.set(Keys.api_key(fields["keyHash"]), connection_id)
    pipe.zadd(Keys.user_connections(owner_id), {connection_id: now_ms})
    pipe.execute()
    public = _public({k.encode(): v.encode() for k, v in fields.items()})
    return {**public, "apiKey": api_key}


def owned_connection(r: redis.Redis, owner_id: str, connection_id: str) -> dict[bytes, bytes]:
    """The connection if it exists and belongs to the owner; 404 otherwise (never 403,
    so that nobody learns which ids exist)."""
    fields = r.hgetall(Keys.connection(connection_id))
    if not fields or fields.get(b"ownerId", b"").decode() != owner_id:
        raise ApiError(404, "Connection not found")
    return fields


def connection_exists(r: redis.Redis, connection_id: str) -> bool:
    return bool(r.exists(Keys.connection(connection_id)))


def delete_connection(r: redis.Redis, owner_id: str, connection_id: str) -> None:
    """Delete a connection: its key stops working at once and its open streams end
    (a closing entry is appended, which every reader on every server sees)."""
    fields = owned_connection(r, owner_id, connection_id)
    stream = Keys.stream(connection_id)
    pipe = r.pipeline(transaction=True)
    pipe.delete(Keys.api_key(fields[b"keyHash"].decode()))
    pipe.delete(Keys.connection(connection_id))
    pipe.zrem(Keys.user_connections(owner_id), connection_id)
    data = json.dumps({"reason": "connection_deleted"}, separators=(",", ":"))
    pipe.xadd(stream, encode_entry_fields(CLOSED_EVENT, data))
    # Readers need a moment to see the closing entry; then the history goes.
    pipe.expire(stream, 60)
    pipe.delete(Keys.seen(connection_id), Keys.stream_meta(connection_id))
    pipe.execute()


@bp.get("")
@login_required
def list_connections() -> Response:
    r = state().redis
    ids = r.zrange(Keys.user_connections(current_user.id), 0, -1)
    pipe = r.pipeline(transaction=False)
    for connection_id in ids:
        pipe.hgetall(Keys.connection(connection_id.decode()))
    data = [_public(fields) for fields in pipe.execute() if fields]
    return jsonify({"data": data})


@bp.post("")
@login_required
def create() -> tuple[Response, int]:
    require_json_content_type()
    body = read_json_object()
    created = create_connection(
        state().redis, current_user.id, body.get("name"), body.get("framework")
    )
    return jsonify(created), 201


@bp.delete("/<connection_id>")
@login_required
def delete(connection_id: str) -> tuple[str, int]:
    connection_id = parse_uuid(connection_id, "id")
    delete_connection(state().redis, current_user.id, connection_id)
    return "", 204
