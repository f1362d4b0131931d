"""How a replica's requests reach its engine: as slots free, retries first, a row's requests
together, and a slow batch never holding back the next one's (stages/engines/feeder.py and the
judge stage on top of it)."""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import pyarrow as pa
import pytest

from stages.engines.api import Completion, EngineDead, JudgeRequest, RequestRejected
from stages.engines.feeder import SlotFeeder, engine_capacity
from stages.formats.registry import judging_format
from stages.formats.verdicts import verdict_text
from stages.judge import JudgeConfig, JudgeStage


class HeldEngine:
    """An engine whose requests complete only when the test says so; it records what entered."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.prefetch = 0
        self.entered: list[str] = []
        self.running: dict[str, Future] = {}
        self.lock = threading.Lock()
        self.shut = False

    def submit(self, request: JudgeRequest) -> Future:
        future: Future = Future()
        with self.lock:
            self.entered.append(request.request_id)
            self.running[request.request_id] = future
        return future

    def finish(self, request_id: str, text: str = "", error: Exception | None = None) -> None:
        with self.lock:
            future = self.running.pop(request_id)
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(Completion(text, 10, 5, "stop"))

    def wait_for(self, predicate, timeout: float = 30) -> None:
        """Until predicate(self) holds (other threads submit): polled, a deadline only against hangs."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            assert time.monotonic() < deadline, f"engine saw {self.entered}"
            time.sleep(0.005)

    def shutdown(self) -> None:
        self.shut = True
        for future in list(self.running.values()):
            future.set_exception(EngineDead("engine was shut down"))


def request(request_id: str) -> JudgeRequest:
    return JudgeRequest(request_id=request_id, prompt="p")


def test_capacity_is_the_engines_slots_and_a_tenth():
    assert engine_capacity(256) == 282 and engine_capacity(64) == 71 and engine_capacity(1) == 2
    assert SlotFeeder(HeldEngine(slots=64)).capacity == 71


def test_an_engine_preparing_requests_ahead_is_given_that_many_more():
    """An engine whose render processes prepare requests before slots free (its prefetch) holds
    them beyond its slots and their tenth; otherwise a freed slot waits for a render."""
    engine = HeldEngine(slots=64)
    engine.prefetch = 16
    assert engine_capacity(64, 16) == 87 and SlotFeeder(engine).capacity == 87


def test_requests_enter_as_slots_free_and_in_the_order_given():
    engine = HeldEngine(slots=2)
    feeder = SlotFeeder(engine, capacity=2)
    futures = feeder.submit_all(request(f"a{i}") for i in range(5))
    assert engine.entered == ["a0", "a1"] and feeder.held() == 3
    engine.finish("a1", "done")
    assert futures[1].result().text == "done"
    assert engine.entered == ["a0", "a1", "a2"]  # the freed slot was refilled before the caller saw a1
    for name in ("a0", "a2", "a3"):
        engine.finish(name)
    assert engine.entered == [f"a{i}" for i in range(5)] and feeder.held() == 0


def test_a_retry_enters_ahead_of_everything_fresh():
    engine = HeldEngine(slots=1)
    feeder = SlotFeeder(engine, capacity=1)
    feeder.submit_all([request("batch1-row1"), request("batch1-row2")])
    feeder.submit_all([request("batch2-row1"), request("batch2-row2")])
    feeder.submit(request("batch1-row1-retry"), retry=True)
    engine.finish("batch1-row1")
    engine.finish("batch1-row1-retry")
    engine.finish("batch1-row2")
    assert engine.entered == ["batch1-row1", "batch1-row1-retry", "batch1-row2", "batch2-row1"]


def test_rejections_reach_their_caller_alone_and_free_their_slot():
    engine = HeldEngine(slots=1)
    feeder = SlotFeeder(engine, capacity=1)
    bad, good = feeder.submit_all([request("bad"), request("good")])
    engine.finish("bad", error=RequestRejected("too long"))
    with pytest.raises(RequestRejected, match="too long"):
        bad.result()
    engine.finish("good", "fine")
    assert good.result().text == "fine"


def test_an_engine_that_raises_on_submit_fails_that_request_only():
    class Refusing(HeldEngine):
        def submit(self, request: JudgeRequest) -> Future:
            if request.request_id == "poison":
                raise ValueError("cannot take it")
            return super().submit(request)

    engine = Refusing(slots=1)
    feeder = SlotFeeder(engine, capacity=1)
    poison, fine = feeder.submit_all([request("poison"), request("fine")])
    with pytest.raises(ValueError, match="cannot take it"):
        poison.result(timeout=5)
    engine.finish("fine", "ok")
    assert fine.result(timeout=5).text == "ok"


def test_shutdown_fails_what_is_held_and_what_is_running():
    engine = HeldEngine(slots=1)
    feeder = SlotFeeder(engine, capacity=1)
    running, held = feeder.submit_all([request("running"), request("held")])
    feeder.shutdown()
    assert engine.shut
    for future in (running, held):
        with pytest.raises(EngineDead):
            future.result(timeout=5)
    with pytest.raises(EngineDead):
        feeder.submit(request("late")).result(timeout=5)


def test_many_instant_completions_do_not_recurse():
    class Instant:
        slots = 1

        def submit(self, request: JudgeRequest) -> Future:
            future: Future = Future()
            future.set_result(Completion("x", 1, 1, "stop"))  # resolved before submit returns
            return future

        def shutdown(self) -> None:
            pass

    futures = SlotFeeder(Instant(), capacity=1).submit_all(request(str(i)) for i in range(5000))
    assert all(f.result(timeout=5).text == "x" for f in futures)


# --------------------------------------------------------------------------- the judge stage on it


def rows_table(ids: list[str]) -> pa.Table:
    return pa.Table.from_pylist([
        {"id": row_id, "question": "Q?", "response_a": "a", "response_b": "b", "response": "r", "image": None,
         "audio": None, "video": None, "error_stage": None, "error_reason": None, "error": None, "drop_reason": None}
        for row_id in ids
    ])


def slot_of(request_id: str) -> tuple[str, str, str, str]:
    row, order, sample, attempt, _ = request_id.split(":")
    return row, order, sample, attempt


def test_a_rows_requests_enter_the_engine_together():
    """Both orders x samples of a row share their prefix: they must not be split by other rows'."""
    engine = HeldEngine(slots=3)
    stage = JudgeStage(judging_format("pairwise"), JudgeConfig(samples=2), engine_factory=lambda: engine)
    done = threading.Thread(target=stage.process, args=(rows_table(["r1", "r2", "r3"]),))
    done.start()
    for _ in range(12):
        engine.wait_for(lambda e: e.running)
        engine.finish(next(iter(engine.running)), verdict_text(7, 3))
    done.join(timeout=30)
    rows = [slot_of(r)[0] for r in engine.entered]
    assert rows == ["r1"] * 4 + ["r2"] * 4 + ["r3"] * 4
    assert [slot_of(r)[1:3] for r in engine.entered[:4]] == [("ab", "0"), ("ab", "1"), ("ba", "0"), ("ba", "1")]


def test_a_slow_batch_tail_never_holds_back_the_next_batch():
    """Two batches in flight on a 2-slot engine: while batch 1's last verdict is still decoding,
    batch 2's requests take every slot that frees, and a retry of batch 1 goes ahead of them."""
    engine = HeldEngine(slots=2)
    stage = JudgeStage(judging_format("single"), JudgeConfig(max_retries=1), engine_factory=lambda: engine)
    stage.engine = feeder = SlotFeeder(engine, capacity=2)  # exactly the slots, to watch each one refill
    first = threading.Thread(target=stage.process, args=(rows_table(["b1-tail", "b1-fast"]),))
    first.start()
    engine.wait_for(lambda e: len(e.entered) == 2)
    tail, fast = engine.entered
    second = threading.Thread(target=stage.process, args=(rows_table(["b2-x", "b2-y", "b2-z"]),))
    second.start()
    engine.wait_for(lambda e: feeder.held() == 3)

    engine.finish(fast, "no verdict here")  # unparsed: the slot goes to batch 2, the retry to the front
    engine.wait_for(lambda e: feeder.held() == 3 and len(e.entered) == 3)
    assert slot_of(engine.entered[2])[0] == "b2-x"
    engine.finish(engine.entered[2], verdict_text(3))
    engine.wait_for(lambda e: len(e.entered) == 4)
    assert slot_of(engine.entered[3])[::3] == ("b1-fast", "1")  # ahead of b2-y and b2-z
    engine.finish(engine.entered[3], verdict_text(4))
    for row in ("b2-y", "b2-z"):
        engine.wait_for(lambda e, row=row: any(slot_of(r)[0] == row for r in e.running))
        assert tail in engine.running  # still decoding while batch 2 takes every other slot
        engine.finish(next(r for r in engine.running if slot_of(r)[0] == row), verdict_text(3))
    second.join(timeout=30)
    assert not second.is_alive() and first.is_alive()  # batch 2 returned before batch 1
    engine.finish(tail, verdict_text(5))
    first.join(timeout=30)
    assert not first.is_alive()
    stage.close()
