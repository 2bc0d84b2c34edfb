"""The body of one stream response: first bytes at once, history, then live
frames and heartbeats, written through one `Sink`.

Runs without a request context. A client that left is noticed when a write
fails (at the latest at the next heartbeat); `finally` then releases the
listener. gunicorn closes the iterator (GeneratorExit) or kills the greenlet
(GreenletExit); both run `finally`.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..errors import StoreUnavailable
from ..metrics import EVENTS_DELIVERED, REDIS_ERRORS
from .hub import Hub, Subscription
from .sinks import Sink
from .sse import cached_heartbeat, reset_frame, retry_frame


def stream_body(
    hub: Hub,
    subscription: Subscription,
    sink: Sink,
    *,
    heartbeat: float,
    max_seconds: float,
    retry_ms: int,
) -> Iterator[bytes]:
    listener = subscription.listener
    clock = listener.clock
    wake = listener.wake
    deadline = clock() + max_seconds if max_seconds > 0 else None
    try:
        # Through the server, always: it sends the headers with it.
        yield retry_frame(retry_ms)
        listener.last_write = clock()
        if subscription.reset_reason is not None:
            yield from sink.write(reset_frame(subscription.reset_reason))
        if subscription.catchup_from is not None:
            for frames in hub.history(listener, subscription.catchup_from, subscription.catchup_to):
                if frames:
                    yield from sink.write(b"".join(frames))
                    EVENTS_DELIVERED.inc(len(frames))
        while True:
            if listener.partial is not None:  # left over by a direct write
                yield from sink.finish_partial()
                continue
            if listener.pending:
                yield from sink.write(listener.take())
                continue
            if listener.closed:
                break
            sink.attach()
            wake.clear()
            # Wake for work, the lifetime deadline, or (when the hub's ticker does
            # not beat for this stream) the next heartbeat.
            timeout = None if sink.ticker_beats else heartbeat - (clock() - listener.last_write)
            if deadline is not None:
                left = deadline - clock()
                if left <= 0:
                    break
                timeout = left if timeout is None else min(timeout, left)
            if timeout is None:
                wake.wait()
                continue
            if timeout > 0 and wake.wait(timeout):
                continue
            if deadline is not None and clock() >= deadline:
                break
            if not sink.ticker_beats and clock() - listener.last_write >= heartbeat:
                yield from sink.write(cached_heartbeat())
        # The server ends this stream (shutdown, lifetime cap, deleted connection):
        # close the connection too, so the client reconnects at once.
        listener.hang_up()
    except StoreUnavailable:
        # History could not be read: end the response; the client resumes.
        REDIS_ERRORS.inc()
        listener.hang_up()
    finally:
        hub.unsubscribe(listener)
