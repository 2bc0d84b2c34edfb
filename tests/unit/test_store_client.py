"""`store.client.script_slot`: long scripts in flight per process and node (no Redis:
a client object that is never connected)."""

from __future__ import annotations

import threading
import weakref

import pytest
import redis

from sluice.store import client as store_client


@pytest.fixture
def quick(monkeypatch):
    monkeypatch.setattr(store_client, "POOL_WAIT", 0.05)
    monkeypatch.setattr(store_client, "_gates", weakref.WeakKeyDictionary())


def test_at_most_scripts_in_flight_then_a_timeout(quick):
    r = redis.Redis()  # never connects: the gate is the process's, not Redis's
    held = [store_client.script_slot(r, "k") for _ in range(store_client.SCRIPTS_IN_FLIGHT)]
    for slot in held:
        slot.__enter__()
    with pytest.raises(redis.TimeoutError), store_client.script_slot(r, "k"):
        pass
    held[0].__exit__(None, None, None)
    with store_client.script_slot(r, "k"):  # a place was freed
        pass
    for slot in held[1:]:
        slot.__exit__(None, None, None)


def test_a_failing_script_gives_its_place_back(quick):
    r = redis.Redis()
    for _ in range(store_client.SCRIPTS_IN_FLIGHT + 1):
        with pytest.raises(ValueError), store_client.script_slot(r, "k"):
            raise ValueError("the script failed")
    with store_client.script_slot(r, "k"):
        pass


def test_a_waiting_caller_goes_on_when_a_place_frees(quick, monkeypatch):
    monkeypatch.setattr(store_client, "POOL_WAIT", 10.0)
    r = redis.Redis()
    held = [store_client.script_slot(r, "k") for _ in range(store_client.SCRIPTS_IN_FLIGHT)]
    for slot in held:
        slot.__enter__()
    entered = threading.Event()

    def third() -> None:
        with store_client.script_slot(r, "k"):
            entered.set()

    waiter = threading.Thread(target=third)
    waiter.start()
    assert not entered.wait(0.05)  # every place is taken
    held[0].__exit__(None, None, None)
    assert entered.wait(5)
    waiter.join()
    held[1].__exit__(None, None, None)
