"""The run's crash ledger: keep a row that kills its worker (a judge replica, or a decode task's
process) from looping forever, count restarts, and notice a replica that is gone for good.

Ray Data restarts a dead pool actor and retries its batches, so no row is lost when a replica
dies. But a row that itself kills the replica would kill it again on every retry. The ledger
remembers which rows were in flight on each actor; when an actor comes back from a restart, its
in-flight rows become suspects. A suspect is then processed alone, with the actor's other
batches held back, so a second crash names the culprit exactly: at `max_crashes` it is routed to
errors/ (`[replica_crash]`) instead of being processed again. When the actor died because its
node did (a spot node taken back), its rows are not suspects: nothing says they caused it.

Each replica also beats a heartbeat. A replica that went silent with rows in flight is waiting to
be restarted; if no node can take it (its node is gone and none comes back), Ray would wait forever:
`down_replicas` names it once it has been silent too long, and `give_up` ends it for good, which
fails the run instead (pipelines/pool_watch.py).
A replica whose process dies while it sets up its stage (loads the model, starts the engine: the OOM
killer, a GPU driver fault) has no row to blame, and Ray would restart it without end: at
`SETUP_DEATHS_LIMIT` deaths in a row it refuses to start again, which fails the run.
A stage run as tasks (the decode, which hands the data's bytes to C decoders) is retried by Ray Data
in a new attempt, without end, when its worker process dies. Each attempt holds its rows in the
ledger while it works on them; an attempt that finds one of its rows still held by an earlier one
knows that attempt's worker died with it (Ray retries a task only then), and those rows become
suspects, processed alone and quarantined as for the pool (`[worker_crash]`). A worker process
holds its first task's rows while it sets up the stage too: an attempt that died there has no row to
blame, and at `SETUP_DEATHS_LIMIT` such deaths in a row on a node the run fails, as for the pool.
The ledger is pinned to the driver's node, so it lives exactly as long as the run.
"""
from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from typing import Any, Iterator

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from stages.rows import RowError

CRASH_REASON = "replica_crash"
WORKER_CRASH_REASON = "worker_crash"
HEARTBEAT_S = 2.0
SETUP_DEATHS_LIMIT = 3  # a replica dying this many times in a row while it sets up is not started again


class ReplicaCrash(RowError):
    """A row that was in flight each time its stage's actor died; quarantined, not processed again."""

    def __init__(self, stage: str, crashes: int) -> None:
        super().__init__(
            CRASH_REASON,
            f"the {stage} actor died {crashes} times with this row in flight, the last time with no other "
            "row; it is not processed again",
        )


class WorkerCrash(RowError):
    """A row that was in a task of its stage each time the task's worker process died; quarantined."""

    def __init__(self, stage: str, crashes: int) -> None:
        super().__init__(
            WORKER_CRASH_REASON,
            f"the {stage} stage's worker process died {crashes} times with this row in it, the last time with no "
            "other row; it is not processed again",
        )


class SetupDied(RuntimeError):
    """A pool actor's process, or a task's worker process (`task`), died each time it set up its stage:
    the run stops instead of trying again."""

    def __init__(self, stage: str, deaths: int, task: bool = False) -> None:
        super().__init__(stage, deaths, task)  # what it is rebuilt from in the process it travels to
        self.stage, self.deaths, self.task = stage, deaths, task

    def __str__(self) -> str:
        if self.task:
            return (
                f"a worker process of the {self.stage} stage died {self.deaths} times in a row on one node while "
                "setting up (importing its decoders), before working on any row, and the run stops; its worker's "
                "log says why (logs/worker-*.err in Ray's session on its node): the OOM killer, or a native library "
                "(FFmpeg, libsndfile, libjpeg) that crashes as it loads"
            )
        return (
            f"a replica of the {self.stage} stage died {self.deaths} times in a row while setting up (loading its "
            "model, starting its engine), before any row reached it, and is not started again; its worker's log "
            "says why (logs/worker-*.err in Ray's session on its node): the OOM killer and GPU driver faults are "
            "the usual causes"
        )


@ray.remote(num_cpus=0)
class CrashLedger:
    def __init__(self) -> None:
        self.in_flight: dict[str, Counter[str]] = defaultdict(Counter)
        self.crashes: Counter[str] = Counter()
        self.last_seen: dict[str, float] = {}
        self.node_of: dict[str, str] = {}
        self.restarts = 0
        self.node_losses = 0
        self.handles: dict[str, Any] = {}
        self.setting_up: set[str] = set()
        self.setup_deaths: Counter[str] = Counter()  # consecutive, per actor
        self.failure: Exception | None = None
        # Task attempts: row id -> the attempt holding it; attempt -> (its node, the rows it holds).
        self.held_by: dict[str, str] = {}
        self.attempts: dict[str, tuple[str, set[str]]] = {}
        self.attempt_crashes: Counter[str] = Counter()
        self.attempt_deaths = 0
        self.attempts_setting_up: set[str] = set()
        self.task_setup_deaths: Counter[str] = Counter()  # consecutive, per node

    def register(self, actor: str, handle: Any) -> None:
        """An actor of the pool, with its handle (the one way to give it up: `give_up`), about to set up."""
        self.handles[actor] = handle
        self.setting_up.add(actor)

    def set_up(self, actor: str) -> None:
        self.setting_up.discard(actor)
        self.setup_deaths.pop(actor, None)

    def fail(self, error: Exception) -> None:
        """What a pool actor ended the run with, for the driver: Ray Data's own error names only the actor."""
        self.failure = self.failure or error

    def failed(self) -> Exception | None:
        return self.failure

    def heartbeat(self, actor: str, node: str) -> None:
        self.last_seen[actor], self.node_of[actor] = time.monotonic(), node

    def give_up(self, actor: str) -> None:
        """Stop waiting for a replica that cannot come back: kill it for good, so the tasks Ray keeps
        retrying on it fail and the run ends instead of waiting forever."""
        ray.kill(self.handles[actor], no_restart=True)

    def begin(self, actor: str, ids: list[str]) -> None:
        self.in_flight[actor].update(ids)

    def end(self, actor: str, ids: list[str]) -> None:
        self.in_flight[actor].subtract(ids)
        self.in_flight[actor] = +self.in_flight[actor]

    def restarted(self, actor: str) -> int:
        """The actor died and came back: what it had in flight is suspect, unless its node died.
        Returns how many times in a row it has died while still setting up."""
        self.restarts += 1
        lost = self.in_flight.pop(actor, Counter())
        if self._node_dead(self.node_of.get(actor)):
            self.node_losses += 1
            return self.setup_deaths[actor]
        self.crashes.update(lost.keys())
        if actor in self.setting_up:
            self.setup_deaths[actor] += 1
        return self.setup_deaths[actor]

    @staticmethod
    def _node_dead(node: str | None) -> bool:
        if node is None:
            return False
        return not any(entry["NodeID"] == node and entry["Alive"] for entry in ray.nodes())

    def crash_counts(self, ids: list[str]) -> dict[str, int]:
        return {i: self.crashes[i] for i in ids if self.crashes[i]}

    def down_replicas(self, silent_for_s: float) -> dict[str, float]:
        """Replicas silent for more than `silent_for_s` seconds with rows still in flight: actor -> seconds."""
        now = time.monotonic()
        return {
            actor: now - seen
            for actor, seen in self.last_seen.items()
            if now - seen > silent_for_s and self.in_flight.get(actor)
        }

    def take(
        self, attempt: str, node: str, ids: list[str], setting_up: bool = False, stage: str = ""
    ) -> tuple[dict[str, int], Exception | None]:
        """A task attempt on `node` takes `ids`: an earlier attempt still holding one of them died in
        it, and its rows become suspects unless its node died, or it died setting up. Returns the
        suspects' crash counts, and the error the run has failed with (the attempt raises it), if any.
        With no suspect, `attempt` holds all of `ids` (one call for the common case); when it is
        `setting_up` its worker process's first `stage` task, it holds them until `task_set_up`."""
        for earlier in {self.held_by[i] for i in ids if i in self.held_by}:
            earlier_node, rows = self.attempts.pop(earlier)
            for row in rows:
                del self.held_by[row]
            died_setting_up = earlier in self.attempts_setting_up
            self.attempts_setting_up.discard(earlier)
            if self._node_dead(earlier_node):
                continue
            self.attempt_deaths += 1
            if died_setting_up:  # before its first row: no row to blame
                self.task_setup_deaths[earlier_node] += 1
                if self.task_setup_deaths[earlier_node] >= SETUP_DEATHS_LIMIT:
                    self.fail(SetupDied(stage, self.task_setup_deaths[earlier_node], task=True))
            else:
                self.attempt_crashes.update(rows)
        crashes = {i: self.attempt_crashes[i] for i in ids if self.attempt_crashes[i]}
        if setting_up:
            self.attempts_setting_up.add(attempt)
        if setting_up or not crashes:
            self.hold(attempt, node, ids)
        return crashes, self.failure

    def task_set_up(self, attempt: str, keep_held: bool) -> None:
        """`attempt`'s worker process set its stage up: a later death is its rows' doing. Unless
        `keep_held`, its rows are released (its suspects are then held one at a time)."""
        self.attempts_setting_up.discard(attempt)
        node, rows = self.attempts.get(attempt, ("", set()))
        self.task_setup_deaths.pop(node, None)
        if not keep_held:
            self.release(attempt, list(rows))

    def hold(self, attempt: str, node: str, ids: list[str]) -> None:
        self.held_by.update(dict.fromkeys(ids, attempt))
        self.attempts.setdefault(attempt, (node, set()))[1].update(ids)

    def release(self, attempt: str, ids: list[str]) -> None:
        _, rows = self.attempts.get(attempt, ("", set()))
        for row in ids:
            rows.discard(row)
            if self.held_by.get(row) == attempt:
                del self.held_by[row]
        if not rows:
            self.attempts.pop(attempt, None)

    def counts(self) -> dict[str, int]:
        return {"replica_restarts": self.restarts, "node_losses": self.node_losses}

    def task_worker_deaths(self) -> int:
        """Task attempts whose worker process died holding rows (not with its node)."""
        return self.attempt_deaths


class SharedExclusiveLock:
    """Many batches share the actor; a suspect row takes it alone."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._sharers = 0
        self._exclusive = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._condition:
            self._condition.wait_for(lambda: not self._exclusive)
            self._sharers += 1
        try:
            yield
        finally:
            with self._condition:
                self._sharers -= 1
                self._condition.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._condition:
            self._condition.wait_for(lambda: not self._exclusive)
            self._exclusive = True
            self._condition.wait_for(lambda: self._sharers == 0)
        try:
            yield
        finally:
            with self._condition:
                self._exclusive = False
                self._condition.notify_all()


def on_this_node() -> NodeAffinitySchedulingStrategy:
    """Keep an actor on the driver's node: it must not die with a worker node."""
    return NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)


def start_ledger() -> Any:
    return CrashLedger.options(scheduling_strategy=on_this_node()).remote()


def beat(ledger: Any, actor: str, node: str, stop: threading.Event) -> None:
    """A replica's heartbeat loop (a daemon thread), from before its engine starts until it dies."""
    while not stop.is_set():
        ledger.heartbeat.remote(actor, node)
        stop.wait(HEARTBEAT_S)
