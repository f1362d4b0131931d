"""Killing a process the way a crash, an OOM kill or a vanished machine does."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

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


def manifest_count(output: Path) -> Callable[[], int]:
    """How many batch manifests a local run directory holds now."""
    return lambda: len(list((output / "_manifests").glob("*.json")))


def kill_after_commits(command: list[str], committed: Callable[[], int], commits: int, cwd: Path,
                       latest: float = 120.0, env: dict[str, str] | None = None) -> int:
    """Start `command`, SIGKILL it with everything it started once `committed()` reaches `commits`
    (or `latest` seconds passed); return `committed()` after the kill."""
    job = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    deadline = time.monotonic() + latest
    while time.monotonic() < deadline and job.poll() is None:
        if commits == 0 or committed() >= commits:
            break
        time.sleep(0.05)
    assert job.poll() is None, "the job finished before it could be killed"
    kill_tree(job.pid)
    job.wait()
    return committed()
