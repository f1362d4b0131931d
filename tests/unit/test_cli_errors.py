"""Every CLI failure ends in one line saying what to do, with the documented exit code."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from jobs import cli
from jobs.runtime import ExitCode
from pipelines.errors import RunInterrupted
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "jobs" / "configs" / "demo.yaml")


def flexcurate(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jobs", *argv], cwd=ROOT, capture_output=True, text=True, timeout=300)


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr, stderr
    assert lines and lines[-1].startswith("flexcurate"), stderr
    return lines[-1]


@pytest.mark.parametrize("argv, says", [
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["run", "--config", DEMO, "--bogus"], "unrecognized arguments: --bogus"),
    (["run", "--input", "x"], "the following arguments are required: --config"),
])
def test_a_wrong_command_is_one_line_and_exit_2(argv, says, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == ExitCode.REJECTED
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err and "--help" in err


def test_a_missing_config_file_is_one_line(capsys):
    assert cli.main(["run", "--config", "no-such.yaml", "--input", "x", "--output", "y"]) == ExitCode.REJECTED
    assert "cannot read config no-such.yaml" in one_line(capsys.readouterr().err)


def test_an_unreachable_cluster_is_one_line_and_fails_fast():
    port = free_port()  # nothing listens there
    done = flexcurate("run", "--config", DEMO, "--input", "x", "--output", "y", "--address", f"127.0.0.1:{port}")
    assert done.returncode == ExitCode.REJECTED
    line = one_line(done.stderr)
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}" in line and "--address" in line


def test_submit_to_an_unreachable_jobs_api_is_one_line():
    port = free_port()  # nothing listens there
    done = flexcurate("submit", "--address", f"http://127.0.0.1:{port}", "--config", DEMO, "--input", "x",
                      "--output", "y")
    assert done.returncode == ExitCode.REJECTED
    assert f"cannot reach the Ray cluster at http://127.0.0.1:{port}" in one_line(done.stderr)


def test_a_run_that_stops_midway_exits_3_saying_rerun(monkeypatch, capsys):
    def interrupted(*_args, **_kwargs):
        raise RunInterrupted("the run stopped before finishing (EngineDead: gone); rerun the same command to resume")

    monkeypatch.setattr(cli, "run_job", interrupted)
    assert cli.main(["run", "--config", DEMO, "--input", "x", "--output", "y"]) == ExitCode.INTERRUPTED
    assert "rerun the same command" in one_line(capsys.readouterr().err)


def test_an_unexpected_error_still_ends_in_one_line(monkeypatch, capsys):
    def broken(*_args, **_kwargs):
        raise KeyError("surprise")

    monkeypatch.setattr(cli, "run_job", broken)
    assert cli.main(["run", "--config", DEMO, "--input", "x", "--output", "y"]) == ExitCode.INTERRUPTED
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("flexcurate: stopped by an unexpected error (KeyError")
