"""Two lines in a Celery app, and its tasks and workers show up live in Sluice.

    import sluice.celery
    sluice.celery.install(app)   # url/api_key[/connection_id] or SLUICE_URL, SLUICE_API_KEY[, SLUICE_CONNECTION_ID]

It listens to Celery's signals, in the processes that publish tasks (a sent
task is `queued`, or `scheduled` with an ETA/countdown) and in the workers
(received, started, succeeded, failed, retried, revoked, rejected; the
worker coming online, its heartbeats, going offline). Signal handlers only
build a small dict (with `mapping`, the same functions the agent uses) and
append it to a bounded buffer; a background thread
(a greenlet under gevent) posts batches to `POST /api/ingest`. Nothing here
raises into Celery or waits on the network inside a task.

Celery is imported lazily (inside `install`): importing this module does not
import Celery, and the server never depends on it. The logger stays
`sluice.celery`, the name users know.

Arguments and results: a task's messages (published, received) carry the
reprs of its arguments, its success the repr of its result, a failure its
traceback. `capture_args=False` (or SLUICE_CAPTURE_ARGS=0) sends no argument
or result repr at all; `redact=fn` lets the app choose what of the arguments
is sent (see `SluiceCelery.arguments`).

Settings: the signals fire whatever Celery's event settings are, so the
integration needs none of them and changes none (it logs what it hooked and
the current values). Prefork children start their own sender after the fork
(`worker_process_init`, plus an at-fork hook), threads and gevent pools share
the process's one sender.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ...client.ingest import DEFAULT_BUFFER, IngestSender
from .mapping import (
    ACTIVE,
    CANCELLED,
    COMPLETED,
    FAILED,
    OFFLINE,
    ONLINE,
    RETRY_OF_HEADER,
    RETRYING,
    SERVER_MAX_EXTENSIONS_BYTES,
    TERMINAL,
    WORKER_HEARTBEAT,
    WORKER_STATE_CHANGE,
    attempt_from_retries,
    describe_exception,
    heartbeat_state,
    job_event,
    message_extensions,
    now_iso,
    pool_name,
    queue_names_of,
    random_id,
    registered_names,
    revoke_extensions,
    safe_repr,
    waiting_state,
    with_call,
    worker_event,
)
from .queues import depth_events

log = logging.getLogger("sluice.celery")

__all__ = ["install", "SluiceCelery", "Redact"]

#: `install(app, redact=fn)`: fn(task name, args, kwargs) → (args, kwargs) to send, or None
#: to send neither.
Redact = Callable[[str, tuple[Any, ...], dict[str, Any]], tuple[Any, Any] | None]

#: How often the main process looks at its count of active tasks, to send a
#: heartbeat as soon as it changes (seconds).
ACTIVE_CHECK_SECONDS = 1.0

_FALSE = frozenset({"0", "f", "false", "n", "no", "off"})
_TRUE = frozenset({"", "1", "t", "true", "y", "yes", "on"})

_installed: dict[int, SluiceCelery] = {}


def install(
    celery_app: Any,
    url: str | None = None,
    api_key: str | None = None,
    connection_id: str | None = None,
    *,
    buffer_size: int | None = None,
    heartbeat_interval: float | None = None,
    capture_args: bool | None = None,
    redact: Redact | None = None,
    capture_call: bool | None = None,
) -> SluiceCelery | None:
    """Forward this Celery app's task and worker events to Sluice (idempotent per app).

    Missing settings are taken from SLUICE_URL, SLUICE_API_KEY and
    SLUICE_CONNECTION_ID. Without a URL or a key it logs an error and does
    nothing: a monitoring misconfiguration must not stop a worker from starting.
    The connection id is optional: the key's connection is asked once
    (`GET /api/key`); a given id is checked against it. A key that cannot
    ingest (unknown, revoked, read-only) or a mismatching id: an error logged,
    nothing installed.

    `capture_args` (default: SLUICE_CAPTURE_ARGS, on): send the reprs of the
    tasks' arguments, keyword arguments and results; False sends none of them.
    `redact(task name, args, kwargs)` returns the `(args, kwargs)` whose reprs
    are sent instead of the real ones (see `SluiceCelery.arguments`).

    `capture_call` (default: SLUICE_CAPTURE_CALL, off): put the task's real
    arguments, `extensions.call = {"args": [...], "kwargs": {...}}`, on its
    failed, retrying and cancelled events, so that the agent can retry it (an
    operator's action); only when they are JSON and small (`mapping.with_call`),
    else `extensions.callSkipped`. Never without `capture_args`, nor with a
    `redact` hook (the call would carry what the hook hides).
    """
    url = url or os.environ.get("SLUICE_URL")
    api_key = api_key or os.environ.get("SLUICE_API_KEY")
    connection_id = connection_id or os.environ.get("SLUICE_CONNECTION_ID") or None
    missing = [n for n, v in (("url", url), ("api_key", api_key)) if not v]
    if missing:
        log.error(
            "sluice: not installed: missing %s (pass them to sluice.celery.install or set "
            "SLUICE_URL, SLUICE_API_KEY)",
            ", ".join(missing),
        )
        return None
    existing = _installed.get(id(celery_app))
    if existing is not None:
        return existing
    assert url is not None and api_key is not None
    connection_id = _connection_of_key(url, api_key, connection_id)
    if connection_id is None:
        return None
    if buffer_size is None:
        buffer_size = int(os.environ.get("SLUICE_BUFFER_SIZE") or DEFAULT_BUFFER)
    if heartbeat_interval is None:
        heartbeat_interval = float(os.environ.get("SLUICE_HEARTBEAT_INTERVAL") or 10.0)
    if capture_args is None:
        capture_args = _env_flag("SLUICE_CAPTURE_ARGS")
    if redact is not None and not callable(redact):
        log.error("sluice: redact=%r is not callable: no arguments will be sent", redact)
        capture_args = False
        redact = None
    if capture_call is None:
        capture_call = _env_flag("SLUICE_CAPTURE_CALL", default=False)
    if capture_call and not capture_args:
        log.info("sluice: capture_call is off because argument capture is off")
        capture_call = False
    if capture_call and redact is not None:
        log.warning(
            "sluice: capture_call is off: a redact hook is set, and the call would send "
            "the real arguments it hides (retry from Sluice needs the call)"
        )
        capture_call = False
    integration = SluiceCelery(
        celery_app,
        url=url,
        api_key=api_key,
        connection_id=connection_id,
        buffer_size=buffer_size,
        heartbeat_interval=heartbeat_interval,
        capture_args=capture_args,
        redact=redact,
        capture_call=capture_call,
    )
    integration.connect()
    _installed[id(celery_app)] = integration
    return integration


#: How long `install` waits, at most, for Sluice to say which connection the key has.
KEY_LOOKUP_SECONDS = 10.0


def _connection_of_key(url: str, api_key: str, given: str | None) -> str | None:
    """The key's connection id (`GET /api/key`, once), checked against `given`; None,
    with an error logged, when the key cannot ingest or does not match. Sluice
    unreachable for KEY_LOOKUP_SECONDS: `given` unchecked if any, else None."""
    from ...client.keyinfo import KeyRefused, SluiceUnreachable, resolve_connection

    try:
        return resolve_connection(url, api_key, given, max_wait=KEY_LOOKUP_SECONDS).connection_id
    except KeyRefused as exc:
        log.error("sluice: not installed: %s", exc)
    except SluiceUnreachable as exc:
        if given is not None:
            log.warning("sluice: %s; using connection %s as given, unchecked", exc, given)
            return given
        log.error(
            "sluice: not installed: %s (pass connection_id or set SLUICE_CONNECTION_ID "
            "to start without asking)",
            exc,
        )
    return None


class SluiceCelery:
    """The signal handlers of one Celery app and the sender they feed."""

    def __init__(
        self,
        celery_app: Any,
        *,
        url: str,
        api_key: str,
        connection_id: str,
        buffer_size: int = DEFAULT_BUFFER,
        heartbeat_interval: float = 10.0,
        capture_args: bool = True,
        redact: Redact | None = None,
        capture_call: bool = False,
    ) -> None:
        self.app = celery_app
        self.connection_id = connection_id
        #: Send the reprs of arguments, keyword arguments and results (`USER_DATA_KEYS`).
        self.capture_args = capture_args
        self.redact = redact
        #: Put the task's real call on failed/retrying/cancelled events (for a retry).
        self.capture_call = bool(capture_call and capture_args and redact is None)
        self.max_extensions_bytes = _env_int(
            "SLUICE_MAX_EXTENSIONS_BYTES", SERVER_MAX_EXTENSIONS_BYTES
        )
        self._redact_failed = False  # the hook's first error is logged, later ones at debug
        self.sender = IngestSender(
            url, api_key, max_buffer=buffer_size, name="sluice-celery-sender"
        )
        self.heartbeat_interval = max(0.1, heartbeat_interval)
        #: How long worker shutdown (and `uninstall`) waits for buffered events to go out.
        self.shutdown_flush_seconds = 5.0
        self._uid = f"sluice-{id(self)}"
        # task id → (queue, time) from before_task_publish, used by after_task_publish
        self._queues: OrderedDict[str, tuple[str | None, float]] = OrderedDict()
        self._started: dict[tuple[str, int], float] = {}  # (task id, retries) → start
        # (task id, retries of the new message) → its publish event, sent after `retrying`
        self._deferred: dict[tuple[str, int], dict[str, Any]] = {}
        # (task id, retries of the new message) → when task.retry() published it
        self._retry_at: dict[tuple[str, int], float] = {}
        self._worker: dict[str, Any] = {}
        self._consumer: Any = None  # the worker's consumer (worker_ready), main process only
        self._hb_stop = threading.Event()
        self._handlers: list[tuple[Any, Callable[..., None]]] = []

    # -- wiring --

    def connect(self) -> None:
        from celery import signals  # lazily

        table: list[tuple[Any, Callable[..., None]]] = [
            (signals.before_task_publish, self.on_before_publish),
            (signals.after_task_publish, self.on_after_publish),
            (signals.task_received, self.on_received),
            (signals.task_prerun, self.on_prerun),
            (signals.task_postrun, self.on_postrun),
            (signals.task_success, self.on_success),
            (signals.task_failure, self.on_failure),
            (signals.task_retry, self.on_retry),
            (signals.task_revoked, self.on_revoked),
            (signals.task_rejected, self.on_rejected),
            (signals.task_unknown, self.on_unknown),
            (signals.celeryd_after_setup, self.on_after_setup),
            (signals.worker_ready, self.on_worker_ready),
            (signals.worker_shutdown, self.on_worker_shutdown),
            (signals.worker_process_init, self.on_process_init),
            (signals.worker_process_shutdown, self.on_process_shutdown),
        ]
        for signal, handler in table:
            guarded = _guard(handler)
            signal.connect(guarded, weak=False, dispatch_uid=f"{self._uid}-{handler.__name__}")
            self._handlers.append((signal, handler))
        # A publisher sees this line with its own logging. In a worker it comes before Celery
        # sets up logging and goes nowhere: `on_after_setup` says it again once it can be seen.
        log.info("%s", self.startup_line())

    def startup_line(self) -> str:
        """What the integration hooked and where it sends (logged at start-up)."""
        conf = self.app.conf
        hooked = (
            f"hooked {len(self._handlers)} Celery signals of app {self.app.main!r}, "
            f"sending to {self.sender.url} (connection {self.connection_id}) in batches of up to "
            f"{self.sender.batch_size} events or every {self.sender.linger:g} s; uses signals, so "
            f"it needs no event settings (worker_send_task_events={conf.worker_send_task_events}, "
            f"task_send_sent_event={conf.task_send_sent_event} left as they are); "
            f"{_capture_summary(self.capture_args, self.redact)}"
            f"{'; captures calls for retry (capture_call)' if self.capture_call else ''}"
        )
        return "sluice: " + hooked

    def uninstall(self) -> None:
        """Disconnect the handlers and flush (for tests and embedding)."""
        for signal, handler in self._handlers:
            signal.disconnect(dispatch_uid=f"{self._uid}-{handler.__name__}")
        self._handlers.clear()
        self._hb_stop.set()
        self.sender.close(timeout=self.shutdown_flush_seconds)
        _installed.pop(id(self.app), None)

    def _job(self, **fields: Any) -> dict[str, Any]:
        """A job event of this connection; without capture, `job_event` drops user data."""
        return job_event(self.connection_id, capture_args=self.capture_args, **fields)

    # -- what of a task's own data is sent --

    def arguments(
        self, name: Any, args: Any, kwargs: Any, argsrepr: Any = None, kwargsrepr: Any = None
    ) -> tuple[str | None, str | None]:
        """The reprs of a task message's (args, kwargs) to send, each None for none.

        - capture off: (None, None);
        - no `redact` hook: Celery's `argsrepr`/`kwargsrepr` of the message (what
          Celery's own task-sent/task-received events carry, so the agent sends the
          same; `apply_async(argsrepr=...)` is honoured), else Celery's saferepr of
          the values;
        - a `redact` hook: it gets (task name, a copy of args as a tuple, a copy of
          kwargs as a dict) and returns the (args, kwargs) whose reprs are sent (None
          for either: not sent; None instead of a pair: neither). If it raises, or
          returns anything else, nothing of the arguments is sent and the error is
          logged (the first time at ERROR, later at DEBUG); the task runs on.
        """
        if not self.capture_args:
            return None, None
        if self.redact is None:
            return (
                argsrepr if argsrepr is not None else _repr_or_none(args),
                kwargsrepr if kwargsrepr is not None else _repr_or_none(kwargs),
            )
        try:
            chosen = self.redact(
                str(name or ""),
                tuple(args) if args is not None else (),
                dict(kwargs) if kwargs is not None else {},
            )
            if chosen is None:
                return None, None
            if not isinstance(chosen, (tuple, list)) or len(chosen) != 2:
                raise TypeError(f"redact returned {type(chosen).__name__}, not (args, kwargs)")
            new_args, new_kwargs = chosen
            if isinstance(new_args, list):
                new_args = tuple(new_args)
            return _repr_or_none(new_args), _repr_or_none(new_kwargs)
        except Exception:
            first = not self._redact_failed
            self._redact_failed = True
            log.log(
                logging.ERROR if first else logging.DEBUG,
                "sluice: the redact hook failed for task %s: its arguments are not sent%s",
                name,
                " (further failures are logged at DEBUG)" if first else "",
                exc_info=True,
            )
            return None, None

    def result(self, task: Any, value: Any) -> str | None:
        """The repr of a task's result to send (None without capture): Celery's own
        saferepr, as in its task-succeeded event, so both producers send the same."""
        if not self.capture_args:
            return None
        return _celery_saferepr(value, getattr(task, "resultrepr_maxsize", None) or 1024)

    def _mine(self, task: Any) -> bool:
        return (
            getattr(task, "app", None) is None
            or task.app is self.app
            or task.app.main == self.app.main
        )

    # -- publisher side --

    def on_before_publish(
        self,
        sender: Any = None,
        headers: dict[str, Any] | None = None,
        declare: Any = None,
        **kw: Any,
    ) -> None:
        headers = headers or {}
        task_id = headers.get("id")
        if not task_id:
            return
        queue = None
        for q in declare or ():
            queue = getattr(q, "name", None)
            if queue:
                break
        queue = queue or kw.get("routing_key")
        if headers.get("retries") and _current_request_id() == task_id:
            # task.retry() decided to retry now: that is when the attempt became `retrying`.
            # Keyed by the retry's number: under the threads pool, the next attempt can
            # already run (and retry) before this thread reports its own retry.
            self._retry_at[(task_id, headers["retries"])] = time.time()
        # The time before publishing: a worker may start the task before the publish returns.
        self._queues[task_id] = (queue, time.time())
        while len(self._queues) > 1000:
            self._queues.popitem(last=False)

    def on_after_publish(
        self, sender: Any = None, headers: dict[str, Any] | None = None, body: Any = None, **kw: Any
    ) -> None:
        headers = headers or {}
        task_id = headers.get("id")
        if not task_id:  # task protocol 1
            task_id = body.get("id") if isinstance(body, dict) else None
            headers = body if isinstance(body, dict) else {}
        if not task_id:
            return
        retries = headers.get("retries") or 0
        eta = headers.get("eta")
        queue, published_at = self._queues.pop(task_id, (None, time.time()))
        name = headers.get("task") or sender
        args_repr, kwargs_repr = self.arguments(
            name, *_body_arguments(body), headers.get("argsrepr"), headers.get("kwargsrepr")
        )
        event = self._job(
            task_id=task_id,
            name=name,
            state=waiting_state(eta),
            attempt=attempt_from_retries(retries),
            queue=queue or kw.get("routing_key"),
            timestamp=published_at,
            created_at=published_at,
            extensions={
                "celerySignal": "after_task_publish",
                **message_extensions(
                    task_id,
                    args=args_repr,
                    kwargs=kwargs_repr,
                    eta=eta,
                    expires=headers.get("expires"),
                    routing_key=kw.get("routing_key"),
                    exchange=kw.get("exchange"),
                    root_id=headers.get("root_id"),
                    parent_id=headers.get("parent_id"),
                ),
                "origin": headers.get("origin"),
            },
        )
        current = _current_request_id()
        if retries and current == task_id:
            # task.retry() publishes before Celery reports the retry: send it after `retrying`.
            self._deferred[(task_id, retries)] = event
            return
        self.sender.submit(event)

    # -- worker main process --

    def on_received(self, sender: Any = None, request: Any = None, **kw: Any) -> None:
        if request is None:
            return
        info = getattr(request, "request_dict", None) or {}
        delivery = getattr(request, "delivery_info", None) or {}
        eta: Any = getattr(request, "eta", None)  # a datetime, a string or None
        retries = int(info.get("retries") or 0)
        args_repr, kwargs_repr = self.arguments(
            request.name,
            getattr(request, "args", None),
            getattr(request, "kwargs", None),
            getattr(request, "argsrepr", None),
            getattr(request, "kwargsrepr", None),
        )
        event = self._job(
            task_id=request.id,
            name=request.name,
            state=waiting_state(eta),
            attempt=attempt_from_retries(info.get("retries")),
            queue=delivery.get("routing_key"),
            worker_id=getattr(request, "hostname", None),
            extensions={
                "celerySignal": "task_received",
                "retryOf": _retry_of(info),
                **message_extensions(
                    request.id,
                    args=args_repr,
                    kwargs=kwargs_repr,
                    eta=_isoformat(eta),
                    expires=_isoformat(getattr(request, "expires", None)),
                    routing_key=delivery.get("routing_key"),
                    exchange=delivery.get("exchange"),
                    root_id=getattr(request, "root_id", None),
                    parent_id=getattr(request, "parent_id", None),
                ),
                "hostname": getattr(request, "hostname", None),
            },
        )
        key = (request.id, retries)
        if retries and key in self._retry_at:
            # This process published the retry and has not reported `retrying` yet
            # (threads/gevent pools): send the new attempt's `queued` after it.
            self._deferred.setdefault(key, event)
            return
        self.sender.submit(event)

    def on_revoked(self, sender: Any = None, request: Any = None, **kw: Any) -> None:
        if request is None:
            return
        task_id = getattr(request, "id", None)
        if not task_id:
            return
        delivery = getattr(request, "delivery_info", None) or {}
        event = self._job(
            task_id=task_id,
            name=getattr(request, "task", None) or getattr(sender, "name", None),
            state=CANCELLED,
            attempt=attempt_from_retries(getattr(request, "retries", 0)),
            queue=delivery.get("routing_key"),
            worker_id=getattr(request, "hostname", None),
            finished_at=time.time(),
            extensions={
                "celerySignal": "task_revoked",
                "retryOf": _retry_of(getattr(request, "request_dict", None)),
                **revoke_extensions(kw.get("terminated"), kw.get("signum"), kw.get("expired")),
            },
        )
        if self.capture_call:
            event = self._with_call(event, *_request_call(request))
        self.sender.submit(event)

    def on_rejected(
        self, sender: Any = None, message: Any = None, exc: Any = None, **kw: Any
    ) -> None:
        headers = getattr(message, "headers", None) or {}
        task_id = headers.get("id")
        if not task_id:
            return
        self.sender.submit(
            self._job(
                task_id=task_id,
                name=headers.get("task"),
                state=FAILED,
                attempt=attempt_from_retries(headers.get("retries")),
                error=f"rejected: {safe_repr(exc)}",
                finished_at=time.time(),
                extensions={"celerySignal": "task_rejected"},
            )
        )

    def on_unknown(
        self, sender: Any = None, name: Any = None, id: Any = None, exc: Any = None, **kw: Any
    ) -> None:
        if not id:
            return
        self.sender.submit(
            self._job(
                task_id=id,
                name=name,
                state=FAILED,
                error=f"unregistered task: {safe_repr(exc)}",
                finished_at=time.time(),
                extensions={"celerySignal": "task_unknown"},
            )
        )

    # -- where the task runs (pool child, thread or greenlet) --

    def on_prerun(
        self, sender: Any = None, task_id: str | None = None, task: Any = None, **kw: Any
    ) -> None:
        if not task_id or task is None or not self._mine(task):
            return
        req = task.request
        self._started[(task_id, getattr(req, "retries", 0) or 0)] = time.monotonic()
        self._submit_running(
            task,
            req,
            task_id,
            ACTIVE,
            started_at=time.time(),
            extensions={
                "celerySignal": "task_prerun",
                "pid": os.getpid(),
                "hostname": req.hostname,
            },
        )

    def _with_call(self, event: dict[str, Any], args: Any, kwargs: Any) -> dict[str, Any]:
        """`event` with the task's call (`extensions.call`) when capture_call is on."""
        if not self.capture_call:
            return event
        return with_call(event, args, kwargs, max_extensions_bytes=self.max_extensions_bytes)

    def _submit_running(
        self,
        task: Any,
        req: Any,
        task_id: str,
        state: str,
        call: tuple[Any, Any] | None = None,
        **fields: Any,
    ) -> None:
        """A job event of the task running here: its request tells the attempt, queue and
        worker; `call` (args, kwargs): its call, put on when capture_call is on."""
        delivery = getattr(req, "delivery_info", None) or {}
        retry_of = getattr(req, RETRY_OF_HEADER, None)
        if isinstance(retry_of, str) and retry_of:
            fields["extensions"] = {**(fields.get("extensions") or {}), "retryOf": retry_of}
        event = self._job(
            task_id=task_id,
            name=task.name,
            state=state,
            attempt=attempt_from_retries(getattr(req, "retries", 0)),
            queue=delivery.get("routing_key"),
            worker_id=getattr(req, "hostname", None),
            max_retries=getattr(task, "max_retries", None),
            **fields,
        )
        if call is not None:
            event = self._with_call(event, *call)
        self.sender.submit(event)

    def _finish(
        self, task: Any, state: str, signal_name: str, req: Any = None, **fields: Any
    ) -> None:
        req = req if req is not None and getattr(req, "id", None) else task.request
        task_id = req.id
        started = self._started.pop((task_id, getattr(req, "retries", 0) or 0), None)
        runtime = round(time.monotonic() - started, 6) if started is not None else None
        ext = {
            "celerySignal": signal_name,
            "runtime": runtime,
            "pid": os.getpid(),
            "hostname": req.hostname,
        }
        ext.update(fields.pop("extensions", {}))
        self._submit_running(
            task,
            req,
            task_id,
            state,
            finished_at=time.time() if state in TERMINAL else None,
            extensions=ext,
            **fields,
        )

    def on_success(self, sender: Any = None, result: Any = None, **kw: Any) -> None:
        if sender is None or not self._mine(sender):
            return
        self._finish(
            sender, COMPLETED, "task_success", extensions={"result": self.result(sender, result)}
        )

    def on_failure(
        self,
        sender: Any = None,
        task_id: str | None = None,
        exception: Any = None,
        einfo: Any = None,
        **kw: Any,
    ) -> None:
        if sender is None or not self._mine(sender):
            return
        req = sender.request
        self._finish(
            sender,
            FAILED,
            "task_failure",
            error=describe_exception(exception),
            stacktrace=getattr(einfo, "traceback", None),
            call=(
                kw.get("args", getattr(req, "args", None)),
                kw.get("kwargs", getattr(req, "kwargs", None)),
            ),
        )

    def on_retry(
        self,
        sender: Any = None,
        request: Any = None,
        reason: Any = None,
        einfo: Any = None,
        **kw: Any,
    ) -> None:
        if sender is None or not self._mine(sender):
            return
        exc = getattr(reason, "exc", None) or reason
        req = request if getattr(request, "id", None) else sender.request
        key = (req.id, int(getattr(req, "retries", 0) or 0) + 1)
        self._finish(
            sender,
            RETRYING,
            "task_retry",
            req=req,
            timestamp=self._retry_at.pop(key, None),
            error=describe_exception(exc),
            stacktrace=getattr(einfo, "traceback", None),
            call=(getattr(req, "args", None), getattr(req, "kwargs", None)),
            extensions={
                "when": safe_repr(getattr(reason, "when", None))
                if getattr(reason, "when", None)
                else None
            },
        )
        deferred = self._deferred.pop(key, None)
        if deferred is not None:
            self.sender.submit(deferred)

    def on_postrun(
        self, sender: Any = None, task_id: str | None = None, task: Any = None, **kw: Any
    ) -> None:
        if not task_id:
            return
        retries = int(getattr(getattr(task, "request", None), "retries", 0) or 0)
        self._started.pop((task_id, retries), None)
        key = (task_id, retries + 1)
        self._retry_at.pop(key, None)
        deferred = self._deferred.pop(key, None)
        if deferred is not None:  # a retry published but never reported: send it anyway
            self.sender.submit(deferred)

    # -- the worker itself (main process) --

    def on_after_setup(self, sender: Any = None, **kw: Any) -> None:
        # celeryd_after_setup: the worker has set up its logging (`--loglevel`), so the
        # start-up line logged at install time is said again where it shows.
        log.info("%s (worker %s)", self.startup_line(), sender)

    def on_worker_ready(self, sender: Any = None, **kw: Any) -> None:
        consumer = sender
        hostname = getattr(consumer, "hostname", None) or f"celery@{socket.gethostname()}"
        concurrency = None
        try:
            concurrency = int(consumer.controller.concurrency)
        except Exception:
            pass
        queues: list[str] = []
        try:
            queues = [q.name for q in consumer.task_consumer.queues]
        except Exception:
            pass
        self._worker = {
            "nodename": hostname,
            "concurrency": concurrency,
            "queues": queues,
            "pid": os.getpid(),
            "registered": registered_names(list(self.app.tasks.keys())),
        }
        self._consumer = consumer
        self.sender.submit(
            self._worker_event(WORKER_STATE_CHANGE, ONLINE, previous=OFFLINE, active=0)
        )
        self._hb_stop.clear()
        threading.Thread(
            target=self._heartbeat_loop, name="sluice-celery-heartbeat", daemon=True
        ).start()
        threading.Thread(
            target=self._queue_loop, name="sluice-celery-queue-depth", daemon=True
        ).start()

    def on_worker_shutdown(self, sender: Any = None, **kw: Any) -> None:
        self._hb_stop.set()
        if self._worker:
            self.sender.submit(
                self._worker_event(WORKER_STATE_CHANGE, OFFLINE, previous=ONLINE, active=0)
            )
        self.sender.flush(timeout=self.shutdown_flush_seconds)
        log.info("sluice: worker process %d stopping: %s", os.getpid(), self.sender.summary())

    def on_process_init(self, **kw: Any) -> None:
        # The at-fork hook already gave this child a fresh sender state; drop the
        # parent's per-task bookkeeping too. The sender thread starts on first use.
        self._started.clear()
        self._deferred.clear()
        self._retry_at.clear()

    def on_process_shutdown(self, **kw: Any) -> None:
        self.sender.flush(timeout=2.0)  # bounded: a child must exit promptly
        log.info("sluice: pool process %d exiting: %s", os.getpid(), self.sender.summary())

    def _heartbeat_loop(self) -> None:
        """The main process's heartbeat: every `heartbeat_interval`, and at once
        (checked every `ACTIVE_CHECK_SECONDS`) when its count of active tasks
        changes, so the worker's panel keeps up with its jobs."""
        tick = min(ACTIVE_CHECK_SECONDS, self.heartbeat_interval)
        last_active: int | None = None
        due = time.monotonic() + self.heartbeat_interval
        while not self._hb_stop.wait(tick):
            now = time.monotonic()
            try:
                active = _active_count()
                if now >= due or active != last_active:
                    self.sender.submit(
                        self._worker_event(
                            WORKER_HEARTBEAT, heartbeat_state(active), active=active, random=True
                        )
                    )
                    last_active = active
                if now >= due:
                    due = now + self.heartbeat_interval
            except Exception:
                log.debug("sluice: heartbeat failed", exc_info=True)

    def _queue_loop(self) -> None:
        """Every `heartbeat_interval`, the depth of the queues the worker consumes,
        read from the broker as the agent reads it. A thread of its own: a broker
        that hangs holds up these reads, never the heartbeats (which would make a
        live worker expire)."""
        conn = None
        while not self._hb_stop.wait(self.heartbeat_interval):
            conn = self._send_queue_depths(conn)
        if conn is not None:
            _release(conn)

    def _send_queue_depths(self, conn: Any) -> Any:
        """A queue snapshot of each queue the worker consumes; the broker
        connection to use next time (None after an error: a new one then)."""
        names = self._worker.get("queues") or []
        if not names:
            return conn
        try:
            if conn is None:
                conn = self.app.connection_for_read()
                conn.ensure_connection(max_retries=1)
            events = depth_events(conn, self.connection_id, names)
            self.sender.submit_many(events)
            return conn
        except Exception as exc:
            log.debug("sluice: queue depth failed: %s", exc)
            if conn is not None:
                _release(conn)
            return None

    def _worker_event(
        self,
        kind: str,
        state: str,
        *,
        previous: str | None = None,
        active: int | None = None,
        random: bool = False,
    ) -> dict[str, Any]:
        w = self._worker
        live = _worker_now(self._consumer) if state != OFFLINE else {}
        return worker_event(
            self.connection_id,
            kind=kind,
            nodename=w.get("nodename", "celery@unknown"),
            state=state,
            previous_state=previous,
            active=active,
            concurrency=live.get("concurrency", w.get("concurrency")),
            pid=w.get("pid"),
            queues=live.get("queues") or w.get("queues"),
            pool=live.get("pool"),
            processed=live.get("processed"),
            reserved=live.get("reserved"),
            registered=w.get("registered"),
            timestamp=now_iso(),
            event_id=random_id() if random else None,
            extensions={
                "celerySignal": "heartbeat_timer" if kind == WORKER_HEARTBEAT else None,
                "freq": self.heartbeat_interval,
            },
        )


def _release(conn: Any) -> None:
    try:
        conn.release()
    except Exception:
        pass


def _guard(handler: Callable[..., None]) -> Callable[..., None]:
    """Wrap a signal handler so that nothing it does can raise into Celery."""

    def guarded(*args: Any, **kwargs: Any) -> None:
        try:
            handler(*args, **kwargs)
        except Exception:
            log.debug("sluice: %s failed", handler.__name__, exc_info=True)

    guarded.__name__ = handler.__name__
    return guarded


def _current_request_id() -> str | None:
    try:
        from celery import current_task

        task = current_task._get_current_object() if current_task else None
        return task.request.id if task is not None else None
    except Exception:
        return None


def _active_count() -> int:
    try:
        from celery.worker import state

        return len(state.active_requests)
    except Exception:
        return 0


def _worker_now(consumer: Any) -> dict[str, Any]:
    """What this worker's own objects say of it now (main process): its pool's kind
    and size, the queues its consumer consumes, the tasks it accepted (Celery's
    count, the heartbeat event's `processed`) and those it holds waiting
    (reserved, not started: what `inspect().reserved()` lists). Each read is
    guarded: whatever Celery version misses is left out."""
    out: dict[str, Any] = {}
    if consumer is None:
        return out
    pool = getattr(consumer, "pool", None)
    if pool is not None:
        cls = type(pool)
        out["pool"] = pool_name(f"{cls.__module__}:{cls.__qualname__}")
        try:
            out["concurrency"] = int(pool.num_processes)
        except Exception:
            pass
    try:
        out["queues"] = queue_names_of([q.name for q in consumer.task_consumer.queues])
    except Exception:
        pass
    try:
        from celery.worker import state

        out["processed"] = int(state.all_total_count[0])
    except Exception:
        return out
    for _ in range(3):  # the worker changes these sets meanwhile (heartbeat thread)
        try:
            out["reserved"] = len(state.reserved_requests - state.active_requests)
            break
        except RuntimeError:  # changed size during iteration: read again
            continue
        except Exception:
            break
    return out


def _retry_of(request_dict: Any) -> str | None:
    """The job an operator's retry re-sent (the agent's `sluice_retry_of` header)."""
    value = request_dict.get(RETRY_OF_HEADER) if isinstance(request_dict, dict) else None
    return value if isinstance(value, str) and value else None


def _request_call(request: Any) -> tuple[Any, Any]:
    """(args, kwargs) of a worker's Request (they are decoded from the message body
    on demand; a message that cannot be read gives none)."""
    try:
        return request.args, request.kwargs
    except Exception:
        return None, None


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    try:
        return int(raw) if raw else default
    except ValueError:
        return default


def _env_flag(name: str, default: bool = True) -> bool:
    """A yes/no setting from the environment (click's words: 1/0, true/false, yes/no,
    on/off, t/f, y/n; empty: the default). Anything else: off, with an error logged
    (a misspelt attempt to turn capture off must not send what it meant to keep)."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _FALSE:
        return False
    if value in _TRUE:
        return default if value == "" else True
    log.error("sluice: %s=%r is not a yes/no value: taken as off", name, raw)
    return False


def _capture_summary(capture_args: bool, redact: Any) -> str:
    if not capture_args:
        return "argument capture off: no argument or result reprs"
    if redact is not None:
        return f"arguments through redact={getattr(redact, '__qualname__', redact)!s}"
    return "sends argument and result reprs"


def _body_arguments(body: Any) -> tuple[Any, Any]:
    """(args, kwargs) of a published message's body (task protocol 2 or 1), None when unknown."""
    if isinstance(body, (tuple, list)) and len(body) >= 2:  # protocol 2: (args, kwargs, embed)
        return body[0], body[1]
    if isinstance(body, dict):  # protocol 1
        return body.get("args"), body.get("kwargs")
    return None, None


def _celery_saferepr(value: Any, maxlen: int) -> str:
    """Celery's saferepr (what its events and argsrepr use); ours if that cannot be had."""
    try:
        from celery.utils.saferepr import saferepr

        return str(saferepr(value, maxlen))
    except Exception:
        return safe_repr(value if not isinstance(value, str) else repr(value))


def _repr_or_none(value: Any) -> str | None:
    return None if value is None else _celery_saferepr(value, 1024)


def _isoformat(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value
