"""The one Celery → ingest mapping (`sluice.integrations.celery.mapping`): pure functions.

Both producers build their events here (the agent through its state, the
integration from Celery's signals), so what is pinned here holds for both.
Every event built here is also checked against the server's own validator.
"""

from __future__ import annotations

from sluice import contract
from sluice.integrations.celery import mapping as ce

from .checks import CONN, heavy_imports, validate


def test_extensions_stay_bounded():
    huge = "x" * 100_000
    assert ce.bounded_extensions({"a": {"nested": huge}, "b": 1})["b"] == 1
    # The integration's builders clip user reprs too.
    ev = ce.job_event(CONN, task_id="t", name="n", state="queued", extensions={"args": huge})
    assert len(ev["job"]["extensions"]["args"]) == ce.MAX_REPR


def test_iso_forms():
    assert ce.iso(0) == "1970-01-01T00:00:00.000Z"
    assert ce.iso("2026-02-27T10:30:00.123456+01:00") == "2026-02-27T09:30:00.123Z"
    assert ce.iso("not a date") is None


def test_names_and_states_are_the_contracts():
    assert (ce.JOB_STATE_CHANGE, ce.WORKER_HEARTBEAT, ce.WORKER_STATE_CHANGE) == (
        "job_state_change",
        "worker_heartbeat",
        "worker_state_change",
    )
    assert ce.QUEUE_SNAPSHOT == "queue_snapshot" and ce.FRAMEWORK == "celery"
    assert (ce.JOB_FIELD, ce.WORKER_FIELD, ce.QUEUE_FIELD) == ("job", "worker", "queue")
    assert set(ce.TASK_STATES.values()) | ce.TERMINAL | ce.WAITING <= set(contract.JOB_STATES)
    assert {ce.ONLINE, ce.BUSY, ce.IDLE, ce.OFFLINE} == set(contract.WORKER_STATES)


def test_builders_make_events_the_server_accepts_within_its_limits():
    long = "z" * 100_000
    job = ce.job_event(
        CONN,
        task_id=long,
        name=None,
        state=ce.FAILED,
        queue=long,
        worker_id=long,
        error=long,
        stacktrace=long + "the end",
        max_retries=-1,
        timestamp=0,
    )
    worker = ce.worker_event(
        CONN,
        kind=ce.WORKER_HEARTBEAT,
        nodename="celery@" + long,
        state=ce.heartbeat_state(0),
        active=-1,
        queues=["a", "", long] + [f"q{i}" for i in range(300)],
    )
    queue = ce.queue_event(CONN, name=long, depth=-3, consumers=2)
    validate([job, worker, queue])
    j = job["job"]
    assert job["type"] == "job_state_change" and job["timestamp"] == "1970-01-01T00:00:00.000Z"
    assert len(j["externalId"]) == contract.MAX_EXTERNAL_ID and j["name"] == ce.UNKNOWN_NAME
    assert len(j["queue"]) == contract.MAX_QUEUE_NAME
    assert len(j["workerId"]) == contract.MAX_EXTERNAL_ID
    assert len(j["error"]) == contract.MAX_ERROR
    assert len(j["stacktrace"]) == contract.MAX_STACKTRACE and j["stacktrace"].endswith("the end")
    assert "maxRetries" not in j
    w = worker["worker"]
    assert w["state"] == "idle" and "activeJobs" not in w
    assert len(w["queues"]) == contract.MAX_QUEUES and w["queues"][0] == "a"
    assert len(w["hostname"]) == contract.MAX_HOSTNAME
    assert queue["queue"] == {"name": queue["queue"]["name"], "depth": 0, "consumers": 2}
    assert len(queue["queue"]["name"]) == contract.MAX_QUEUE_NAME


def test_producer_ids_follow_the_meaning_not_the_moment():
    a = ce.job_event(CONN, task_id="t", name="n", state="active", attempt=2, timestamp=1)
    b = ce.job_event(CONN, task_id="t", name="other", state="active", attempt=2, timestamp=9)
    c = ce.job_event(CONN, task_id="t", name="n", state="active", attempt=3, timestamp=1)
    assert a["id"] == b["id"] != c["id"]
    assert a["id"].startswith("celery-") and len(a["id"]) <= contract.MAX_PRODUCER_ID
    q1, q2 = (ce.queue_event(CONN, name="q", depth=1) for _ in range(2))
    assert q1["id"] != q2["id"]  # every snapshot is new


def test_celery_facts_map_the_same_for_both_producers():
    assert ce.waiting_state(None) == "queued" and ce.waiting_state("") == "queued"
    assert ce.waiting_state("2030-01-01T00:00:00+00:00") == "scheduled"
    assert ce.heartbeat_state(0) == "idle" and ce.heartbeat_state(None) == "idle"
    assert ce.heartbeat_state(3) == "busy"
    assert ce.describe_exception(None) is None
    # As Celery's own events give it (the agent's source): the exception's repr.
    assert ce.describe_exception(ValueError("boom")) == "ValueError('boom')"
    assert ce.describe_exception(KeyError()) == "KeyError()"
    assert ce.describe_exception("x" * 20_000) == ce.clip("x" * 20_000, contract.MAX_ERROR)
    assert ce.attempt_from_retries(None) == 1 and ce.attempt_from_retries("2") == 3
    assert ce.attempt_from_retries("nope") == 1
    ext = ce.message_extensions(
        "t1",
        args="(1,)",
        kwargs=None,
        eta=None,
        expires=None,
        routing_key="rk",
        exchange="",
        root_id="t1",
        parent_id="p",
    )
    # Key order is part of the output: every event lists them in this order.
    assert list(ext) == [
        "args", "kwargs", "eta", "expires", "routingKey", "exchange", "rootId", "parentId",
    ]  # fmt: skip
    assert ext["exchange"] is None and ext["rootId"] is None  # empty exchange; a root of itself
    assert (
        ce.message_extensions(
            "t2",
            args=None,
            kwargs=None,
            eta=None,
            expires=None,
            routing_key=None,
            exchange="ex",
            root_id="t1",
            parent_id=None,
        )["rootId"]
        == "t1"
    )
    assert ce.revoke_extensions(False, None, False) == {
        "terminated": None,
        "signum": None,
        "expired": None,
    }
    assert ce.revoke_extensions(True, 15, True) == {
        "terminated": True,
        "signum": 15,
        "expired": True,
    }
    assert ce.host_of("celery@web-1") == "web-1" and ce.host_of("web-2") == "web-2"
    assert ce.host_of(None) is None


def test_importing_the_mapping_imports_no_framework():
    assert heavy_imports("sluice.integrations.celery.mapping") == set()


def test_without_argument_capture_no_user_data_leaves():
    ext = {"args": "('s3cret',)", "kwargs": "{'pw': 's3cret'}", "result": "'s3cret'", "eta": "x"}
    on = ce.job_event(CONN, task_id="t", name="n", state="completed", extensions=ext)
    off = ce.job_event(
        CONN,
        task_id="t",
        name="n",
        state="failed",
        error="ValueError('no')",
        stacktrace="Traceback (most recent call last):\nValueError: no",
        extensions=ext,
        capture_args=False,
    )
    validate([on, off])
    assert {k: on["job"]["extensions"][k] for k in ce.USER_DATA_KEYS} == {
        k: ext[k] for k in ce.USER_DATA_KEYS
    }
    assert off["job"]["extensions"] == {"eta": "x"}  # the rest of extensions stays
    assert "s3cret" not in str(off)
    # What a person debugs with is not argument data: error and traceback still go.
    assert off["job"]["error"] == "ValueError('no')" and "Traceback" in off["job"]["stacktrace"]
    only_user_data = ce.job_event(
        CONN, task_id="t", name="n", state="queued", extensions={"args": "(1,)"}, capture_args=False
    )
    assert "extensions" not in only_user_data["job"]


def test_worker_detail_from_inspect_stats_queues_and_registered():
    stats = {
        "pool": {
            "implementation": "celery.concurrency.prefork:TaskPool",
            "max-concurrency": 4,
            "processes": [101, 102],  # shrunk from 4: the size now
        },
        "total": {"tasks.add": 5, "tasks.fail": 2},
    }
    assert ce.stats_detail(stats) == {"pool": "prefork", "concurrency": 2, "processed": 7}
    threads = {
        "pool": {"implementation": "celery.concurrency.thread:TaskPool", "max-concurrency": 8}
    }
    assert ce.stats_detail(threads) == {"pool": "threads", "concurrency": 8}
    assert ce.stats_detail(None) == {} and ce.stats_detail({"pool": "x"}) == {}
    assert ce.pool_name("celery.concurrency.gevent:TaskPool") == "gevent"
    assert ce.pool_name("myco.pools:Custom") == "myco.pools:Custom"
    assert ce.pool_name("p" * 100) == ce.clip("p" * 100, contract.MAX_POOL_NAME)
    assert ce.queue_names_of([{"name": "a"}, {"name": "b"}, {"name": "a"}, {"x": 1}]) == ["a", "b"]
    assert ce.queue_names_of(["a", "", "q" * (contract.MAX_QUEUE_NAME + 1)]) == ["a"]
    assert ce.queue_names_of(None) == []
    names = ["tasks.b", "tasks.a [rate_limit=10/s]", "celery.chord_unlock", "tasks.a", 3, ""]
    assert ce.registered_names(names) == ["tasks.a", "tasks.b"]
    assert ce.registered_names(["t" * (contract.MAX_JOB_NAME + 1)]) == []


def test_registered_names_are_bounded_by_count_and_bytes():
    many = [f"t{i:04d}" for i in range(2 * contract.MAX_REGISTERED)]
    assert len(ce.registered_names(many)) == contract.MAX_REGISTERED
    long = [f"tasks.{i:03d}." + "x" * 200 for i in range(200)]
    kept = ce.registered_names(long)
    assert 0 < len(kept) < 200 and kept == sorted(kept)
    assert len(",".join(f'"{n}"' for n in kept).encode()) <= ce.MAX_REGISTERED_BYTES


def test_worker_event_carries_the_detail_the_server_accepts():
    ev = ce.worker_event(
        CONN,
        kind=ce.WORKER_HEARTBEAT,
        nodename="w1@vm",
        state=ce.BUSY,
        active=2,
        concurrency=2,
        queues=["a", "b"],
        pool="prefork",
        processed=12,
        reserved=3,
        registered=["tasks.add", "celery.backend_cleanup"],
    )
    validate([ev])
    w = ev["worker"]
    assert (w["pool"], w["concurrency"], w["processed"], w["reservedJobs"]) == ("prefork", 2, 12, 3)
    assert w["queues"] == ["a", "b"] and w["registered"] == ["tasks.add"]
    bare = ce.worker_event(
        CONN, kind=ce.WORKER_HEARTBEAT, nodename="w1@vm", state=ce.IDLE, processed=True, reserved=-1
    )
    validate([bare])
    assert not {"pool", "processed", "reservedJobs", "registered"} & set(bare["worker"])
