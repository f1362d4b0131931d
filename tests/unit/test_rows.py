"""Errors as data: a row's reason code is set where its error is raised, and one helper settles rows."""
from __future__ import annotations

import pickle

import pyarrow as pa
import pytest

from pipelines.duplicates import DuplicateId
from pipelines.quarantine import ReplicaCrash
from stages.base import RowStage, Settlement
from stages.formats.base import UnparsedVerdict
from stages.media.errors import MediaError
from stages.rows import ERROR, ERROR_REASON, ERROR_STAGE, RowRejected, describe_exception, reason_of

ERRORS = [
    MediaError("image_undecodable", "cannot decode", OSError("truncated")),
    RowRejected("empty_question", "question is null"),
    UnparsedVerdict("unparsed_verdict", "no parsable verdict"),
    ReplicaCrash("judge", 2),
    DuplicateId("r1", 3),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_reason_travels_with_the_exception(error):
    assert describe_exception(error).startswith(f"{type(error).__name__}: [{error.reason}] ")
    copy = pickle.loads(pickle.dumps(error))  # Ray ships exceptions between processes
    assert type(copy) is type(error) and reason_of(copy) == error.reason and str(copy) == str(error)


def test_an_exception_without_a_reason_is_named_by_its_type():
    assert reason_of(ValueError("boom")) == "ValueError"
    assert reason_of(ReplicaCrash("judge", 2)) == "replica_crash"
    assert reason_of(DuplicateId("x", 2)) == "duplicate_id"


def batch() -> pa.Table:
    return pa.table({
        "id": ["ok", "bad", "earlier", "dropped"],
        ERROR_STAGE: [None, None, "decode", None],
        ERROR_REASON: [None, None, "image_undecodable", None],
        ERROR: [None, None, "MediaError: [image_undecodable] x", None],
        "drop_reason": [None, None, None, "tie"],
    })


def test_settlement_skips_settled_rows_and_records_new_errors():
    settlement = Settlement(batch())
    assert settlement.pending() == [0, 1]
    settlement.fail(1, "judge", RowRejected("empty_response", "response is null"))
    assert settlement.pending() == [0]
    out = settlement.apply(batch()).to_pylist()
    assert [(r[ERROR_STAGE], r[ERROR_REASON]) for r in out] == [
        (None, None), ("judge", "empty_response"), ("decode", "image_undecodable"), (None, None)]
    assert out[1][ERROR] == "RowRejected: [empty_response] response is null"


class Halve(RowStage):
    name = "halve"
    needs = ("id",)
    adds = {"half": pa.string()}

    def process_row(self, row):
        if row["id"] == "bad":
            raise MediaError("audio_silent", "peak 0")
        return {"half": row["id"][: len(row["id"]) // 2]}


def test_row_stage_settles_its_failures_and_passes_settled_rows():
    out = Halve().process(batch()).to_pylist()
    assert [r["half"] for r in out] == ["o", None, None, None]
    assert (out[1][ERROR_STAGE], out[1][ERROR_REASON]) == ("halve", "audio_silent")
    assert out[2][ERROR_STAGE] == "decode" and out[3]["drop_reason"] == "tie"
