"""Keep a row that kills its actor (an engine crash, an out-of-memory kill) from looping forever.

Ray Data restarts a dead pool actor and retries its batches, so no row is lost when a replica
dies. But a row that itself kills the replica would kill it again on every retry. The ledger
remembers which rows were in flight on each actor; when an actor comes back from a restart, its
in-flight rows become suspects. A suspect is then processed alone, with the actor's other
batches held back, so a second crash names the culprit exactly: at `max_crashes` it is routed to
errors/ (`[replica_crash]`) instead of being processed again.
"""
from __future__ import annotations

import threading
from collections import Counter, defaultdict
from contextlib import contextmanager
from typing import Any, Iterator

import ray

from stages.rows import RowError

CRASH_REASON = "replica_crash"


class ReplicaCrash(RowError):
    """A row that was in flight each time its stage's actor died; quarantined, not processed again."""

    def __init__(self, stage: str, crashes: int) -> None:
        super().__init__(
            CRASH_REASON,
            f"the {stage} actor died {crashes} times with this row in flight, the last time with no other "
            "row; it is not processed again",
        )


@ray.remote(num_cpus=0, max_restarts=-1)
class CrashLedger:
    def __init__(self) -> None:
        self.in_flight: dict[str, Counter[str]] = defaultdict(Counter)
        self.crashes: Counter[str] = Counter()

    def begin(self, actor: str, ids: list[str]) -> None:
        self.in_flight[actor].update(ids)

    def end(self, actor: str, ids: list[str]) -> None:
        self.in_flight[actor].subtract(ids)
        self.in_flight[actor] = +self.in_flight[actor]

    def restarted(self, actor: str) -> None:
        """The actor died and came back: what it had in flight is suspect."""
        self.crashes.update(self.in_flight.pop(actor, Counter()).keys())

    def crash_counts(self, ids: list[str]) -> dict[str, int]:
        return {i: self.crashes[i] for i in ids if self.crashes[i]}


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


def start_ledger() -> Any:
    return CrashLedger.remote()
