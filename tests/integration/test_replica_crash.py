"""A judge replica or a decode task's process that dies is restarted and its rows retried; a row that
kills it every time is quarantined."""
from __future__ import annotations

import os
import re
import signal
import threading
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.config import load_config
from pipelines.curate import run_curation
from pipelines.errors import RunInterrupted
from pipelines.quarantine import SETUP_DEATHS_LIMIT
from stages.decode import DecodeStage
from stages.engines.api import JudgeRequest
from stages.engines.simulated import SimulatedEngine
from stages.formats.pairwise import PairwiseFormat

seeded_scores = PairwiseFormat().simulated_verdict

pytestmark = pytest.mark.e2e
CRASH = re.compile(r"CRASH-ONCE (\S+) question")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)  # what the OOM killer does


def die_on_marked(text: str) -> None:
    """Kill this process on a POISON text, and on a CRASH-ONCE text the first time: the text names the
    marker file that remembers it."""
    found = CRASH.search(text)
    if found and not Path(found.group(1)).exists():
        Path(found.group(1)).write_text("crashed")
        _die()
    if "POISON" in text:
        _die()


def crash_on_marked(request: JudgeRequest) -> str:
    die_on_marked(request.prompt)
    return seeded_scores(request)


def engine_dying_on_marked_rows() -> SimulatedEngine:
    return SimulatedEngine(crash_on_marked)


def simulated() -> SimulatedEngine:
    return SimulatedEngine(seeded_scores)


def engine_dying_as_it_starts(once: Path | None) -> SimulatedEngine:
    """Kills the replica's process while it starts its engine: each time, or only the first (`once`
    remembers it), as the OOM killer does to a replica loading its model."""
    if once is None or not once.exists():
        if once is not None:
            once.write_text("died")
        _die()
    return simulated()


class DecodeDying(DecodeStage):
    """The decode, but its process dies on a row with a CRASH-ONCE or POISON question, as on a file
    that crashes a C decoder or exhausts the worker's memory."""

    def process(self, table: pa.Table) -> pa.Table:
        for question in table.column("question").to_pylist():
            die_on_marked(question or "")
        return super().process(table)


class DecodeDyingAsItSetsUp(DecodeStage):
    """The decode, but its worker process dies as it sets up (imports its decoders): each time, or only
    the first (`once` remembers it), as with a native library that crashes as it loads."""

    def __init__(self, *args, once: Path | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.once = once

    def setup(self) -> None:
        if self.once is None or not self.once.exists():
            if self.once is not None:
                self.once.write_text("died")
            _die()
        super().setup()


def shard(path: Path, special: str, rows: int = 8, at: int = 5) -> None:
    questions = [f"question {i}" for i in range(rows)]
    questions[at] = f"{special} question"
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(rows)], "question": questions,
                             "response_a": ["yes"] * rows, "response_b": ["no"] * rows}), path)


def config(tmp_path: Path, *overrides: str):
    return load_config(
        overrides=["judge.engine.device=cpu", "judge.batch_size=4", "judge.batches_in_flight=2",
                   "filter.require_order_agreement=false", "filter.min_margin=0", "max_error_fraction=0.5",
                   *overrides],
        **{"input.paths": [str(tmp_path / "in.parquet")], "output.path": str(tmp_path / "out")},
    )


def landed(output: Path) -> dict[str, str]:
    return {r["id"]: name for name in ("kept", "dropped", "errors") for r in pq.read_table(output / name, columns=["id"]).to_pylist()}


def test_dead_replica_is_restarted_and_its_rows_retried(tmp_path, ray_session, monkeypatch):
    shard(tmp_path / "in.parquet", f"CRASH-ONCE {tmp_path / 'crashed'}")
    result = run_curation(config(tmp_path), engine_factory=engine_dying_on_marked_rows)
    assert (tmp_path / "crashed").exists(), "the replica never crashed"
    assert result.succeeded
    where = landed(tmp_path / "out")
    assert sorted(where) == [f"r{i}" for i in range(8)]
    assert "errors" not in where.values()
    assert result.report["judge"]["replica_restarts"] >= 1 and result.report["judge"]["node_losses"] == 0


def test_row_that_kills_the_replica_every_time_is_quarantined(tmp_path, ray_session):
    shard(tmp_path / "in.parquet", "POISON")
    result = run_curation(config(tmp_path), engine_factory=engine_dying_on_marked_rows)
    assert result.succeeded
    where = landed(tmp_path / "out")
    assert sorted(where) == [f"r{i}" for i in range(8)]
    assert [i for i, outcome in where.items() if outcome == "errors"] == ["r5"]
    [error] = pq.read_table(tmp_path / "out" / "errors").to_pylist()
    assert error["error_stage"] == "judge" and "[replica_crash]" in error["error"]
    assert error["error_reason"] == "replica_crash"
    assert result.report["error_reasons"] == {"replica_crash": 1}


def test_a_replica_that_dies_once_while_starting_is_restarted_and_the_run_finishes(tmp_path, ray_session):
    shard(tmp_path / "in.parquet", "plain")
    result = run_curation(config(tmp_path), engine_factory=partial(engine_dying_as_it_starts, tmp_path / "died"))
    assert (tmp_path / "died").exists(), "the replica never died"
    assert result.succeeded
    where = landed(tmp_path / "out")
    assert sorted(where) == [f"r{i}" for i in range(8)] and "errors" not in where.values()
    assert result.report["judge"]["replica_restarts"] >= 1


def test_a_replica_that_dies_each_time_it_starts_fails_the_run_saying_why(tmp_path, ray_session):
    shard(tmp_path / "in.parquet", "plain")
    with pytest.raises(RunInterrupted, match=rf"judge stage died {SETUP_DEATHS_LIMIT} times in a row while setting up"):
        finished_within(240, run_curation, config(tmp_path), engine_factory=partial(engine_dying_as_it_starts, None))


def finished_within(seconds: float, run, *args, **kwargs):
    """`run(*args, **kwargs)`'s result, failing the test if it has not returned after `seconds`."""
    outcome: dict = {}

    def call() -> None:
        try:
            outcome["result"] = run(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s: the row is retried without end"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


# The object-store budget is sized on the first 8 rows of a shard, decoded in a worker of their own
# before the run: a row after them dies in the run's decode only.
DECODE_ROWS, DYING_AT, SAMPLED = 12, 10, 2


def test_a_decode_task_whose_process_dies_is_retried_and_its_rows_land(tmp_path, ray_session, monkeypatch):
    monkeypatch.setattr("pipelines.curate.DecodeStage", DecodeDying)
    shard(tmp_path / "in.parquet", f"CRASH-ONCE {tmp_path / 'crashed'}", DECODE_ROWS, DYING_AT)
    result = run_curation(config(tmp_path), engine_factory=simulated)
    assert (tmp_path / "crashed").exists(), "the decode never crashed"
    assert result.succeeded
    where = landed(tmp_path / "out")
    assert sorted(where) == sorted(f"r{i}" for i in range(DECODE_ROWS)) and "errors" not in where.values()
    assert result.report["task_worker_deaths"] == 1


@pytest.mark.parametrize("at", [DYING_AT, SAMPLED])
def test_row_that_kills_the_decode_every_time_is_quarantined(tmp_path, ray_session, monkeypatch, at):
    # Ray Data retries a task whose worker died without end: without the ledger this run never ended.
    # Among the rows the budget is sized on, it killed the driver, before the run started.
    monkeypatch.setattr("pipelines.curate.DecodeStage", DecodeDying)
    shard(tmp_path / "in.parquet", "POISON", DECODE_ROWS, at)
    result = finished_within(240, run_curation, config(tmp_path), engine_factory=simulated)
    assert result.succeeded
    where = landed(tmp_path / "out")
    assert sorted(where) == sorted(f"r{i}" for i in range(DECODE_ROWS))
    assert [i for i, outcome in where.items() if outcome == "errors"] == [f"r{at}"]
    [error] = pq.read_table(tmp_path / "out" / "errors").to_pylist()
    assert error["error_stage"] == "decode" and error["error_reason"] == "worker_crash"
    assert result.report["error_reasons"] == {"worker_crash": 1}
    assert result.report["judge"]["replica_restarts"] == 0
    assert result.report["task_worker_deaths"] == 2  # the row's batch, then the row alone
    assert result.report["object_store_budget"]["source"] == ("ray" if at == SAMPLED else "derived")


# Not sized on a sample: the sample's decode, in a worker of its own, would set the stage up first.
UNSAMPLED = "object_store_budget_mib=ray"


def test_a_decode_worker_that_dies_once_as_it_sets_up_blames_no_row(tmp_path, ray_session, monkeypatch):
    monkeypatch.setattr("pipelines.curate.DecodeStage", partial(DecodeDyingAsItSetsUp, once=tmp_path / "died"))
    shard(tmp_path / "in.parquet", "plain", DECODE_ROWS, DYING_AT)
    result = finished_within(240, run_curation, config(tmp_path, UNSAMPLED), engine_factory=simulated)
    assert (tmp_path / "died").exists(), "the decode never died"
    assert result.succeeded
    where = landed(tmp_path / "out")
    assert sorted(where) == sorted(f"r{i}" for i in range(DECODE_ROWS)) and "errors" not in where.values()
    assert result.report["task_worker_deaths"] == 1


def test_a_decode_worker_that_dies_each_time_it_sets_up_fails_the_run_saying_why(tmp_path, ray_session, monkeypatch):
    # Ray Data retries a task whose worker died without end: without the ledger's count this run never ended.
    monkeypatch.setattr("pipelines.curate.DecodeStage", DecodeDyingAsItSetsUp)
    shard(tmp_path / "in.parquet", "plain", DECODE_ROWS, DYING_AT)
    with pytest.raises(RunInterrupted, match=rf"decode stage died {SETUP_DEATHS_LIMIT} times in a row on one node while setting up"):
        finished_within(240, run_curation, config(tmp_path), engine_factory=simulated)
