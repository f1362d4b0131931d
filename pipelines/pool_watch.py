"""Stop a run whose judge pool lost a replica for good, instead of waiting forever.

Ray restarts a dead pool actor on any node that can host it and Ray Data retries its batches there.
When the replica's node is gone and none can take its place (a spot node not replaced, a static
cluster), Ray waits for one indefinitely and so would the run. While the run streams, a thread asks
the pool's ledger for replicas silent, with rows in flight, for longer than
`judge.replica_down_timeout_s`; on the first, it has the ledger end that replica for good, so the
batches Ray was holding for it fail and the driver's loop ends with an error, which becomes
ReplicaLost. What was committed stays committed: the same command resumes the run once nodes are back.
"""
from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from typing import Any, Iterator

import ray

log = logging.getLogger(__name__)


class ReplicaLost(RuntimeError):
    """A judge replica was down (its node lost, nowhere to restart) for longer than allowed."""


class PoolWatch:
    def __init__(self, ledger: Any, down_after_s: float, poll_s: float = 2.0) -> None:
        self.ledger, self.down_after_s, self.poll_s = ledger, down_after_s, poll_s
        self.problem: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pool-watch", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            down = ray.get(self.ledger.down_replicas.remote(self.down_after_s))
            if not down:
                continue
            actor, seconds = max(down.items(), key=lambda item: item[1])
            self.problem = (
                f"judge replica {actor[:12]} has been down for {seconds:.0f} s with rows in flight (its node is "
                f"gone and no node can host it; judge.replica_down_timeout_s={self.down_after_s:g})"
            )
            log.error("%s: giving it up", self.problem)
            ray.get(self.ledger.give_up.remote(actor))
            return

    @contextmanager
    def watching(self) -> Iterator[None]:
        """Run the body under watch; an error it ends with after a replica was given up is ReplicaLost,
        and after a pool actor ended the run (`CrashLedger.fail`), that actor's error."""
        self._thread.start()
        try:
            yield
        except Exception as exc:
            if self.problem is not None:
                raise ReplicaLost(self.problem) from exc
            failure = ray.get(self.ledger.failed.remote())
            if failure is None:
                raise
            raise failure from exc
        finally:
            self._stop.set()
            self._thread.join()
