"""`flexcurate run --set judge.engine.backend=simulated` in every judging mode: a dry run succeeds."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import demo_media
from jobs.cli import main
from jobs.demo import DEMO_CONFIG
from jobs.runtime import ExitCode
from stages.formats.registry import FORMATS, judging_format
from stages.normalize import ANSWER_COLUMNS
from stages.rows import MEDIA_TYPE

pytestmark = pytest.mark.e2e
ROWS = 12


def write_candidates(path: Path) -> None:
    """Rows holding every format's answer columns (pairwise: response_a/b; single: response), a few with an image."""
    columns = {"id": [f"c{i}" for i in range(ROWS)], "question": [f"What is {i} + {i}?" for i in range(ROWS)]}
    for column in ANSWER_COLUMNS:
        columns[column] = [f"{column}: {2 * i + (column != 'response_b')}" for i in range(ROWS)]
    image = {"bytes": demo_media.png(64, 48, seed=1), "path": None}
    columns["image"] = [image if i % 4 == 0 else None for i in range(ROWS)]
    pq.write_table(pa.table(columns, schema=pa.schema(
        [("id", pa.string()), ("question", pa.string()), *((c, pa.string()) for c in ANSWER_COLUMNS), ("image", MEDIA_TYPE)])), path)


@pytest.mark.parametrize("mode", sorted(FORMATS))
def test_dry_run_succeeds_in_every_mode(mode, tmp_path, ray_session):
    write_candidates(tmp_path / "candidates.parquet")
    output = tmp_path / "out"
    code = main(["run", "--config", str(DEMO_CONFIG), "--input", str(tmp_path / "candidates.parquet"),
                 "--output", str(output), "--set", "judge.engine.backend=simulated", "--set", f"mode={mode}"])
    assert code == ExitCode.OK
    report = json.loads((output / "report.json").read_text())
    assert report["status"] == "succeeded" and report["config"]["mode"] == mode
    assert report["counts"]["errors"] == 0 and (output / "_SUCCESS").exists()
    landed = [i for name in ("kept", "dropped") for i in pq.read_table(output / name, columns=["id"]).column("id").to_pylist()]
    assert sorted(landed) == sorted(f"c{i}" for i in range(ROWS))
    judgments = pq.read_table(output / "judgments").to_pylist()
    fmt = judging_format(mode)
    assert len(judgments) == ROWS * len(fmt.orders(swap_order=True)) and all(j["parsed"] for j in judgments)
    kept = pq.read_table(output / "kept")
    assert set(fmt.result_columns) <= set(kept.column_names)
