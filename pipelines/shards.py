"""Find the input shards and check them on the driver, before any worker or GPU is asked for.

Reading only Parquet footers, every shard is checked for the columns its mode needs and against the
shards before it; a shard that cannot be opened, lacks a column or has a column no type read so far
can hold fails the run here, naming the shard and the column, unless `input.skip_bad_shards` lists
and skips it (report.json's `skipped_shards`).

Shards come from many writers (`datasets`, polars, DuckDB, pandas, Spark) that spell one logical
type differently: large or view strings and binaries, dictionary-encoded strings, non-nullable
fields, a media struct whose `path` is typed `null`, int ids beside string ids. Checks compare
logical types (`logical_type`), and the shards are read as one schema (`read_schema`) that every
shard casts to, so a directory mixing writers runs as one input. Spark and Hive write partitions as
key=value directories (source=web/part-0.parquet) whose key is in no file: below the inputs those
become string columns (`directory_columns`), as Spark reads them back.
"""
from __future__ import annotations

import fnmatch
import logging
import posixpath
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyarrow import fs as pafs
from ray.data.datasource.partitioning import Partitioning, PathPartitionParser

from pipelines.config import InputConfig
from stages.base import with_columns
from stages.formats.base import JudgingFormat
from stages.storage.files import filesystem_for

log = logging.getLogger(__name__)

HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"  # Spark's and Hive's directory name for a null key

_TEXT_TYPES = (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary, pa.types.is_large_binary)


class ShardError(ValueError):
    """An input shard that cannot be read as this run's input."""


@dataclass
class ShardSet:
    filesystem: pafs.FileSystem
    row_counts: dict[str, int]  # path -> rows, from the Parquet footers
    skipped: dict[str, str] = field(default_factory=dict)  # path -> why
    schemas: dict[str, pa.Schema] = field(default_factory=dict)  # path -> its footer's schema
    directories: DirectoryColumns | None = None  # key=value directories read as columns (`directory_columns`)

    @property
    def paths(self) -> list[str]:
        return list(self.row_counts)

    @property
    def rows(self) -> int:
        return sum(self.row_counts.values())

    @property
    def schema(self) -> pa.Schema:
        """The one schema these shards are read as (see `read_schema`)."""
        return read_schema({p: self.schemas[p] for p in self.row_counts if p in self.schemas})

    def only(self, paths: list[str]) -> "ShardSet":
        return ShardSet(
            self.filesystem,
            {p: self.row_counts[p] for p in paths},
            self.skipped,
            {p: self.schemas[p] for p in paths if p in self.schemas},
            self.directories,
        )


def _is_glob(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def _visible_parquet(path: str, base: str) -> bool:
    """Parquet files, skipping hidden and underscore names (_SUCCESS, .part in progress)."""
    relative = path[len(base):].lstrip("/")
    return path.endswith(".parquet") and not any(part.startswith((".", "_")) for part in relative.split("/"))


def expand(uri: str) -> tuple[pafs.FileSystem, list[str]]:
    """A file, directory or glob (local or any pyarrow filesystem URI) -> sorted Parquet files."""
    filesystem, _, files = expand_under(uri)
    return filesystem, files


def expand_under(uri: str) -> tuple[pafs.FileSystem, str, list[str]]:
    """`expand`, with the directory the input names: a directory itself, a glob's directory before its
    first wildcard, a file's parent."""
    if _is_glob(uri):
        prefix = uri[: min(uri.index(ch) for ch in "*?[" if ch in uri)]
        filesystem, base = filesystem_for(prefix.rsplit("/", 1)[0] if "/" in prefix else ".")
        _, pattern = filesystem_for(uri)  # the pattern as the filesystem spells its paths (no scheme)
        listing = filesystem.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        matched = [i.path for i in listing if i.is_file and fnmatch.fnmatchcase(i.path, pattern)]
        return filesystem, base, sorted(p for p in matched if _visible_parquet(p, base))
    filesystem, path = filesystem_for(uri)
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise ShardError(f"input {uri} does not exist")
    if info.type == pafs.FileType.Directory:
        listing = filesystem.get_file_info(pafs.FileSelector(path, recursive=True))
        return filesystem, path, sorted(i.path for i in listing if i.is_file and _visible_parquet(i.path, path))
    return filesystem, posixpath.dirname(path), [path]


@dataclass(frozen=True)
class DirectoryColumns:
    """String columns from the key=value directories below the inputs: `partitioning` for Ray Data's
    read, the same values for a shard read on the driver (`values`)."""

    partitioning: Partitioning
    keys: tuple[str, ...]

    def values(self, path: str) -> dict[str, str | None]:
        parsed = PathPartitionParser(self.partitioning)(path)
        return {key: None if value == HIVE_NULL else value for key, value in parsed.items()}

    def added_to(self, table: pa.Table, path: str) -> pa.Table:
        """`table`, read from `path` on the driver, with its directories' columns as the distributed read
        adds them (a key another shard holds may already be a column: it is set)."""
        directory = self.values(path)
        return with_columns(table, {key: [value] * table.num_rows for key, value in directory.items()},
                            dict.fromkeys(directory, pa.string()))

    def restore_nulls(self, table: pa.Table) -> pa.Table:
        """Ray Data reads a null key's directory as its name; Spark and pyarrow read it as null."""
        for key in self.keys:
            index = table.schema.get_field_index(key)
            if index >= 0:
                column = table.column(index)
                is_null = pc.fill_null(pc.equal(column, pa.scalar(HIVE_NULL, column.type)), False)
                table = table.set_column(index, key, pc.if_else(is_null, pa.scalar(None, column.type), column))
        return table


def directory_columns(
    filesystem: pafs.FileSystem, bases: list[str], schemas: dict[str, pa.Schema]
) -> DirectoryColumns | None:
    """Ray Data's hive partitioning rooted at the inputs' common directory, when shards lie in
    key=value directories below it; None when none do, or when a shard in such a directory also
    holds a column of its key.

    Ray Data (2.60) reads every key=value directory in a file's whole path by default, and where the
    file holds a column of that name it overwrites the file's values with the directory's (its log
    line says the file's values win; they do not). So only directories below the inputs count (a
    /data/team=ml/ above them is not the rows' data), and if a shard holds a column of a key it lies
    under, no directory is read as a column at all: the shards' own values are kept. A shard outside
    such directories may hold the column: its rows keep their values, the others get the directory's.
    """
    root = posixpath.commonpath(bases) if len(bases) > 1 else bases[0]
    partitioning = Partitioning("hive", base_dir=root or None, filesystem=filesystem)
    parse = PathPartitionParser(partitioning)
    under = {path: parse(path) for path in schemas}  # path -> its directories' key -> value
    keys = {key for directory in under.values() for key in directory}
    if not keys:
        return None
    held = {key: path for path, schema in schemas.items() for key in under[path] if key in schema.names}
    if held:
        key, path = next(iter(held.items()))
        log.warning("key=value directories are not read as columns (%s): shard %s holds a column '%s' itself, so "
                    "every shard's own values are kept", ", ".join(sorted(keys)), path, key)
        return None
    log.info("columns from key=value directories below %s: %s", root or "/", ", ".join(sorted(keys)))
    return DirectoryColumns(partitioning, tuple(sorted(keys)))


def logical_type(data_type: pa.DataType) -> pa.DataType:
    """The type a value is, whatever its writer's spelling: dictionaries read as their values, string
    and binary views as plain strings and binaries, nested fields nullable (polars and DuckDB mark
    fields non-nullable, others do not)."""
    if pa.types.is_dictionary(data_type):
        return logical_type(data_type.value_type)
    if pa.types.is_string_view(data_type):
        return pa.string()
    if pa.types.is_binary_view(data_type):
        return pa.binary()
    if pa.types.is_struct(data_type):
        return pa.struct([pa.field(f.name, logical_type(f.type)) for f in data_type])
    if pa.types.is_large_list(data_type) or pa.types.is_large_list_view(data_type):
        return pa.large_list(logical_type(data_type.value_type))
    if pa.types.is_list(data_type) or pa.types.is_list_view(data_type) or pa.types.is_fixed_size_list(data_type):
        return pa.list_(logical_type(data_type.value_type))
    return data_type


def _is_text(data_type: pa.DataType) -> bool:
    return pa.types.is_string(data_type) or pa.types.is_large_string(data_type)


def merge_types(a: pa.DataType, b: pa.DataType) -> pa.DataType | None:
    """One type both logical types read as without loss, or None when there is none.

    Arrow's permissive promotion: null takes the other type, string and large_string read as
    large_string, string and binary as binary, int32 and int64 as int64, struct fields merged by
    name (a media struct's `null` path with a string path is a string path). Beyond it, an integer
    beside text reads as text: shards that spell ids as numbers beside shards that spell them as
    strings.
    """
    if a == b:
        return a
    if (pa.types.is_integer(a) and _is_text(b)) or (_is_text(a) and pa.types.is_integer(b)):
        return b if _is_text(b) else a
    try:
        unified = pa.unify_schemas([pa.schema([("c", a)]), pa.schema([("c", b)])], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None
    return unified.field("c").type


def read_schema(schemas: dict[str, pa.Schema]) -> pa.Schema:
    """The schema every shard is read as: each column's logical types merged across shards (columns
    in first-seen order, all nullable: a shard without a column reads it as nulls). Raises
    ShardError naming the column and two shards whose types cannot be merged."""
    merged: dict[str, tuple[pa.DataType, str, pa.DataType]] = {}
    for path, schema in schemas.items():
        merged = _merged_with(merged, path, schema)
    return pa.schema([pa.field(name, kind) for name, (kind, _, _) in merged.items()])


def _merged_with(
    merged: dict[str, tuple[pa.DataType, str, pa.DataType]], path: str, schema: pa.Schema
) -> dict[str, tuple[pa.DataType, str, pa.DataType]]:
    """`merged` (column -> (type so far, first shard, its type)) with one more shard's columns merged
    in, as a new dict; ShardError naming the column and both shards when no type holds both."""
    merged = dict(merged)
    for column in schema:
        kind = logical_type(column.type)
        if column.name not in merged:
            merged[column.name] = (kind, path, column.type)
            continue
        current, first, first_type = merged[column.name]
        unified = merge_types(current, kind)
        if unified is None:
            raise ShardError(
                f"column '{column.name}' is {first_type} in shard {first} but {column.type} in shard {path}, "
                "and no type holds both; write the shards with one type for it"
            )
        merged[column.name] = (unified, first, first_type)
    return merged


def check_schema(path: str, schema: pa.Schema, fmt: JudgingFormat, input_cfg: InputConfig) -> None:
    mapping = input_cfg.column_mapping()
    canonical = {mapping.get(name, name): name for name in (*fmt.columns(), "responses")}
    for column in fmt.required_columns(mapping, schema.names):
        if column not in schema.names:
            raise ShardError(f"shard {path}: missing required column '{column}' (mode {fmt.mode}; have {schema.names})")
        if canonical.get(column) in fmt.media:
            continue  # checked with the other media columns
        field_type = logical_type(schema.field(column).type)
        wants_list = column == mapping.get("responses", "responses") or canonical.get(column) in fmt.answer_types
        ok = pa.types.is_list(field_type) or pa.types.is_large_list(field_type) if wants_list else any(t(field_type) for t in _TEXT_TYPES)
        if not ok:
            expected = "a list of strings" if wants_list else "string"
            raise ShardError(f"shard {path}: column '{column}' has type {field_type}, expected {expected}")


def _media_type_ok(field_type: pa.DataType) -> bool:
    field_type = logical_type(field_type)
    if pa.types.is_null(field_type) or any(t(field_type) for t in _TEXT_TYPES):
        return True
    if not pa.types.is_struct(field_type):
        return False
    names = {field_type.field(i).name: field_type.field(i).type for i in range(field_type.num_fields)}
    bytes_ok = "bytes" not in names or pa.types.is_binary(names["bytes"]) or pa.types.is_large_binary(names["bytes"])
    path_ok = "path" not in names or any(t(names["path"]) for t in _TEXT_TYPES[:2]) or pa.types.is_null(names["path"])
    return bool({"bytes", "path"} & set(names)) and bytes_ok and path_ok


def check_media_columns(path: str, schema: pa.Schema, fmt: JudgingFormat, input_cfg: InputConfig) -> None:
    mapping = input_cfg.column_mapping()
    for canonical in fmt.media:
        column = mapping.get(canonical, canonical)
        if column in schema.names and not _media_type_ok(schema.field(column).type):
            raise ShardError(
                f"shard {path}: media column '{column}' has type {schema.field(column).type}, expected bytes, "
                "a path string or a struct<bytes: binary, path: string>"
            )


def check_consistent(schemas: dict[str, pa.Schema], skip_bad_shards: bool = False) -> dict[str, str]:
    """Shards of one run must agree on each column's logical type (they are read as one schema).

    A shard whose column no type read so far can hold fails the run, or with `skip_bad_shards` is left
    out: returns path -> why for each shard left out. Later shards are checked against the kept ones.
    """
    merged: dict[str, tuple[pa.DataType, str, pa.DataType]] = {}
    skipped: dict[str, str] = {}
    for path, schema in schemas.items():
        try:
            merged = _merged_with(merged, path, schema)
        except ShardError as exc:
            if not skip_bad_shards:
                raise ShardError(f"{exc} (or pass --skip-bad-shards)") from None
            skipped[path] = str(exc)
    return skipped


def discover(paths: list[str], fmt: JudgingFormat, input_cfg: InputConfig) -> ShardSet:
    """Expand and check every input; raise ShardError unless skip_bad_shards."""
    if not paths:
        raise ShardError("no input given: pass --input or set input.paths")
    filesystem: pafs.FileSystem | None = None
    good: dict[str, int] = {}
    schemas: dict[str, pa.Schema] = {}
    skipped: dict[str, str] = {}
    bases: list[str] = []
    for uri in paths:
        fs_here, base, files = expand_under(uri)
        bases.append(base)
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
                check_media_columns(path, schema, fmt, input_cfg)
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
    kept = {path: schema for path, schema in schemas.items() if path in good}
    directories = directory_columns(filesystem, bases, kept) if input_cfg.directory_columns else None
    return ShardSet(filesystem=filesystem, row_counts=good, skipped=skipped, schemas=kept, directories=directories)
