from tests.sse import open_stream
from tests.util import ingest, job_event


def test_ingested_event_arrives_on_the_stream(server, account):
    with open_stream(server.url, account.connection_id, api_key=account.api_key) as stream:
        assert stream.status == 200
        response = ingest(
            server.url,
            account.api_key,
            account.connection_id,
            [job_event(account.connection_id, "j1", "queued")],
        )
        assert response.status_code == 202, response.text
        (event,) = stream.data_events(1)
        assert event.event == "job:state_change"
        assert event.json()["externalId"] == "j1"
