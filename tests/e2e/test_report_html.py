"""report.html as a person opens it: rendered by headless Chromium (Debian's `chromium`), offline,
with no console errors, showing its charts and sample rows. The screenshot is kept under
out/test-artifacts/ for a person to look at."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from jobs.cli import main
from jobs.demo import DEMO_CONFIG, write_demo_shards
from jobs.runtime import ExitCode

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "out" / "test-artifacts"
CHARTS = ("outcomes", "drop_reasons", "error_reasons", "hist_score_chosen", "hist_margin", "keep_rate", "throughput")
# Headless Chromium on a machine with no network: nothing in the background may try to connect.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--enable-logging=stderr", "--v=0")


@pytest.fixture(scope="module")
def report_html(tmp_path_factory, ray_session) -> Path:
    root = tmp_path_factory.mktemp("report")
    write_demo_shards(root / "input", 18)
    code = main(["run", "--config", str(DEMO_CONFIG), "--input", str(root / "input"), "--output", str(root / "out"),
                 "--set", "judge.engine.backend=simulated"])
    assert code == ExitCode.OK
    return root / "out" / "report.html"


def chromium(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("Debian's chromium is not installed (.ci/run installs it)")
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    return subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
                          capture_output=True, text=True, timeout=120)


def test_report_html_is_self_contained(report_html):
    page = report_html.read_text(encoding="utf-8")
    assert "<script" not in page and "<link" not in page and "@import" not in page
    references = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert references and all(r.startswith("data:") for r in references), references
    assert not re.search(r"url\((?!data:)", page)


def test_report_renders_in_chromium_with_its_charts_and_no_console_errors(report_html, tmp_path):
    dom = chromium(report_html, tmp_path / "profile-dom", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert [line for line in dom.stderr.splitlines() if ":CONSOLE" in line] == []
    shown = set(re.findall(r'<svg class="chart" data-chart="([^"]+)"', dom.stdout))
    assert set(CHARTS) <= shown, shown
    assert "<polyline" in dom.stdout  # the keep-rate and throughput lines are drawn
    assert re.search(r'<img class="thumb" alt="image" src="data:image/jpeg;base64,', dom.stdout)
    assert re.search(r'<img class="thumb" alt="video frames" src="data:image/jpeg;base64,', dom.stdout)
    assert re.search(r'<audio [^>]*src="data:audio/wav;base64,', dom.stdout)
    assert 'class="row kept"' in dom.stdout and 'class="row dropped"' in dom.stdout
    assert "&lt;think&gt;" in dom.stdout  # the judge's reasoning, escaped

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "report.png"
    shot = chromium(report_html, tmp_path / "profile-shot", "--window-size=1200,2400", f"--screenshot={screenshot}")
    assert shot.returncode == 0 and [line for line in shot.stderr.splitlines() if ":CONSOLE" in line] == []
    from PIL import Image

    picture = Image.open(screenshot).convert("RGB")
    assert picture.size == (1200, 2400)
    assert len(picture.getcolors(maxcolors=1 << 20)) > 50  # charts and thumbnails, not a blank page
