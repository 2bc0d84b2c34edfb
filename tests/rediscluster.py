"""A real Redis Cluster on this machine: 3 masters + 3 replicas of `redis-server`.

    with LocalCluster() as cluster:
        redis.RedisCluster.from_url(cluster.url)

Each node is a `redis-server --cluster-enabled yes` process in a directory of its
own; `redis-cli --cluster create` joins them. `start()` returns once every node
says `cluster_state:ok`, every node has the same view of the slots and of who
replicates whom, and every replica's link to its master is up. The nodes die
with this process (PR_SET_PDEATHSIG), whatever ends it.

`python tests/rediscluster.py` starts one, prints its URL and keeps it until
Ctrl-C or SIGTERM (for trying the server by hand, and for bench/).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import redis

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: tests/ is on the path, the repository not
    sys.path.insert(0, str(ROOT))

from sluice.process import die_with_parent  # noqa: E402

HOST = "127.0.0.1"
SLOTS = 16384
#: A node's cluster bus listens on its port + 10000 (every Redis version).
BUS_OFFSET = 10000
#: Ports are drawn below the kernel's ephemeral range (32768-60999 by default), so
#: that a client's outgoing connection seldom takes one; a clash is retried anyway.
PORT_RANGE = (20000, 22700)

T = TypeVar("T")


class RedisServerMissing(RuntimeError):
    """`redis-server` or `redis-cli` is not installed."""


class ClusterError(RuntimeError):
    """The cluster did not come up, or did not settle, in time."""


@dataclass(frozen=True)
class Node:
    """One line of CLUSTER NODES."""

    id: str
    port: int
    role: str  # "master" or "replica"
    master_id: str | None  # the master a replica follows
    slots: tuple[tuple[int, int], ...]  # inclusive ranges, masters only
    flags: frozenset[str]


def parse_cluster_nodes(text: str) -> list[Node]:
    nodes = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split()
        node_id, address, flags = fields[0], fields[1], frozenset(fields[2].split(","))
        port = int(address.split("@")[0].rsplit(":", 1)[1])
        slots = []
        for item in fields[8:]:
            if item.startswith("["):  # a slot being imported or migrated
                continue
            first, _, last = item.partition("-")
            slots.append((int(first), int(last or first)))
        nodes.append(
            Node(
                id=node_id,
                port=port,
                role="master" if "master" in flags else "replica",
                master_id=None if fields[3] == "-" else fields[3],
                slots=tuple(sorted(slots)),
                flags=flags,
            )
        )
    return nodes


def await_condition(
    check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05
) -> T:
    """Poll `check` until it returns something other than None/False; that is returned."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = check()
            if value is not None and value is not False:
                return value
        except (redis.RedisError, OSError) as exc:
            last_error = exc
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise ClusterError(f"timed out after {timeout:g} s waiting for {what}{detail}")
        time.sleep(interval)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _find_binary(name: str, given: str | None) -> str:
    binary = given or shutil.which(name)
    if binary is None or not os.access(binary, os.X_OK):
        raise RedisServerMissing(
            f"{name} not found on PATH: a local Redis Cluster needs redis-server and "
            "redis-cli (Debian/Ubuntu: apt-get install redis-server redis-tools)"
        )
    return binary


class LocalCluster:
    """`masters` masters with `replicas` replicas each, on free ports of 127.0.0.1."""

    def __init__(
        self,
        masters: int = 3,
        replicas: int = 1,
        *,
        server_binary: str | None = None,
        cli_binary: str | None = None,
        node_timeout_ms: int = 5000,
    ) -> None:
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        self.server_binary = _find_binary("redis-server", server_binary)
        self.cli_binary = _find_binary("redis-cli", cli_binary)
        self.size = masters * (1 + replicas)
        self.replicas_per_master = replicas
        self.node_timeout_ms = node_timeout_ms
        self.ports: list[int] = []
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.base_dir: Path | None = None
        self.started_in: float | None = None  # seconds, from start() to a settled cluster
        self._clients: dict[int, redis.Redis] = {}
        self._url: str | None = None

    # -- life cycle -------------------------------------------------------------

    def start(self, timeout: float = 60) -> LocalCluster:
        started = time.monotonic()
        deadline = started + timeout
        self.base_dir = Path(tempfile.mkdtemp(prefix="sluice-cluster-"))
        try:
            for _ in range(self.size):
                self._start_node(deadline)
            self._create(deadline)
            self.wait_settled(deadline - time.monotonic())
            self._url = f"redis://{HOST}:{self.masters()[0].port}/0"
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - started
        return self

    def _start_node(self, deadline: float) -> None:
        """One node on a free port (and free bus port); another port if it cannot bind."""
        while time.monotonic() < deadline:
            port = random.randrange(*PORT_RANGE)
            if port in self.ports or not (_port_free(port) and _port_free(port + BUS_OFFSET)):
                continue
            if self._try_node(port, deadline):
                return
        raise ClusterError("no free port pair for a cluster node")

    def _try_node(self, port: int, deadline: float) -> bool:
        """Start a node on `port`; False if it exited (its port was taken meanwhile)."""
        assert self.base_dir is not None
        directory = self.base_dir / str(port)
        directory.mkdir()
        config = {
            "--port": str(port),
            "--bind": HOST,
            "--cluster-enabled": "yes",
            "--cluster-config-file": "nodes.conf",
            "--cluster-node-timeout": str(self.node_timeout_ms),
            "--save": "",
            "--appendonly": "no",
            # A replica's first sync at once (by default the master waits 5 s for more).
            "--repl-diskless-sync-delay": "0",
            # CLUSTER SLOTS lists a replica only once its offset moved; the master's
            # pings move it (every 10 s by default).
            "--repl-ping-replica-period": "1",
            "--dir": str(directory),
            "--daemonize": "no",
        }
        with open(directory / "redis.log", "wb") as log:
            process = subprocess.Popen(
                [self.server_binary, *(arg for kv in config.items() for arg in kv)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent(),
            )
        try:
            await_condition(
                lambda: process.poll() is not None or self._answers(port),
                max(0.1, deadline - time.monotonic()),
                f"redis-server on port {port} to answer PING",
            )
        except BaseException:
            process.kill()
            process.wait()
            raise
        if process.poll() is not None:
            shutil.rmtree(directory, ignore_errors=True)
            return False
        self.ports.append(port)
        self.processes[port] = process
        return True

    def _answers(self, port: int) -> bool:
        try:
            return bool(self.client(port).ping())
        except (redis.RedisError, OSError):
            return False

    def _create(self, deadline: float) -> None:
        result = subprocess.run(
            [
                self.cli_binary,
                "--cluster",
                "create",
                *(f"{HOST}:{port}" for port in self.ports),
                "--cluster-replicas",
                str(self.replicas_per_master),
                "--cluster-yes",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=max(1.0, deadline - time.monotonic()),
        )
        if result.returncode != 0:
            raise ClusterError(
                f"redis-cli --cluster create exited with {result.returncode}:\n"
                f"{result.stdout[-2000:]}{result.stderr[-2000:]}"
            )

    def stop(self) -> None:
        """Terminate every node (kill what lingers) and remove their directories."""
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()
        if self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = None
        self.ports.clear()
        self._url = None

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- state ------------------------------------------------------------------

    def client(self, port: int) -> redis.Redis:
        """A plain (non-cluster) client of one node."""
        if port not in self._clients:
            self._clients[port] = redis.Redis(
                host=HOST,
                port=port,
                decode_responses=True,
                socket_timeout=5,
                socket_connect_timeout=1,
            )
        return self._clients[port]

    def _alive(self, port: int) -> bool:
        process = self.processes.get(port)
        if process is not None and process.poll() is not None:
            raise ClusterError(
                f"redis-server on port {port} exited with {process.returncode}:\n"
                + self.log(port)[-2000:]
            )
        return True

    def log(self, port: int) -> str:
        if self.base_dir is None:
            return ""
        path = self.base_dir / str(port) / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def view(self, port: int) -> list[Node]:
        """CLUSTER NODES as the node on `port` sees it."""
        return parse_cluster_nodes(self.client(port).execute_command("CLUSTER", "NODES"))

    def nodes(self) -> list[Node]:
        """Every node as it sees itself (what it says of the others lags by gossip)."""
        return [next(n for n in self.view(port) if "myself" in n.flags) for port in self.ports]

    def masters(self) -> list[Node]:
        """The masters, in slot order."""
        return sorted((n for n in self.nodes() if n.role == "master"), key=lambda n: n.slots)

    def replicas(self) -> list[Node]:
        """The replicas, in the slot order of their masters."""
        order = {m.id: i for i, m in enumerate(self.masters())}
        return sorted(
            (n for n in self.nodes() if n.role == "replica"),
            key=lambda n: (order.get(n.master_id or "", len(order)), n.port),
        )

    def replica_of(self, master: Node | int) -> Node:
        """A replica that follows `master` (a Node or a port)."""
        nodes = self.nodes()
        port = master.port if isinstance(master, Node) else master
        master_id = next(n.id for n in nodes if n.port == port)
        return min((n for n in nodes if n.master_id == master_id), key=lambda n: n.port)

    @property
    def url(self) -> str:
        """redis://127.0.0.1:<port>/0 of the node that was the first master at start
        (a cluster client finds the others from any node, after a failover too)."""
        if self._url is None:
            raise ClusterError("the cluster is not started")
        return self._url

    def settled(self) -> bool:
        """Every node says cluster_state:ok and sees all the others, none failing;
        every node has the same picture of who serves which slots and which master
        each replica follows, and names every replica in CLUSTER SLOTS (what a
        cluster client learns, from any node); every replica's link is up."""
        pictures = []
        for port in self.ports:
            self._alive(port)
            node = self.client(port)
            if "cluster_state:ok" not in node.execute_command("CLUSTER", "INFO"):
                return False
            view = self.view(port)
            if len(view) != self.size:
                return False
            if any(n.flags & {"fail", "fail?", "handshake", "noaddr"} for n in view):
                return False
            replication = node.info("replication")
            if replication["role"] == "slave" and replication.get("master_link_status") != "up":
                return False
            if self._replicas_in_slots(node) != self.size - len([n for n in view if n.slots]):
                return False
            ports = {n.id: n.port for n in view}
            pictures.append(
                sorted((n.port, n.role, ports.get(n.master_id or "", 0), n.slots) for n in view)
            )
        if any(picture != pictures[0] for picture in pictures):
            return False
        return sum(last - first + 1 for n in pictures[0] for first, last in n[3]) == SLOTS

    @staticmethod
    def _replicas_in_slots(node: redis.Redis) -> int:
        """How many replicas CLUSTER SLOTS names (what a cluster client learns)."""
        replicas: set[int] = set()
        for entry in node.execute_command("CLUSTER", "SLOTS"):
            replicas.update(int(replica[1]) for replica in entry[3:])
        return len(replicas)

    def wait_settled(self, timeout: float = 30) -> None:
        await_condition(
            self.settled,
            timeout,
            "cluster_state:ok and one picture of slots and replicas on every node",
        )

    def failover(self, replica: Node | int, timeout: float = 30) -> Node:
        """CLUSTER FAILOVER on a replica (a Node or a port); returns the promoted node
        once it reports role master and the cluster is settled again."""
        replica_port = replica.port if isinstance(replica, Node) else replica
        before = {n.port: n for n in self.nodes()}
        if replica_port not in before or before[replica_port].role != "replica":
            raise ValueError(f"node {replica_port} is not a replica")
        deadline = time.monotonic() + timeout
        # The master takes part in a manual failover only if it knows this replica.
        self.wait_settled(timeout)
        self.client(replica_port).execute_command("CLUSTER", "FAILOVER")
        await_condition(
            lambda: self.client(replica_port).info("replication")["role"] == "master",
            max(0.1, deadline - time.monotonic()),
            f"node {replica_port} to report role master",
        )
        self.wait_settled(max(0.1, deadline - time.monotonic()))
        promoted = next(n for n in self.nodes() if n.port == replica_port)
        assert promoted.role == "master" and promoted.slots, promoted
        return promoted


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--masters", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=1, help="replicas per master")
    args = parser.parse_args(argv)

    stopping: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        cluster = LocalCluster(args.masters, args.replicas)
    except RedisServerMissing as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        cluster.start()
        print(cluster.url, flush=True)
        print(
            f"Redis Cluster up in {cluster.started_in:.1f} s: masters "
            + " ".join(str(n.port) for n in cluster.masters())
            + ", replicas "
            + " ".join(str(n.port) for n in cluster.replicas())
            + f"; data in {cluster.base_dir}. Ctrl-C stops it.",
            file=sys.stderr,
            flush=True,
        )
        while not stopping:
            for port in cluster.ports:
                cluster._alive(port)  # a node that died ends the run, with its log
            time.sleep(0.2)
    finally:
        cluster.stop()
    print("stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
