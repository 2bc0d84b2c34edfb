"""The notifications that say "this stream has new entries": sharded pub/sub.

The append script publishes the stream's key on the connection's channel
(`Keys.notify`, same hash tag, so the same slot as the stream). A process
subscribes once to the channel of every stream it watches:

- `NodeNotifications`: one pub/sub connection to the one Redis node;
- `ClusterNotifications`: one pub/sub connection per cluster primary that
  owns a watched channel's slot, moved when the slot moves (a failover, a
  resharding: the old owner says `sunsubscribe`, or its connection drops).

Both are used by one greenlet only (redis-py's PubSub is not safe across
greenlets): `listen` / `unlisten` only record what to change, `poll` sends
it, then waits for messages. A subscription just confirmed counts as a
notification (what the stream got before it took effect is read then);
after any failure the next `poll` subscribes to everything again. So a lost
notification delays an event until the reader's safety-net sweep, never
loses it.
"""

from __future__ import annotations

import select
import time
from typing import Any

import redis
from redis.cluster import RedisCluster

from ..errors import StoreUnavailable
from .client import STORE_ERRORS

#: Messages taken in one `poll` at most (the rest wait for the next): the drain
#: does not yield, so it stays short.
MAX_MESSAGES = 1_000
#: Seconds between checks that every cluster subscription is on its slot's
#: current owner (the client's slot map changes when a command meets MOVED).
RECONCILE_EVERY = 1.0


class _Wanted:
    """The channels wanted (channel -> stream key) and the changes not yet sent."""

    def __init__(self) -> None:
        self.channels: dict[bytes, bytes] = {}
        # Subscriptions to send (True) or end (False), last word wins.
        self.changes: dict[bytes, bool] = {}

    def listen(self, channel: bytes, key: bytes) -> None:
        self.channels[channel] = key
        self.changes[channel] = True

    def unlisten(self, channel: bytes) -> None:
        if self.channels.pop(channel, None) is not None:
            self.changes[channel] = False

    def take_changes(self) -> tuple[list[bytes], list[bytes]]:
        """(to subscribe, to unsubscribe) since the last call."""
        changes, self.changes = self.changes, {}
        on = [c for c, wanted in changes.items() if wanted and c in self.channels]
        off = [c for c, wanted in changes.items() if not wanted]
        return on, off

    def resubscribe_all(self) -> None:
        self.changes = dict.fromkeys(self.channels, True)


def _unavailable(exc: BaseException) -> StoreUnavailable:
    return StoreUnavailable(f"{type(exc).__name__}: {exc}")


class _Subscriber:
    """What both kinds share: the channels wanted, recorded for `poll` to send."""

    def __init__(self) -> None:
        self.wanted = _Wanted()

    def listen(self, channel: bytes, key: bytes) -> None:
        self.wanted.listen(channel, key)

    def unlisten(self, channel: bytes) -> None:
        self.wanted.unlisten(channel)


class NodeNotifications(_Subscriber):
    """Notifications from one Redis node, on one pub/sub connection."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__()
        self.redis = client
        self._pubsub: Any = None

    def poll(self, timeout: float) -> set[bytes]:
        """Stream keys notified or confirmed, waiting up to `timeout` s for the first."""
        try:
            pubsub = self._pubsub
            if pubsub is None:
                pubsub = self._pubsub = self.redis.pubsub()
                self.wanted.resubscribe_all()
            on, off = self.wanted.take_changes()
            if off and pubsub.subscribed:
                pubsub.sunsubscribe(*off)
            if on:
                pubsub.ssubscribe(*on)
            keys: set[bytes] = set()
            _drain(pubsub, self.wanted.channels, keys, timeout, MAX_MESSAGES)
            return keys
        except STORE_ERRORS as exc:
            self.close()
            raise _unavailable(exc) from exc

    def close(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        _reset(pubsub)


class ClusterNotifications(_Subscriber):
    """Notifications from a Redis Cluster: one pub/sub connection per primary
    that owns a watched channel, each channel subscribed on its slot's owner."""

    def __init__(self, cluster: RedisCluster) -> None:
        super().__init__()
        self.cluster = cluster
        self._pubsubs: dict[str, Any] = {}  # node name -> its PubSub
        self._at: dict[bytes, str] = {}  # channel -> node it is subscribed at
        self._refresh = False  # re-read the slot map before the next changes
        self._reconciled = time.monotonic()

    def poll(self, timeout: float) -> set[bytes]:
        try:
            if self._refresh:
                self._refresh = False
                self.cluster.nodes_manager.initialize()
            if time.monotonic() - self._reconciled >= RECONCILE_EVERY:
                self._reconcile()
            self._apply()
            keys: set[bytes] = set()
            self._wait(keys, timeout)
            return keys
        except STORE_ERRORS as exc:
            self.close()
            self._refresh = True
            raise _unavailable(exc) from exc

    def close(self) -> None:
        """Drop every pub/sub connection; the next poll subscribes to all again."""
        pubsubs, self._pubsubs = self._pubsubs, {}
        self._at.clear()
        for pubsub in pubsubs.values():
            _reset(pubsub)
        self.wanted.resubscribe_all()

    def _reconcile(self) -> None:
        """Move subscriptions whose slot now has another owner."""
        self._reconciled = time.monotonic()
        for channel, name in list(self._at.items()):
            if self.cluster.get_node_from_key(channel).name != name:
                self.wanted.changes[channel] = True

    def _apply(self) -> None:
        on, off = self.wanted.take_changes()
        for channel in off:
            name = self._at.pop(channel, None)
            pubsub = self._pubsubs.get(name) if name else None
            if pubsub is not None and pubsub.subscribed:
                pubsub.sunsubscribe(channel)
        for channel in on:
            node = self.cluster.get_node_from_key(channel)
            old = self._at.get(channel)
            if old == node.name:
                continue
            if old is not None and old in self._pubsubs:
                self._pubsubs[old].sunsubscribe(channel)
            pubsub = self._pubsubs.get(node.name)
            if pubsub is None:
                pubsub = self._pubsubs[node.name] = self.cluster.get_redis_connection(node).pubsub()
            # One channel per SSUBSCRIBE: channels of one node may be in
            # different slots (CROSSSLOT otherwise).
            pubsub.ssubscribe(channel)
            self._at[channel] = node.name

    def _wait(self, keys: set[bytes], timeout: float) -> None:
        budget = MAX_MESSAGES
        for name, pubsub in list(self._pubsubs.items()):
            budget -= self._take(name, pubsub, keys, budget)
        if keys or budget <= 0 or timeout <= 0 or not self._pubsubs:
            return
        # Nothing buffered: wait until any node's connection has something
        # (poll, not select: a worker's descriptors go far past select's 1,024).
        sockets = [s for s in (_socket(p) for p in self._pubsubs.values()) if s is not None]
        if sockets:
            poller = select.poll()
            for sock in sockets:
                poller.register(sock, select.POLLIN)
            poller.poll(timeout * 1000)
        for name, pubsub in list(self._pubsubs.items()):
            budget -= self._take(name, pubsub, keys, budget)

    def _take(self, name: str, pubsub: Any, keys: set[bytes], budget: int) -> int:
        """Buffered messages of one node's connection, without waiting."""
        lost: list[bytes] = []
        taken = _drain(pubsub, self.wanted.channels, keys, 0.0, budget, lost)
        for channel in lost:
            # The node no longer owns the slot (failover, resharding): find
            # the new owner and subscribe there. (A `sunsubscribe` we asked
            # for, from a node the channel has left, is not a loss.)
            if channel in self.wanted.channels and self._at.get(channel) == name:
                self._at.pop(channel, None)
                self.wanted.changes[channel] = True
                self._refresh = True
        return taken


def _drain(
    pubsub: Any,
    channels: dict[bytes, bytes],
    keys: set[bytes],
    timeout: float,
    budget: int,
    lost: list[bytes] | None = None,
) -> int:
    """Take messages from `pubsub` (waiting up to `timeout` s for the first) into
    `keys`: the stream key of each channel notified or just subscribed;
    channels the server unsubscribed us from go to `lost`. Returns how many."""
    taken = 0
    message = pubsub.get_message(timeout=timeout) if budget > 0 else None
    while message is not None:
        kind = message["type"]
        if kind in ("smessage", "ssubscribe"):
            key = channels.get(message["channel"])
            if key is not None:
                keys.add(key)
        elif kind == "sunsubscribe" and lost is not None:
            lost.append(message["channel"])
        taken += 1
        if taken >= budget:
            break
        try:
            message = pubsub.get_message(timeout=0)
        except redis.TimeoutError:
            break  # a message only partly arrived: the next call reads it
    return taken


def _socket(pubsub: Any) -> Any:
    connection = getattr(pubsub, "connection", None)
    return getattr(connection, "_sock", None)


def _reset(pubsub: Any) -> None:
    if pubsub is not None:
        try:
            pubsub.reset()
        except Exception:  # already broken: its connection goes anyway
            pass
