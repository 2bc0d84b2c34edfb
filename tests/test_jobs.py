"""The job index through the API: history, filters, search and detail beyond the
stream's window, on a real gunicorn and a real Redis."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import requests

from sluice.contract import JOB_STATES
from sluice.store.keys import Keys
from sluice.timefmt import iso_from_ms
from tests.sse import open_stream
from tests.util import ingest, job_event, queue_event, raw_redis, wait_until, worker_event

STATES = ("queued", "active", "completed")


def _auth(account) -> dict[str, str]:
    return {"Authorization": f"Bearer {account.api_key}"}


def get(server, account, path: str, **params) -> requests.Response:
    return requests.get(
        f"{server.url}/api/connections/{account.connection_id}{path}",
        params=params,
        headers=_auth(account),
        timeout=30,
    )


def every_page(server, account, **params) -> list[dict]:
    jobs: list[dict] = []
    cursor = None
    while True:
        page = get(server, account, "/jobs", limit=200, cursor=cursor, **params)
        assert page.status_code == 200, page.text
        body = page.json()
        jobs += body["data"]
        cursor = body["nextCursor"]
        if cursor is None:
            return jobs


def post_all(server, account, events: list[dict], batch: int = 1000) -> None:
    session = requests.Session()
    for i in range(0, len(events), batch):
        for event in events[i : i + batch]:
            event["connectionId"] = account.connection_id
        response = session.post(
            server.url + "/api/ingest",
            json={"events": events[i : i + batch]},
            headers=_auth(account),
            timeout=60,
        )
        assert response.status_code == 202, response.text


@pytest.fixture(scope="module")
def short_stream(start_server):
    """The stream keeps 1,000 events: history lives in the index only."""
    return start_server(SLUICE_STREAM_MAXLEN="1000", SLUICE_INGEST_RATE_LIMIT="100000 per second")


def test_history_beyond_the_stream_window_is_exact(short_stream, account):
    server = short_stream
    cid = account.connection_id
    total = 50_000
    events = []
    for state in STATES:
        for i in range(total):
            fields = {"queue": f"q{i % 3}", "workerId": f"w{i % 7}@host"}
            if state == "completed" and i % 100 == 0:
                state_i, fields["error"] = "failed", f"boom {i}"
            else:
                state_i = state
            events.append(job_event(cid, f"job-{i}", state_i, name=f"tasks.t{i % 5}", **fields))
    post_all(server, account, events)

    # The oldest job (the stream lost its events long ago) with its whole timeline.
    oldest = get(server, account, "/jobs/job-0")
    assert oldest.status_code == 200, oldest.text
    job = oldest.json()["data"]
    assert job["externalId"] == "job-0" and job["state"] == "failed"
    assert [t["state"] for t in job["timeline"]] == ["queued", "active", "failed"]
    assert [t["previousState"] for t in job["timeline"]] == [None, "queued", "active"]
    assert job["timeline"][-1]["error"] == "boom 0"
    assert job["updatedAt"].endswith("Z")
    # By job id too.
    assert get(server, account, f"/jobs/{job['id']}").json()["data"]["externalId"] == "job-0"

    # Filters and counts are exact.
    failed = every_page(server, account, state="failed")
    assert sorted(j["externalId"] for j in failed) == sorted(
        f"job-{i}" for i in range(0, total, 100)
    )
    assert len(every_page(server, account, state="completed")) == total - total // 100
    assert every_page(server, account, state="queued") == []
    q1 = every_page(server, account, queue="q1", state="failed")
    assert {j["externalId"] for j in q1} == {f"job-{i}" for i in range(0, total, 100) if i % 3 == 1}
    counts = get(server, account, "/jobs", limit=1, state="queued").json()["counts"]
    assert counts == {
        "total": total,
        **dict.fromkeys(JOB_STATES, 0),
        "completed": total - total // 100,
        "failed": total // 100,
    }
    by_worker = get(server, account, "/jobs", worker="w3@host", limit=200).json()["data"]
    assert by_worker and all(j["workerId"] == "w3@host" for j in by_worker)
    # Newest update first.
    first = get(server, account, "/jobs", limit=5).json()["data"]
    assert [j["externalId"] for j in first] == [f"job-{i}" for i in range(total - 1, total - 6, -1)]


def test_pagination_under_concurrent_ingest_returns_every_job_once(server, account):
    cid = account.connection_id
    post_all(server, account, [job_event(cid, f"old-{i}", "queued") for i in range(3000)])
    stop = threading.Event()

    def produce() -> None:
        n = 0
        while not stop.is_set():
            ingest(
                server.url,
                account.api_key,
                cid,
                [job_event(cid, f"new-{n}-{k}", "queued") for k in range(20)],
            )
            n += 1

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    try:
        seen = []
        cursor = None
        while True:
            body = get(server, account, "/jobs", limit=50, cursor=cursor).json()
            seen += [j["externalId"] for j in body["data"]]
            cursor = body["nextCursor"]
            if cursor is None:
                break
    finally:
        stop.set()
        producer.join(10)
    old = [x for x in seen if x.startswith("old-")]
    assert len(old) == len(set(old)) == 3000
    assert len(seen) == len(set(seen))


def test_page_then_stream_misses_nothing_and_repeats_nothing(server, account):
    cid = account.connection_id
    stop = threading.Event()
    posted: list[str] = []

    def produce() -> None:
        n = 0
        while not stop.is_set():
            batch = [job_event(cid, f"live-{n}-{k}", "queued") for k in range(5)]
            if ingest(server.url, account.api_key, cid, batch).status_code == 202:
                posted.extend(e["job"]["externalId"] for e in batch)
            n += 1

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    try:
        wait_until(lambda: len(posted) >= 50, 10, "some traffic")
        page = get(server, account, "/jobs", limit=200).json()
        in_page = [j["externalId"] for j in page["data"]]
        with open_stream(
            server.url, cid, api_key=account.api_key, last_event_id=page["streamId"]
        ) as s:
            wait_until(lambda: len(posted) >= len(in_page) + 100, 10, "more traffic")
            stop.set()
            producer.join(10)
            want = len(posted)
            streamed: list[str] = []
            while len(set(in_page) | set(streamed)) < want:
                streamed += [e.json()["externalId"] for e in s.data_events(1)]
    finally:
        stop.set()
    # Every job is in the page or the stream; none in both.
    assert not set(in_page) & set(streamed)
    assert set(in_page) | set(streamed) == set(posted)
    assert len(streamed) == len(set(streamed))


def test_retention_by_count_keeps_the_newest(start_server, account):
    server = start_server(SLUICE_JOB_RETENTION_MAX="100")
    cid = account.connection_id
    post_all(server, account, [job_event(cid, f"j{i}", "queued") for i in range(250)], batch=50)
    kept = every_page(server, account)
    assert [j["externalId"] for j in kept] == [f"j{i}" for i in range(249, 149, -1)]
    counts = get(server, account, "/jobs", limit=1).json()["counts"]
    assert (counts["total"], counts["queued"]) == (100, 100)
    assert get(server, account, "/jobs/j0").status_code == 404


def test_retention_by_age(start_server, account, redis_url):
    server = start_server(SLUICE_JOB_RETENTION_HOURS="0.001")  # 3.6 s
    cid = account.connection_id
    early = [job_event(cid, "early", "queued", queue="slow")]
    assert ingest(server.url, account.api_key, cid, early).status_code == 202
    early_id = get(server, account, "/jobs/early").json()["data"]["id"]

    def gone() -> bool:
        # Each ingest removes what has aged out.
        late = [job_event(cid, f"late-{uuid.uuid4()}", "queued")]
        assert ingest(server.url, account.api_key, cid, late).status_code == 202
        return get(server, account, "/jobs/early").status_code == 404

    wait_until(gone, 15, "the early job to age out", interval=0.5)
    assert all(j["externalId"].startswith("late-") for j in every_page(server, account))
    r = raw_redis(redis_url)
    try:
        # Unindexed, not just hidden.
        assert r.zscore(Keys.index(cid, Keys.JOBS), early_id) is None
        assert not r.exists(Keys.index(cid, Keys.BY_QUEUE, "slow"))
    finally:
        r.close()


def test_search_by_id_prefix_and_name(server, account):
    cid = account.connection_id
    post_all(
        server,
        account,
        [job_event(cid, "abc-1", "queued", name="billing.charge")]
        + [job_event(cid, "abd-2", "queued", name="mail.send")]
        + [job_event(cid, "zzz-3", "queued", name="billing.refund")],
    )

    def found(q: str) -> list[str]:
        return sorted(j["externalId"] for j in get(server, account, "/jobs", q=q).json()["data"])

    assert found("ab") == ["abc-1", "abd-2"]
    assert found("abc-1") == ["abc-1"]
    assert found("billing.") == ["abc-1", "zzz-3"]
    assert found("nothing") == []
    job_id = get(server, account, "/jobs/zzz-3").json()["data"]["id"]
    assert found(job_id) == ["zzz-3"]


def test_detail_has_arguments_result_and_traceback(server, account):
    cid = account.connection_id
    events = [
        job_event(cid, "t1", "queued", extensions={"args": "(1, 2)", "kwargs": "{'x': 3}"}),
        job_event(cid, "t1", "active", workerId="w1@h"),
        job_event(
            cid,
            "t1",
            "failed",
            error="ValueError('boom')",
            stacktrace="Traceback ...\nValueError: boom",
        ),
    ]
    for event in events:
        assert ingest(server.url, account.api_key, cid, [event]).status_code == 202
    job = get(server, account, "/jobs/t1").json()["data"]
    assert job["args"] == "(1, 2)" and job["kwargs"] == "{'x': 3}"
    assert job["traceback"].endswith("ValueError: boom")
    assert [t["state"] for t in job["timeline"]] == ["queued", "active", "failed"]
    assert job["timeline"][1]["workerId"] == "w1@h"


def test_workers_and_queues_snapshots(server, account):
    cid = account.connection_id
    events = [
        worker_event(cid, "w1@h", "online", concurrency=4),
        worker_event(cid, "w1@h", "busy", activeJobs=2),
        queue_event(cid, "default", 5),
        queue_event(cid, "default", 3),
    ]
    assert ingest(server.url, account.api_key, cid, events).status_code == 202
    workers = get(server, account, "/workers").json()
    assert [(w["externalId"], w["state"]) for w in workers["data"]] == [("w1@h", "busy")]
    queues = get(server, account, "/queues").json()
    assert [(q["name"], q["depth"]) for q in queues["data"]] == [("default", 3)]
    assert workers["streamId"] != "0-0"


def test_a_worker_whose_heartbeats_stopped_is_offline_on_read(server, account):
    """Liveness is decided on read: a heartbeat older than
    SLUICE_WORKER_EXPIRY_SECONDS (30 s by default) gives `offline`, with why;
    a fresh one, or a new heartbeat of the same worker, gives it back."""
    cid = account.connection_id
    old = iso_from_ms(int(time.time() * 1000) - 95_000)
    events = [
        worker_event(cid, "gone@h", "busy", hostname="h", activeJobs=2, concurrency=2),
        worker_event(cid, "live@h", "idle", hostname="h"),
        worker_event(cid, "said@h", "offline", kind="worker_state_change"),
    ]
    events[0]["timestamp"] = old
    events[2]["timestamp"] = old
    assert ingest(server.url, account.api_key, cid, events).status_code == 202
    answer = get(server, account, "/workers").json()
    by_name = {w["externalId"]: w for w in answer["data"]}
    gone = by_name["gone@h"]
    assert gone["state"] == "offline"
    assert gone["expired"] is True
    assert gone["offlineReason"] == "heartbeat_expired"
    assert gone["reportedState"] == "busy"
    assert gone["activeJobs"] == 2  # as last reported: what it held (now lost)
    assert 95 <= gone["silentSeconds"] < 95 + 30
    assert gone["timestamp"] == old
    assert (by_name["live@h"]["state"], by_name["live@h"]["expired"]) == ("idle", False)
    assert "offlineReason" not in by_name["live@h"]
    # Said offline itself: offline, not expired.
    assert (by_name["said@h"]["state"], by_name["said@h"]["expired"]) == ("offline", False)
    # A new heartbeat brings it back.
    again = [worker_event(cid, "gone@h", "busy", hostname="h", activeJobs=1)]
    assert ingest(server.url, account.api_key, cid, again).status_code == 202
    gone = next(
        w for w in get(server, account, "/workers").json()["data"] if w["externalId"] == "gone@h"
    )
    assert (gone["state"], gone["expired"], gone["activeJobs"]) == ("busy", False, 1)


def test_jobs_held_by_an_offline_or_expired_worker_are_lost_on_read(server, account):
    """`lost: true` on an active or received (queued with a workerId) job whose
    worker said offline or stopped beating; not on a job in the broker, a
    finished one, or one whose worker is alive or was never seen."""
    cid = account.connection_id
    old = iso_from_ms(int(time.time() * 1000) - 95_000)
    killed = worker_event(cid, "killed@h", "busy", activeJobs=2)
    killed["timestamp"] = old
    events = [
        killed,
        worker_event(cid, "bye@h", "offline", kind="worker_state_change"),
        worker_event(cid, "alive@h", "busy", activeJobs=1),
        job_event(cid, "run-killed", "active", workerId="killed@h"),
        job_event(cid, "held-killed", "queued", workerId="killed@h"),
        job_event(cid, "run-bye", "active", workerId="bye@h"),
        job_event(cid, "run-alive", "active", workerId="alive@h"),
        job_event(cid, "in-broker", "queued"),
        job_event(cid, "done-killed", "completed", workerId="killed@h"),
        job_event(cid, "run-unseen", "active", workerId="never@h"),
    ]
    assert ingest(server.url, account.api_key, cid, events).status_code == 202
    page = get(server, account, "/jobs").json()["data"]
    assert {j["externalId"] for j in page if j.get("lost")} == {
        "run-killed",
        "held-killed",
        "run-bye",
    }
    assert all(j["lost"] is True for j in page if "lost" in j)
    assert get(server, account, "/jobs/run-killed").json()["data"]["lost"] is True
    assert "lost" not in get(server, account, "/jobs/run-alive").json()["data"]
    # The worker beats again: its jobs are no longer lost.
    again = [worker_event(cid, "killed@h", "busy", activeJobs=2)]
    assert ingest(server.url, account.api_key, cid, again).status_code == 202
    assert "lost" not in get(server, account, "/jobs/run-killed").json()["data"]
    filtered = get(server, account, "/jobs", state="active").json()["data"]
    assert {j["externalId"] for j in filtered if j.get("lost")} == {"run-bye"}


def test_the_expiry_reaches_clients_by_the_config_endpoint(server):
    config = requests.get(f"{server.url}/api/config", timeout=10).json()
    assert config["workerExpirySeconds"] == 30.0
    assert config["readOnly"] is False


def test_rejected_batch_leaves_nothing_in_the_index(server, account):
    cid = account.connection_id
    good = job_event(cid, "kept-out", "queued")
    bad = job_event(cid, "bad", "not-a-state")
    assert ingest(server.url, account.api_key, cid, [good, bad]).status_code == 400
    assert get(server, account, "/jobs").json()["data"] == []
    assert get(server, account, "/jobs/kept-out").status_code == 404


def test_access_is_the_streams(server, account, other_account):
    assert get(server, account, "/jobs").status_code == 200
    # Another connection's key: 404, as for the stream.
    foreign = requests.get(
        f"{server.url}/api/connections/{account.connection_id}/jobs",
        headers=_auth(other_account),
        timeout=10,
    )
    assert foreign.status_code == 404
    assert (
        requests.get(
            f"{server.url}/api/connections/{account.connection_id}/jobs", timeout=10
        ).status_code
        == 401
    )
    session = account.login(server.url)
    assert (
        session.get(
            f"{server.url}/api/connections/{account.connection_id}/workers", timeout=10
        ).status_code
        == 200
    )
    other = other_account.login(server.url)
    assert (
        other.get(
            f"{server.url}/api/connections/{account.connection_id}/queues", timeout=10
        ).status_code
        == 404
    )


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"state": "exploded"}, "state"),
        ({"limit": "0"}, "limit"),
        ({"limit": "201"}, "limit"),
        ({"limit": "x"}, "limit"),
        ({"cursor": "-1"}, "cursor"),
        ({"cursor": "9" * 30}, "cursor"),
        ({"queue": "q" * 2000}, "queue"),
    ],
)
def test_bad_queries_are_400(server, account, params, field):
    response = get(server, account, "/jobs", **params)
    assert response.status_code == 400
    assert field in response.json()["error"]["details"]


def test_deleting_a_connection_deletes_its_index(server, account, redis_url):
    cid = account.connection_id
    post_all(server, account, [job_event(cid, f"d{i}", "queued", queue="q") for i in range(1200)])
    assert (
        ingest(server.url, account.api_key, cid, [worker_event(cid, "w@h", "online")]).status_code
        == 202
    )
    session = account.login(server.url)
    assert session.delete(f"{server.url}/api/connections/{cid}", timeout=30).status_code == 204
    r = raw_redis(redis_url)
    try:
        left = [
            k
            for k in r.scan_iter(match=f"sluice:{{{cid}}}:*", count=1000)
            if not k.endswith(b":events")
        ]
    finally:
        r.close()
    assert left == []


def test_the_index_keeps_within_its_byte_budget(start_server, account, redis_url):
    server = start_server(SLUICE_JOB_INDEX_MAX_BYTES="1048576")
    cid = account.connection_id
    big = "x" * 40_000
    events = [job_event(cid, f"big-{i}", "failed", stacktrace=big) for i in range(100)]
    post_all(server, account, events, batch=10)
    kept = [j["externalId"] for j in every_page(server, account)]
    # The newest that fit (each job counts its traceback, 40 KB, and its data).
    assert 15 <= len(kept) <= 26
    assert kept == [f"big-{i}" for i in range(99, 99 - len(kept), -1)]
    r = raw_redis(redis_url)
    try:
        assert int(r.get(Keys.index(cid, Keys.BYTES))) <= 1_048_576
    finally:
        r.close()
    # A job's timeline keeps its newest entries within its own budget.
    long_error = [job_event(cid, "chatty", "retrying", error="e" * 400) for _ in range(60)]
    post_all(server, account, long_error, batch=60)
    timeline = get(server, account, "/jobs/chatty").json()["data"]["timeline"]
    assert 10 <= len(timeline) <= 50


def at(event: dict, timestamp: str) -> dict:
    event["timestamp"] = timestamp
    return event


def test_an_event_that_arrives_late_joins_the_timeline_but_not_the_state(server, account):
    """Producers in several processes: a publisher's `queued` may reach Sluice after
    the worker's `completed`. The job stays as of its latest event by time; the
    late event takes its place in the timeline; counts and filters agree."""
    cid = account.connection_id
    events = [
        at(job_event(cid, "late-1", "active", workerId="w1@h"), "2026-12-01T10:00:01.000Z"),
        at(job_event(cid, "late-1", "completed", workerId="w1@h"), "2026-12-01T10:00:02.000Z"),
    ]
    post_all(server, account, events)
    # Later, in a batch of its own, then also in the same batch as a newer event.
    post_all(server, account, [at(job_event(cid, "late-1", "queued"), "2026-12-01T10:00:00.000Z")])
    post_all(
        server,
        account,
        [
            at(job_event(cid, "late-2", "completed"), "2026-12-01T10:00:05.000Z"),
            at(job_event(cid, "late-2", "queued"), "2026-12-01T10:00:04.000Z"),
            # The same millisecond: the event that arrived last is the newest.
            at(job_event(cid, "late-3", "failed", error="boom"), "2026-12-01T10:00:06.000Z"),
            at(job_event(cid, "late-3", "retrying", attempt=2), "2026-12-01T10:00:06.000Z"),
            # The same millisecond and attempt (a Celery worker's `received`, from its
            # main process, after its pool process's `started` and `succeeded`): an
            # earlier step of the attempt is late, and goes before its millisecond.
            at(job_event(cid, "late-4", "queued"), "2026-12-01T10:00:07.000Z"),
            at(job_event(cid, "late-4", "active", workerId="w1@h"), "2026-12-01T10:00:08.000Z"),
            at(job_event(cid, "late-4", "completed", workerId="w1@h"), "2026-12-01T10:00:08.000Z"),
            at(job_event(cid, "late-4", "queued", workerId="w1@h"), "2026-12-01T10:00:08.000Z"),
        ],
    )
    one = get(server, account, "/jobs/late-1").json()["data"]
    assert one["state"] == "completed" and one["timestamp"] == "2026-12-01T10:00:02.000Z"
    assert [(t["state"], t["timestamp"][-10:]) for t in one["timeline"]] == [
        ("queued", "00:00.000Z"),
        ("active", "00:01.000Z"),
        ("completed", "00:02.000Z"),
    ]
    two = get(server, account, "/jobs/late-2").json()["data"]
    assert two["state"] == "completed"
    assert [t["state"] for t in two["timeline"]] == ["queued", "completed"]
    three = get(server, account, "/jobs/late-3").json()["data"]
    assert three["state"] == "retrying"
    assert [t["state"] for t in three["timeline"]] == ["failed", "retrying"]
    four = get(server, account, "/jobs/late-4").json()["data"]
    assert four["state"] == "completed"
    assert [(t["state"], t.get("workerId")) for t in four["timeline"]] == [
        ("queued", None),
        ("queued", "w1@h"),
        ("active", "w1@h"),
        ("completed", "w1@h"),
    ]
    body = get(server, account, "/jobs", limit=10).json()
    assert body["counts"]["queued"] == 0 and body["counts"]["active"] == 0
    assert body["counts"]["completed"] == 3 and body["counts"]["retrying"] == 1
    assert body["counts"]["failed"] == 0
    assert every_page(server, account, state="queued") == []
