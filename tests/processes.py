"""Killing a process the way a crash, an OOM kill or a vanished machine does."""
from __future__ import annotations

import os
import signal

import psutil


def kill_tree(pid: int) -> None:
    """SIGKILL `pid` and every process it started (children first collected, so none escapes)."""
    try:
        family = [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        family = [pid]
    for member in family:
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass
