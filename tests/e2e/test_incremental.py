"""Three simulated nights over a growing, changing set of shards."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.cli import main
from jobs.demo import DEMO_CONFIG
from jobs.runtime import ExitCode

pytestmark = pytest.mark.e2e
SIMULATED = ["--set", "judge.engine.backend=simulated", "--set", "max_error_fraction=1"]


def shard(path: Path, prefix: str, rows: int) -> None:
    pq.write_table(
        pa.table({
            "id": [f"{prefix}-{i}" for i in range(rows)],
            "question": [f"question {prefix} {i}" for i in range(rows)],
            "response_a": ["yes"] * rows,
            "response_b": ["no"] * rows,
        }),
        path,
    )


def night(root: Path, date: str, *extra: str) -> int:
    return main(["run", "--config", str(DEMO_CONFIG), "--input", str(root / "landing"), "--output", str(root / "curated"),
                 "--incremental", "--state", str(root / "state.json"), "--run-date", date, *SIMULATED, *extra])


def ids(partition: Path) -> set[str]:
    return {i for name in ("kept", "dropped", "errors") for i in pq.read_table(partition / name, columns=["id"]).column("id").to_pylist()}


def test_three_nights_process_only_new_and_changed_shards(tmp_path, ray_session):
    landing = tmp_path / "landing"
    landing.mkdir()
    shard(landing / "a.parquet", "a", 3)
    shard(landing / "b.parquet", "b", 2)

    assert night(tmp_path, "2026-11-25") == ExitCode.OK
    first = tmp_path / "curated" / "run_date=2026-11-25"
    assert ids(first) == {"a-0", "a-1", "a-2", "b-0", "b-1"} and (first / "_SUCCESS").exists()
    state = json.loads((tmp_path / "state.json").read_text())
    assert {Path(p).name for p in state["shards"]} == {"a.parquet", "b.parquet"}

    shard(landing / "c.parquet", "c", 2)  # a new shard; a and b unchanged
    assert night(tmp_path, "2026-11-26") == ExitCode.OK
    assert ids(tmp_path / "curated" / "run_date=2026-11-26") == {"c-0", "c-1"}

    shard(landing / "b.parquet", "b2", 4)  # b is rewritten with new content
    assert night(tmp_path, "2026-11-27") == ExitCode.OK
    assert ids(tmp_path / "curated" / "run_date=2026-11-27") == {"b2-0", "b2-1", "b2-2", "b2-3"}
    assert ids(first) == {"a-0", "a-1", "a-2", "b-0", "b-1"}  # earlier nights are left as they were

    assert night(tmp_path, "2026-11-28") == ExitCode.OK  # nothing new: no partition, state unchanged
    assert not (tmp_path / "curated" / "run_date=2026-11-28").exists()

    assert night(tmp_path, "2026-11-29", "--reprocess") == ExitCode.OK  # a backfill of everything
    assert len(ids(tmp_path / "curated" / "run_date=2026-11-29")) == 3 + 4 + 2


def test_state_is_recorded_only_after_a_successful_night(tmp_path, ray_session):
    landing = tmp_path / "landing"
    landing.mkdir()
    pq.write_table(pa.table({"id": ["x"], "question": ["q"], "response_a": ["a"], "response_b": ["b"],
                             "image": [b"not an image"]}), landing / "bad.parquet")
    code = main(["run", "--config", str(DEMO_CONFIG), "--input", str(landing), "--output", str(tmp_path / "curated"),
                 "--incremental", "--state", str(tmp_path / "state.json"), "--run-date", "2026-11-25",
                 "--set", "judge.engine.backend=simulated", "--set", "max_error_fraction=0"])
    assert code == 1  # over the error budget
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["shards"] == {}  # nothing recorded as consumed:
    assert state["running"]["run_date"] == "2026-11-25"  # the next attempt finishes this night first


def test_incremental_needs_a_state(tmp_path, capsys):
    code = main(["run", "--config", str(DEMO_CONFIG), "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--incremental"])
    assert code == 2 and "--state" in capsys.readouterr().err


def test_a_killed_night_is_finished_first_and_no_row_is_read_twice(tmp_path, ray_session):
    """Night 1 is killed after its first commits; night 2, a day later, finishes night 1 in its own
    partition from its committed batches, then runs its own new shard: across run_date=* every id
    is read exactly once, and every partition is finished."""
    import sys

    from tests.processes import kill_after_commits, manifest_count

    landing = tmp_path / "landing"
    landing.mkdir()
    for name in "abcd":
        shard(landing / f"{name}.parquet", name, 24)  # 96 rows
    first = tmp_path / "curated" / "run_date=2026-11-25"
    slow = ["--set", "judge.engine.simulation.seconds_per_token=0.004", "--set", "judge.engine.simulation.median_tokens=60",
            "--set", "judge.batch_size=4", "--set", "judge.batches_in_flight=2", "--set", "decode_batch_size=4",
            "--set", "output.rows_per_file=4"]
    command = [sys.executable, "-m", "jobs", "run", "--config", str(DEMO_CONFIG), "--input", str(landing),
               "--output", str(tmp_path / "curated"), "--incremental", "--state", str(tmp_path / "state.json"),
               "--run-date", "2026-11-25", "--num-cpus", "4", *SIMULATED, *slow]
    root = Path(__file__).resolve().parents[2]
    committed = kill_after_commits(command, manifest_count(first), 2, root, latest=300)
    assert committed >= 2 and not (first / "_SUCCESS").exists()
    assert json.loads((tmp_path / "state.json").read_text())["running"]["run_date"] == "2026-11-25"

    shard(landing / "e.parquet", "e", 5)  # the next day's new shard
    assert night(tmp_path, "2026-11-26", *slow) == ExitCode.OK  # the same nightly command, a day later
    partitions = sorted((tmp_path / "curated").glob("run_date=*"))
    assert [p.name for p in partitions] == ["run_date=2026-11-25", "run_date=2026-11-26"]
    assert all((p / "_SUCCESS").exists() for p in partitions)
    read = [i for p in partitions for name in ("kept", "dropped", "errors")
            for i in pq.read_table(p / name, columns=["id"]).column("id").to_pylist()]
    assert len(read) == len(set(read)) == 96 + 5
    assert ids(partitions[1]) == {f"e-{i}" for i in range(5)}
    report = json.loads((first / "report.json").read_text())
    assert report["resumed"]["committed_batches"] >= committed
    state = json.loads((tmp_path / "state.json").read_text())
    assert "running" not in state and len(state["shards"]) == 5
