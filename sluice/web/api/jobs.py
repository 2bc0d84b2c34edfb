"""`/api/connections/<id>/jobs`, `/workers`, `/queues`: the job index, read.

Readable with the connection's API key or its owner's session, like the
stream; 404 for anything else. Each answer carries `streamId`, the stream's
last entry id read in the same atomic step: open the stream with
`lastEventId=<streamId>` to follow what changes after it, with no gap and
no repeat.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from ...contract import MAX_EXTERNAL_ID
from ...errors import NotFound
from ...jobindex import job_refs, parse_job_query
from ...schema import parse_uuid
from ...store import jobs
from ..extensions import state
from .auth import check_reader, reader_credentials

bp = Blueprint("jobs", __name__, url_prefix="/api/connections")


def _connection(raw_id: str) -> str:
    key_connection = reader_credentials()  # 401 before any 400
    connection_id = parse_uuid(raw_id, "id")
    check_reader(key_connection, connection_id)
    return connection_id


@bp.get("/<connection_id>/jobs")
def list_jobs(connection_id: str) -> Response:
    connection_id = _connection(connection_id)
    query = parse_job_query(request.args)
    # `q` may name a job exactly (by id or external id) only if it is short enough to be one.
    is_ref = query.q is not None and len(query.q) <= MAX_EXTERNAL_ID
    exact = job_refs(connection_id, query.q) if is_ref and query.q else ("", "")
    return jsonify(jobs.list_jobs(state().redis, connection_id, query, exact))


@bp.get("/<connection_id>/jobs/<ref:job>")
def get_job(connection_id: str, job: str) -> Response:
    connection_id = _connection(connection_id)
    found = jobs.get_job(state().redis, connection_id, job_refs(connection_id, job))
    if found is None:
        raise NotFound("Job not found")
    return jsonify(found)


@bp.get("/<connection_id>/workers")
def workers(connection_id: str) -> Response:
    return jsonify(jobs.snapshots(state().redis, _connection(connection_id), "workers"))


@bp.get("/<connection_id>/queues")
def queues(connection_id: str) -> Response:
    return jsonify(jobs.snapshots(state().redis, _connection(connection_id), "queues"))
