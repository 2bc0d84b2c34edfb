"""The event contract in one place: names, states, field limits, entry fields.

Standard library only, so that every layer (the schema, the store, the
fan-out, the Celery integration, the command-line client) and the dashboard's
JavaScript (served from these values, see `sluice.web.pages`) read the same
lists. `docs/api.md` describes each of them for clients.
"""

from __future__ import annotations

from typing import Final

# -- event types ---------------------------------------------------------------

JOB_STATE_CHANGE: Final = "job:state_change"
WORKER_HEARTBEAT: Final = "worker:heartbeat"
WORKER_STATE_CHANGE: Final = "worker:state_change"
QUEUE_SNAPSHOT: Final = "queue:snapshot"
#: The outcome of an operator action (a command), produced by the agent.
COMMAND_RESULT: Final = "command:result"

#: The stored event types, in contract order.
EVENT_NAMES: Final[tuple[str, ...]] = (
    JOB_STATE_CHANGE,
    WORKER_HEARTBEAT,
    WORKER_STATE_CHANGE,
    QUEUE_SNAPSHOT,
    COMMAND_RESULT,
)

#: `types` categories of the stream and the event names each stands for.
CATEGORIES: Final[dict[str, tuple[str, ...]]] = {
    "job": (JOB_STATE_CHANGE,),
    "worker": (WORKER_HEARTBEAT, WORKER_STATE_CHANGE),
    "queue": (QUEUE_SNAPSHOT,),
    "command": (COMMAND_RESULT,),
}

#: Control events a stream sends that are not stored (no `id:`): never filtered out.
HEARTBEAT: Final = "heartbeat"
STREAM_RESET: Final = "stream:reset"
CONTROL_EVENTS: Final = frozenset({HEARTBEAT, STREAM_RESET})

#: Why a stream starts with `stream:reset`.
RESET_UNKNOWN_EVENT_ID: Final = "unknown_event_id"
RESET_HISTORY_TRIMMED: Final = "history_trimmed"

#: The entry that ends every stream of a deleted connection (never sent to clients).
CLOSED_EVENT: Final = "stream:closed"

#: Producer event `type` -> (payload field, stream event name).
PRODUCER_TYPES: Final[dict[str, tuple[str, str]]] = {
    "job_state_change": ("job", JOB_STATE_CHANGE),
    "worker_heartbeat": ("worker", WORKER_HEARTBEAT),
    "worker_state_change": ("worker", WORKER_STATE_CHANGE),
    "queue_snapshot": ("queue", QUEUE_SNAPSHOT),
    "command_result": ("command", COMMAND_RESULT),
}

# -- states and frameworks -------------------------------------------------------

JOB_STATES: Final[tuple[str, ...]] = (
    "unknown",
    "queued",
    "scheduled",
    "active",
    "completed",
    "failed",
    "retrying",
    "cancelled",
)
WORKER_STATES: Final[tuple[str, ...]] = ("online", "busy", "idle", "offline")
FRAMEWORKS: Final[tuple[str, ...]] = ("celery", "bullmq", "sidekiq")

# -- field limits (characters unless said) ------------------------------------------

MAX_PRODUCER_ID: Final = 200
MAX_EXTERNAL_ID: Final = 512
MAX_JOB_NAME: Final = 1024
MAX_QUEUE_NAME: Final = 255
MAX_HOSTNAME: Final = 255
MAX_ERROR: Final = 10_000
MAX_STACKTRACE: Final = 50_000
MAX_QUEUES: Final = 100
#: Integers in payloads stay exact in every JSON client (JavaScript's 2^53).
MAX_INTEGER: Final = 2**53
MAX_CONNECTION_NAME: Final = 200
MAX_TYPES_LENGTH: Final = 512

# The job index (`GET /api/connections/<id>/jobs` and what it reads).
#: Transitions kept per job, oldest dropped first.
MAX_TIMELINE: Final = 50
#: Bytes of a job's timeline at most (the oldest entries go first).
MAX_TIMELINE_BYTES: Final = 16_384
#: Characters of an error kept in a timeline entry (the job keeps it whole).
MAX_TIMELINE_ERROR: Final = 500
#: Jobs per page: default and most.
JOBS_PAGE_DEFAULT: Final = 50
JOBS_PAGE_MAX: Final = 200
#: Workers and queues whose latest snapshot is kept per connection (the least
#: recently seen dropped first).
MAX_SNAPSHOTS: Final = 1_000
#: Characters of a search (`q`) or filter value.
MAX_QUERY: Final = 1_024
#: Each part of a Redis Stream id (and so of an event id) is an unsigned 64-bit integer.
MAX_ID_PART: Final = 2**64 - 1

# -- operator actions (commands to the agent, `docs/api.md#operator-actions`) ------

#: Actions on one job, on the jobs a filter matches, on one worker; as the
#: command stream names them (a bulk retry is `bulk_retry` there).
JOB_ACTIONS: Final[tuple[str, ...]] = ("revoke", "terminate", "retry")
BULK_ACTIONS: Final[tuple[str, ...]] = ("retry",)
WORKER_ACTIONS: Final[tuple[str, ...]] = ("pool_grow", "pool_shrink", "shutdown")
BULK_RETRY: Final = "bulk_retry"
COMMAND_ACTIONS: Final[tuple[str, ...]] = (*JOB_ACTIONS, BULK_RETRY, *WORKER_ACTIONS)
#: Signals a `terminate` may send (the first is the default).
SIGNALS: Final[tuple[str, ...]] = ("SIGTERM", "SIGKILL", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1")
#: Job states a bulk retry may select.
BULK_RETRY_STATES: Final[tuple[str, ...]] = ("failed", "cancelled")
#: A pool action's `n`: default and range.
POOL_N_DEFAULT: Final = 1
POOL_N_MAX: Final = 100
#: How a command ended (`command:result`'s `status`).
COMMAND_STATUSES: Final[tuple[str, ...]] = ("done", "failed")
#: Characters of a command id (the server's are UUIDs, 36).
MAX_COMMAND_ID: Final = 64
#: Bytes of a result's `detail` as JSON at most.
MAX_COMMAND_DETAIL_BYTES: Final = 4_096
#: Entries a connection's command stream keeps (about: `XADD MAXLEN ~`).
MAX_COMMAND_STREAM: Final = 1_000
#: Seconds the same action on the same target gives back the same command id
#: (a double click makes one command) while it has no result.
COMMAND_DEDUPE_SECONDS: Final = 30
#: Seconds after `requestedAt` past which the agent no longer carries a command
#: out (it answers `failed`, `{"error": "expired"}`); also how far back a read
#: without `after` looks.
COMMAND_MAX_AGE_SECONDS: Final = 60
#: Seconds `GET /api/connections/<id>/commands` may wait for a command (`wait`).
COMMAND_WAIT_MAX_SECONDS: Final = 25
#: Commands one read answers at most.
COMMAND_READ_COUNT: Final = 100
#: The command stream's entry field holding the command's JSON.
COMMAND_FIELD: Final = "c"

# -- stream entries -------------------------------------------------------------

#: A Redis Stream entry holds two fields: the SSE event name and the data JSON
#: exactly as clients see it (the append script writes the same two names).
ENTRY_EVENT: Final = "t"
ENTRY_DATA: Final = "d"

# -- errors --------------------------------------------------------------------------

#: HTTP status -> the contract's error code.
ERROR_CODES: Final[dict[int, str]] = {
    400: "VALIDATION_ERROR",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    408: "REQUEST_TIMEOUT",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    415: "VALIDATION_ERROR",
    429: "RATE_LIMITED",
    500: "INTERNAL_ERROR",
    503: "UNAVAILABLE",
}
