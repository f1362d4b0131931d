"""A run directory another command reads back: its config, its report and its outputs batch by batch.

Batches are the write stage's commits (`_manifests/`): each names the files it wrote (kept/,
dropped/, errors/, preferences/, judgments/) and its row ids, so a reader holds one batch at a time,
whatever the run's size.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from pipelines.config import ConfigError, RunConfig
from pipelines.run_dir import SUCCESS_MARKER
from stages.storage.commit import read_manifests
from stages.storage.files import filesystem_for
from stages.write import JUDGMENTS

REPORT = "report.json"


class NotAFinishedRun(ValueError):
    """The directory holds no run another command can read (no report, unfinished, or foreign)."""


@dataclass
class Batch:
    ids: list[str]
    parts: dict[str, pa.Table]  # output name (kept, dropped, errors, judgments, ...) -> that batch's rows


class FinishedRun:
    """`require_success`: refuse a run without _SUCCESS (one that failed a check still has its report)."""

    def __init__(self, uri: str, *, require_success: bool = True) -> None:
        self.uri = uri
        self.filesystem, root = filesystem_for(uri)
        self.root = root.rstrip("/")
        if not self._exists(REPORT):
            raise NotAFinishedRun(f"{uri} holds no flexcurate run report ({REPORT}); pass the output directory of a run")
        if require_success and not self._exists(SUCCESS_MARKER):
            raise NotAFinishedRun(f"{uri} is not a finished run (no {SUCCESS_MARKER}): finish or resume it first")
        with self.filesystem.open_input_stream(f"{self.root}/{REPORT}") as source:
            self.report: dict[str, Any] = json.loads(source.read())
        if self.report.get("status") == "failed_accounting":
            raise NotAFinishedRun(f"{uri} failed its accounting check: its outputs do not hold every input row")
        try:
            self.config = RunConfig.model_validate(self.report["config"])
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"{uri}/{REPORT}: the run's config cannot be read back ({exc})") from exc
        self.manifests = read_manifests(self.filesystem, self.root)

    def _exists(self, name: str) -> bool:
        return self.filesystem.get_file_info(f"{self.root}/{name}").type != pafs.FileType.NotFound

    def batches(self, row_columns: list[str] | None = None) -> Iterator[Batch]:
        """Every committed batch; `row_columns`: read only these columns of the row outputs (judgments/
        is always read whole)."""
        for manifest in self.manifests:
            parts = {}
            for name in manifest["files"]:
                output, path = name.split("/", 1)[0], f"{self.root}/{name}"
                columns = None
                if row_columns is not None and output != JUDGMENTS:
                    present = pq.read_schema(path, filesystem=self.filesystem).names
                    columns = [c for c in row_columns if c in present]
                parts[output] = pq.read_table(path, columns=columns, filesystem=self.filesystem)
            yield Batch(ids=list(manifest["ids"]), parts=parts)


def judgments_by_id(judgments: pa.Table | None) -> dict[str, list[dict[str, Any]]]:
    """A batch's raw verdicts grouped by row id, in the order written (order, sample, attempt)."""
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    if judgments is None:
        return grouped
    for record in judgments.to_pylist():
        grouped[record.pop("id")].append(record)
    return grouped
