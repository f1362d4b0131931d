"""Find the input shards and check them on the driver, before any worker or GPU is asked for.

Reading only Parquet footers, every shard is checked for the columns its mode needs and against the
shards before it; a shard that cannot be opened, lacks a column or disagrees with an earlier shard
on a column's type fails the run here, naming the shard and the column, unless
`input.skip_bad_shards` lists and skips it (report.json's `skipped_shards`).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from pipelines.config import InputConfig
from stages.formats.base import JudgingFormat
from stages.rows import MODALITIES
from stages.storage.files import filesystem_for

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


def check_schema(path: str, schema: pa.Schema, fmt: JudgingFormat, input_cfg: InputConfig) -> None:
    mapping = input_cfg.column_mapping()
    for column in fmt.required_columns(mapping):
        if column not in schema.names:
            raise ShardError(f"shard {path}: missing required column '{column}' (mode {fmt.mode}; have {schema.names})")
        field_type = schema.field(column).type
        wants_list = column == mapping.get("responses")
        ok = pa.types.is_list(field_type) or pa.types.is_large_list(field_type) if wants_list else any(t(field_type) for t in _TEXT_TYPES)
        if not ok:
            expected = "a list of 2 strings" if wants_list else "string"
            raise ShardError(f"shard {path}: column '{column}' has type {field_type}, expected {expected}")


def _media_type_ok(field_type: pa.DataType) -> bool:
    if pa.types.is_null(field_type) or any(t(field_type) for t in _TEXT_TYPES):
        return True
    if not pa.types.is_struct(field_type):
        return False
    names = {field_type.field(i).name: field_type.field(i).type for i in range(field_type.num_fields)}
    bytes_ok = "bytes" not in names or pa.types.is_binary(names["bytes"]) or pa.types.is_large_binary(names["bytes"])
    path_ok = "path" not in names or any(t(names["path"]) for t in _TEXT_TYPES[:2]) or pa.types.is_null(names["path"])
    return bool({"bytes", "path"} & set(names)) and bytes_ok and path_ok


def check_media_columns(path: str, schema: pa.Schema, input_cfg: InputConfig) -> None:
    mapping = input_cfg.column_mapping()
    for canonical in MODALITIES:
        column = mapping.get(canonical, canonical)
        if column in schema.names and not _media_type_ok(schema.field(column).type):
            raise ShardError(
                f"shard {path}: media column '{column}' has type {schema.field(column).type}, expected bytes, "
                "a path string or a struct<bytes: binary, path: string>"
            )


def _compatible(a: pa.DataType, b: pa.DataType) -> bool:
    both_text = any(t(a) for t in _TEXT_TYPES) and any(t(b) for t in _TEXT_TYPES)
    return a == b or pa.types.is_null(a) or pa.types.is_null(b) or both_text


def check_consistent(schemas: dict[str, pa.Schema], skip_bad_shards: bool = False) -> dict[str, str]:
    """Shards of one run must agree on each column's type (Ray cannot read them as one dataset).

    A shard that disagrees with an earlier one fails the run, or with `skip_bad_shards` is left out:
    returns path -> why for each shard left out. Later shards are checked against the kept ones only.
    """
    seen: dict[str, tuple[pa.DataType, str]] = {}
    skipped: dict[str, str] = {}
    for path, schema in schemas.items():
        conflicts = [
            f"column '{column.name}' is {seen[column.name][0]} in shard {seen[column.name][1]} but {column.type} "
            f"in shard {path}"
            for column in schema
            if column.name in seen and not _compatible(seen[column.name][0], column.type)
        ]
        if conflicts and not skip_bad_shards:
            raise ShardError(f"{conflicts[0]}; write the shards with one schema (or pass --skip-bad-shards)")
        if conflicts:
            skipped[path] = "; ".join(conflicts)
            continue
        for column in schema:
            if column.name not in seen or pa.types.is_null(seen[column.name][0]):
                seen[column.name] = (column.type, path)
    return skipped


def discover(paths: list[str], fmt: JudgingFormat, input_cfg: InputConfig) -> ShardSet:
    """Expand and check every input; raise ShardError unless skip_bad_shards."""
    if not paths:
        raise ShardError("no input given: pass --input or set input.paths")
    filesystem: pafs.FileSystem | None = None
    good: dict[str, int] = {}
    schemas: dict[str, pa.Schema] = {}
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
                schema = metadata.schema.to_arrow_schema()
                check_schema(path, schema, fmt, input_cfg)
                check_media_columns(path, schema, input_cfg)
            except Exception as exc:
                problem = str(exc) if isinstance(exc, ShardError) else f"shard {path}: unreadable ({type(exc).__name__}: {exc})"
                if not input_cfg.skip_bad_shards:
                    raise ShardError(problem) from exc
                skipped[path] = problem
                continue
            good[path] = metadata.num_rows
            schemas[path] = schema
    assert filesystem is not None
    for path, problem in check_consistent(schemas, input_cfg.skip_bad_shards).items():
        skipped[path] = problem
        del good[path]
    if not good:
        raise ShardError(f"no readable shards among {len(skipped)} inputs: " + "; ".join(skipped.values()))
    return ShardSet(filesystem=filesystem, row_counts=good, skipped=skipped)
