"""The one place that touches gunicorn's and gevent's socket internals.

gunicorn hands the WSGI app its client socket as ``environ["gunicorn.socket"]``;
under the gevent worker that is gevent's cooperative wrapper, whose ``_sock``
is the OS socket (non-blocking). The stream writes to that OS socket itself
(see `sinks.SocketSink`), and shuts it down to end a response at once.
"""

from __future__ import annotations

import socket
from typing import Any


def os_socket(sock: Any) -> socket.socket:
    """The OS socket under gevent's wrapper (the socket itself when not wrapped)."""
    raw: socket.socket = getattr(sock, "_sock", sock)
    return raw


def client_socket(environ: dict[str, Any]) -> Any:
    """The client's socket gunicorn hands the app (None under other servers)."""
    return environ.get("gunicorn.socket")


def direct_socket(environ: dict[str, Any]) -> tuple[socket.socket, bool] | None:
    """The client's plain socket and whether gunicorn frames the body as chunked,
    when the stream may write to it itself (gunicorn, no TLS); else None."""
    sock = client_socket(environ)
    if sock is None or not str(environ.get("SERVER_SOFTWARE", "")).startswith("gunicorn"):
        return None
    if getattr(sock, "_sslobj", None) is not None or not hasattr(sock, "_sock"):
        return None
    # gunicorn chunks every HTTP/1.1 response without a Content-Length.
    return sock, environ.get("SERVER_PROTOCOL") != "HTTP/1.0"


def shut_down(sock: Any) -> None:
    """Close a client's TCP connection after what was already written: a send
    blocked on it fails at once (EPIPE), which gunicorn takes as a client that left."""
    if sock is None:
        return
    try:
        os_socket(sock).shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
