"""`/api/connections/<id>/jobs`, `/workers`, `/queues`: the job index, read.

Readable with the connection's API key or its owner's session, like the
stream; 404 for anything else. Each answer carries `streamId`, the stream's
last entry id read in the same atomic step: open the stream with
`lastEventId=<streamId>` to follow what changes after it, with no gap and
no repeat.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Response, jsonify, request

from ... import liveness
from ...contract import MAX_EXTERNAL_ID
from ...errors import NotFound
from ...jobindex import job_refs, parse_job_query
from ...schema import parse_uuid, stable_id
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
    answer = jobs.list_jobs(state().redis, connection_id, query, exact)
    _mark_lost(connection_id, answer["data"])
    return jsonify(answer)


@bp.get("/<connection_id>/jobs/<ref:job>")
def get_job(connection_id: str, job: str) -> Response:
    connection_id = _connection(connection_id)
    found = jobs.get_job(state().redis, connection_id, job_refs(connection_id, job))
    if found is None:
        raise NotFound("Job not found")
    _mark_lost(connection_id, [found["data"]])
    return jsonify(found)


def _mark_lost(connection_id: str, found: list[dict[str, Any]]) -> None:
    """`lost: true` on each job whose worker (active on it, or reserved by it) is
    offline or expired: decided on read from the workers' latest snapshots."""
    held: dict[str, str] = {}
    for job in found:
        worker = liveness.held_by_worker(job)
        if worker is not None:
            held.setdefault(worker, stable_id(connection_id, "worker", worker))
    if not held:
        return
    app_state = state()
    snapshots = jobs.worker_snapshots(app_state.redis, connection_id, sorted(set(held.values())))
    now_ms = int(time.time() * 1000)
    expiry = app_state.settings.worker_expiry_seconds
    for job in found:
        worker = liveness.held_by_worker(job)
        if worker is not None and liveness.lost(job, snapshots.get(held[worker]), now_ms, expiry):
            job["lost"] = True


@bp.get("/<connection_id>/workers")
def workers(connection_id: str) -> Response:
    """Each worker's latest snapshot with its effective state: a worker silent for
    longer than SLUICE_WORKER_EXPIRY_SECONDS is `offline` (`expired: true`)."""
    app_state = state()
    answer = jobs.snapshots(app_state.redis, _connection(connection_id), "workers")
    now_ms = int(time.time() * 1000)
    expiry = app_state.settings.worker_expiry_seconds
    answer["data"] = [liveness.effective(w, now_ms, expiry) for w in answer["data"]]
    return jsonify(answer)


@bp.get("/<connection_id>/queues")
def queues(connection_id: str) -> Response:
    return jsonify(jobs.snapshots(state().redis, _connection(connection_id), "queues"))
