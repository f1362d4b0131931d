"""End to end: a real two-node Ray cluster (`ray start`), demo-sized runs submitted with `flexcurate submit`.

The second node carries a custom `judge_node` resource, standing in for a GPU node. Jobs run the
repo uploaded as their working dir, with this venv's `python`, exactly as on a VM cluster.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from bench.paths import checkout_pythonpath
from tests.cluster.helpers import REPO, submit_is_wired
from tests.cluster.local_cluster import LocalCluster, running_cluster

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]
JOB_TIMEOUT_S = 900
SHIM = (  # `flexcurate submit` until jobs/cli.py wires the subcommand
    "import sys; from tests.cluster.helpers import submit_parser; from jobs.submit import run_submit; "
    "sys.exit(run_submit(submit_parser().parse_args(sys.argv[1:])))"
)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with running_cluster(head_cpus=2) as local:
        yield local


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from jobs.demo import write_demo_shards

    directory = tmp_path_factory.mktemp("shards")
    write_demo_shards(directory, rows=24)
    return directory


def submit(cluster: LocalCluster, *argv: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "jobs"] if submit_is_wired() else [sys.executable, "-c", SHIM]
    env = {**cluster.env, "PYTHONPATH": checkout_pythonpath(cluster.env)}
    result = subprocess.run(
        [*command, "submit", "--address", cluster.dashboard_url, "--working-dir", str(REPO), *argv],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=JOB_TIMEOUT_S,
    )
    print(result.stdout[-20000:], result.stderr[-5000:], sep="\n--- stderr ---\n")
    return result


def job_client(cluster: LocalCluster):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(cluster.dashboard_url, headers={"Authorization": f"Bearer {cluster.token}"})


def test_demo_run_succeeds_with_the_local_outputs(cluster: LocalCluster, shards: Path, tmp_path: Path):
    output = tmp_path / "out"
    result = submit(cluster, "--config", "jobs/configs/demo.yaml", "--input", str(shards),
                    "--output", str(output), "--wait")
    assert result.returncode == 0, cluster.logs()[-5000:]
    assert result.stdout.splitlines()[0].startswith("raysubmit_"), "the job id comes first"
    for name in ("kept", "dropped", "errors", "report.json", "_SUCCESS"):
        assert (output / name).exists(), f"{name} missing from {sorted(p.name for p in output.iterdir())}"
    report = json.loads((output / "report.json").read_text())
    assert report["status"] == "succeeded"
    assert report["input_rows"] == 24 and sum(report["counts"].values()) >= 24


def test_judge_pool_is_placed_on_the_labelled_node(cluster: LocalCluster, shards: Path, tmp_path: Path):
    """Only the worker node has `judge_node`: the run can only finish if the pool went there."""
    output = tmp_path / "out"
    result = submit(cluster, "--config", "jobs/configs/demo.yaml", "--input", str(shards), "--output", str(output),
                    "--set", "judge.resources={judge_node: 1}", "--wait")
    assert result.returncode == 0, cluster.logs()[-5000:]
    assert json.loads((output / "report.json").read_text())["config"]["judge"]["resources"] == {"judge_node": 1}


def test_pool_needing_more_of_a_label_than_exists_fails_fast(cluster: LocalCluster, shards: Path, tmp_path: Path):
    result = submit(cluster, "--config", "jobs/configs/demo.yaml", "--input", str(shards), "--output",
                    str(tmp_path / "out"), "--set", "judge.resources={judge_node: 2}", "--wait")
    assert result.returncode == 2
    assert "judge.resources.judge_node" in result.stdout + result.stderr


def test_bad_config_is_rejected_before_submitting(cluster: LocalCluster, tmp_path: Path):
    before = len(job_client(cluster).list_jobs())
    result = submit(cluster, "--config", "jobs/configs/demo.yaml", "--input", str(tmp_path),
                    "--output", str(tmp_path / "out"), "--set", "judge.replicas=0", "--wait")
    assert result.returncode == 2
    assert "judge.replicas" in result.stderr
    assert len(job_client(cluster).list_jobs()) == before


def test_failing_job_exits_like_a_local_run(cluster: LocalCluster, tmp_path: Path):
    # Valid config, but the input does not exist on the cluster: the job itself rejects the run (2).
    result = submit(cluster, "--config", "jobs/configs/demo.yaml", "--input", str(tmp_path / "no-such-shards"),
                    "--output", str(tmp_path / "out"), "--wait")
    assert result.returncode == 2
    assert "FAILED" in result.stderr
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_without_wait_returns_the_id_at_once(cluster: LocalCluster, tmp_path: Path):
    result = submit(cluster, "--config", "jobs/configs/demo.yaml", "--input", str(tmp_path / "no-such-shards"),
                    "--output", str(tmp_path / "out"))
    assert result.returncode == 0
    job_id = result.stdout.strip().splitlines()[0]
    client, deadline = job_client(cluster), time.monotonic() + JOB_TIMEOUT_S
    while (info := client.get_job_info(job_id)).status.value not in ("SUCCEEDED", "FAILED", "STOPPED"):
        assert time.monotonic() < deadline
        time.sleep(1)
    assert info.status.value == "FAILED" and info.driver_exit_code == 2


def test_a_job_whose_runtime_env_cannot_be_set_up_says_why(cluster: LocalCluster, tmp_path: Path):
    """Ray fails such a job before its driver runs, so no log was streamed: Ray's cause, which it puts
    after the message's first line, is what the user has to go on."""
    missing = "gcs://_ray_pkg_00000000deadbeef.zip"  # a working dir the cluster never received
    result = submit(cluster, "--config", "jobs/configs/demo.yaml", "--input", str(tmp_path),
                    "--output", str(tmp_path / "out"), "--runtime-env-json", json.dumps({"working_dir": missing}),
                    "--wait")
    assert result.returncode == 1
    outcome = result.stderr[result.stderr.index("flexcurate: job "):]
    assert "FAILED" in outcome and "runtime_env setup failed" in outcome
    assert missing in outcome.split("\n", 1)[1], "the cause, not only Ray's first line"


PLACEMENT_WIRED = any(
    "check_current_cluster" in path.read_text() for path in (REPO / "jobs").glob("*.py") if path.name != "placement.py"
)


@pytest.mark.skipif(not PLACEMENT_WIRED, reason="no entrypoint calls jobs.placement.check_current_cluster yet")
def test_gpu_pool_on_a_gpu_less_cluster_fails_fast(cluster: LocalCluster, shards: Path, tmp_path: Path):
    started = time.monotonic()
    result = submit(cluster, "--config", "jobs/configs/demo.yaml", "--input", str(shards),
                    "--output", str(tmp_path / "out"), "--set", "judge.engine.device=cuda", "--wait")
    assert result.returncode == 2
    assert "judge pool cannot fit the cluster" in result.stdout + result.stderr
    assert time.monotonic() - started < 300, "must fail, not wait for GPUs"


def without_token(cluster: LocalCluster) -> dict[str, str]:
    env = {k: v for k, v in cluster.env.items() if not k.startswith("RAY_AUTH")}
    return {**env, "PYTHONPATH": checkout_pythonpath(env)}


@pytest.mark.parametrize("command", ["submit", "run"])
def test_a_cluster_asking_for_a_token_we_lack_is_one_line(cluster: LocalCluster, tmp_path: Path, command: str):
    address = cluster.dashboard_url if command == "submit" else cluster.gcs_address
    done = subprocess.run(
        [sys.executable, "-m", "jobs", command, "--address", address, "--config", "jobs/configs/demo.yaml",
         "--input", str(tmp_path), "--output", str(tmp_path / "out")],
        cwd=REPO, env=without_token(cluster), capture_output=True, text=True, timeout=300,
    )
    print(done.stderr[-3000:])
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("flexcurate: ") and "authentication token" in last and "RAY_AUTH_TOKEN" in last
