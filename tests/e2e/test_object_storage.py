"""Input shards, media, outputs, the incremental state and resume, all on s3:// against a local
S3-compatible server (moto's, on 127.0.0.1), reached the way users reach MinIO or R2: pyarrow's S3
filesystem with an endpoint from AWS_ENDPOINT_URL_S3. Every run is `python -m jobs run`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyarrow import fs as pafs

from bench.paths import ROOT, checkout_pythonpath
from jobs import demo_media
from jobs.demo import DEMO_CONFIG
from tests.ports import free_port
from tests.processes import kill_after_commits

pytestmark = [pytest.mark.e2e, pytest.mark.s3]
BUCKET = "curation"
OUTCOMES = ("kept", "dropped", "errors")
SLOW = ["--set", "judge.engine.simulation.seconds_per_token=0.004", "--set", "judge.engine.simulation.median_tokens=60",
        "--set", "judge.batch_size=4", "--set", "judge.batches_in_flight=2", "--set", "decode_batch_size=4",
        "--set", "output.rows_per_file=4"]


def start_moto_server() -> tuple[subprocess.Popen, str]:
    """moto's S3 server in a process of its own: in this one, its Flask app's context proxies would
    break vLLM's engine start in later tests (vLLM's CPU platform walks every module's globals)."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=2).close()
            return server, endpoint
        except urllib.error.HTTPError:  # it answered
            return server, endpoint
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"moto's S3 server did not start on {endpoint}")
            time.sleep(0.2)


@pytest.fixture(scope="module")
def s3() -> Iterator[tuple[pafs.S3FileSystem, dict[str, str]]]:
    boto3 = pytest.importorskip("boto3")
    server, endpoint = start_moto_server()
    settings = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
                "AWS_ENDPOINT_URL_S3": endpoint, "AWS_EC2_METADATA_DISABLED": "true"}
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=BUCKET)
    filesystem = pafs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1",
                                   endpoint_override=endpoint, scheme="http")
    env = {**os.environ, **settings,
           "PYTHONPATH": checkout_pythonpath()}
    try:
        yield filesystem, env
    finally:
        server.terminate()
        server.wait(timeout=30)


def put_shard(filesystem: pafs.FileSystem, key: str, prefix: str, rows: int, media: bool = False) -> set[str]:
    """A shard at s3://BUCKET/key; with `media`, every third row names an image in s3://BUCKET/media/."""
    images = [None] * rows
    if media:
        for i in range(0, rows, 3):
            name = f"{prefix}-{i}.png"
            with filesystem.open_output_stream(f"{BUCKET}/media/{name}") as sink:
                sink.write(demo_media.png(48 + i, 40, seed=i))
            images[i] = f"s3://{BUCKET}/media/{name}" if i % 2 else name  # absolute, or relative to the root
    table = pa.table({"id": [f"{prefix}-{i}" for i in range(rows)],
                      "question": [f"What is in picture {prefix} {i}?" for i in range(rows)],
                      "response_a": [f"A gradient number {i}." for i in range(rows)],
                      "response_b": ["A cat."] * rows, "image": pa.array(images, pa.string())})
    with filesystem.open_output_stream(f"{BUCKET}/{key}") as sink:
        pq.write_table(table, sink)
    return set(table.column("id").to_pylist())


def flexcurate(env: dict[str, str], *argv: str) -> list[str]:
    return [sys.executable, "-m", "jobs", "run", "--config", str(DEMO_CONFIG), "--num-cpus", "4",
            "--set", "judge.engine.backend=simulated", "--set", f"input.media_roots=[s3://{BUCKET}/media]", *argv]


def run(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(flexcurate(env, *argv), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def landed(filesystem: pafs.FileSystem, output: str) -> list[str]:
    """Every id in kept/, dropped/ and errors/ of a run directory on S3 (each file read whole)."""
    ids = []
    for outcome in OUTCOMES:
        for info in filesystem.get_file_info(pafs.FileSelector(f"{output}/{outcome}")):
            if info.is_file and not info.base_name.startswith("."):
                ids += pq.read_table(info.path, filesystem=filesystem, columns=["id"]).column("id").to_pylist()
    return ids


def exists(filesystem: pafs.FileSystem, path: str) -> bool:
    return filesystem.get_file_info(path).type != pafs.FileType.NotFound


def test_nightly_runs_with_inputs_media_outputs_and_state_on_s3(s3):
    filesystem, env = s3
    expected = put_shard(filesystem, "nightly/in/a.parquet", "a", 9, media=True)
    expected |= put_shard(filesystem, "nightly/in/b.parquet", "b", 5)
    nightly = ["--input", f"s3://{BUCKET}/nightly/in/", "--output", f"s3://{BUCKET}/nightly/out", "--incremental",
               "--state", f"s3://{BUCKET}/nightly/state.json"]
    run(env, *nightly, "--run-date", "2026-11-25")
    first = f"{BUCKET}/nightly/out/run_date=2026-11-25"
    assert exists(filesystem, f"{first}/_SUCCESS")
    ids = landed(filesystem, first)
    assert sorted(ids) == sorted(expected)
    with filesystem.open_input_stream(f"{first}/report.json") as source:
        report = json.loads(source.read())
    assert report["status"] == "succeeded" and report["counts"]["errors"] == 0  # every S3 image was read
    judged = pq.read_table(f"{first}/judgments", filesystem=filesystem).to_pylist()
    assert {j["id"] for j in judged} == expected

    new = put_shard(filesystem, "nightly/in/c.parquet", "c", 4)
    run(env, *nightly, "--run-date", "2026-11-26")
    assert sorted(landed(filesystem, f"{BUCKET}/nightly/out/run_date=2026-11-26")) == sorted(new)
    with filesystem.open_input_stream(f"{BUCKET}/nightly/state.json") as source:
        assert len(json.loads(source.read())["shards"]) == 3


def test_a_run_killed_while_writing_to_s3_resumes_to_every_row_once(s3):
    """S3 has no rename: each file is one upload that appears whole or not at all, and a batch counts
    once its manifest exists. SIGKILL mid-run, then the same command again."""
    filesystem, env = s3
    expected = put_shard(filesystem, "killed/in/a.parquet", "k", 40, media=True)
    output = f"{BUCKET}/killed/out"
    argv = ["--input", f"s3://{BUCKET}/killed/in/", "--output", f"s3://{output}", *SLOW]

    def manifests() -> int:
        listing = filesystem.get_file_info(pafs.FileSelector(f"{output}/_manifests", allow_not_found=True))
        return sum(1 for info in listing if info.is_file and info.base_name.endswith(".json"))

    committed = kill_after_commits(flexcurate(env, *argv), manifests, 2, ROOT, latest=300, env=env)
    assert committed >= 2 and not exists(filesystem, f"{output}/_SUCCESS")
    for info in filesystem.get_file_info(pafs.FileSelector(output, recursive=True)):
        if info.is_file and info.base_name.endswith(".parquet"):  # no partial object is ever visible
            pq.read_metadata(info.path, filesystem=filesystem)

    run(env, *argv)
    ids = landed(filesystem, output)
    assert sorted(ids) == sorted(expected) and len(ids) == len(set(ids))
    with filesystem.open_input_stream(f"{output}/report.json") as source:
        report = json.loads(source.read())
    assert report["status"] == "succeeded" and report["resumed"]["committed_batches"] >= committed
    named = set()
    for info in filesystem.get_file_info(pafs.FileSelector(f"{output}/_manifests")):
        with filesystem.open_input_stream(info.path) as source:
            named |= {f"{output}/{name}" for name in json.loads(source.read())["files"]}
    data = {info.path for info in filesystem.get_file_info(pafs.FileSelector(output, recursive=True))
            if info.is_file and info.base_name.startswith("part-") and "part-empty" not in info.base_name}
    assert data == named  # what the killed attempt wrote and never committed was deleted
