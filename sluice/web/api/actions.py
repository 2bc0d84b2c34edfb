"""Operator actions: `POST /api/connections/<id>/jobs/<ref>/actions`,
`POST …/jobs/actions` (bulk retry), `POST …/workers/<ref>/actions`, and the
command stream the agent reads, `GET /api/connections/<id>/commands`.

Acting needs the connection owner's session (no API key of any scope, not in
read-only mode); reading commands needs the connection's write key. Each
action puts one command on the connection's command stream (`store.commands`),
or gives back the pending one's id for the same action on the same target
(a double click). The agent answers with a `command:result` event through
ingest. `docs/api.md#operator-actions` is the contract.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from flask import Blueprint, Response, jsonify, request
from flask_login import current_user

from ... import actions
from ...errors import Forbidden, Invalid, NotFound, Unauthorized
from ...jobindex import job_refs
from ...schema import parse_uuid, stable_id
from ...store import commands, connections, jobs, users
from ...store.keys import Keys
from ...timefmt import iso_from_ms
from ..extensions import limiter, state
from ..request import read_json_object, require_json_content_type
from .auth import request_key_grant, require_writable

bp = Blueprint("actions", __name__, url_prefix="/api/connections")

#: Most characters of a worker reference in a path (an id or a Celery hostname).
MAX_WORKER_REF = 512


def _actions_limit_key() -> str:
    """The budget of one signed-in user acting on one connection (its canonical
    id: another spelling of the same id is the same budget), so that nobody
    else's requests, refused with a 404, ever use up the owner's."""
    raw = str((request.view_args or {}).get("connection_id", ""))[:64]
    try:
        connection = parse_uuid(raw, "id")
    except Invalid:
        connection = raw
    return Keys.actions_limit(f"{current_user.id}:{connection}")


def _not_acting_user() -> bool:
    """Only the owner's session acts; requests that will be refused anyway do not
    use up the connection's budget."""
    return "Authorization" in request.headers or not current_user.is_authenticated


def _owner_connection(raw_id: str) -> str:
    """The connection the signed-in owner acts on: 403 for any API key (before
    the rest), 401 with no session, 400 for a bad id or content type, 403 in
    read-only mode, 404 for a connection not theirs."""
    if request.headers.get("Authorization") is not None:
        request_key_grant()  # 401 for a bad key
        raise Forbidden(
            "Actions need the owner's session, not an API key",
            {"Authorization": "actions need the owner's session"},
        )
    if not current_user.is_authenticated:
        raise Unauthorized("Sign in as the connection's owner to act on it")
    require_json_content_type()
    connection_id = parse_uuid(raw_id, "id")
    require_writable()
    connections.owned_connection(state().redis, current_user.id, connection_id)
    return connection_id


def _issue(connection_id: str, action: dict[str, Any], target: dict[str, Any]) -> Response:
    now_ms = int(time.time() * 1000)
    command = actions.command(str(uuid.uuid4()), iso_from_ms(now_ms), action, target)
    command_id, _appended = commands.issue(
        state().redis, connection_id, actions.digest(action, target), command
    )
    response = jsonify({"commandId": command_id})
    response.status_code = 202
    return response


_limit = limiter.limit(
    lambda: state().settings.actions_rate_limit,
    key_func=_actions_limit_key,
    exempt_when=_not_acting_user,
)


@bp.post("/<connection_id>/jobs/actions")
@_limit
def bulk_action(connection_id: str) -> Response:
    connection_id = _owner_connection(connection_id)
    action = actions.parse_bulk_action(read_json_object())
    return _issue(connection_id, action, {})


@bp.post("/<connection_id>/jobs/<ref:job>/actions")
@_limit
def job_action(connection_id: str, job: str) -> Response:
    connection_id = _owner_connection(connection_id)
    action = actions.parse_job_action(read_json_object())
    found = jobs.get_job(state().redis, connection_id, job_refs(connection_id, job))
    if found is None:
        raise NotFound("Job not found")
    return _issue(connection_id, action, actions.job_target(found["data"]))


@bp.post("/<connection_id>/workers/<ref:worker>/actions")
@_limit
def worker_action(connection_id: str, worker: str) -> Response:
    connection_id = _owner_connection(connection_id)
    action = actions.parse_worker_action(read_json_object())
    if not 0 < len(worker) <= MAX_WORKER_REF:
        raise Invalid("Invalid worker id", {"worker": f"1 to {MAX_WORKER_REF} characters"})
    candidates = list(dict.fromkeys([worker, stable_id(connection_id, "worker", worker)]))
    found = jobs.worker_snapshots(state().redis, connection_id, candidates)
    snapshot = next((found[ref] for ref in candidates if ref in found), None)
    if snapshot is None:
        raise NotFound("Worker not found")
    return _issue(connection_id, action, actions.worker_target(snapshot))


@bp.get("/<connection_id>/commands")
def read_commands(connection_id: str) -> Response:
    """The agent's long poll: commands after `after`, waiting up to `wait` s."""
    grant = request_key_grant()  # 401 for a bad key
    if grant is None:
        if current_user.is_authenticated:
            raise Forbidden(
                "The command stream is read with the connection's write API key",
                {"Authorization": "required: the connection's write key"},
            )
        raise Unauthorized("Send 'Authorization: Bearer sk_live_…'")
    connection_id = parse_uuid(connection_id, "id")
    r = state().redis
    if grant.connection_id != connection_id or not connections.connection_exists(r, connection_id):
        raise NotFound("Connection not found")
    if grant.scope != users.WRITE_SCOPE:
        raise Forbidden(
            "This API key is read-only: the command stream needs the write key",
            {"scope": grant.scope},
        )
    query = actions.parse_commands_query(request.args)
    after = query.after or actions.start_id(int(time.time() * 1000))
    # A draining process (a deploy) ends the wait within one step: the agent asks again.
    hub = state().hub
    found = commands.read(r, connection_id, after, query.wait, lambda: hub.draining)
    data = [{"streamId": entry_id, **command} for entry_id, command in found]
    return jsonify({"data": data, "lastId": found[-1][0] if found else after})
