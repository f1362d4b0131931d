"""The facts about a row that every stage shares: its media columns, its outcome columns, and
errors as data.

A row ends in exactly one outcome: kept, dropped (`drop_reason` set) or errors (`error_stage`,
`error_reason` and `error` set). A row that cannot be processed is settled where the error is
raised: the stage records its name, a reason code and the original exception's type and message,
and every later stage passes the row through untouched (`stages.base.Settlement`). A readable row
that a stated rule keeps from judging is settled the same way, into dropped/ (`RowDropped`).
"""
from __future__ import annotations

from typing import Any

import pyarrow as pa

# The kinds of media a judge takes.
MODALITIES: tuple[str, ...] = ("image", "audio", "video")
# Media column -> modality of a row with one medium per modality, in columns named after it (every
# format but choice and MOS).
DEFAULT_MEDIA: dict[str, str] = {modality: modality for modality in MODALITIES}
# One media value as every stage after normalize holds it (Hugging Face `datasets`' layout).
MEDIA_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

ERROR_STAGE = "error_stage"
ERROR_REASON = "error_reason"
ERROR = "error"
DROP_REASON = "drop_reason"
ERROR_COLUMNS: dict[str, pa.DataType] = {ERROR_STAGE: pa.string(), ERROR_REASON: pa.string(), ERROR: pa.string()}

KEPT, DROPPED, ERRORS = "kept", "dropped", "errors"
OUTCOMES: tuple[str, ...] = (KEPT, DROPPED, ERRORS)


class _Reasoned(Exception):
    """An exception carrying a reason code; its message is `[reason] detail`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"[{reason}] {detail}")
        self.reason, self.detail = reason, detail

    def __reduce__(self) -> tuple[Any, ...]:  # survives pickling (Ray ships exceptions between processes)
        return (_rebuild, (type(self), self.reason, self.detail))


class RowError(_Reasoned, ValueError):
    """A row that cannot be processed, for a stated reason: `reason` is its `error_reason` code.

    The message is `[reason] detail`, so the `error` column reads `ExceptionType: [reason] detail`.
    """


class RowRejected(RowError):
    """A row whose input fields cannot be judged: missing or invalid text, a malformed answer list."""


class RowDropped(_Reasoned):
    """A readable row that a stated rule keeps from judging (degenerate media, by the config's rule):
    it goes to dropped/ with `reason` as its `drop_reason`, never to errors/."""


def _rebuild(kind: type[_Reasoned], reason: str, detail: str) -> _Reasoned:
    error = kind.__new__(kind)
    _Reasoned.__init__(error, reason, detail)
    return error


def describe_exception(exc: BaseException) -> str:
    """The `error` column's text: the original exception's type and message."""
    return f"{type(exc).__name__}: {exc}"


def reason_of(exc: BaseException) -> str:
    """The `error_reason` code: a RowError's reason, otherwise the exception's type name."""
    return exc.reason if isinstance(exc, RowError) else type(exc).__name__


def outcome_of(error_stage: str | None, drop_reason: str | None) -> str:
    if error_stage is not None:
        return ERRORS
    return DROPPED if drop_reason is not None else KEPT
