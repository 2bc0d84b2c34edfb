"""`/api/connections`: list, create and delete the signed-in user's connections."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from flask_login import current_user, login_required

from ...schema import parse_uuid
from ...store import connections
from ..extensions import state
from ..request import read_json_object, require_json_content_type

bp = Blueprint("connections", __name__, url_prefix="/api/connections")


@bp.get("")
@login_required
def list_connections() -> Response:
    return jsonify({"data": connections.list_connections(state().redis, current_user.id)})


@bp.post("")
@login_required
def create() -> tuple[Response, int]:
    require_json_content_type()
    body = read_json_object()
    created = connections.create_connection(
        state().redis, current_user.id, body.get("name"), body.get("framework")
    )
    return jsonify(created), 201


@bp.delete("/<connection_id>")
@login_required
def delete(connection_id: str) -> tuple[str, int]:
    connection_id = parse_uuid(connection_id, "id")
    connections.delete_connection(state().redis, current_user.id, connection_id)
    return "", 204
