"""How a started run that cannot finish says so."""
from __future__ import annotations


class RunInterrupted(RuntimeError):
    """The run started and stopped before finishing (a judge pool that is gone, a lost cluster, an
    unexpected error). Its committed batches are kept: running the same command again resumes it."""


def first_line(exc: BaseException) -> str:
    """An exception as one line: its type and the first non-empty line of its message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
