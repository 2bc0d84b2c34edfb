"""`/api/connections`: list, create and delete the signed-in user's connections;
rotate a connection's ingest key; add, list and revoke its read keys."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from flask_login import current_user, login_required

from ...schema import parse_uuid
from ...store import connections
from ..extensions import state
from ..request import read_json_object, require_json_content_type
from .auth import require_writable

bp = Blueprint("connections", __name__, url_prefix="/api/connections")


@bp.get("")
@login_required
def list_connections() -> Response:
    return jsonify({"data": connections.list_connections(state().redis, current_user.id)})


@bp.post("")
@login_required
def create() -> tuple[Response, int]:
    require_json_content_type()
    require_writable()
    body = read_json_object()
    created = connections.create_connection(
        state().redis, current_user.id, body.get("name"), body.get("framework")
    )
    return jsonify(created), 201


@bp.delete("/<connection_id>")
@login_required
def delete(connection_id: str) -> tuple[str, int]:
    connection_id = parse_uuid(connection_id, "id")
    require_writable()
    connections.delete_connection(state().redis, current_user.id, connection_id)
    return "", 204


@bp.post("/<connection_id>/rotate-key")
@login_required
def rotate_key(connection_id: str) -> Response:
    require_json_content_type()
    connection_id = parse_uuid(connection_id, "id")
    require_writable()
    api_key = connections.rotate_api_key(state().redis, connection_id, current_user.id)
    return jsonify({"apiKey": api_key})


@bp.get("/<connection_id>/keys")
@login_required
def list_keys(connection_id: str) -> Response:
    connection_id = parse_uuid(connection_id, "id")
    return jsonify({"data": connections.list_keys(state().redis, current_user.id, connection_id)})


@bp.post("/<connection_id>/keys")
@login_required
def create_key(connection_id: str) -> tuple[Response, int]:
    require_json_content_type()
    connection_id = parse_uuid(connection_id, "id")
    require_writable()
    body = read_json_object()
    created = connections.create_key(state().redis, current_user.id, connection_id, body)
    return jsonify(created), 201


@bp.delete("/<connection_id>/keys/<key_id>")
@login_required
def delete_key(connection_id: str, key_id: str) -> tuple[str, int]:
    connection_id = parse_uuid(connection_id, "id")
    require_writable()
    connections.delete_key(state().redis, current_user.id, connection_id, key_id)
    return "", 204
