"""The one place touching gunicorn's and gevent's socket internals."""

from __future__ import annotations

import socket

import gevent
import pytest

from sluice.fanout.sockets import direct_socket, os_socket, shut_down


def gunicorn_environ(sock, protocol="HTTP/1.1"):
    return {
        "gunicorn.socket": sock,
        "SERVER_SOFTWARE": "gunicorn/23.0.0",
        "SERVER_PROTOCOL": protocol,
    }


def test_direct_socket_under_gunicorn(pair):
    sock, _ = pair
    assert direct_socket(gunicorn_environ(sock)) == (sock, True)
    assert direct_socket(gunicorn_environ(sock, "HTTP/1.0")) == (sock, False)


class FakeTLS:
    """What an SSL-wrapped gevent socket looks like from here."""

    def __init__(self, sock):
        self._sock = sock
        self._sslobj = object()


def test_direct_socket_refuses_what_it_cannot_write_to(pair):
    sock, _ = pair
    plain = socket.socket()
    try:
        cases = [
            {},
            {"SERVER_SOFTWARE": "gunicorn/23.0.0"},  # no socket
            {**gunicorn_environ(sock), "SERVER_SOFTWARE": "Werkzeug/3.1.9"},
            {**gunicorn_environ(sock), "SERVER_SOFTWARE": ""},
            {k: v for k, v in gunicorn_environ(sock).items() if k != "SERVER_SOFTWARE"},
            gunicorn_environ(FakeTLS(sock._sock)),  # TLS
            gunicorn_environ(plain),  # not gevent's wrapper (no `_sock`)
        ]
        for environ in cases:
            assert direct_socket(environ) is None, environ
    finally:
        plain.close()


def test_os_socket(pair):
    sock, _ = pair
    assert os_socket(sock) is sock._sock
    plain = socket.socket()
    try:
        assert os_socket(plain) is plain
    finally:
        plain.close()


def test_shut_down_ends_the_connection_and_never_raises(pair):
    sock, peer = pair
    sock.sendall(b"already written")
    shut_down(sock)
    data = b""
    with gevent.Timeout(2):
        while chunk := peer.recv(100):
            data += chunk
    assert data == b"already written"  # then end of stream
    with pytest.raises(OSError):
        sock._sock.send(b"x")  # a blocked or later send fails at once
    shut_down(sock)  # twice: no error
    shut_down(None)
