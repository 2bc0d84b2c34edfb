"""sse-starlette 3.7.0 on uvicorn: one redis.asyncio XREAD BLOCK per client.

This is the idiomatic asyncio shape: every viewer owns a blocking XREAD
(and so a Redis connection) starting at its own position, which also gives
resume from Last-Event-ID for free. The ping interval comes from
BENCH_HEARTBEAT_SECONDS so idle runs can check heartbeats.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

BLOCK_MS = 15000
HEARTBEAT = float(os.environ.get("BENCH_HEARTBEAT_SECONDS", "15"))
pool = aioredis.ConnectionPool.from_url(
    os.environ["REDIS_URL"], socket_timeout=None, max_connections=100_000
)


async def events(key: str, cursor: str) -> AsyncIterator[ServerSentEvent]:
    r = aioredis.Redis(connection_pool=pool)
    if cursor == "$":
        top = await r.xrevrange(key, count=1)
        cursor = top[0][0].decode() if top else "0-0"
    while True:
        resp = await r.xread({key: cursor}, block=BLOCK_MS, count=1000)
        for _key, entries in resp or ():
            for eid, fields in entries:
                cursor = eid.decode()
                yield ServerSentEvent(
                    data=fields[b"data"].decode(),
                    event=fields.get(b"type", b"job:state_change").decode(),
                    id=cursor,
                )


async def stream(request: Request) -> EventSourceResponse:
    key = request.query_params.get("stream", "bench:stream:0")
    cursor = request.headers.get("last-event-id") or "$"
    return EventSourceResponse(events(key, cursor), ping=HEARTBEAT)


app = Starlette(routes=[Route("/stream", stream)])
