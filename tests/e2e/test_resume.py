"""Kill the job with SIGKILL at several points; re-running the same command must finish with the
same outputs a clean run gives: every id once, same outcomes, same verdicts."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs.demo import DEMO_CONFIG, write_demo_shards
from tests.processes import kill_after_commits, manifest_count

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
ROWS = 40
SIMULATED = [
    "--set", "judge.engine.backend=simulated",
    "--set", "judge.engine.simulation.seconds_per_token=0.004",
    "--set", "judge.engine.simulation.median_tokens=60",
    "--set", "judge.batch_size=4",
    "--set", "judge.batches_in_flight=2",
    "--set", "decode_batch_size=4",
    "--set", "output.rows_per_file=4",
]


def command(inputs: Path, output: Path) -> list[str]:
    return [sys.executable, "-m", "jobs", "run", "--config", str(DEMO_CONFIG), "--input", str(inputs),
            "--output", str(output), "--num-cpus", "4", *SIMULATED]


def run_to_end(inputs: Path, output: Path) -> None:
    done = subprocess.run(command(inputs, output), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def kill_when(inputs: Path, output: Path, committed_batches: int, latest: float = 120.0) -> int:
    """Start the job, SIGKILL it (and every process it started) once enough batches are committed."""
    return kill_after_commits(command(inputs, output), manifest_count(output), committed_batches, ROOT, latest)


def snapshot(output: Path) -> dict:
    rows = {}
    for outcome in ("kept", "dropped", "errors"):
        for row in pq.read_table(output / outcome).to_pylist():
            rows.setdefault(row["id"], []).append(
                (outcome, row.get("drop_reason"), row.get("error_stage"), row.get("score_a"), row.get("score_b"))
            )
    verdicts = Counter(
        (j["id"], j["order"], j["sample"], j["attempt"], j["text"]) for j in pq.read_table(output / "judgments").to_pylist()
    )
    preferences = sorted(r["id"] for r in pq.read_table(output / "preferences", columns=["id"]).to_pylist())
    report = json.loads((output / "report.json").read_text())
    return {"rows": rows, "verdicts": verdicts, "preferences": preferences,
            "counts": report["counts"], "input_rows": report["input_rows"]}


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    write_demo_shards(root / "input", ROWS, shards=4)
    run_to_end(root / "input", root / "clean")
    return root, snapshot(root / "clean")


@pytest.mark.parametrize("committed_batches", [0, 1, 5])
def test_killed_run_resumes_to_the_clean_result(clean, committed_batches):
    root, expected = clean
    output = root / f"killed-at-{committed_batches}"
    committed = kill_when(root / "input", output, committed_batches)
    assert not (output / "_SUCCESS").exists()
    assert committed >= committed_batches
    run_to_end(root / "input", output)
    got = snapshot(output)
    assert all(len(places) == 1 for places in got["rows"].values()), "an id landed twice"
    assert got == expected
    report = json.loads((output / "report.json").read_text())
    assert report["resumed"]["committed_batches"] == committed


def test_identical_rows_without_ids_are_each_judged_once_across_a_kill(tmp_path):
    """Copies of one row in a shard without ids get distinct, rerun-stable ids (shard + position): a
    resume that committed one copy still judges the other."""
    import pyarrow as pa

    from pipelines.config import InputConfig
    from pipelines.shard_ids import read_shard_ids
    from pipelines.shards import discover
    from stages.formats.pairwise import PairwiseFormat

    inputs = tmp_path / "input"
    inputs.mkdir()
    pairs = [(f"Which is right about {i % 10}?", f"{i % 10} is even", f"{i % 10} is odd") for i in range(ROWS)]
    pq.write_table(pa.table({name: [p[k] for p in pairs] for k, name in enumerate(("question", "response_a", "response_b"))}),
                   inputs / "copies.parquet")
    output = tmp_path / "out"
    assert kill_when(inputs, output, committed_batches=1, latest=300) >= 1, "no batch committed before the kill"
    run_to_end(inputs, output)
    got = snapshot(output)
    shards = discover([str(inputs)], PairwiseFormat(), InputConfig())
    expected = read_shard_ids(shards, "id").ids(shards.paths[0]).to_pylist()
    assert sorted(got["rows"]) == sorted(expected) and len(set(expected)) == ROWS
    assert all(len(places) == 1 for places in got["rows"].values())
    assert sum(got["counts"].values()) == ROWS
