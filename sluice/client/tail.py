"""A terminal client of the stream: `python -m sluice tail`."""

from __future__ import annotations

import codecs
import json
import re
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import click
import requests

from ..contract import (
    HEARTBEAT,
    JOB_STATE_CHANGE,
    QUEUE_SNAPSHOT,
    WORKER_HEARTBEAT,
    WORKER_STATE_CHANGE,
)

_LINE_END = re.compile("\r\n|\r|\n")


@dataclass
class SSEEvent:
    id: str | None
    event: str
    data: str


def sse_lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """Lines of an SSE body as bytes arrive. Per the SSE spec a line ends only at
    CRLF, LF or CR; unlike `str.splitlines`, U+2028, U+0085 and friends inside
    a data line are data. A CRLF split across two chunks is one line end."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    buffer = ""
    after_cr = False
    for chunk in chunks:
        text = decoder.decode(chunk)
        if not text:
            continue
        if after_cr and text.startswith("\n"):
            text = text[1:]
        after_cr = False
        buffer += text
        start = 0
        for match in _LINE_END.finditer(buffer):
            yield buffer[start : match.start()]
            start = match.end()
        buffer = buffer[start:]
        if buffer == "" and text.endswith("\r"):
            after_cr = True  # the LF of this CRLF may come in the next chunk
    buffer += decoder.decode(b"", final=True)
    if buffer:
        yield buffer


def parse_sse(lines: Iterable[str]) -> Iterator[SSEEvent | int]:
    """Parse SSE lines into events (and `retry:` values as ints), per the spec."""
    event, event_id = "message", None
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield SSEEvent(event_id, event, "\n".join(data))
            event, event_id, data = "message", None, []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            event_id = value
        elif field == "retry" and value.isdigit():
            yield int(value)


def follow(
    url: str,
    api_key: str,
    connection_id: str,
    *,
    types: str = "",
    as_json: bool = False,
    heartbeats: bool = False,
    last_event_id: str | None = None,
    max_events: int | None = None,
) -> None:
    """Print events until interrupted; on a dropped connection, resume after the last id."""
    retry = 2.0
    printed = 0
    params = {"connectionId": connection_id}
    if types:
        params["types"] = types
    while True:
        headers = {"Authorization": f"Bearer {api_key}", "Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        try:
            with requests.get(
                url.rstrip("/") + "/api/events/stream",
                params=params,
                headers=headers,
                stream=True,
                timeout=(10, 120),
            ) as response:
                if response.status_code != 200:
                    try:
                        error = response.json()["error"]
                        message = f"{error['code']}: {error['message']}"
                    except (ValueError, KeyError, TypeError):
                        message = f"HTTP {response.status_code}"
                    raise click.ClickException(message)
                click.echo(f"# connected to {url} (connection {connection_id})", err=True)
                for item in parse_sse(sse_lines(response.iter_content(chunk_size=None))):
                    if isinstance(item, int):
                        retry = item / 1000
                        continue
                    if item.id:
                        last_event_id = item.id
                    if item.event == HEARTBEAT and not heartbeats:
                        continue
                    _print(item, as_json)
                    printed += 1
                    if max_events is not None and printed >= max_events:
                        return
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            click.echo(f"# disconnected ({type(exc).__name__}); reconnecting", err=True)
        except requests.Timeout:
            click.echo("# no bytes for 120 s; reconnecting", err=True)
        except KeyboardInterrupt:
            return
        else:
            click.echo("# stream ended; reconnecting", err=True)
        time.sleep(retry)


def _print(event: SSEEvent, as_json: bool) -> None:
    if as_json:
        try:
            data = json.loads(event.data)
        except ValueError:
            data = event.data
        click.echo(json.dumps({"id": event.id, "event": event.event, "data": data}))
        return
    try:
        data = json.loads(event.data)
    except ValueError:
        data = {}
    if event.event == JOB_STATE_CHANGE:
        summary = f"{data.get('name')} [{data.get('externalId')}] {data.get('previousState') or '-'} -> {data.get('state')}"
        if data.get("error"):
            summary += f"  error: {str(data['error']).splitlines()[0][:120]}"
    elif event.event in (WORKER_HEARTBEAT, WORKER_STATE_CHANGE):
        summary = f"{data.get('hostname')} {data.get('state')} active={data.get('activeJobs')}"
    elif event.event == QUEUE_SNAPSHOT:
        summary = f"{data.get('name')} depth={data.get('depth')} consumers={data.get('consumers')}"
    else:
        summary = event.data
    stamp = data.get("timestamp", "") if isinstance(data, dict) else ""
    click.echo(f"{stamp} {event.event:<20} {summary}")
    sys.stdout.flush()
