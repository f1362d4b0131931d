"""`flexcurate relabel`: new filter settings from stored verdicts equal a full run with those settings."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs.cli import main
from jobs.demo import DEMO_CONFIG, write_demo_shards
from jobs.runtime import ExitCode

pytestmark = pytest.mark.e2e
SIMULATED = ["--set", "judge.engine.backend=simulated", "--set", "max_error_fraction=1", "--set", "judge.samples=2",
             "--set", "output.rows_per_file=7"]
STRICT = ["--set", "filter.min_margin=3", "--set", "filter.require_order_agreement=true",
          "--set", "filter.min_chosen_score=5"]
OUTPUTS = ("kept", "dropped", "errors", "preferences", "judgments")


def run(root: Path, output: str, *extra: str) -> int:
    return main(["run", "--config", str(DEMO_CONFIG), "--input", str(root / "input"), "--output", str(root / output),
                 *SIMULATED, *extra])


@pytest.fixture(scope="module")
def runs(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("relabel")
    write_demo_shards(root / "input", 30)
    assert run(root, "lenient") == ExitCode.OK
    assert run(root, "strict", *STRICT) == ExitCode.OK
    assert main(["relabel", "--from", str(root / "lenient"), "--output", str(root / "relabelled"), *STRICT]) == ExitCode.OK
    return root


def rows(directory: Path) -> list[dict]:
    key = lambda r: (r["id"], r.get("order") or "", r.get("sample") or 0, r.get("attempt") or 0)  # noqa: E731
    return sorted(pq.read_table(directory).to_pylist(), key=key)


@pytest.mark.parametrize("output", OUTPUTS)
def test_relabel_writes_what_a_full_run_would(runs, output):
    full, relabelled = pq.read_table(runs / "strict" / output), pq.read_table(runs / "relabelled" / output)
    assert relabelled.schema.equals(full.schema, check_metadata=True)
    if output == "errors":  # a decode error's text names an object address; stage and reason are the data
        ignore = ("error",)
        assert [{k: v for k, v in r.items() if k not in ignore} for r in rows(runs / "relabelled" / output)] == \
               [{k: v for k, v in r.items() if k not in ignore} for r in rows(runs / "strict" / output)]
    else:
        assert rows(runs / "relabelled" / output) == rows(runs / "strict" / output)


def test_the_rules_changed_what_was_kept(runs):
    lenient = {r["id"] for r in rows(runs / "lenient" / "kept")}
    strict = {r["id"] for r in rows(runs / "relabelled" / "kept")}
    assert strict < lenient  # stricter rules keep a strict subset; the test would be void otherwise


def test_report_counts_the_new_outcomes_and_names_its_source(runs):
    full = json.loads((runs / "strict" / "report.json").read_text())
    relabelled = json.loads((runs / "relabelled" / "report.json").read_text())
    assert relabelled["status"] == "succeeded" and (runs / "relabelled" / "_SUCCESS").exists()
    assert relabelled["relabeled_from"] == str(runs / "lenient")
    for key in ("input_rows", "counts", "drop_reasons", "error_reasons", "histograms", "judge",
                "order_agreement_rate", "first_position_win_rate"):
        assert relabelled[key] == full[key], key
    assert relabelled["config"]["filter"] == full["config"]["filter"]
    ids = [r["id"] for name in ("kept", "dropped", "errors") for r in rows(runs / "relabelled" / name)]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == relabelled["input_rows"]


def test_an_interrupted_relabel_resumes(runs):
    target = runs / "resumed"
    assert main(["relabel", "--from", str(runs / "lenient"), "--output", str(target), *STRICT]) == ExitCode.OK
    (target / "_SUCCESS").unlink()
    manifests = sorted((target / "_manifests").iterdir())
    for manifest in manifests[len(manifests) // 2:]:  # the second half never committed
        for name in json.loads(manifest.read_text())["files"]:
            (target / name).unlink()
        manifest.unlink()
    assert main(["relabel", "--from", str(runs / "lenient"), "--output", str(target), *STRICT]) == ExitCode.OK
    report = json.loads((target / "report.json").read_text())
    assert report["resumed"]["committed_batches"] == len(manifests) - len(manifests[len(manifests) // 2:])
    for output in ("kept", "dropped", "preferences"):
        assert rows(target / output) == rows(runs / "relabelled" / output)


def test_settings_that_need_the_engine_are_refused(runs, capsys):
    code = main(["relabel", "--from", str(runs / "lenient"), "--output", str(runs / "refused"),
                 "--set", "judge.samples=3", "--set", "media.image_max_pixels=1000000"])
    assert code == ExitCode.REJECTED
    message = capsys.readouterr().err
    assert "judge.samples" in message and "media.image_max_pixels" in message and "Traceback" not in message
    assert not (runs / "refused").exists()


def test_the_run_config_file_is_accepted_when_only_filter_settings_differ(runs):
    config = runs / "lenient.yaml"
    config.write_text(DEMO_CONFIG.read_text().replace("min_margin: 1", "min_margin: 3"))
    code = main(["relabel", "--from", str(runs / "lenient"), "--output", str(runs / "from-file"),
                 "--config", str(config), *SIMULATED])
    assert code == ExitCode.OK
    report = json.loads((runs / "from-file" / "report.json").read_text())
    assert report["config"]["filter"]["min_margin"] == 3


def test_an_unfinished_run_is_refused(runs, capsys):
    unfinished = runs / "unfinished"
    shutil.copytree(runs / "lenient", unfinished)
    (unfinished / "_SUCCESS").unlink()
    code = main(["relabel", "--from", str(unfinished), "--output", str(runs / "never")])
    assert code == ExitCode.REJECTED and "_SUCCESS" in capsys.readouterr().err
