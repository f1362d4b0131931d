"""The crash ledger after a replica or a task attempt dies (and after its node is lost), and the watch
that stops a run waiting for a replica."""
from __future__ import annotations

import pickle
import time

import pytest

import pipelines.quarantine as quarantine
from pipelines.pool_watch import PoolWatch, ReplicaLost

Ledger = quarantine.CrashLedger.__ray_actor_class__  # the plain class, called here without Ray


def ledger_with_a_replica(monkeypatch: pytest.MonkeyPatch, node_alive: bool) -> object:
    monkeypatch.setattr(quarantine.ray, "nodes", lambda: [{"NodeID": "n1", "Alive": node_alive}])
    ledger = Ledger()
    ledger.heartbeat("a1", "n1")
    ledger.begin("a1", ["r1", "r2"])
    return ledger


def test_rows_in_flight_when_the_replica_itself_died_become_suspects(monkeypatch):
    ledger = ledger_with_a_replica(monkeypatch, node_alive=True)
    ledger.restarted("a1")
    assert ledger.crash_counts(["r1", "r2", "r3"]) == {"r1": 1, "r2": 1}
    assert ledger.counts() == {"replica_restarts": 1, "node_losses": 0}


def test_rows_in_flight_when_the_node_died_are_no_suspects(monkeypatch):
    ledger = ledger_with_a_replica(monkeypatch, node_alive=False)
    ledger.restarted("a1")
    assert ledger.crash_counts(["r1", "r2"]) == {}
    assert ledger.counts() == {"replica_restarts": 1, "node_losses": 1}


def test_a_replica_is_down_when_silent_too_long_with_rows_in_flight(monkeypatch):
    ledger = ledger_with_a_replica(monkeypatch, node_alive=False)
    ledger.heartbeat("a2", "n1")  # idle: nothing in flight
    ledger.last_seen = {actor: seen - 60 for actor, seen in ledger.last_seen.items()}
    assert ledger.down_replicas(120) == {}
    assert list(ledger.down_replicas(30)) == ["a1"]
    ledger.end("a1", ["r1", "r2"])
    assert ledger.down_replicas(30) == {}


def test_a_task_attempt_that_died_holding_rows_makes_them_suspects_of_its_retry(monkeypatch):
    monkeypatch.setattr(quarantine.ray, "nodes", lambda: [{"NodeID": "n1", "Alive": True}])
    ledger = Ledger()
    assert ledger.take("t1", "n1", ["r1", "r2", "r3"])[0] == {}  # held by t1 at once
    ledger.release("t1", ["r3"])  # t1 dies with r1 and r2
    assert ledger.take("t2", "n1", ["r1", "r2", "r3"])[0] == {"r1": 1, "r2": 1}  # Ray's retry of the task
    ledger.hold("t2", "n1", ["r3"])
    ledger.release("t2", ["r3"])
    ledger.hold("t2", "n1", ["r1"])  # suspects one at a time: r1 dies again
    assert ledger.take("t3", "n1", ["r1", "r2", "r3"])[0] == {"r1": 2, "r2": 1}
    assert ledger.take("t4", "n1", ["r4"])[0] == {} and ledger.held_by == {"r4": "t4"}
    assert ledger.task_worker_deaths() == 2


def test_a_task_attempt_lost_with_its_node_makes_no_suspects(monkeypatch):
    monkeypatch.setattr(quarantine.ray, "nodes", lambda: [{"NodeID": "n1", "Alive": False}])
    ledger = Ledger()
    ledger.take("t1", "n1", ["r1", "r2"])
    assert ledger.take("t2", "n2", ["r1", "r2"])[0] == {}
    assert ledger.task_worker_deaths() == 0


def test_finished_attempts_leave_nothing_in_the_ledger():
    ledger = Ledger()
    for attempt in ("t1", "t2"):
        ledger.take(attempt, "n1", [f"{attempt}-a", f"{attempt}-b"])
        ledger.release(attempt, [f"{attempt}-a", f"{attempt}-b"])
    assert ledger.held_by == {} and ledger.attempts == {}


def ledger_with_a_replica_setting_up(monkeypatch: pytest.MonkeyPatch, node_alive: bool) -> object:
    monkeypatch.setattr(quarantine.ray, "nodes", lambda: [{"NodeID": "n1", "Alive": node_alive}])
    ledger = Ledger()
    ledger.heartbeat("a1", "n1")
    ledger.register("a1", None)
    return ledger


def test_a_replica_dying_while_it_sets_up_counts_in_a_row_until_a_setup_finishes(monkeypatch):
    ledger = ledger_with_a_replica_setting_up(monkeypatch, node_alive=True)
    assert ledger.restarted("a1") == 1
    ledger.register("a1", None)
    assert ledger.restarted("a1") == 2
    ledger.register("a1", None)
    ledger.set_up("a1")
    assert ledger.restarted("a1") == 0, "a death after its setup finished is no setup death"
    assert ledger.counts()["replica_restarts"] == 3


def test_a_replica_whose_node_died_while_it_set_up_is_no_setup_death(monkeypatch):
    ledger = ledger_with_a_replica_setting_up(monkeypatch, node_alive=False)
    assert ledger.restarted("a1") == 0
    assert ledger.counts()["node_losses"] == 1


def test_a_setup_death_survives_the_trip_to_the_driver():
    error = pickle.loads(pickle.dumps(quarantine.SetupDied("judge", 3)))
    assert str(error) == str(quarantine.SetupDied("judge", 3))
    assert "judge stage died 3 times in a row while setting up" in str(error)
    task_error = pickle.loads(pickle.dumps(quarantine.SetupDied("decode", 3, task=True)))
    assert task_error.task and "decode stage died 3 times in a row on one node while setting up" in str(task_error)


def test_a_task_attempt_that_died_setting_up_blames_none_of_its_rows(monkeypatch):
    monkeypatch.setattr(quarantine.ray, "nodes", lambda: [{"NodeID": "n1", "Alive": True}])
    ledger = Ledger()
    assert ledger.take("t1", "n1", ["r1", "r2"], setting_up=True, stage="decode") == ({}, None)
    assert ledger.take("t2", "n1", ["r1", "r2"], setting_up=True, stage="decode") == ({}, None)  # t1 died
    ledger.task_set_up("t2", keep_held=True)
    assert ledger.held_by == {"r1": "t2", "r2": "t2"}, "a batch without suspects stays held while it is worked on"
    assert ledger.task_worker_deaths() == 1 and ledger.attempt_crashes == {}


def test_task_setup_deaths_in_a_row_on_a_node_fail_the_run_and_a_setup_between_resets_them(monkeypatch):
    monkeypatch.setattr(quarantine.ray, "nodes", lambda: [{"NodeID": "n1", "Alive": True}])
    ledger = Ledger()
    ledger.take("t1", "n1", ["r1"], setting_up=True, stage="decode")
    ledger.take("t2", "n1", ["r1"], setting_up=True, stage="decode")  # t1 died setting up
    ledger.take("t3", "n1", ["r1"], setting_up=True, stage="decode")  # t2 too
    ledger.task_set_up("t3", keep_held=False)  # t3's process set up: the count starts again
    ledger.take("t4", "n1", ["r2"], setting_up=True, stage="decode")
    ledger.take("t5", "n1", ["r2"], setting_up=True, stage="decode")
    ledger.take("t6", "n1", ["r2"], setting_up=True, stage="decode")
    assert ledger.failed() is None, "two deaths in a row since the last setup"
    _, failure = ledger.take("t7", "n1", ["r2"], setting_up=True, stage="decode")
    assert isinstance(failure, quarantine.SetupDied) and failure.task and failure.deaths == 3
    assert ledger.failed() is failure


def test_a_task_attempt_that_died_with_its_node_while_setting_up_is_no_setup_death(monkeypatch):
    monkeypatch.setattr(quarantine.ray, "nodes", lambda: [{"NodeID": "n1", "Alive": False}])
    ledger = Ledger()
    for attempt in ("t1", "t2", "t3", "t4"):
        assert ledger.take(attempt, "n1", ["r1"], setting_up=True, stage="decode") == ({}, None)
    assert ledger.failed() is None and ledger.task_worker_deaths() == 0


def test_a_worker_that_set_up_and_then_died_on_a_row_blames_that_row(monkeypatch):
    monkeypatch.setattr(quarantine.ray, "nodes", lambda: [{"NodeID": "n1", "Alive": True}])
    ledger = Ledger()
    ledger.take("t1", "n1", ["r1", "r2"], setting_up=True, stage="decode")
    ledger.task_set_up("t1", keep_held=True)
    assert ledger.take("t2", "n1", ["r1", "r2"])[0] == {"r1": 1, "r2": 1}


class FakeLedgerMethod:
    def __init__(self, call):
        self.remote = call


class FakeLedger:
    """Answers like the ledger actor: `down_replicas` names one replica down once `down` is set, and
    `failed` gives `failure`, what a pool actor ended the run with."""

    def __init__(self, down: bool, failure: Exception | None = None) -> None:
        self.given_up: list[str] = []
        self.down_replicas = FakeLedgerMethod(lambda silent_for_s: {"a1b2c3d4e5f6a7": 42.0} if down else {})
        self.give_up = FakeLedgerMethod(self.given_up.append)
        self.failed = FakeLedgerMethod(lambda: failure)


@pytest.fixture
def local_get(monkeypatch):
    monkeypatch.setattr("pipelines.pool_watch.ray.get", lambda value: value)


def test_the_watch_gives_up_a_down_replica_and_names_it_in_the_error(local_get):
    ledger = FakeLedger(down=True)
    with pytest.raises(ReplicaLost, match=r"judge replica a1b2c3d4e5f6 has been down for 42 s .*replica_down_timeout_s=20"):
        with PoolWatch(ledger, 20, poll_s=0.01).watching():
            for _ in range(6000):  # until the watch has ended the replica (a guard, not a timing)
                if ledger.given_up:
                    break
                time.sleep(0.01)
            raise RuntimeError("ActorDiedError")  # what Ray Data raises once the replica is ended
    assert ledger.given_up == ["a1b2c3d4e5f6a7"]


def test_without_a_down_replica_errors_pass_through_unchanged(local_get):
    ledger = FakeLedger(down=False)
    with pytest.raises(ValueError):
        with PoolWatch(ledger, 20, poll_s=0.01).watching():
            time.sleep(0.05)
            raise ValueError("a stage's own failure")
    assert ledger.given_up == []


def test_an_error_after_a_pool_actor_ended_the_run_is_that_actors_error(local_get):
    ledger = FakeLedger(down=False, failure=quarantine.SetupDied("judge", 3))
    with pytest.raises(quarantine.SetupDied, match="died 3 times in a row while setting up"):
        with PoolWatch(ledger, 20, poll_s=0.01).watching():
            raise RuntimeError("ActorDiedError: the actor died because of an error raised in its creation task")
