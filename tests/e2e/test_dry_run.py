"""`flexcurate run --set judge.engine.backend=simulated` in every judging mode: a dry run succeeds."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs.cli import main
from jobs.demo import BROKEN, DEMO_CONFIG, DEMO_ROWS, demo_table
from jobs.runtime import ExitCode
from stages.formats.registry import FORMATS, judging_format

pytestmark = pytest.mark.e2e
ROWS = 12


def write_candidates(path: Path, mode: str) -> list[str]:
    """The mode's demo rows without the deliberately broken and the identical-answer ones; their ids."""
    rows = [row for row in DEMO_ROWS[mode](ROWS) if row["kind"] not in BROKEN]
    pq.write_table(demo_table(rows, mode), path)
    return [row["id"] for row in rows]


@pytest.mark.parametrize("mode", sorted(FORMATS))
def test_dry_run_succeeds_in_every_mode(mode, tmp_path, ray_session):
    ids = write_candidates(tmp_path / "candidates.parquet", mode)
    output = tmp_path / "out"
    code = main(["run", "--config", str(DEMO_CONFIG), "--input", str(tmp_path / "candidates.parquet"),
                 "--output", str(output), "--set", "judge.engine.backend=simulated", "--set", f"mode={mode}"])
    assert code == ExitCode.OK
    report = json.loads((output / "report.json").read_text())
    assert report["status"] == "succeeded" and report["config"]["mode"] == mode
    assert report["counts"]["errors"] == 0 and (output / "_SUCCESS").exists()
    landed = [i for name in ("kept", "dropped") for i in pq.read_table(output / name, columns=["id"]).column("id").to_pylist()]
    assert sorted(landed) == sorted(ids)
    judgments = pq.read_table(output / "judgments").to_pylist()
    fmt = judging_format(mode)
    assert len(judgments) == len(ids) * len(fmt.orders(swap_order=True)) and all(j["parsed"] for j in judgments)
    kept = pq.read_table(output / "kept")
    assert set(fmt.result_columns) <= set(kept.column_names)
