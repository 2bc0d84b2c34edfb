"""Every Redis key name, in one place.

Keys that belong to one connection share the hash tag ``{<connection id>}``
so that the append script, which touches a connection's stream, its
de-duplication window and its meta hash, stays within one Redis Cluster slot.
"""

from __future__ import annotations

PREFIX = "sluice"


class Keys:
    """Key names: every key Sluice reads or writes is built here."""

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
    def connection_keys(connection_id: str) -> str:
        """The connection's extra (read) API keys: a hash, key id -> JSON record
        (scope, createdAt, prefix, hash); never the secret itself."""
        return f"{PREFIX}:conn:{connection_id}:keys"

    @staticmethod
    def key_lock(connection_id: str) -> str:
        """Held (briefly, with an expiry) while the connection's keys change, so
        that two rotations, or a rotation and a deletion, never interleave."""
        return f"{PREFIX}:conn:{connection_id}:key-lock"

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

    # Operator actions (`store.commands`): the same hash tag, so one slot.

    @staticmethod
    def commands(connection_id: str) -> str:
        """The command stream the connection's agent reads (a Redis Stream, one
        entry per command, field `c` = the command's JSON; `MAXLEN ~ 1000`)."""
        return f"{PREFIX}:{{{connection_id}}}:commands"

    @staticmethod
    def command_once(connection_id: str, digest: str) -> str:
        """The double-click guard of one action on one target (`digest`): a string
        holding the command id, `SET NX EX 30`; deleted when its result arrives."""
        return f"{PREFIX}:{{{connection_id}}}:command-once:{digest}"

    @staticmethod
    def command_pending(connection_id: str, command_id: str) -> str:
        """Which `command_once` key a command holds (its digest), so that its result
        frees it; expires with it."""
        return f"{PREFIX}:{{{connection_id}}}:command-pending:{command_id}"

    # The job index: every key under the connection's prefix (one slot). The
    # scripts build these names from `index_prefix` and the suffixes below.

    #: Suffixes after `index_prefix`: every job's record, and the details
    #: (arguments, result, traceback) of those that have some (hashes: job id
    #: -> MessagePack); the orderings by last update (all jobs; +
    #: state/queue/name/worker value); external ids and names for prefix
    #: search (lex-ordered); the position counter and the bytes counted;
    #: worker and queue snapshots (hash) and their recency (zset).
    RECORDS = "jobs:records"
    DETAILS = "jobs:details"
    JOBS = "jobs"
    BY_STATE = "jobs:state:"
    BY_QUEUE = "jobs:queue:"
    BY_NAME = "jobs:name:"
    BY_WORKER = "jobs:worker:"
    EXTERNAL_IDS = "jobs:external-ids"
    NAMES = "jobs:names"
    POSITION = "jobs:position"
    BYTES = "jobs:bytes"
    WORKERS = "workers"
    WORKERS_SEEN = "workers:seen"
    QUEUES = "queues"
    QUEUES_SEEN = "queues:seen"

    @staticmethod
    def index_prefix(connection_id: str) -> str:
        """Every key of the index starts with this. (The first layout, a hash per
        job, had no `index:`: its keys are never read and expire on their own.)"""
        return f"{PREFIX}:{{{connection_id}}}:index:"

    @staticmethod
    def index(connection_id: str, suffix: str, value: str = "") -> str:
        """One key of the connection's job index: `index_prefix` + suffix + value."""
        return f"{Keys.index_prefix(connection_id)}{suffix}{value}"

    # Job metrics (`store.jobmetrics`).

    @staticmethod
    def metric_labels(connection_id: str, kind: str) -> str:
        """The label values admitted for the connection's job metrics, for good:
        a set per kind (`queue`, `name`), at most SLUICE_METRICS_MAX_LABELS
        members; under the connection's hash tag (one slot with its other keys)."""
        return f"{PREFIX}:{{{connection_id}}}:metrics:labels:{kind}"

    @staticmethod
    def metrics_connections() -> str:
        """The connections that ingested lately (a zset: connection id -> ms of
        its last ingest, as noted at most every few seconds per process), whose
        queue and worker gauges `GET /metrics` reads."""
        return f"{PREFIX}:metrics:connections"

    @staticmethod
    def session(token_hash: str) -> str:
        """A login session, by the SHA-256 of its cookie token (a string)."""
        return f"{PREFIX}:session:{token_hash}"

    @staticmethod
    def dev_secret() -> str:
        """The development `SECRET_KEY` shared by every worker when none is set."""
        return f"{PREFIX}:dev-secret-key"

    @staticmethod
    def notify(connection_id: str) -> str:
        """The sharded pub/sub channel that says "the stream has new entries"
        (same hash tag, so the same slot as the stream on a cluster)."""
        return f"{PREFIX}:{{{connection_id}}}:notify"

    # Rate-limit counters (flask-limiter adds its own prefix and window).

    @staticmethod
    def login_ip_limit(ip: str) -> str:
        return f"login-ip:{ip}"

    @staticmethod
    def login_account_limit(email_hash: str) -> str:
        return f"login-account:{email_hash}"

    @staticmethod
    def ingest_limit(key_hash: str) -> str:
        return f"ingest:{key_hash}"

    @staticmethod
    def actions_limit(user_and_connection: str) -> str:
        """One user's budget of actions on one connection (`<user id>:<connection id>`)."""
        return f"actions:{user_and_connection}"
