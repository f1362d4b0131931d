"""Losing the node that hosts the judge replica mid-run, on a real two-node Ray cluster (`ray start`).

The worker node carries the `judge_node` resource the judge pool asks for, so the replica lives
there. Killing that node with everything it started is what a spot node vanishing looks like
(`ray stop --force` on that machine). The driver runs `python -m jobs run --address ...` on the head.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench.paths import checkout_pythonpath
from tests.cluster.helpers import REPO
from tests.cluster.local_cluster import LocalCluster, running_cluster
from tests.processes import manifest_count

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]
ROWS = 192  # the label stage takes 64 rows a batch: commits start once that many are judged
SLOW = ["--set", "judge.engine.backend=simulated", "--set", "judge.resources={judge_node: 1}",
        "--set", "judge.engine.simulation.seconds_per_token=0.01", "--set", "judge.engine.simulation.median_tokens=60",
        "--set", "judge.batch_size=4", "--set", "judge.batches_in_flight=4", "--set", "decode_batch_size=16",
        "--set", "output.rows_per_file=8", "--set", "max_error_fraction=0"]


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    with running_cluster(head_cpus=3) as local:
        yield local


def write_input(directory: Path) -> set[str]:
    directory.mkdir()
    ids = [f"n-{i}" for i in range(ROWS)]
    for half in (0, 1):
        part = ids[half::2]
        pq.write_table(pa.table({"id": part, "question": [f"Is {i} even?" for i in part],
                                 "response_a": ["yes"] * len(part), "response_b": ["no"] * len(part)}),
                       directory / f"part-{half}.parquet")
    return set(ids)


def driver(cluster: LocalCluster, inputs: Path, output: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**cluster.env, "PYTHONPATH": checkout_pythonpath()}
    return subprocess.Popen(
        [sys.executable, "-m", "jobs", "run", "--address", cluster.gcs_address, "--config", "jobs/configs/demo.yaml",
         "--input", str(inputs), "--output", str(output), *SLOW, *extra],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_for_commits(job: subprocess.Popen[str], output: Path, commits: int, latest: float = 300.0) -> None:
    """Wait until `commits` batches are committed."""
    count, deadline = manifest_count(output), time.monotonic() + latest
    while count() < commits:
        assert job.poll() is None, job.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no commits in time"
        time.sleep(0.1)


def committed(output: Path) -> dict[str, tuple[list[str], int]]:
    """Each committed batch's manifest: its ids and when it was written (ns)."""
    return {path.name: (json.loads(path.read_text())["ids"], path.stat().st_mtime_ns)
            for path in (output / "_manifests").glob("*.json")}


def landed(output: Path) -> list[str]:
    return [i for name in ("kept", "dropped", "errors") for i in pq.read_table(output / name, columns=["id"]).column("id").to_pylist()]


def test_losing_the_judge_node_mid_run_and_getting_a_worker_back(cluster: LocalCluster, tmp_path: Path):
    expected = write_input(tmp_path / "input")
    output = tmp_path / "out"
    job = driver(cluster, tmp_path / "input", output)
    wait_for_commits(job, output, 2)
    cluster.kill_node(1)  # the judge replica's node vanishes with rows in flight
    before = committed(output)
    time.sleep(5)
    cluster.add_worker()
    stdout, stderr = job.communicate(timeout=900)
    assert job.returncode == 0, stderr[-5000:]
    ids = landed(output)
    assert sorted(ids) == sorted(expected) and len(ids) == len(set(ids))  # every input id in exactly one output
    report = json.loads((output / "report.json").read_text())
    assert report["status"] == "succeeded" and report["counts"]["errors"] == 0  # a lost node is no row's fault
    assert report["judge"]["replica_restarts"] >= 1 and report["judge"]["node_losses"] >= 1
    # A batch committed before the loss stays as it was committed. Ray may run it again when its result
    # lived on the lost node (lineage reconstruction, judging its rows again once a replica is back):
    # the write then finds its manifest (a batch is named by its rows) and leaves it untouched.
    after = committed(output)
    for name, (ids_before, written_ns) in before.items():
        assert after[name] == (ids_before, written_ns), name
    # Rows judged twice had their verdicts on the lost node (in flight, judged but not yet written, or
    # in a batch Ray rebuilt): fewer than the rows not committed when it died.
    done_before = sum(len(ids) for ids, _ in before.values())
    assert ROWS <= report["timings"]["stages"]["judge"]["rows"] <= 2 * ROWS - done_before


def test_a_judge_node_that_never_comes_back_fails_in_bounded_time_and_a_rerun_resumes(cluster: LocalCluster,
                                                                                       tmp_path: Path):
    expected = write_input(tmp_path / "input")
    output = tmp_path / "out"
    timeout = ["--set", "judge.replica_down_timeout_s=20"]
    job = driver(cluster, tmp_path / "input", output, *timeout)
    wait_for_commits(job, output, 2)
    cluster.kill_node(1)
    lost_at = time.monotonic()
    stdout, stderr = job.communicate(timeout=600)
    assert time.monotonic() - lost_at < 300, "must fail, not wait for a node that never comes"
    assert job.returncode == 3, stderr[-5000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("flexcurate: the run stopped before finishing") and "judge replica" in last, last
    assert "rerun the same command" in last and not (output / "_SUCCESS").exists()
    before = committed(output)
    done_before = sum(len(ids) for ids, _ in before.values())
    assert 0 < done_before < ROWS

    cluster.add_worker()
    rerun = driver(cluster, tmp_path / "input", output, *timeout)
    stdout, stderr = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, stderr[-5000:]
    ids = landed(output)
    assert sorted(ids) == sorted(expected) and len(ids) == len(set(ids))
    report = json.loads((output / "report.json").read_text())
    assert report["resumed"]["committed_batches"] == len(before) and report["resumed"]["committed_rows"] == done_before
    assert report["timings"]["stages"]["judge"]["rows"] == ROWS - done_before  # only what was left is judged
