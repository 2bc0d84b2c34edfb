"""`python -m sluice celery-agent`: watch a Celery deployment from outside.

Like Flower, it listens to Celery's own event stream on the broker
(`EventReceiver`), so the workers need no code change; it also polls the
depth of the queues (Redis: LLEN of each queue's keys incl. its priority
variants; RabbitMQ: a passive queue_declare, which also gives the number of
consumers). Everything is normalised by `state` and `mapping` and sent in batches
to `POST /api/ingest` by an `IngestSender` (bounded buffer, retries, producer
ids), so a Sluice outage loses nothing up to the buffer and duplicates
nothing.

Celery is imported inside the functions: the server does not depend on it.
"""

from __future__ import annotations

import importlib
import logging
import re
import signal
import threading
import time
from collections.abc import Iterable
from typing import Any

import click

from ...client.ingest import DEFAULT_BUFFER, IngestSender
from .mapping import OFFLINE, queue_names_of, registered_names, stats_detail
from .queues import depth_events, redis_bound_queues
from .state import CeleryEventMapper

log = logging.getLogger("sluice.celery_agent")

HOW_TO_ENABLE = (
    "Celery workers send task events only when asked: start them with `celery worker -E` "
    "(or set worker_send_task_events = True), and set task_send_sent_event = True in the processes "
    "that publish tasks to see tasks as queued before a worker takes them."
)


#: Exit status of the agent when a Python package it needs (a broker transport's
#: library, say) is not installed: a setup error, not a network blip to retry.
EXIT_MISSING_PACKAGE = 3

#: pip's name of modules (top level) that kombu's transports import, where it differs.
_PIP_NAMES = {
    "yaml": "PyYAML",
    "google": "google-cloud-pubsub",
    "confluent_kafka": "confluent-kafka",
    "azure": "azure-servicebus",
}


#: The modules each broker scheme's kombu transport imports: looked for before the
#: transport itself, so a missing one is named (kombu 5.7's Redis transport without
#: redis-py fails with an AttributeError that names nothing).
_TRANSPORT_MODULES = {
    "redis": ("redis", "packaging"),
    "rediss": ("redis", "packaging"),
    "sentinel": ("redis", "packaging"),
    "amqp": ("amqp",),
    "amqps": ("amqp",),
    "pyamqp": ("amqp",),
}


def missing_package(exc: BaseException | None) -> str | None:
    """A sentence naming the package to install when `exc` (or what it was raised from)
    is a missing module (ImportError / ModuleNotFoundError); None for any other error,
    which the agent treats as the broker or the network failing and retries."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ImportError):
            name = (exc.name or "").split(".")[0]
            if not name:  # kombu's own: "Missing redis library (pip install redis)"
                hint = re.search(r"pip install ([A-Za-z0-9_.\-\[\]]+)", str(exc))
                name = hint.group(1) if hint else ""
            package = _PIP_NAMES.get(name, name)
            what = (
                f"the Python package {package!r} is not installed"
                if package
                else ("a Python package is not installed")
            )
            install = f"pip install {package}" if package else "install it"
            return (
                f"{what} ({type(exc).__name__}: {exc}); {install} where the agent runs "
                "(pip install -r requirements-celery.txt installs what the Redis and AMQP "
                "brokers need)"
            )
        exc = exc.__cause__ or exc.__context__
    return None


class CeleryAgent:
    """The agent's moving parts: event capture (main thread), queue polling and the sender."""

    def __init__(
        self,
        broker: str,
        url: str,
        api_key: str,
        connection_id: str,
        *,
        queues: Iterable[str] = (),
        poll_interval: float = 5.0,
        buffer_size: int = DEFAULT_BUFFER,
        enable_events: bool = True,
        warn_after: float = 30.0,
        discover_queues: bool = True,
        capture_args: bool = True,
        detail_interval: float = 30.0,
        inspect_timeout: float = 2.0,
        actions: bool = True,
    ) -> None:
        from celery import Celery  # lazily: Celery is not a server dependency

        self.app = Celery("sluice-agent", broker=broker, set_as_current=False)
        self.app.conf.broker_connection_retry_on_startup = True
        self.broker = broker
        self.connection_id = connection_id
        self.sender = IngestSender(url, api_key, max_buffer=buffer_size, name="sluice-agent-sender")
        self.mapper = CeleryEventMapper(connection_id, capture_args=capture_args)
        self.static_queues = [q for q in queues if q] or []
        self.poll_interval = poll_interval
        self.enable_events = enable_events
        self.warn_after = warn_after
        self.discover_queues = discover_queues
        #: Seconds between two `inspect()` of one worker (pool, queues, registered); 0: never.
        self.detail_interval = detail_interval
        self.inspect_timeout = inspect_timeout
        self.stop_event = threading.Event()
        self._lock = threading.Lock()  # the mapper is shared by the capture and poll threads
        self._receiver: Any = None
        self._capturing = False  # connected to the broker: silence then means a silent worker
        self._started = time.monotonic()
        self._warned = False
        self.actions: Any = None
        if actions:
            from .actions import CommandRunner

            self.actions = CommandRunner(
                self.app,
                self.sender,
                url,
                api_key,
                connection_id,
                capture_call=capture_args,
                on_retry=self._note_retry,
            )

    def _note_retry(self, task_id: str, call: Any) -> None:
        with self._lock:
            self.mapper.note_retry(task_id, call.retry_of, call.name, call.queue)

    # -- lifecycle --

    def run(self) -> int:
        """Capture until stopped (SIGTERM/SIGINT or `stop()`); returns an exit code."""
        log.info(
            "sluice celery-agent: broker %s → %s (connection %s); %s",
            self._safe_broker(),
            self.sender.url,
            self.connection_id,
            "sends argument and result reprs"
            if self.mapper.capture_args
            else "argument capture off (--no-args): no argument or result reprs",
        )
        missing = self._check_transport()
        if missing:
            scheme = self.broker.split("://", 1)[0]
            log.error("sluice celery-agent: cannot use the %s:// broker: %s", scheme, missing)
            self.sender.close(timeout=0)
            return EXIT_MISSING_PACKAGE
        poller = threading.Thread(target=self._poll_loop, name="sluice-agent-poll", daemon=True)
        poller.start()
        inspector = None
        if self.detail_interval > 0:
            inspector = threading.Thread(
                target=self._detail_loop, name="sluice-agent-inspect", daemon=True
            )
            inspector.start()
        if self.actions is not None:
            self.actions.start()
        else:
            log.info("sluice: operator actions off (--no-actions): commands are not carried out")
        delay = 1.0
        code = 0
        while not self.stop_event.is_set():
            connected_at = time.monotonic()
            try:
                self._capture()
            except Exception as exc:  # broker gone: reconnect with backoff
                if self.stop_event.is_set():
                    break
                missing = missing_package(exc)
                if missing:  # not a blip: retrying cannot install a package
                    log.error("sluice celery-agent: stopping: %s", missing)
                    code = EXIT_MISSING_PACKAGE
                    self.stop()
                    break
                if time.monotonic() - connected_at > 30:
                    delay = 1.0
                log.warning(
                    "sluice: lost the broker (%s: %s); reconnecting in %.0f s",
                    type(exc).__name__,
                    exc,
                    delay,
                )
                self.stop_event.wait(delay)
                delay = min(30.0, delay * 2)
        poller.join(timeout=self.poll_interval + 5)
        if inspector is not None:
            inspector.join(timeout=3 * self.inspect_timeout + 2)
        if self.actions is not None:
            self.actions.stop()
        delivered = self.sender.close(timeout=10.0)
        log.info("sluice celery-agent stopped: %s", self.sender.summary())
        return code or (0 if delivered else 1)

    def _check_transport(self) -> str | None:
        """Import the broker transport's libraries and load the transport, without
        connecting: what is wrong (a missing package, named), or None. Nothing here
        touches the network, so any failure is a setup error, not one to retry."""
        scheme = self.broker.split("://", 1)[0].split("+")[0].lower()
        try:
            for module in _TRANSPORT_MODULES.get(scheme, ()):
                importlib.import_module(module)
            conn = self.app.connection_for_read()
            try:
                conn.transport  # noqa: B018  (imports the transport and its client library)
            finally:
                conn.release()
        except Exception as exc:
            return missing_package(exc) or (
                f"its transport could not be loaded ({type(exc).__name__}: {exc}); "
                "is the broker URL's scheme right, and are its packages installed?"
            )
        return None

    def stop(self) -> None:
        self.stop_event.set()
        if self.actions is not None:
            self.actions.stop_event.set()  # the poll in progress ends in run(), off the signal handler
        receiver = self._receiver
        if receiver is not None:
            receiver.should_stop = True

    def _safe_broker(self) -> str:
        try:
            return self.app.connection_for_read().as_uri()  # hides the password
        except Exception:
            return "<broker>"

    # -- events --

    def _capture(self) -> None:
        with self.app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1)
            log.info("sluice: connected to the broker, capturing events")
            if self.enable_events:
                self._enable_worker_events()
            receiver = self.app.events.Receiver(conn, handlers={"*": self._on_event})
            receiver.connect_max_retries = 1  # reconnecting is our loop's job (with backoff)
            receiver.should_stop = self.stop_event.is_set()
            self._receiver = receiver
            with self._lock:  # heartbeats missed while we were away are not the workers' fault
                for info in self.mapper.workers.values():
                    info["last"] = time.monotonic()
            self._capturing = True
            try:
                receiver.capture(limit=None, timeout=None, wakeup=True)
            finally:
                self._capturing = False
                self._receiver = None

    def _enable_worker_events(self) -> None:
        """As Flower does: ask running workers to send task events (no restart needed)."""
        try:
            self.app.control.enable_events()
            log.info(
                "sluice: asked the workers to send task events (enable_events); "
                "use --no-enable-events to leave their setting alone"
            )
        except Exception as exc:
            log.warning("sluice: could not ask the workers to enable events: %s", exc)

    def _on_event(self, event: dict[str, Any]) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "event %s %s retries=%s clock=%s", event.get("type"), event.get("uuid"),
                event.get("retries"), event.get("clock"),
            )  # fmt: skip
        try:
            with self._lock:
                out = self.mapper.map(event)
            if out:
                self.sender.submit_many(out)
        except Exception:
            log.exception("sluice: could not map Celery event %r", event.get("type"))

    # -- periodic work: queue depths, silent workers, the no-events warning --

    def _poll_loop(self) -> None:
        conn = None
        next_enable = time.monotonic() + 60.0
        while not self.stop_event.is_set():
            started = time.monotonic()
            try:
                if conn is None:
                    conn = self.app.connection_for_read()
                    conn.ensure_connection(max_retries=1)
                self._poll_queues(conn)
                if self.enable_events and started >= next_enable:
                    next_enable = started + 60.0  # workers that started since then
                    self.app.control.enable_events(connection=conn)
            except Exception as exc:
                log.debug("sluice: queue poll failed: %s", exc)
                if conn is not None:
                    try:
                        conn.release()
                    except Exception:
                        pass
                conn = None
            with self._lock:
                expired = self.mapper.release_held()
                if self._capturing:
                    expired += self.mapper.expire_workers()
            if expired:
                self.sender.submit_many(expired)
            self._maybe_warn()
            self.stop_event.wait(max(0.1, self.poll_interval - (time.monotonic() - started)))
        if conn is not None:
            conn.release()

    # -- what Celery's remote control says of each worker --

    def _detail_loop(self) -> None:
        """Each online worker's pool, pool size, consumed queues and registered tasks,
        from `inspect()` every `detail_interval` s per worker (a new worker at once),
        for its heartbeats. Its own thread: a slow or silent worker costs at most
        3 × `inspect_timeout` here and never holds up the events."""
        fetched: dict[str, float] = {}
        while not self.stop_event.wait(1.0):
            now = time.monotonic()
            with self._lock:
                online = [n for n, i in self.mapper.workers.items() if i["state"] != OFFLINE]
            due = [n for n in online if now - fetched.get(n, -1e9) >= self.detail_interval]
            due = due[:MAX_INSPECTED]
            if not due:
                continue
            for node in due:  # answered or not, asked again after the interval
                fetched[node] = now
            try:
                details = inspect_workers(self.app, due, self.inspect_timeout)
            except Exception as exc:
                log.debug("sluice: inspect failed: %s", exc)
                continue
            with self._lock:
                for node, detail in details.items():
                    self.mapper.set_detail(node, detail)
            for node in [n for n in fetched if n not in online]:
                del fetched[node]

    def queue_names(self, conn: Any) -> list[str]:
        """Queues to poll: --queue names, else the default queue + queues seen or bound on the broker."""
        if self.static_queues:
            return list(self.static_queues)
        names = {self.app.conf.task_default_queue}
        with self._lock:
            names |= self.mapper.queues_seen
        if self.discover_queues and conn.transport.driver_type == "redis":
            names |= redis_bound_queues(conn)
        return sorted(names)

    def _poll_queues(self, conn: Any) -> None:
        events = depth_events(conn, self.connection_id, self.queue_names(conn))
        if events:
            self.sender.submit_many(events)

    def _maybe_warn(self) -> None:
        if self._warned or time.monotonic() - self._started < self.warn_after:
            return
        m = self.mapper
        if m.seen_task_events:
            return
        self._warned = True
        if m.seen_worker_events:
            log.warning(
                "sluice: workers %s are online but sent no task events in %.0f s. %s",
                ", ".join(sorted(m.workers)) or "?",
                self.warn_after,
                HOW_TO_ENABLE,
            )
        else:
            log.warning(
                "sluice: no Celery events seen on the broker in %.0f s: are workers running and "
                "connected to this broker (and the same virtual host / db)? %s",
                self.warn_after,
                HOW_TO_ENABLE,
            )


#: Workers asked at once by one `inspect()` (more wait for the next round).
MAX_INSPECTED = 50


def inspect_workers(app: Any, nodes: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    """`worker_event` keywords (pool, concurrency, processed, queues, registered) of
    each of `nodes` that answered Celery's `stats`, `active_queues` and `registered`
    (each broadcast returns once every node answered, or after `timeout`)."""
    inspect = app.control.inspect(destination=list(nodes), timeout=timeout)
    stats = inspect.stats() or {}
    queues = inspect.active_queues() or {}
    registered = inspect.registered() or {}
    out: dict[str, dict[str, Any]] = {}
    for node in nodes:
        detail = stats_detail(stats.get(node))
        names = queue_names_of(queues.get(node))
        if names:
            detail["queues"] = names
        if node in registered:
            detail["registered"] = registered_names(registered.get(node))
        if detail:
            out[node] = detail
    return out


def run_agent(**kwargs: Any) -> int:
    """Build an agent from CLI options, stop it cleanly on SIGTERM/SIGINT, run it.
    First, once, the key's connection (`GET /api/key`, retried while Sluice is
    unreachable): a key that cannot ingest, or a `--connection` that is not the
    key's, stops the command with a message (exit 1)."""
    from ...client.keyinfo import KeyRefused, resolve_connection

    try:
        info = resolve_connection(kwargs["url"], kwargs["api_key"], kwargs.get("connection_id"))
    except KeyRefused as exc:
        raise click.ClickException(str(exc)) from None
    kwargs["connection_id"] = info.connection_id
    agent = CeleryAgent(**kwargs)

    def on_signal(signum: int, frame: Any) -> None:
        log.info("sluice: signal %d: stopping (flushing what is buffered)", signum)
        agent.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return agent.run()


@click.command("celery-agent")
@click.option(
    "--broker",
    envvar="CELERY_BROKER_URL",
    show_envvar=True,
    required=True,
    help="Celery broker URL (redis://, amqp://).",
)
@click.option(
    "--url",
    envvar="SLUICE_URL",
    show_envvar=True,
    required=True,
    help="Sluice base URL, e.g. http://localhost:8000.",
)
@click.option(
    "--api-key",
    envvar="SLUICE_API_KEY",
    show_envvar=True,
    required=True,
    help="The connection's API key (sk_live_…).",
)
@click.option(
    "--connection",
    "connection_id",
    envvar="SLUICE_CONNECTION_ID",
    show_envvar=True,
    default=None,
    help="Optional: the key's connection id, checked against the key (the key alone "
    "says which connection it is, via GET /api/key).",
)
@click.option(
    "--queue", "queues", multiple=True, help="Queue to poll (repeatable; default: discovered)."
)
@click.option(
    "--poll-interval",
    type=float,
    default=5.0,
    show_default=True,
    help="Seconds between queue polls.",
)
@click.option(
    "--buffer-size",
    type=int,
    default=DEFAULT_BUFFER,
    show_default=True,
    help="Events kept while Sluice is down.",
)
@click.option(
    "--enable-events/--no-enable-events",
    default=True,
    show_default=True,
    help="Ask running workers to send task events (like Flower).",
)
@click.option(
    "--args/--no-args",
    "capture_args",
    envvar="SLUICE_CAPTURE_ARGS",
    show_envvar=True,
    default=True,
    show_default=True,
    help="Send the reprs of task arguments, keyword arguments and results "
    "(--no-args: none of them; exceptions and tracebacks are still sent).",
)
@click.option(
    "--actions/--no-actions",
    "actions",
    envvar="SLUICE_ACTIONS",
    show_envvar=True,
    default=True,
    show_default=True,
    help="Carry out operator actions from Sluice (revoke, terminate, retry, bulk retry, "
    "pool grow/shrink, shutdown), read from the connection's command stream "
    "(GET /api/connections/<id>/commands, long polling with the key). --no-actions: "
    "commands are left unanswered. Retry needs workers started with "
    "sluice.celery.install(app, capture_call=True). Run one agent with actions per connection.",
)
@click.option(
    "--warn-after",
    type=float,
    default=30.0,
    show_default=True,
    help="Warn if no task events after N s.",
)
@click.option(
    "--detail-interval",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds between two remote-control inspect() calls per worker (its pool, "
    "queues and registered tasks); 0: never.",
)
@click.option("--log-level", default="INFO", show_default=True)
def celery_agent_command(log_level: str, **kwargs: Any) -> None:
    """Watch a Celery deployment (events and queues) and send it to Sluice."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    raise SystemExit(run_agent(**kwargs))


# python -m sluice.integrations.celery.agent (the CLI proper is `python -m sluice`)
if __name__ == "__main__":
    celery_agent_command()  # pragma: no cover
