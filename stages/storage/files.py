"""Filesystems for local paths and URIs, and files that appear whole or not at all.

Every file is written under a dot-name that readers ignore and then renamed, so nobody reads half
a file.
"""
from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

INPROGRESS_SUFFIX = ".inprogress"


def filesystem_for(uri: str) -> tuple[pafs.FileSystem, str]:
    """A filesystem and path for a URI (s3://, gs://, file://) or a local path, relative or not."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def write_atomically(filesystem: pafs.FileSystem, path: str, data: bytes | pa.Table) -> None:
    """Write bytes (or a table as zstd Parquet) to `path`, visible only once complete."""
    directory, name = path.rsplit("/", 1)
    filesystem.create_dir(directory, recursive=True)
    temporary = f"{directory}/.{name}{INPROGRESS_SUFFIX}"
    with filesystem.open_output_stream(temporary) as sink:
        if isinstance(data, pa.Table) and data.num_rows == 0:
            # Schema only, no row group: an empty row group makes `datasets`' Parquet reader fail.
            pq.ParquetWriter(sink, data.schema, compression="zstd").close()
        elif isinstance(data, pa.Table):
            pq.write_table(data, sink, compression="zstd")
        else:
            sink.write(data)
    filesystem.move(temporary, path)
