"""The agent's command runner: operator actions from Sluice, carried out with Celery.

The server never has broker credentials: an owner's click becomes a command on
the connection's command stream, and the agent, which has the broker, reads it
through Sluice (`GET /api/connections/<id>/commands?after=…&wait=25`, long
polling with the connection's write key), carries it out with the Celery app it
already has and answers with a `command_result` event through its ingest sender
(`command:result` on the stream):

- `revoke`: `app.control.revoke(id)` (every worker: any of them may hold it);
- `terminate`: `app.control.revoke(id, terminate=True, signal=SIG)`;
- `retry`: `app.send_task(name, args, kwargs, queue=…)` with the job's captured
  call (`extensions.call`, sent by workers that run
  `sluice.celery.install(app, capture_call=True)`), read from
  `GET …/jobs/<ref>`; the new task is reported `queued` with
  `extensions.retryOf` = the original's external id;
- `bulk_retry`: the same for each job of `GET …/jobs?state=…` (its filter),
  page by page, at most `MAX_BULK_RETRY` per command;
- `pool_grow`, `pool_shrink`, `shutdown`: `app.control.…(destination=[worker],
  reply=True, timeout=…)`.

A command whose `requestedAt` is more than `MAX_COMMAND_AGE` seconds old when
the agent reads it is not carried out (`failed`, `{"error": "expired"}`): an
agent that comes back after an outage does not act on stale clicks.

Delivery is at least once from the server's side, so the runner remembers the
ids of the commands it carried out (bounded) and does each once per process;
run one agent with actions per connection (two would both act).

The functions above `CommandRunner` are pure (no Celery, no I/O) and unit
tested; the Celery calls are thin. Standard library HTTP (`http.client`), like
the ingest sender and the key lookup; Celery is imported by the caller.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, urlencode, urlsplit

from ... import contract
from ...timefmt import now_iso, parse_iso
from .mapping import (
    COMMAND_FIELD,
    COMMAND_RESULT,
    FRAMEWORK,
    QUEUED,
    RETRY_OF_HEADER,
    job_event,
    producer_id,
)

log = logging.getLogger("sluice.celery_agent.actions")

USER_AGENT = "sluice-actions/1"

DONE, FAILED = contract.COMMAND_STATUSES

#: Commands older than this (seconds, from `requestedAt`) are answered `expired`.
MAX_COMMAND_AGE: Final = float(contract.COMMAND_MAX_AGE_SECONDS)
#: Seconds the server may hold a poll open (`wait`).
POLL_WAIT: Final = contract.COMMAND_WAIT_MAX_SECONDS
#: Jobs one bulk retry re-sends at most (the rest: another command).
MAX_BULK_RETRY: Final = 1_000
#: Jobs one bulk retry looks at, at most (jobs without a captured call are skipped).
MAX_BULK_SCAN: Final = 5_000
#: Jobs per page of `GET …/jobs` (the API's maximum).
BULK_PAGE: Final = contract.JOBS_PAGE_MAX
#: New job ids a bulk retry's detail lists.
MAX_NEW_JOB_IDS: Final = 100
#: A result's `detail` as JSON, at most.
MAX_DETAIL_BYTES: Final = contract.MAX_COMMAND_DETAIL_BYTES
#: Seconds a control command waits for the workers' replies.
CONTROL_TIMEOUT: Final = 5.0
#: Signals a terminate may send.
SIGNALS: Final = frozenset(contract.SIGNALS)
#: States a job can be retried from.
RETRYABLE: Final = frozenset(contract.BULK_RETRY_STATES)
#: The actions of the command stream (a bulk retry is `bulk_retry` there).
ACTIONS: Final = frozenset(contract.COMMAND_ACTIONS)

NO_CALL = (
    "arguments not captured: start the workers with sluice.celery.install(app, capture_call=True)"
)
EXPIRED = "expired"


class CommandError(Exception):
    """A command that cannot be carried out; the message is the result's `error`."""


# -- pure parts ----------------------------------------------------------------


def command_age(command: dict[str, Any], now: float) -> float | None:
    """Seconds since the command was requested (`requestedAt`), None if it has no
    readable time. `now` is epoch seconds."""
    stamp = parse_iso(command.get("requestedAt"))
    if stamp is None:
        return None
    from datetime import datetime

    requested = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    return now - requested


def is_expired(command: dict[str, Any], now: float, max_age: float = MAX_COMMAND_AGE) -> bool:
    """Too old to carry out: requested more than `max_age` seconds ago, or with no
    readable `requestedAt` (its age cannot be known)."""
    age = command_age(command, now)
    return age is None or age > max_age


def bounded_detail(detail: dict[str, Any], limit: int = MAX_DETAIL_BYTES) -> dict[str, Any]:
    """`detail` cut to `limit` bytes of JSON: long lists lose their tail, long strings
    their end, and what still does not fit goes (marked `truncated`)."""

    def size(d: dict[str, Any]) -> int:
        return len(json.dumps(d, separators=(",", ":"), default=str).encode())

    out = dict(detail)
    while size(out) > limit and set(out) - {"truncated"}:
        key = max(out, key=lambda k: len(json.dumps(out[k], default=str)))
        value = out[key]
        if isinstance(value, list) and len(value) > 1:
            out[key] = value[: len(value) // 2]
        elif isinstance(value, str) and len(value) > 64:
            out[key] = value[: len(value) // 2] + "…"
        elif isinstance(value, dict) and len(value) > 1:
            out[key] = dict(list(value.items())[: len(value) // 2])
        else:
            del out[key]
        out["truncated"] = True
    return out


def result_event(
    connection_id: str,
    command: dict[str, Any],
    status: str,
    detail: dict[str, Any],
    timestamp: str | None = None,
) -> dict[str, Any]:
    """The `command_result` ingest event of a command's outcome. Its id is the
    command's: a resent batch, or a second answer to the same command, is one event."""
    command_id = str(command.get("commandId") or "")
    return {
        "id": producer_id("command", command_id),
        "type": COMMAND_RESULT,
        "timestamp": timestamp or now_iso(),
        "framework": FRAMEWORK,
        "connectionId": connection_id,
        COMMAND_FIELD: {
            "commandId": command_id,
            "action": str(command.get("action") or ""),
            "status": status,
            "detail": bounded_detail(detail),
        },
    }


def failure_detail(error: str, **extra: Any) -> dict[str, Any]:
    return {"error": error, **extra}


@dataclass(frozen=True)
class SendTask:
    """What `app.send_task` gets to re-send a job."""

    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    queue: str | None
    retry_of: str


def retry_call(job: dict[str, Any]) -> SendTask:
    """The `send_task` call that retries `job` (its data from `GET …/jobs/<ref>`):
    its name, queue and captured call (`extensions.call`). `CommandError` when the
    job cannot be retried: no captured call (`NO_CALL`), or not failed/cancelled."""
    state = job.get("state")
    if state not in RETRYABLE:
        raise CommandError(f"the job is {state}: only failed or cancelled jobs are retried")
    name = job.get("name")
    external_id = job.get("externalId")
    if not isinstance(name, str) or not name or name == "unknown":
        raise CommandError("the job's task name is not known")
    if not isinstance(external_id, str) or not external_id:
        raise CommandError("the job has no external id")
    extensions = job.get("extensions") or {}
    call = extensions.get("call") if isinstance(extensions, dict) else None
    if not isinstance(call, dict):
        skipped = extensions.get("callSkipped") if isinstance(extensions, dict) else None
        raise CommandError(NO_CALL if not skipped else f"arguments not captured ({skipped})")
    args, kwargs = call.get("args", []), call.get("kwargs", {})
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise CommandError("the captured call is not {args: [...], kwargs: {...}}")
    queue = job.get("queue")
    return SendTask(
        name=name,
        args=args,
        kwargs=kwargs,
        queue=queue if isinstance(queue, str) and queue else None,
        retry_of=external_id,
    )


def retried_job_event(
    connection_id: str,
    new_task_id: str,
    call: SendTask,
    *,
    capture_call: bool = True,
    timestamp: float | None = None,
) -> dict[str, Any]:
    """The `queued` job event of a retry's new task: it links to the original
    (`extensions.retryOf`) and carries the same call (unless `capture_call` is off)."""
    event = job_event(
        connection_id,
        task_id=new_task_id,
        name=call.name,
        state=QUEUED,
        attempt=1,
        queue=call.queue,
        timestamp=timestamp,
        created_at=timestamp if timestamp is not None else time.time(),
        extensions={"retryOf": call.retry_of, "sluiceAction": "retry"},
    )
    if capture_call:  # after job_event: its bounding must not cut the call into a string
        event["job"].setdefault("extensions", {})["call"] = {
            "args": call.args,
            "kwargs": call.kwargs,
        }
    return event


def terminate_signal(command: dict[str, Any]) -> str:
    """The signal of a terminate (default SIGTERM); `CommandError` for any other name."""
    sig = command.get("signal") or "SIGTERM"
    if sig not in SIGNALS:
        raise CommandError(f"unknown signal {sig!r}: one of {', '.join(sorted(SIGNALS))}")
    return str(sig)


def pool_n(command: dict[str, Any]) -> int:
    n = command.get("n", 1)
    if n is None:
        n = 1
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 100:
        raise CommandError("n must be an integer from 1 to 100")
    return n


def _target_text(
    command: dict[str, Any], target: str, fields: tuple[str, ...], problem: str
) -> str:
    """The first non-empty string of `command[target][field]` for `fields`, else
    `CommandError(problem)`."""
    part = command.get(target)
    if isinstance(part, dict):
        for field in fields:
            value = part.get(field)
            if isinstance(value, str) and value:
                return value
    raise CommandError(problem)


def command_job_ref(command: dict[str, Any]) -> str:
    """The job a job command targets, as `GET …/jobs/<ref>` takes it."""
    return _target_text(command, "job", ("id", "externalId"), "the command names no job")


def command_task_id(command: dict[str, Any]) -> str:
    return _target_text(
        command, "job", ("externalId",), "the command's job has no Celery task id (externalId)"
    )


def command_worker(command: dict[str, Any]) -> str:
    """The Celery node name (`w1@host`) a worker command targets."""
    return _target_text(command, "worker", ("externalId",), "the command names no worker")


def control_replies(replies: Any) -> dict[str, str]:
    """Celery's control replies (`[{"w1@host": {"ok": …}}, …]`) as `{node: "ok" | "error: …"}`."""
    out: dict[str, str] = {}
    for item in replies or ():
        if not isinstance(item, dict):
            continue
        for node, answer in item.items():
            if isinstance(answer, dict) and "error" in answer:
                out[str(node)] = f"error: {answer['error']}"
            elif isinstance(answer, dict) and "ok" in answer:
                out[str(node)] = "ok"
            else:
                out[str(node)] = str(answer)[:200]
    return out


def control_outcome(
    action: str, worker: str, replies: dict[str, str]
) -> tuple[str, dict[str, Any]]:
    """(status, detail) of a pool or shutdown command from its replies. A shutdown
    is not answered by Celery (the worker raises WorkerShutdown before replying):
    sent is done. A pool command with no reply from its worker, or an error, failed."""
    detail: dict[str, Any] = {"replies": replies}
    if action == "shutdown":
        if not replies:
            detail["note"] = "shutdown sent (Celery workers do not reply to a shutdown)"
        return DONE, detail
    answer = replies.get(worker)
    if answer is None:
        return FAILED, {
            **detail,
            "error": f"no reply from worker {worker} within {CONTROL_TIMEOUT:g} s "
            "(offline, or not consuming its control queue)",
        }
    if answer != "ok":
        return FAILED, {**detail, "error": answer}
    return DONE, detail


BULK_FILTER_KEYS = ("state", "queue", "name", "worker", "q")


def bulk_query(flt: Any, cursor: str | None = None, limit: int = BULK_PAGE) -> dict[str, Any]:
    """`GET …/jobs` query parameters of one page of a bulk retry's filter."""
    if not isinstance(flt, dict) or flt.get("state") not in RETRYABLE:
        raise CommandError("filter.state must be failed or cancelled")
    params: dict[str, Any] = {
        k: flt[k] for k in BULK_FILTER_KEYS if isinstance(flt.get(k), str) and flt[k]
    }
    params["limit"] = limit
    if cursor:
        params["cursor"] = cursor
    return params


@dataclass
class BulkTally:
    """What a bulk retry did, as its result's detail."""

    retried: int = 0
    failed: int = 0
    skipped: int = 0  # no captured call
    seen: int = 0
    stopped_at_limit: bool = False
    first_error: str | None = None

    def __post_init__(self) -> None:
        self.new_job_ids: list[str] = []

    def outcome(self) -> tuple[str, dict[str, Any]]:
        detail: dict[str, Any] = {
            "retried": self.retried,
            "failed": self.failed,
            "skipped": self.skipped,
            "newJobIds": self.new_job_ids[:MAX_NEW_JOB_IDS],
            "limit": MAX_BULK_RETRY,
        }
        if self.stopped_at_limit:
            detail["more"] = (
                f"stopped at {MAX_BULK_RETRY} jobs per command (or {MAX_BULK_SCAN} looked at): "
                "retry again for the rest"
            )
        if self.skipped:
            detail["skippedReason"] = NO_CALL
        if self.first_error:
            detail["error"] = self.first_error
        if self.retried == 0 and (self.failed or self.skipped):
            detail.setdefault("error", NO_CALL)
            return FAILED, detail
        return DONE, detail


def commands_path(base_path: str, connection_id: str, after: str | None, wait: int) -> str:
    query: dict[str, Any] = {"wait": wait}
    if after:
        query = {"after": after, "wait": wait}
    return f"{base_path}/api/connections/{quote(connection_id)}/commands?{urlencode(query)}"


# -- HTTP to Sluice --------------------------------------------------------------


class SluiceHTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def _error_message(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return body[:200].decode("utf-8", "replace")


class SluiceReader:
    """GETs to Sluice with the agent's key (`http.client`, a kept-alive connection)."""

    def __init__(self, url: str, api_key: str, timeout: float = 10.0) -> None:
        parts = urlsplit(url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"Sluice URL must be http(s)://host[:port]: {url!r}")
        self.url = url.rstrip("/")
        self.base_path = parts.path or ""
        self._scheme, self._host, self._port = parts.scheme, parts.hostname, parts.port
        self._headers = {"Authorization": f"Bearer {api_key}", "User-Agent": USER_AGENT}
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()
        self._shut = False  # closed for good (the agent is stopping): no new connection

    def get_json(self, path: str, timeout: float | None = None) -> Any:
        """GET `path` → its JSON. `SluiceHTTPError` for a non-2xx answer; OSError /
        HTTPException for the network."""
        cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        with self._lock:
            if self._shut:
                raise ConnectionAbortedError("the agent is stopping")
            if self._conn is None:
                self._conn = cls(self._host, self._port, timeout=timeout or self.timeout)
            conn = self._conn
        conn.timeout = timeout or self.timeout
        if conn.sock is not None:
            conn.sock.settimeout(conn.timeout)
        try:
            conn.request("GET", path, headers=self._headers)
            response = conn.getresponse()
            body = response.read()
        except BaseException:
            self.close()
            raise
        if response.will_close:
            self.close()
        if not 200 <= response.status < 300:
            raise SluiceHTTPError(response.status, _error_message(body))
        return json.loads(body)

    def close(self, final: bool = False) -> None:
        """Close the connection; from another thread this ends a poll in progress
        (`final`: and no request opens another)."""
        with self._lock:
            self._shut = self._shut or final
            conn, self._conn = self._conn, None
        if conn is not None:
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            try:
                conn.close()
            except Exception:
                pass

    def job(self, connection_id: str, ref: str) -> dict[str, Any]:
        path = f"{self.base_path}/api/connections/{quote(connection_id)}/jobs/{quote(ref, safe='')}"
        return dict(self.get_json(path)["data"])

    def jobs_page(
        self, connection_id: str, params: dict[str, Any]
    ) -> tuple[list[dict], str | None]:
        path = f"{self.base_path}/api/connections/{quote(connection_id)}/jobs?{urlencode(params)}"
        answer = self.get_json(path)
        return list(answer.get("data") or []), answer.get("nextCursor") or None


def _transient(exc: BaseException) -> bool:
    """Worth retrying: the network, a 5xx or a 429."""
    if isinstance(exc, SluiceHTTPError):
        return exc.status == 429 or exc.status >= 500
    return isinstance(exc, (OSError, http.client.HTTPException, ValueError))


def with_retries(
    call: Callable[[], Any],
    stop: threading.Event,
    tries: int = 4,
    delay: float = 0.5,
) -> Any:
    """`call()`, retried a few times (backoff) on network errors, 5xx and 429."""
    for attempt in range(tries):
        try:
            return call()
        except Exception as exc:
            if not _transient(exc) or attempt == tries - 1 or stop.is_set():
                raise
            stop.wait(delay * (2**attempt))
    raise AssertionError("unreachable")  # pragma: no cover


# -- the runner -------------------------------------------------------------------


class CommandRunner:
    """A daemon thread: long-polls the connection's commands and carries them out.

    `app` is the agent's Celery app, `sender` its `IngestSender`; `on_retry(new
    task id, call)`, called before the task is sent, lets the agent's event mapper
    remember the link so the new job's events carry `retryOf` too.
    """

    def __init__(
        self,
        app: Any,
        sender: Any,
        url: str,
        api_key: str,
        connection_id: str,
        *,
        capture_call: bool = True,
        on_retry: Callable[[str, SendTask], None] | None = None,
        backoff_max: float = 30.0,
    ) -> None:
        self.app = app
        self.sender = sender
        self.connection_id = connection_id
        self.reader = SluiceReader(url, api_key, timeout=POLL_WAIT + 15)
        self.jobs_reader = SluiceReader(url, api_key, timeout=10.0)
        self.capture_call = capture_call
        self.on_retry = on_retry
        self.backoff_max = backoff_max
        self.stop_event = threading.Event()
        self.after: str | None = None
        self._done: OrderedDict[str, None] = OrderedDict()
        self._thread: threading.Thread | None = None
        self.handled = 0

    # -- lifecycle --

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sluice-agent-actions", daemon=True)
        self._thread.start()
        log.info(
            "sluice: carrying out operator actions from %s (commands of connection %s); "
            "--no-actions turns this off",
            self.reader.url,
            self.connection_id,
        )

    def stop(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        self.reader.close(final=True)  # ends a poll in progress, and no new one starts
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # -- polling --

    def _run(self) -> None:
        delay = 0.5
        while not self.stop_event.is_set():
            try:
                answer = self.reader.get_json(
                    commands_path(self.reader.base_path, self.connection_id, self.after, POLL_WAIT),
                    timeout=POLL_WAIT + 15,
                )
                delay = 0.5
            except Exception as exc:
                if self.stop_event.is_set():
                    break
                pause, message = self._poll_failure(exc, delay)
                log.log(
                    logging.WARNING if pause >= delay else logging.DEBUG,
                    "sluice: reading commands failed (%s); retrying in %.1f s",
                    message,
                    pause,
                )
                delay = min(self.backoff_max, delay * 2)
                self.stop_event.wait(pause)
                continue
            for command in answer.get("data") or []:
                if self.stop_event.is_set():
                    break
                self._handle_safely(command)
                if command.get("streamId"):
                    self.after = str(command["streamId"])
            else:
                if answer.get("lastId"):
                    self.after = str(answer["lastId"])

    def _poll_failure(self, exc: BaseException, delay: float) -> tuple[float, str]:
        if isinstance(exc, SluiceHTTPError):
            if exc.status == 400 and self.after is not None:
                self.after = None  # e.g. a position the server no longer knows: start afresh
                return 0.5, f"{exc}; reading from the last 60 s"
            if exc.status in (401, 403, 404, 405):
                return self.backoff_max, (
                    f"{exc}: this Sluice does not hand out commands to this key "
                    "(an older Sluice, or a key that is not the connection's write key)"
                )
        return delay, f"{type(exc).__name__}: {exc}"

    # -- carrying out --

    def _handle_safely(self, command: dict[str, Any]) -> None:
        command_id = command.get("commandId")
        if not isinstance(command_id, str) or not command_id:
            log.warning("sluice: a command without commandId was ignored: %.200r", command)
            return
        if command_id in self._done:
            return
        if command.get("action") not in ACTIONS:  # a newer server's: its result would be refused
            log.warning(
                "sluice: command %s has an action this agent does not know (%r): not carried "
                "out; upgrade the agent",
                command_id,
                command.get("action"),
            )
            return
        self._done[command_id] = None
        while len(self._done) > 10_000:
            self._done.popitem(last=False)
        try:
            status, detail = self.handle(command)
        except CommandError as exc:
            status, detail = FAILED, failure_detail(str(exc))
        except Exception as exc:  # Celery or the broker failed: say so, keep running
            log.warning("sluice: command %s (%s) failed", command_id, command.get("action"),
                        exc_info=True)  # fmt: skip
            status, detail = FAILED, failure_detail(f"{type(exc).__name__}: {exc}"[:500])
        self.handled += 1
        log.info(
            "sluice: command %s %s: %s %s",
            command_id,
            command.get("action"),
            status,
            json.dumps(detail, default=str)[:300],
        )
        self.sender.submit(result_event(self.connection_id, command, status, detail))
        self.sender.flush(timeout=5.0)

    def handle(self, command: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Carry out one command: (status, detail)."""
        if is_expired(command, time.time()):
            return FAILED, failure_detail(EXPIRED)
        action = command.get("action")
        if action not in ACTIONS:
            raise CommandError(f"unknown action {action!r}")
        if action == "revoke":
            return self.revoke(command_task_id(command))
        if action == "terminate":
            return self.revoke(command_task_id(command), terminate_signal(command))
        if action == "retry":
            return self.retry_one(command_job_ref(command))
        if action == "bulk_retry":
            return self.bulk_retry(command.get("filter"))
        worker = command_worker(command)
        control = self.app.control
        if action == "shutdown":
            replies = control.shutdown(destination=[worker], reply=True, timeout=CONTROL_TIMEOUT)
        else:
            method = control.pool_grow if action == "pool_grow" else control.pool_shrink
            replies = method(
                pool_n(command), destination=[worker], reply=True, timeout=CONTROL_TIMEOUT
            )
        return control_outcome(str(action), worker, control_replies(replies))

    def revoke(self, task_id: str, signal: str | None = None) -> tuple[str, dict[str, Any]]:
        options: dict[str, Any] = {"reply": True, "timeout": CONTROL_TIMEOUT}
        if signal is not None:
            options.update(terminate=True, signal=signal)
        replies = control_replies(self.app.control.revoke(task_id, **options))
        detail: dict[str, Any] = {"replies": replies}
        if signal is not None:
            detail["signal"] = signal
        if not replies:
            detail["note"] = "no worker replied: the revoke reaches the workers online now"
        return DONE, detail

    def _job(self, ref: str) -> dict[str, Any]:
        try:
            return with_retries(
                lambda: self.jobs_reader.job(self.connection_id, ref), self.stop_event
            )
        except SluiceHTTPError as exc:
            if exc.status == 404:
                raise CommandError(f"job {ref} is not in Sluice's job index") from None
            raise CommandError(f"could not read job {ref} from Sluice ({exc})") from None
        except Exception as exc:
            raise CommandError(f"could not read job {ref} from Sluice ({exc})") from None

    def send(self, call: SendTask) -> str:
        """Re-send one job; report its new task as queued, linked to the original. The
        id is chosen first and the time taken before publishing, so the agent's mapper
        links the new task's events from the first, and the `queued` is never newer
        than what the worker reports of it."""
        new_id = str(uuid.uuid4())
        if self.on_retry is not None:
            self.on_retry(new_id, call)
        published_at = time.time()
        # The header: workers running the integration report the link too (`retryOf`).
        options: dict[str, Any] = {"task_id": new_id, "headers": {RETRY_OF_HEADER: call.retry_of}}
        if call.queue:
            options["queue"] = call.queue
        self.app.send_task(call.name, args=call.args, kwargs=call.kwargs, **options)
        self.sender.submit(
            retried_job_event(
                self.connection_id,
                new_id,
                call,
                capture_call=self.capture_call,
                timestamp=published_at,
            )
        )
        return new_id

    def _jobs_page(self, params: dict[str, Any]) -> tuple[list[dict], str | None]:
        def read() -> tuple[list[dict], str | None]:
            return self.jobs_reader.jobs_page(self.connection_id, params)

        result: tuple[list[dict], str | None] = with_retries(read, self.stop_event)
        return result

    def retry_one(self, ref: str) -> tuple[str, dict[str, Any]]:
        call = retry_call(self._job(ref))
        return DONE, {"newJobId": self.send(call), "retryOf": call.retry_of}

    def bulk_retry(self, flt: Any) -> tuple[str, dict[str, Any]]:
        bulk_query(flt)  # the filter is checked before anything is sent
        tally = BulkTally()
        done: set[str] = set()
        cursor: str | None = None
        while True:
            params = bulk_query(flt, cursor)
            try:
                page, cursor = self._jobs_page(params)
            except Exception as exc:
                tally.first_error = tally.first_error or f"could not list the jobs ({exc})"
                break
            for job in _unseen(page, done):
                if tally.retried >= MAX_BULK_RETRY or tally.seen >= MAX_BULK_SCAN:
                    tally.stopped_at_limit = True
                    break
                tally.seen += 1
                try:
                    call = retry_call(job)
                except CommandError as exc:
                    if str(exc) == NO_CALL or str(exc).startswith("arguments not captured"):
                        tally.skipped += 1
                    else:
                        tally.failed += 1
                        tally.first_error = tally.first_error or str(exc)
                    continue
                try:
                    tally.new_job_ids.append(self.send(call))
                    tally.retried += 1
                except Exception as exc:
                    tally.failed += 1
                    tally.first_error = tally.first_error or f"{type(exc).__name__}: {exc}"
            if tally.stopped_at_limit or not cursor or self.stop_event.is_set():
                break
        return tally.outcome()


def _unseen(page: Iterable[dict[str, Any]], done: set[str]) -> Iterable[dict[str, Any]]:
    """The page's jobs not yet looked at in this bulk retry (by external id)."""
    for job in page:
        key = str(job.get("externalId") or job.get("id") or "")
        if key and key not in done:
            done.add(key)
            yield job
