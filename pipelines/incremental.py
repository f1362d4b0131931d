"""Nightly incremental runs: process only the shards no earlier run has consumed.

A shard is identified by its path plus a fingerprint (size and modification time, or a content
hash); a changed shard is new again. Each night writes its own partition `run_date=YYYY-MM-DD`
under the output. Before it starts, the state names the night as running, with its shards
(`begin_night`); once the partition is committed (`_SUCCESS`) the state records those shards as
consumed and the night as done (`record_night`). A night that failed or was killed is therefore
still named in the state: the next run finishes it first, in its own partition and from its
committed batches, before it plans a new night, so no shard is processed into two partitions and
no partition stays half written.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

from pyarrow import fs as pafs

from pipelines.config import IncrementalConfig
from pipelines.shards import ShardError, ShardSet
from stages.storage.files import filesystem_for, write_atomically

STATE_VERSION = 1
RUNNING = "running"  # the state's entry for a night that started and has not been recorded


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


def night_date(cfg: IncrementalConfig) -> date:
    """Tonight's partition date: --run-date, else today (UTC)."""
    return cfg.run_date or datetime.now(timezone.utc).date()


def plan_night(shards: ShardSet, cfg: IncrementalConfig, state: dict[str, Any]) -> NightPlan:
    run_date = night_date(cfg)
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


def _save(uri: str, state: dict[str, Any]) -> None:
    filesystem, path = filesystem_for(uri)
    write_atomically(filesystem, path, json.dumps(state, indent=1, sort_keys=True).encode())


def begin_night(uri: str, state: dict[str, Any], plan: NightPlan, output: str) -> None:
    """Name the night as running in the state, with its shards; call before it writes anything."""
    state[RUNNING] = {"run_date": plan.run_date.isoformat(), "output": output, "shards": plan.fingerprints}
    _save(uri, state)


def unfinished_night(state: dict[str, Any], shards: ShardSet) -> NightPlan | None:
    """The night that started and was never recorded (failed or killed), as the plan it ran with."""
    running = state.get(RUNNING)
    if not running:
        return None
    missing = [path for path in running["shards"] if path not in shards.row_counts]
    if missing:
        raise ShardError(
            f"night {running['run_date']} ({running['output']}) is unfinished and its shard {missing[0]} is no longer "
            "among the inputs; restore it so the night can be finished, or remove that partition and the "
            f"'{RUNNING}' entry of the state to give its rows up"
        )
    night = date.fromisoformat(running["run_date"])
    return NightPlan(night, shards.only(list(running["shards"])), dict(running["shards"]), unchanged=[])


def record_night(uri: str, state: dict[str, Any], plan: NightPlan, output: str) -> None:
    """Add the night's shards to the state and clear its running entry; call only once the night's
    partition is committed."""
    for path, print_ in plan.fingerprints.items():
        state["shards"][path] = {"fingerprint": print_, "run_date": plan.run_date.isoformat(), "output": output}
    state.pop(RUNNING, None)
    _save(uri, state)


def partition(output: str, run_date: date) -> str:
    return f"{output.rstrip('/')}/run_date={run_date.isoformat()}"
