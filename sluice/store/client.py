"""The Redis client: connections, one-line problems, and the store's error type.

Only `sluice.store` imports redis-py. The web layer maps `StoreError` (what
every redis-py failure is, also from the rate limiter's storage) to a 503; the
fan-out reads through `events.RedisEventLog`, which raises the domain's
`StoreUnavailable` / `StoreRefused` instead.
"""

from __future__ import annotations

import os
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import redis

#: What any Redis failure raises (unreachable, timed out, read-only, out of memory).
StoreError = redis.RedisError
#: The store refused a write because it is full (`maxmemory` with `noeviction`).
StoreFull = redis.exceptions.OutOfMemoryError
#: Redis could not be asked at all (unreachable, timed out).
StoreUnreachable = (redis.ConnectionError, redis.TimeoutError)
#: The client type the store's functions take.
Redis = redis.Redis


def text(reply: object) -> str:
    """A Redis reply (bytes: the clients do not decode) as a string."""
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def connect(url: str, max_connections: int = 50, **kwargs: object) -> redis.Redis:
    """A client for ordinary commands (short socket timeout, bytes replies).

    The pool blocks (up to 5 s) when all its connections are busy instead of
    failing: a burst of reconnecting clients after a deploy then waits a few
    milliseconds rather than getting 503s. Only a real outage is an error.
    """
    options: dict[str, object] = {
        "client_name": f"sluice-{os.getpid()}",
        "socket_timeout": 5.0,
        "socket_connect_timeout": 5.0,
        "health_check_interval": 30,
    }
    options.update(kwargs)
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=5.0, **options
    )
    return redis.Redis(connection_pool=pool)


def mask_url(url: str) -> str:
    """`url` with its password (in the user part or a ``password=`` query) as ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<a malformed URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, colon, _password = userinfo.partition(":")
        if colon:
            netloc = f"{user}:***@{host}"
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(key.lower() == "password" for key, _ in pairs):
        query = "&".join(
            f"{key}={'***' if key.lower() == 'password' else value}" for key, value in pairs
        )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


class RedisUnavailable(RuntimeError):
    """Redis cannot be used where it is needed now; the message is one line for a person."""


def redis_problem(url: str, exc: BaseException) -> str:
    """One line naming the Redis (password masked), what went wrong, and what to check."""
    reason = " ".join(str(exc).split()).rstrip(".") or type(exc).__name__
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError | OSError):
        what = "cannot reach Redis at"
    else:
        what = "Redis refused a command at"
    return (
        f"{what} {mask_url(url)} ({reason}): check that Redis is running there and that "
        "REDIS_URL (host, port, password, TLS) is right"
    )


def check_reachable(url: str, timeout: float = 5.0) -> None:
    """PING the Redis at `url` once; `RedisUnavailable` with a one-line message if that fails."""
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    except ValueError as exc:
        raise RedisUnavailable(f"REDIS_URL {mask_url(url)} is not a Redis URL: {exc}") from None
    try:
        client.ping()
    except redis.RedisError as exc:
        raise RedisUnavailable(redis_problem(url, exc)) from None
    finally:
        client.close()
