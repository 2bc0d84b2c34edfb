"""gunicorn settings for never-ending responses (SSE) on gevent workers.

Used as ``gunicorn -c python:sluice.gunicorn_conf sluice.wsgi:app`` (what
`sluice serve` runs) or through the repository's top-level ``gunicorn.conf.py``.

- `worker_class = "gevent"`: each stream is a greenlet, not a thread.
- `max_requests = 0`: a stream counts as one request; recycling workers by
  request count would cut streams for nothing.
- Drain on SIGTERM: streams never finish on their own, so a plain graceful
  shutdown would hang for `graceful_timeout` and then cut every client. Each
  worker instead ends its streams at once when told to stop; clients
  reconnect (to another machine, or to this one restarted) and resume from
  `Last-Event-ID`, losing nothing.
- No `preload_app`: Redis clients must be made after gevent monkey-patches
  the worker.
- Metrics (`sluice.metrics`): the master gives the workers one fresh directory
  for prometheus_client's multiprocess files before it forks any
  (`on_starting`), and tells prometheus_client when a worker has exited
  (`child_exit`), so that `GET /metrics` on any worker counts every worker.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from collections.abc import MutableMapping
from typing import Any

bind = [f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"]
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gevent"
worker_connections = int(os.environ.get("SLUICE_WORKER_CONNECTIONS", "25000"))
max_requests = 0
timeout = 30  # with gevent only a liveness check of the worker's main loop
graceful_timeout = int(os.environ.get("SLUICE_GRACEFUL_TIMEOUT", "10"))
keepalive = 2  # idle keep-alive connections also delay a drain by up to this
backlog = 4096
accesslog = os.environ.get("SLUICE_ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("SLUICE_LOG_LEVEL", "info")
# SLUICE_LOG_FORMAT (text or json) for gunicorn's error and access logs too
# (sluice/gunicorn_log.py); a text access line ends with the request id.
logger_class = "sluice.gunicorn_log.Logger"
access_log_format = (
    '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %({x-request-id}o)s'
)
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
preload_app = False

#: The metrics directory the master made itself (removed when it exits), if any.
_made_metrics_dir: str | None = None


def on_starting(server: Any) -> None:
    """Before any worker is forked:

    - without REDIS_URL (development), start one embedded server in the master
      so that every worker shares it (it dies with the master);
    - refuse to start, in one line rather than a traceback from every worker,
      when a setting is wrong, or when Redis is needed to boot (no SECRET_KEY:
      the development secret is read from Redis) and unreachable. With
      SECRET_KEY Redis is not needed to boot: the server starts and answers
      503 until Redis is back;
    - give the workers a metrics directory of no old values
      (`prepare_metrics_dir`).
    """
    import sys

    from sluice.config import ConfigError, load_settings, require_redis_url_in_production

    try:
        require_redis_url_in_production()
        if not os.environ.get("REDIS_URL"):
            from sluice.store.embedded import start_embedded

            os.environ["REDIS_URL"] = start_embedded()
        settings = load_settings()
    except ConfigError as exc:
        server.log.error("Not starting: %s", exc)
        sys.exit(1)
    if settings.redis_url:
        problem, cluster = _probe_redis_in_child(settings.redis_url, settings.redis_cluster)
        if problem and not settings.secret_key:
            server.log.error("Not starting: %s", problem)
            sys.exit(1)
        if cluster is not None and settings.redis_cluster == "auto":
            # Every worker (also one respawned while Redis is away) knows
            # whether REDIS_URL is a cluster without asking.
            os.environ["SLUICE_REDIS_CLUSTER"] = "yes" if cluster else "no"
            if cluster:
                server.log.info("Redis at REDIS_URL is a Redis Cluster")
    # Every worker inherits PROMETHEUS_MULTIPROC_DIR: set before any is forked.
    global _made_metrics_dir
    path, made = prepare_metrics_dir(os.environ)
    _made_metrics_dir = path if made else None


def _probe_redis_in_child(url: str, declared: str) -> tuple[str, bool | None]:
    """Ask the Redis at `url` in a forked child (the master itself must not import
    redis, and with it ssl, before gevent patches the workers it forks):
    (the one-line problem or "" when it answers, whether it is a cluster node
    or None when unknown)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            from sluice.store.client import RedisUnavailable, check_reachable, detect_cluster

            try:
                check_reachable(url)
                cluster = detect_cluster(url) if declared == "auto" else declared == "yes"
                os.write(write_end, b"1" if cluster else b"0")
            except RedisUnavailable as exc:
                os.write(write_end, b"?" + str(exc).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        reply = pipe.read().decode(errors="replace")
    os.waitpid(pid, 0)
    if reply in ("0", "1"):
        return "", reply == "1"
    return reply[1:], None


def prepare_metrics_dir(environ: MutableMapping[str, str]) -> tuple[str, bool]:
    """Give prometheus_client's multiprocess mode a directory of no old values,
    and name it in `environ` (PROMETHEUS_MULTIPROC_DIR) for the workers to inherit.

    SLUICE_METRICS_DIR, else PROMETHEUS_MULTIPROC_DIR, is made if missing and
    its `*.db` files (values of an earlier run) are removed, nothing else; with
    neither set, a new temporary directory. Returns (the directory, whether it
    is a temporary one made here).
    """
    path = environ.get("SLUICE_METRICS_DIR") or environ.get("PROMETHEUS_MULTIPROC_DIR")
    made = not path
    if not path:
        path = tempfile.mkdtemp(prefix="sluice-metrics-")
    else:
        os.makedirs(path, exist_ok=True)
        for stale in glob.glob(os.path.join(glob.escape(path), "*.db")):
            os.remove(stale)
    environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path, made


def child_exit(server: Any, worker: Any) -> None:
    """A worker exited (stopped, crashed, killed): its live gauges (open streams)
    stop counting. Its counters stay: totals never go back."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, path)


def on_exit(server: Any) -> None:
    """Remove the temporary metrics directory the master made."""
    if _made_metrics_dir is not None:
        shutil.rmtree(_made_metrics_dir, ignore_errors=True)


def post_worker_init(worker: Any) -> None:
    """Watch for the stop signal and drain this worker's streams at once."""
    import gevent

    def watch() -> None:
        while worker.alive:
            gevent.sleep(0.1)
        app = worker.wsgi
        state = getattr(app, "extensions", {}).get("sluice")
        if state is not None:
            ended = state.hub.drain()
            worker.log.info("draining: ended %d streams", ended)

    gevent.spawn(watch)


def post_request(worker: Any, req: Any, environ: Any, resp: Any) -> None:
    """The request is over (its body closed, its access line written): what is
    logged from now on in this connection's greenlet has no request id."""
    from sluice.logs import REQUEST_ID

    REQUEST_ID.set(None)


# gunicorn 27's control socket would be shared by every instance on a machine
# (tests, demo and bench start several); Sluice does not use it.
control_socket_disable = True
