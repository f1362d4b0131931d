"""`flexcurate submit` without a cluster: arguments, entrypoint, runtime env, exit codes."""
from __future__ import annotations

import os
import shlex

import pytest

from jobs.cli import build_parser
from jobs.submit import build_entrypoint, build_runtime_env, failure_reason, job_exit_code, run_submit
from tests.cluster.helpers import REPO, submit_parser

DEMO = "jobs/configs/demo.yaml"


def parse(*argv: str):
    return submit_parser().parse_args(["submit", *argv])


def test_entrypoint_forwards_runs_options_shell_quoted(tmp_path):
    args = parse("--config", DEMO, "--input", "s3://b/in dir/*.parquet", "--input", "rel/shards",
                 "--output", str(tmp_path / "o"), "--set", "judge.replicas=2", "--set", "filter.min_margin=2",
                 "--overwrite", "--skip-bad-shards")
    entrypoint = build_entrypoint(args, DEMO)
    argv = shlex.split(entrypoint)
    assert argv[:3] == ["python", "-m", "jobs"]
    run = build_parser().parse_args(argv[3:])
    assert run.command == "run" and run.config == DEMO
    assert run.inputs == ["s3://b/in dir/*.parquet", os.path.abspath("rel/shards")]  # made absolute for the cluster
    assert run.output == str(tmp_path / "o")
    assert run.overrides == ["judge.replicas=2", "filter.min_margin=2"]
    assert run.overwrite and run.skip_bad_shards


def test_extra_run_options_after_double_dash():
    args = parse("--config", DEMO, "--output", "s3://b/o", "--", "--incremental", "--state", "s3://b/s")
    assert shlex.split(build_entrypoint(args, DEMO))[-3:] == ["--incremental", "--state", "s3://b/s"]


def test_runtime_env_uploads_the_repo_without_heavy_dirs():
    args = parse("--config", DEMO, "--output", "o", "--skip-placement-check",
                 "--runtime-env-json", '{"env_vars": {"A": "1"}, "pip": ["x"]}')
    args.working_dir = str(REPO)
    env = build_runtime_env(args)
    assert env["working_dir"] == str(REPO)
    assert {".venv", "out", ".git"} <= set(env["excludes"])
    assert env["env_vars"] == {"PYTHONUNBUFFERED": "1", "FLEXCURATE_SKIP_PLACEMENT_CHECK": "1", "A": "1"}
    assert env["pip"] == ["x"]


@pytest.mark.parametrize("status,code,expected", [
    ("SUCCEEDED", 0, 0), ("SUCCEEDED", None, 0), ("FAILED", 1, 1), ("FAILED", 2, 2),
    ("FAILED", None, 1), ("STOPPED", None, 1), ("FAILED", -9, 137),
])
def test_exit_code_is_the_jobs(status, code, expected):
    assert job_exit_code(status, code) == expected


def test_bad_config_is_rejected_before_contacting_a_cluster(capsys):
    # No cluster at this address: exit 2 proves validation happened first.
    args = parse("--address", "http://127.0.0.1:9", "--config", DEMO, "--output", "o", "--set", "judge.replicas=0")
    assert run_submit(args) == 2
    assert "judge.replicas" in capsys.readouterr().err


def test_missing_output_is_rejected(capsys):
    assert run_submit(parse("--address", "http://127.0.0.1:9", "--config", DEMO)) == 2
    assert "--output" in capsys.readouterr().err


def test_config_outside_the_working_dir_is_rejected(tmp_path, capsys):
    config = tmp_path / "mine.yaml"
    config.write_text((REPO / DEMO).read_text())
    args = parse("--address", "http://127.0.0.1:9", "--config", str(config), "--output", "o",
                 "--working-dir", str(REPO))
    assert run_submit(args) == 2
    assert "outside --working-dir" in capsys.readouterr().err


def test_unreachable_cluster_is_a_rejection(capsys):
    args = parse("--address", "http://127.0.0.1:9", "--config", DEMO, "--output", "s3://b/o")
    assert run_submit(args) == 2
    assert "cannot reach the Ray cluster at http://127.0.0.1:9" in capsys.readouterr().err


def test_a_failed_entrypoint_is_its_first_line_since_its_logs_were_streamed():
    message = "Job entrypoint command failed with exit code 2, last available logs:\nflexcurate: input x does not exist"
    assert failure_reason(message, "JOB_ENTRYPOINT_COMMAND_ERROR") == message.splitlines()[0]


@pytest.mark.parametrize("error_type", ["RUNTIME_ENV_SETUP_FAILURE", "JOB_SUPERVISOR_ACTOR_DIED", None])
def test_a_job_that_failed_before_its_driver_ran_keeps_rays_cause(error_type):
    message = "runtime_env setup failed: Failed to set up runtime environment.\nOSError: Failed to download gcs://p.zip\n"
    assert failure_reason(message, error_type) == message.strip()
