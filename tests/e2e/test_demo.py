"""`flexcurate demo` as a person runs it: its whole output fits on one screen apart from the summary
table (Ray Data's per-operator dumps and the workers' logs stay off without --verbose)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench.paths import ROOT, checkout_pythonpath

pytestmark = [pytest.mark.e2e, pytest.mark.engine]
SCREEN_LINES = 24


def test_demo_output_fits_on_one_screen_apart_from_the_summary(tmp_path):
    env = {**os.environ, "PYTHONPATH": checkout_pythonpath()}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-m", "jobs", "demo", "--output", str(tmp_path / "demo"), "--rows", "12"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = (done.stdout + done.stderr).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("outcome"))
    end = next(i for i, line in enumerate(lines) if line.startswith("wall time"))
    around_summary = lines[:start] + lines[end + 1:]
    assert len(around_summary) <= SCREEN_LINES, "\n".join(around_summary)
    assert not [line for line in lines if "logging_progress" in line or "MapWorker(" in line and " INFO " in line]
    assert any("progress: 12/12 rows" in line for line in lines)
