"""The depth of Celery queues, read from the broker itself: what the agent and
the in-worker integration both report as `queue_snapshot`s.

Redis: LLEN of each queue's list and its priority variants; AMQP: a passive
`queue_declare`, which also gives the number of consumers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .mapping import queue_event

#: Exchanges and queue names of Celery's own plumbing, never user queues.
_INTERNAL_EXCHANGES = {"celeryev", "celery.pidbox", "reply.celery.pidbox"}


def queue_depth(conn: Any, name: str) -> tuple[int | None, int | None]:
    """(messages waiting, consumers or None) of one queue, from the broker itself."""
    driver = conn.transport.driver_type
    channel = conn.default_channel
    if driver == "redis":
        # LLEN of the queue's list and of its priority variants (`name\x06\x16<pri>`).
        return int(channel._size(name)), None
    try:
        ok = channel.queue_declare(queue=name, passive=True)
        return int(ok.message_count), int(ok.consumer_count)
    except Exception as exc:
        if conn.connection_errors and isinstance(exc, conn.connection_errors):
            raise
        # The queue does not exist (yet): AMQP closes the channel; open a new one next time.
        try:
            conn.default_channel.close()
        except Exception:
            pass
        conn._default_channel = None
        return None, None


def redis_bound_queues(conn: Any) -> set[str]:
    """User queues bound to exchanges on a Redis broker (kombu keeps `_kombu.binding.<exchange>` sets)."""
    channel = conn.default_channel
    client = channel.client
    prefix = channel.keyprefix_queue.split("%s")[0]  # "_kombu.binding."
    names: set[str] = set()
    for raw_key in client.scan_iter(match=f"{channel.global_keyprefix}{prefix}*", count=200):
        key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
        exchange = key[len(channel.global_keyprefix) + len(prefix) :]
        if exchange in _INTERNAL_EXCHANGES:
            continue
        for member in client.smembers(key[len(channel.global_keyprefix) :]):
            text = member.decode() if isinstance(member, bytes) else member
            queue = text.split(channel.sep)[-1]
            if queue and not queue.startswith("celeryev.") and not queue.endswith(".pidbox"):
                names.add(queue)
    return names


def depth_events(conn: Any, connection_id: str, names: Iterable[str]) -> list[dict[str, Any]]:
    """A `queue_snapshot` of each of `names` whose depth the broker gives."""
    driver = conn.transport.driver_type
    events = []
    for name in names:
        depth, consumers = queue_depth(conn, name)
        if depth is not None:
            events.append(
                queue_event(
                    connection_id,
                    name=name,
                    depth=depth,
                    consumers=consumers,
                    extensions={"broker": driver},
                )
            )
    return events
