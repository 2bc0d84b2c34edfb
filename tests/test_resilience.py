"""Redis trouble: clear 503s when it is unreachable, no lost events when a connection drops."""

from __future__ import annotations

import requests

from tests.conftest import SluiceServer, free_port
from tests.sse import open_stream, read_error_body
from tests.util import ingest, jobs


def test_unreachable_redis_is_503_json(redis_url, account):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    srv = SluiceServer(dead, {"SLUICE_ENV": "production", "SECRET_KEY": "k" * 64})
    try:
        srv.start(timeout=30, wait_healthy=False)
        response = requests.get(srv.url + "/api/health", timeout=10)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "UNAVAILABLE"
        response = ingest(
            srv.url, account.api_key, account.connection_id, jobs(account.connection_id, 1)
        )
        assert response.status_code == 503
        assert "Traceback" not in response.text
        stream = open_stream(srv.url, account.connection_id, api_key=account.api_key, timeout=15)
        assert stream.status == 503
        assert read_error_body(stream)["error"]["code"] == "UNAVAILABLE"
        stream.close()
    finally:
        srv.stop()


def test_reader_survives_a_dropped_redis_connection(start_server, account, redis_client):
    """Every Redis connection of the worker is killed while a stream is open: the shared
    reader reconnects and continues from its cursor; nothing is lost or repeated."""
    srv = start_server(SLUICE_DEBUG_STATS="1")
    cid = account.connection_id
    pid = requests.get(srv.url + "/api/debug/stats").json()["pid"]
    with open_stream(srv.url, cid, api_key=account.api_key) as stream:
        stream.read_bytes(1)
        ingest(srv.url, account.api_key, cid, jobs(cid, 3))
        before = stream.data_events(3)
        killed = 0
        for client in redis_client.client_list():
            if client.get("name") == f"sluice-{pid}":
                redis_client.client_kill_filter(_id=client["id"])
                killed += 1
        assert killed >= 1
        assert ingest(srv.url, account.api_key, cid, jobs(cid, 3)).status_code == 202
        after = stream.data_events(3, timeout=15)
        assert stream.data_events_within(0.5) == []
    ids = [i for i, _ in redis_client.xrange(f"sluice:{{{cid}}}:events")]
    assert [e.id for e in before + after] == ids
