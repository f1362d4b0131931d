"""Hand a replica's requests to its engine as the engine's slots free, in the order that serves
rows soonest.

A judge replica holds many batches at once (`judge.batches_in_flight`) so that its engine never
waits for the next one. Handing all their requests to the engine at once would queue thousands
inside vLLM: each is rendered (tokenised, its media through the model's processor) on the
engine's thread when it enters and then holds its processed media while it waits, and a retry
queues behind every request that arrived before it, keeping its whole batch (and the batch's
decoded media) waiting. The feeder keeps at most `capacity` requests in the engine, its slots
plus a tenth so that a freed slot is refilled before the engine's next step (Ray Data LLM's
`max_pending_requests` rule) plus what the engine prepares ahead of its slots (`Engine.prefetch`:
requests in its render processes), and holds the rest itself, released in this order:

1. retries first: their row is otherwise done and waits on them alone;
2. then in arrival order, the requests handed over together kept together: a batch's rows in
   order and a row's requests adjacent. Both answer orders and every sample of a row share the
   system prompt, the media and the question, so entering the engine together the later ones
   are served from vLLM's prefix cache (and its encoder cache) instead of computing them again.

Completions, rejections and engine death reach each caller's future unchanged.
"""
from __future__ import annotations

import heapq
import itertools
import math
import threading
from concurrent.futures import Future
from typing import Iterable

from stages.engines.api import Completion, Engine, EngineDead, JudgeRequest

RETRY, FRESH = 0, 1  # release priority: lower first


def engine_capacity(slots: int, prefetch: int = 0) -> int:
    """Requests kept in an engine of `slots` slots: a tenth more, so none idles between steps, and
    those it prepares ahead (`Engine.prefetch`)."""
    return math.ceil(slots * 1.1) + prefetch


class SlotFeeder:
    def __init__(self, engine: Engine, capacity: int | None = None) -> None:
        self.engine = engine
        self.capacity = capacity or engine_capacity(engine.slots, engine.prefetch)
        self._lock = threading.Lock()
        self._held: list[tuple[int, int, JudgeRequest, Future[Completion]]] = []  # a heap
        self._arrival = itertools.count()
        self._in_engine = 0
        self._releasing = False  # one thread at a time moves requests into the engine
        self._closed = False

    @property
    def slots(self) -> int:
        return self.engine.slots

    def submit(self, request: JudgeRequest, *, retry: bool = False) -> Future[Completion]:
        """Queue one request; a retry goes ahead of every fresh request."""
        return self.submit_all([request], retry=retry)[0]

    def submit_all(self, requests: Iterable[JudgeRequest], *, retry: bool = False) -> list[Future[Completion]]:
        """Queue requests that enter the engine in this order, with nothing queued between them."""
        futures = []
        with self._lock:
            for request in requests:
                future: Future[Completion] = Future()
                if self._closed:
                    future.set_exception(EngineDead("engine was shut down"))
                else:
                    heapq.heappush(self._held, (RETRY if retry else FRESH, next(self._arrival), request, future))
                futures.append(future)
        self._release()
        return futures

    def held(self) -> int:
        """Requests waiting here for a slot."""
        with self._lock:
            return len(self._held)

    def _release(self) -> None:
        """Move held requests into the engine while it has room. A thread finding another one at it
        leaves: that one re-checks the room under the lock before each request, so a slot freed
        meanwhile is seen, and no completion callback ever recurses into here."""
        with self._lock:
            if self._releasing:
                return
            self._releasing = True
        while True:
            with self._lock:
                if not self._held or self._in_engine >= self.capacity:
                    self._releasing = False
                    return
                _, _, request, future = heapq.heappop(self._held)
                self._in_engine += 1
            if not future.set_running_or_notify_cancel():  # its caller gave up on it
                with self._lock:
                    self._in_engine -= 1
                continue
            try:
                inner = self.engine.submit(request)
            except BaseException as exc:  # noqa: BLE001 - the caller learns of it, the others go on
                inner = Future()
                inner.set_exception(exc)
            inner.add_done_callback(lambda done, outer=future: self._finished(done, outer))

    def _finished(self, inner: Future[Completion], outer: Future[Completion]) -> None:
        with self._lock:
            self._in_engine -= 1
        self._release()  # the freed slot is refilled before the caller sees this result
        error = inner.exception()
        if error is None:
            outer.set_result(inner.result())
        else:
            outer.set_exception(error)

    def shutdown(self) -> None:
        """Fail every request still held here, then shut the engine down (failing those in it)."""
        with self._lock:
            self._closed = True
            held, self._held = self._held, []
        for _, _, _, future in held:
            if future.set_running_or_notify_cancel():
                future.set_exception(EngineDead("engine was shut down"))
        self.engine.shutdown()
