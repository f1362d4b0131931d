"""Find the input shards and check them on the driver, before any worker or GPU is asked for.

Reading only Parquet footers, every shard is checked for the columns its mode needs; a shard that
cannot be opened or lacks a column fails the run here, naming the shard and the column, unless
`input.skip_bad_shards` lists and skips it.
"""
from __future__ import annotations

import glob as globlib
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from pipelines.config import InputConfig, Mode
from stages.normalize import required_columns

_TEXT_TYPES = (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary, pa.types.is_large_binary)


class ShardError(ValueError):
    """An input shard that cannot be read as this run's input."""


@dataclass
class ShardSet:
    filesystem: pafs.FileSystem
    paths: list[str]
    rows: int = 0  # from the Parquet footers
    skipped: dict[str, str] = field(default_factory=dict)  # path -> why


def _is_glob(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def expand(uri: str) -> tuple[pafs.FileSystem, list[str]]:
    """A file, directory or glob (local or any pyarrow filesystem URI) -> sorted Parquet files."""
    if _is_glob(uri):
        base = uri[: min(uri.index(ch) for ch in "*?[" if ch in uri)].rsplit("/", 1)[0] or "/"
        filesystem, base_path = pafs.FileSystem.from_uri(base) if "://" in base else (pafs.LocalFileSystem(), base)
        pattern = uri.split("://", 1)[1] if "://" in uri else uri
        selector = pafs.FileSelector(base_path, recursive=True, allow_not_found=True)
        candidates = [info.path for info in filesystem.get_file_info(selector) if info.is_file]
        matched = [p for p in candidates if globlib.fnmatch.fnmatch(p, pattern.lstrip("/")) or globlib.fnmatch.fnmatch("/" + p.lstrip("/"), pattern)]
        return filesystem, sorted(matched)
    filesystem, path = pafs.FileSystem.from_uri(uri) if "://" in uri else (pafs.LocalFileSystem(), uri)
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise ShardError(f"input {uri} does not exist")
    if info.type == pafs.FileType.Directory:
        selector = pafs.FileSelector(path, recursive=True)
        files = [
            i.path
            for i in filesystem.get_file_info(selector)
            if i.is_file and i.path.endswith(".parquet") and not any(part.startswith((".", "_")) for part in i.path[len(path):].split("/"))
        ]
        return filesystem, sorted(files)
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
    good: list[str] = []
    rows = 0
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
            good.append(path)
            rows += metadata.num_rows
    if not good:
        raise ShardError(f"no readable shards among {len(skipped)} inputs: " + "; ".join(skipped.values()))
    assert filesystem is not None
    return ShardSet(filesystem=filesystem, paths=good, rows=rows, skipped=skipped)
