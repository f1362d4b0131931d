"""Filesystems for local paths and URIs, and files that appear whole or not at all.

On a filesystem (local, NFS, HDFS) a file is written under a dot-name that readers ignore and then
renamed, so nobody reads half a file. Object stores (S3 and S3-compatible stores, GCS) have no
rename (pyarrow's `move` there is a copy and a delete); but an object appears only when its upload
completes, whole, and never otherwise: a killed upload leaves no object (an unfinished multipart
upload is invisible; a bucket lifecycle rule aborts it). So there a file is serialized first and
then written to its own name in one upload, and a failure while serializing writes nothing.
"""
from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

INPROGRESS_SUFFIX = ".inprogress"
OBJECT_STORES = ("s3", "gcs")  # pyarrow filesystem type names


def filesystem_for(uri: str) -> tuple[pafs.FileSystem, str]:
    """A filesystem and path for a URI (s3://, gs://, file://) or a local path, relative or not.

    S3-compatible stores (MinIO, R2, GCS's XML API) take their endpoint from AWS_ENDPOINT_URL_S3 (or
    AWS_ENDPOINT_URL), as the AWS SDK under pyarrow reads it (README: Object storage).
    """
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def _serialized(data: bytes | pa.Table) -> bytes | pa.Buffer:
    if not isinstance(data, pa.Table):
        return data
    buffer = pa.BufferOutputStream()
    pq.write_table(data, buffer, compression="zstd")
    return buffer.getvalue()


def write_atomically(filesystem: pafs.FileSystem, path: str, data: bytes | pa.Table) -> None:
    """Write bytes (or a table as zstd Parquet) to `path`, visible only once complete."""
    directory, name = path.rsplit("/", 1)
    if filesystem.type_name in OBJECT_STORES:
        payload = _serialized(data)
        with filesystem.open_output_stream(path) as sink:
            sink.write(payload)
        return
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
