"""The Redis client: connections, one-line problems, and the store's error types.

Only `sluice.store` imports redis-py. `connect` returns a client for one Redis
node, or for a Redis Cluster when the URL's node says it is part of one (the
same command API: every key of one connection shares a hash tag, so each
command and script stays within one slot). The web layer maps `STORE_ERRORS`
(what every redis-py failure is, also from the rate limiter's storage) to a
503; the fan-out reads through `events.RedisEventLog`, which raises the
domain's `StoreUnavailable` / `StoreRefused` instead.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import redis
from redis.cluster import RedisCluster

#: What any Redis failure raises (unreachable, timed out, read-only, out of memory).
StoreError = redis.RedisError
#: What redis-py's cluster client raises besides `StoreError` (no reachable node,
#: a slot not covered while the cluster heals).
ClusterUnavailable = redis.exceptions.RedisClusterException
#: Every failure of the store, for `except` clauses and error handlers.
STORE_ERRORS: tuple[type[Exception], ...] = (StoreError, ClusterUnavailable)
#: The store refused a write because it is full (`maxmemory` with `noeviction`).
StoreFull = redis.exceptions.OutOfMemoryError
#: Redis could not be asked at all (unreachable, timed out).
StoreUnreachable = (redis.ConnectionError, redis.TimeoutError)
#: The client type the store's functions take.
Redis = redis.Redis


def text(reply: object) -> str:
    """A Redis reply (bytes: the clients do not decode) as a string."""
    return reply.decode() if isinstance(reply, bytes) else str(reply)


#: Seconds a command waits for a free pooled connection before it fails.
POOL_WAIT = 5.0


def _options(**kwargs: object) -> dict[str, Any]:
    options: dict[str, Any] = {
        "client_name": f"sluice-{os.getpid()}",
        "socket_timeout": 5.0,
        "socket_connect_timeout": 5.0,
        "health_check_interval": 30,
    }
    options.update(kwargs)
    return options


def detect_cluster(url: str, timeout: float = 5.0) -> bool | None:
    """Whether the Redis at `url` is a node of a Redis Cluster (`INFO cluster`);
    None when it cannot be asked now."""
    probe = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        return str(probe.info("cluster").get("cluster_enabled", 0)) == "1"
    except (redis.ConnectionError, redis.TimeoutError):
        return None
    except redis.RedisError:
        return False  # INFO refused (some managed services): not a cluster we can use
    finally:
        probe.close()


def connect(
    url: str, max_connections: int = 50, cluster: bool | None = None, **kwargs: object
) -> redis.Redis:
    """A client for ordinary commands (short socket timeout, bytes replies): for
    one node, or for the whole cluster when `url` names a node of one.

    The pool blocks (up to `POOL_WAIT` s) when all its connections are busy
    instead of failing: a burst of reconnecting clients after a deploy then
    waits a few milliseconds rather than getting 503s. Only a real outage is
    an error. On a cluster, `max_connections` bounds each node's pool.

    `cluster` None asks the node (`detect_cluster`); when Redis cannot be
    reached then, a single-node client is returned (its commands fail with
    503s until Redis is back).
    """
    options = _options(**kwargs)
    if cluster is None:
        cluster = bool(detect_cluster(url))
    if cluster:
        client = RedisCluster.from_url(
            url,
            max_connections=max_connections,
            connection_pool_class=redis.BlockingConnectionPool,
            timeout=POOL_WAIT,
            **options,
        )
        # The cluster client offers the same command API (routing each command
        # by its keys' slot); the store's functions take either.
        return cast(redis.Redis, client)
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=POOL_WAIT, **options
    )
    return redis.Redis(connection_pool=pool)


#: Lua scripts per client, made once (EVALSHA, loading the script when Redis
#: does not know it), not re-hashed on every call; gone with their client.
_scripts: weakref.WeakKeyDictionary[redis.Redis, dict[str, Any]] = weakref.WeakKeyDictionary()


def script(client: redis.Redis, source: str) -> Any:
    """The registered script of `source` for `client`."""
    per_client = _scripts.setdefault(client, {})
    registered = per_client.get(source)
    if registered is None:
        registered = per_client[source] = client.register_script(source)
    return registered


#: Long scripts (a batch's append) one process has in flight on one Redis node,
#: at most. Redis runs one command at a time, first come first served: every
#: other command of the process (the rate limit, the key lookup, the fan-out's
#: read) waits behind the scripts queued before it. Unbounded, a worker's
#: requests fall into step (all waiting on Redis while the worker idles, then
#: all computing while Redis idles); with two, one runs while the next is sent,
#: and the rest wait in the process, not in Redis (`bench/jobindex.py
#: --parts ingest`: see docs/performance.md).
SCRIPTS_IN_FLIGHT = 2

#: Per client (made in each process after it forks, like `_scripts`), per node.
_gates: weakref.WeakKeyDictionary[redis.Redis, dict[str, threading.BoundedSemaphore]] = (
    weakref.WeakKeyDictionary()
)
_gates_lock = threading.Lock()


@contextmanager
def script_slot(client: redis.Redis, key: str) -> Iterator[None]:
    """Hold one of `SCRIPTS_IN_FLIGHT` places of the node that serves `key` (the
    node, not the process: a slow node of a cluster holds up only its own);
    `TimeoutError` after `POOL_WAIT` s without one."""
    node = ""
    if is_cluster(client):
        try:
            node = cast(RedisCluster, client).get_node_from_key(key).name
        except (StoreError, ClusterUnavailable, IndexError, KeyError):
            node = ""  # slots being learnt: one shared gate meanwhile
    with _gates_lock:
        gate = _gates.setdefault(client, {}).get(node)
        if gate is None:
            gate = _gates[client][node] = threading.BoundedSemaphore(SCRIPTS_IN_FLIGHT)
    if not gate.acquire(timeout=POOL_WAIT):
        raise redis.TimeoutError(f"no place for a script on {node or 'Redis'} in {POOL_WAIT:g} s")
    try:
        yield
    finally:
        gate.release()


def is_cluster(client: object) -> bool:
    return isinstance(client, RedisCluster)


class _InOrder:
    """Commands queued like a pipeline's, sent one by one in that order."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        def queue(*args: Any, **kwargs: Any) -> _InOrder:
            self._calls.append((name, args, kwargs))
            return self

        return queue

    def execute(self) -> list[Any]:
        return [getattr(self._client, name)(*a, **kw) for name, a, kw in self._calls]


def transaction(client: redis.Redis) -> Any:
    """Queue writes that span several keys: one MULTI transaction on one node
    (all or nothing); on a cluster, whose transactions cannot span slots, the
    same commands one by one in the order queued (callers order them so that
    a failure half-way leaves nothing usable half-made)."""
    if is_cluster(client):
        return _InOrder(client)
    return client.pipeline(transaction=True)


def limiter_storage(
    url: str, client: redis.Redis, max_connections: int
) -> tuple[str, dict[str, Any]]:
    """(storage URI, options) for flask-limiter's counters: through the app's
    pool on one node; on a cluster, limits' own cluster client, its pools
    bounded like the app's and with the same timeouts (a full pool fails at once: 503)."""
    if not is_cluster(client):
        return url, {"connection_pool": client.connection_pool}
    parts = urlsplit(url)
    options: dict[str, Any] = {
        "max_connections": max_connections,
        "socket_timeout": 5.0,
        "socket_connect_timeout": 5.0,
    }
    if parts.scheme == "rediss":
        options["ssl"] = True
    return urlunsplit(parts._replace(scheme="redis+cluster", path="", query="")), options


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
