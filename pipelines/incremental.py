"""Nightly incremental runs: process only the shards no earlier run has consumed.

A shard is identified by its path plus a fingerprint (size and modification time, or a content
hash); a changed shard is new again. Each night writes its own partition `run_date=YYYY-MM-DD`
under the output, and the state records the night's shards only after that partition is
committed (`_SUCCESS`), so a failed or killed night is simply redone by the next attempt.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

from pyarrow import fs as pafs

from pipelines.config import IncrementalConfig
from pipelines.shards import ShardSet
from stages.storage.files import filesystem_for, write_atomically

STATE_VERSION = 1


def _stat(filesystem: pafs.FileSystem, path: str) -> pafs.FileInfo:
    return filesystem.get_file_info(path)


def fingerprint(filesystem: pafs.FileSystem, path: str, kind: str) -> dict[str, Any]:
    info = _stat(filesystem, path)
    if kind == "content":
        digest = hashlib.sha256()
        with filesystem.open_input_stream(path) as source:
            while chunk := source.read(1 << 22):
                digest.update(chunk)
        return {"sha256": digest.hexdigest()}
    mtime = info.mtime.astimezone(timezone.utc).isoformat() if info.mtime else None
    return {"size": info.size, "mtime": mtime}


def modified_on(filesystem: pafs.FileSystem, path: str) -> date | None:
    info = _stat(filesystem, path)
    return info.mtime.astimezone(timezone.utc).date() if info.mtime else None


def load_state(uri: str) -> dict[str, Any]:
    filesystem, path = filesystem_for(uri)
    if filesystem.get_file_info(path).type == pafs.FileType.NotFound:
        return {"version": STATE_VERSION, "shards": {}}
    with filesystem.open_input_stream(path) as source:
        state = json.loads(source.read())
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"incremental state {uri} has version {state.get('version')}, expected {STATE_VERSION}")
    return state


@dataclass
class NightPlan:
    run_date: date
    shards: ShardSet  # the shards this night processes
    fingerprints: dict[str, dict[str, Any]]
    unchanged: list[str]


def plan_night(shards: ShardSet, cfg: IncrementalConfig, state: dict[str, Any]) -> NightPlan:
    run_date = cfg.run_date or datetime.now(timezone.utc).date()
    fingerprints: dict[str, dict[str, Any]] = {}
    selected, unchanged = [], []
    for path in shards.paths:
        if cfg.since is not None and (modified_on(shards.filesystem, path) or cfg.since) < cfg.since:
            continue
        fingerprints[path] = fingerprint(shards.filesystem, path, cfg.fingerprint)
        seen = state["shards"].get(path)
        if not cfg.reprocess and seen is not None and seen.get("fingerprint") == fingerprints[path]:
            unchanged.append(path)
        else:
            selected.append(path)
    return NightPlan(run_date, shards.only(selected), {p: fingerprints[p] for p in selected}, unchanged)


def record_night(uri: str, state: dict[str, Any], plan: NightPlan, output: str) -> None:
    """Add the night's shards to the state; call only once the night's partition is committed."""
    for path, print_ in plan.fingerprints.items():
        state["shards"][path] = {"fingerprint": print_, "run_date": plan.run_date.isoformat(), "output": output}
    filesystem, path = filesystem_for(uri)
    write_atomically(filesystem, path, json.dumps(state, indent=1, sort_keys=True).encode())


def partition(output: str, run_date: date) -> str:
    return f"{output.rstrip('/')}/run_date={run_date.isoformat()}"
