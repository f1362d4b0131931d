"""The run directory's life: start, resume after a crash, refuse to clobber a finished run.

A directory with `_SUCCESS` is finished: refused unless overwrite. A directory without it holds an
interrupted attempt of the same run: its committed batches are kept, orphans of a killed batch
are deleted, and the next attempt skips the ids already committed. `run.json` records what the
run is (config and inputs); resuming with a different one is refused rather than mixed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterator

import pyarrow as pa
from pyarrow import fs as pafs

from pipelines.config import RunConfig
from stages.storage.commit import iter_manifests, read_manifests, remove_uncommitted
from stages.storage.files import filesystem_for, write_atomically

SUCCESS_MARKER = "_SUCCESS"
RUN_IDENTITY = "_run.json"


class OutputExists(RuntimeError):
    """The output directory holds a finished run, or an unfinished one of a different run."""


class OutputUnusable(RuntimeError):
    """The output location cannot be used: a malformed URI, no permission, an unreachable bucket."""


@dataclass
class RunDirectory:
    filesystem: pafs.FileSystem
    root: str
    committed_ids: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))  # Arrow: millions are cheap
    resumed_batches: int = 0
    removed_orphans: list[str] = field(default_factory=list)

    def batch_stats(self) -> Iterator[dict[str, Any]]:
        """Each committed batch's tallies, one manifest in memory at a time (not every row's id)."""
        return (manifest["stats"] for manifest in iter_manifests(self.filesystem, self.root))

    def mark_success(self) -> None:
        write_atomically(self.filesystem, f"{self.root}/{SUCCESS_MARKER}", b"")


def run_identity(cfg: RunConfig, shard_paths: list[str]) -> dict[str, Any]:
    """What must match for two attempts to be the same run: what decides each row's outcome.

    Left out: how the attempt was asked for (overwrite, skip_bad_shards), how shards were selected
    (the incremental section; the shards themselves are in), the error budget, which only judges
    the finished whole (a run that failed its budget can be finished with a higher one), and what
    only sets how rows travel: the block size read from the shards and the object-store budget.
    """
    return {"config": _outcome_settings(cfg.model_dump(mode="json")), "shards": sorted(shard_paths)}


def _outcome_settings(config: dict[str, Any]) -> dict[str, Any]:
    """`config` (a RunConfig dump, or one an earlier version recorded) less the settings that do not
    decide outcomes; applied to both sides, so a setting left out later does not strand a run
    recorded with it (`decode_batch_size`, whose default changed)."""
    config.get("output", {}).pop("overwrite", None)
    config.get("input", {}).pop("skip_bad_shards", None)
    for name in ("incremental", "max_error_fraction", "decode_batch_size", "object_store_budget_mib"):
        config.pop(name, None)
    return config


def is_finished(uri: str) -> bool:
    """Whether the run directory at `uri` holds a finished run (`_SUCCESS`)."""
    filesystem, root = filesystem_for(uri)
    return _exists(filesystem, f"{root.rstrip('/')}/{SUCCESS_MARKER}")


def _exists(filesystem: pafs.FileSystem, path: str) -> bool:
    return filesystem.get_file_info(path).type != pafs.FileType.NotFound


def open_run_directory(cfg: RunConfig, shard_paths: list[str]) -> RunDirectory:
    """Start the run in cfg.output.path, or resume the unfinished attempt there; OutputExists or
    OutputUnusable when it cannot."""
    try:
        return _open(cfg, shard_paths)
    except (OSError, pa.ArrowException) as exc:
        raise OutputUnusable(f"cannot use {cfg.output.path} as the output ({type(exc).__name__}: {exc})") from exc


def _open(cfg: RunConfig, shard_paths: list[str]) -> RunDirectory:
    filesystem, root = filesystem_for(cfg.output.path)
    root = root.rstrip("/")
    identity = run_identity(cfg, shard_paths)
    if _exists(filesystem, root) and cfg.output.overwrite:
        filesystem.delete_dir(root)
    elif _exists(filesystem, f"{root}/{SUCCESS_MARKER}"):
        raise OutputExists(f"{cfg.output.path} already holds a finished run; pass --overwrite to replace it")
    elif _exists(filesystem, f"{root}/{RUN_IDENTITY}"):
        with filesystem.open_input_stream(f"{root}/{RUN_IDENTITY}") as source:
            previous = json.loads(source.read())
        if isinstance(previous.get("config"), dict):
            _outcome_settings(previous["config"])
        if previous != identity:
            raise OutputExists(
                f"{cfg.output.path} holds an unfinished run with a different config or inputs; "
                "pass --overwrite to start over, or use another --output"
            )
        manifests = read_manifests(filesystem, root)
        removed = remove_uncommitted(filesystem, root, manifests)
        ids = [pa.array(manifest["ids"], pa.string()) for manifest in manifests]
        committed = pa.concat_arrays(ids) if ids else pa.array([], pa.string())
        return RunDirectory(filesystem, root, committed, len(manifests), removed)
    if _exists(filesystem, root) and filesystem.get_file_info(pafs.FileSelector(root)):
        raise OutputExists(f"{cfg.output.path} is not empty and holds no flexcurate run; choose another --output")
    filesystem.create_dir(root, recursive=True)
    write_atomically(filesystem, f"{root}/{RUN_IDENTITY}", json.dumps(identity, indent=1).encode())
    return RunDirectory(filesystem, root)
