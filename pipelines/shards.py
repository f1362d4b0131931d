"""Find the input shards and check them on the driver, before any worker or GPU is asked for.

Reading only Parquet footers, every shard is checked for the columns its mode needs; a shard that
cannot be opened or lacks a column fails the run here, naming the shard and the column, unless
`input.skip_bad_shards` lists and skips it.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from pipelines.config import InputConfig, Mode
from stages.commit import filesystem_for
from stages.normalize import required_columns

_TEXT_TYPES = (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary, pa.types.is_large_binary)


class ShardError(ValueError):
    """An input shard that cannot be read as this run's input."""


@dataclass
class ShardSet:
    filesystem: pafs.FileSystem
    row_counts: dict[str, int]  # path -> rows, from the Parquet footers
    skipped: dict[str, str] = field(default_factory=dict)  # path -> why

    @property
    def paths(self) -> list[str]:
        return list(self.row_counts)

    @property
    def rows(self) -> int:
        return sum(self.row_counts.values())

    def only(self, paths: list[str]) -> "ShardSet":
        return ShardSet(self.filesystem, {p: self.row_counts[p] for p in paths}, self.skipped)


def _is_glob(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def _visible_parquet(path: str, base: str) -> bool:
    """Parquet files, skipping hidden and underscore names (_SUCCESS, .part in progress)."""
    relative = path[len(base):].lstrip("/")
    return path.endswith(".parquet") and not any(part.startswith((".", "_")) for part in relative.split("/"))


def expand(uri: str) -> tuple[pafs.FileSystem, list[str]]:
    """A file, directory or glob (local or any pyarrow filesystem URI) -> sorted Parquet files."""
    if _is_glob(uri):
        prefix = uri[: min(uri.index(ch) for ch in "*?[" if ch in uri)]
        filesystem, base = filesystem_for(prefix.rsplit("/", 1)[0] if "/" in prefix else ".")
        _, pattern = filesystem_for(uri)  # the pattern as the filesystem spells its paths (no scheme)
        listing = filesystem.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        matched = [i.path for i in listing if i.is_file and fnmatch.fnmatchcase(i.path, pattern)]
        return filesystem, sorted(p for p in matched if _visible_parquet(p, base))
    filesystem, path = filesystem_for(uri)
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise ShardError(f"input {uri} does not exist")
    if info.type == pafs.FileType.Directory:
        listing = filesystem.get_file_info(pafs.FileSelector(path, recursive=True))
        return filesystem, sorted(i.path for i in listing if i.is_file and _visible_parquet(i.path, path))
    return filesystem, [path]


def check_schema(path: str, schema: pa.Schema, mode: Mode, input_cfg: InputConfig) -> None:
    mapping = input_cfg.column_mapping()
    for column in required_columns(mode, mapping):
        if column not in schema.names:
            raise ShardError(f"shard {path}: missing required column '{column}' (mode {mode}; have {schema.names})")
        field_type = schema.field(column).type
        wants_list = column == mapping.get("responses")
        ok = pa.types.is_list(field_type) or pa.types.is_large_list(field_type) if wants_list else any(t(field_type) for t in _TEXT_TYPES)
        if not ok:
            expected = "a list of 2 strings" if wants_list else "string"
            raise ShardError(f"shard {path}: column '{column}' has type {field_type}, expected {expected}")


def discover(paths: list[str], mode: Mode, input_cfg: InputConfig) -> ShardSet:
    """Expand and check every input; raise ShardError unless skip_bad_shards."""
    if not paths:
        raise ShardError("no input given: pass --input or set input.paths")
    filesystem: pafs.FileSystem | None = None
    good: dict[str, int] = {}
    skipped: dict[str, str] = {}
    for uri in paths:
        fs_here, files = expand(uri)
        if filesystem is not None and type(fs_here) is not type(filesystem):
            raise ShardError("all inputs of one run must be on one filesystem")
        filesystem = fs_here
        if not files:
            raise ShardError(f"input {uri} matched no Parquet files")
        for path in files:
            try:
                metadata = pq.read_metadata(path, filesystem=fs_here)
                check_schema(path, metadata.schema.to_arrow_schema(), mode, input_cfg)
            except Exception as exc:
                problem = str(exc) if isinstance(exc, ShardError) else f"shard {path}: unreadable ({type(exc).__name__}: {exc})"
                if not input_cfg.skip_bad_shards:
                    raise ShardError(problem) from exc
                skipped[path] = problem
                continue
            good[path] = metadata.num_rows
    if not good:
        raise ShardError(f"no readable shards among {len(skipped)} inputs: " + "; ".join(skipped.values()))
    assert filesystem is not None
    return ShardSet(filesystem=filesystem, row_counts=good, skipped=skipped)
