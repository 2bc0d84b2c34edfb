"""`POST /api/ingest` (and `GET /api/key`, what a key is): validate producer events, normalise them, append them.

A batch is all-or-nothing: every event is validated first (`sluice.schema`),
and then one Lua script appends them all (skipping producer ids already seen)
and indexes them (`sluice.jobindex`) atomically (`sluice.store.events`), so a
rejected or failed batch leaves nothing behind, in the stream or the index,
and a retried one adds nothing twice. What was appended (duplicates left
out) is then counted in the job metrics (`web.jobmetrics.count_accepted`).
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from ... import schema
from ...contract import COMMAND_RESULT
from ...errors import Invalid, SluiceError, TooLarge, Unauthorized
from ...jobindex import index_fields
from ...metrics import INGEST_ACCEPTED, INGEST_DUPLICATE, INGEST_REJECTED
from ...store import commands as command_store
from ...store import events as event_store
from ...store import users
from ...store.client import text
from ...store.keys import Keys
from ...strictjson import dumps
from ..extensions import limiter, state
from ..jobmetrics import count_accepted
from ..request import read_json_object
from .auth import bearer_token, request_key_grant, require_write_key

bp = Blueprint("ingest", __name__, url_prefix="/api")


def _ingest_limit_key() -> str:
    return Keys.ingest_limit(users.hash_api_key(bearer_token() or ""))


@bp.post("/ingest")
@limiter.limit(lambda: state().settings.ingest_rate_limit, key_func=_ingest_limit_key)
def ingest() -> tuple[Response, int]:
    connection_id = require_write_key().connection_id
    app_state = state()
    settings = app_state.settings
    body = read_json_object()
    events = body.get("events")
    if not isinstance(events, list) or not events:
        raise Invalid("events must be a non-empty list", {"events": "required non-empty list"})
    try:
        if len(events) > settings.max_batch_events:
            raise TooLarge(
                f"A batch holds at most {settings.max_batch_events} events",
                {"events": f"{len(events)} > {settings.max_batch_events}"},
            )
        schema.validate_batch(events, connection_id, settings.max_extensions_bytes)
    except SluiceError:
        INGEST_REJECTED.inc(len(events))  # the whole batch: nothing of it is stored
        raise
    prepared = []
    normalised = []
    for event in events:
        name, data = schema.normalised(event, connection_id)
        normalised.append((name, data))
        prepared.append((event.get("id"), name, dumps(data), index_fields(name, data)))
    accepted, duplicates, repeated = event_store.append_events_detailed(
        app_state.redis, connection_id, prepared, settings
    )
    if accepted:
        INGEST_ACCEPTED.inc(accepted)
    if duplicates:
        INGEST_DUPLICATE.inc(duplicates)
    appended = (
        [event for i, event in enumerate(normalised) if i not in repeated]
        if repeated
        else normalised
    )
    count_accepted(app_state.redis, connection_id, settings, appended)
    for name, data in appended:
        if name == COMMAND_RESULT:  # its action on its target may be asked again
            command_store.release(app_state.redis, connection_id, data["commandId"])
    return jsonify({"accepted": accepted, "duplicates": duplicates}), 202


@bp.get("/key")
def key() -> Response:
    """What the request's API key is: its connection, that connection's name, its
    scope. How a producer given only a URL and a key learns its connection."""
    grant = request_key_grant()
    if grant is None:
        raise Unauthorized("Send 'Authorization: Bearer sk_live_…'")
    name = state().redis.hget(Keys.connection(grant.connection_id), "name")
    if name is None:  # a key outliving its connection is no key
        raise Unauthorized("Invalid API key")
    return jsonify({"connectionId": grant.connection_id, "name": text(name), "scope": grant.scope})
