"""How output files become part of a run: batch by batch.

A write batch's files count only once its manifest (`_manifests/<batch>.json`, written last)
exists; the manifest lists the files, the row ids and the batch's tallies. A run killed at any
point therefore leaves whole batches or orphan files, never half a batch: a resumed run deletes
the orphans and skips the committed ids.
"""
from __future__ import annotations

import json
from typing import Any, Iterator

from pyarrow import fs as pafs

from stages.storage.files import INPROGRESS_SUFFIX, write_atomically

MANIFESTS = "_manifests"


def commit_batch(
    filesystem: pafs.FileSystem, root: str, batch: str, files: list[str], ids: list[str], stats: dict[str, Any]
) -> None:
    """Make a batch's already-written files part of the run (`files` relative to `root`)."""
    manifest = {"files": files, "ids": ids, "stats": stats}
    write_atomically(filesystem, f"{root}/{MANIFESTS}/{batch}.json", json.dumps(manifest).encode())


def committed_manifest(filesystem: pafs.FileSystem, root: str, batch: str) -> dict[str, Any] | None:
    """`batch`'s manifest if it is committed, else None."""
    path = f"{root}/{MANIFESTS}/{batch}.json"
    if filesystem.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    return _read_manifest(filesystem, path)


def read_manifests(filesystem: pafs.FileSystem, root: str) -> list[dict[str, Any]]:
    return list(iter_manifests(filesystem, root))


def iter_manifests(filesystem: pafs.FileSystem, root: str) -> Iterator[dict[str, Any]]:
    """The committed batches' manifests one at a time: a 10M-row run's hold 10M ids."""
    selector = pafs.FileSelector(f"{root}/{MANIFESTS}", allow_not_found=True)
    for info in filesystem.get_file_info(selector):
        if info.is_file and info.base_name.endswith(".json") and not info.base_name.startswith("."):
            yield _read_manifest(filesystem, info.path)


def _read_manifest(filesystem: pafs.FileSystem, path: str) -> dict[str, Any]:
    with filesystem.open_input_stream(path) as source:
        return json.loads(source.read())


def remove_uncommitted(filesystem: pafs.FileSystem, root: str, manifests: list[dict[str, Any]]) -> list[str]:
    """Delete data files no manifest names (a killed batch's) and unfinished dot-files; return them."""
    committed = {f"{root}/{name}" for manifest in manifests for name in manifest["files"]}
    removed = []
    for info in filesystem.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True)):
        if not info.is_file:
            continue
        relative = info.path[len(root) :].lstrip("/")
        top = relative.split("/", 1)[0]
        orphan_data = "/" in relative and not top.startswith("_") and info.path not in committed
        unfinished = info.base_name.startswith(".") and info.base_name.endswith(INPROGRESS_SUFFIX)
        if orphan_data or unfinished:
            filesystem.delete_file(info.path)
            removed.append(relative)
    return removed
