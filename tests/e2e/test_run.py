"""`flexcurate run` end to end: generated shards, local Ray, the real vLLM engine on the tiny model."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs.cli import main
from jobs.demo import DEMO_CONFIG, demo_rows, write_demo_shards
from jobs.runtime import ExitCode
from stages.formats.preferences import preference_schema

pytestmark = [pytest.mark.e2e, pytest.mark.engine]
ROWS = 18
OUTPUTS = ("kept", "preferences", "dropped", "errors", "judgments")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("run")
    write_demo_shards(root / "input", ROWS)
    output = root / "output"
    code = main(["run", "--config", str(DEMO_CONFIG), "--input", str(root / "input"), "--output", str(output)])
    return code, root, output


def ids(directory: Path) -> list[str]:
    return pq.read_table(directory, columns=["id"]).column("id").to_pylist()


def test_run_succeeds_and_writes_every_output(finished_run):
    code, _, output = finished_run
    assert code == ExitCode.OK
    for name in OUTPUTS:
        assert (output / name).is_dir(), name
    assert (output / "report.json").is_file() and (output / "_SUCCESS").is_file()


def test_every_input_id_lands_exactly_once(finished_run):
    _, root, output = finished_run
    inputs = ids(root / "input")
    landed = ids(output / "kept") + ids(output / "dropped") + ids(output / "errors")
    assert sorted(landed) == sorted(inputs) and len(set(landed)) == len(inputs) == ROWS


def test_broken_rows_are_routed_with_stage_and_reason(finished_run):
    _, _, output = finished_run
    errors = {r["kind"]: r for r in pq.read_table(output / "errors").to_pylist()}
    assert errors["broken-image"]["error_stage"] == "decode" and "MediaError" in errors["broken-image"]["error"]
    assert errors["broken-image"]["error_reason"] == "image_undecodable"
    assert errors["not-audio"]["error_stage"] == "decode" and errors["not-audio"]["error_reason"] == "audio_undecodable"
    assert errors["empty-question"]["error_stage"] == "normalize"
    assert errors["empty-question"]["error_reason"] == "empty_question"
    dropped = {r["kind"]: r for r in pq.read_table(output / "dropped").to_pylist()}
    assert dropped["identical-answers"]["drop_reason"] == "identical_responses"


def test_report_counts_match_the_outputs(finished_run):
    _, _, output = finished_run
    report = json.loads((output / "report.json").read_text())
    assert report["status"] == "succeeded" and report["input_rows"] == ROWS
    for name in ("kept", "dropped", "errors"):
        assert report["counts"][name] == len(ids(output / name))
    assert report["judge"]["requests"] == len(ids(output / "judgments"))
    assert set(report["timings"]["stages"]) >= {"normalize", "decode", "judge", "label", "write"}
    assert report["versions"]["ray"] and report["config"]["mode"] == "pairwise"
    assert 0 <= report["order_agreement_rate"] <= 1 and 0 <= report["first_position_win_rate"] <= 1


def test_kept_rows_carry_verdicts_and_judgments_parse(finished_run):
    _, _, output = finished_run
    kept = pq.read_table(output / "kept")
    for column in ("score_a", "score_b", "winner", "margin", "order_agreement", "chosen", "rejected", "judge_model"):
        assert column in kept.column_names
    assert not [c for c in kept.column_names if c.startswith("_")]
    judgments = pq.read_table(output / "judgments").to_pylist()
    assert {j["order"] for j in judgments} == {"ab", "ba"}
    assert all(j["parsed"] for j in judgments if j["finish_reason"] == "stop")


def test_preferences_load_with_datasets_in_trl_format(finished_run):
    datasets = pytest.importorskip("datasets")
    _, _, output = finished_run
    table = pq.read_table(output / "preferences")
    assert table.schema.equals(preference_schema(), check_metadata=False)
    loaded = datasets.load_dataset("parquet", data_dir=str(output / "preferences"), split="train")
    assert len(loaded) == len(ids(output / "kept"))
    if len(loaded):
        row = loaded[0]
        assert row["prompt"][0]["role"] == "user" and row["chosen"][0]["role"] == "assistant"


def test_rerun_into_a_finished_run_is_refused(finished_run):
    _, root, output = finished_run
    code = main(["run", "--config", str(DEMO_CONFIG), "--input", str(root / "input"), "--output", str(output)])
    assert code == ExitCode.REJECTED


def test_bad_config_is_rejected_before_anything_starts(tmp_path, capsys):
    code = main(["run", "--config", str(DEMO_CONFIG), "--input", str(tmp_path), "--output", str(tmp_path / "o"),
                 "--set", "judge.replicas=0"])
    assert code == ExitCode.REJECTED
    assert "judge.replicas" in capsys.readouterr().err


def test_missing_column_names_shard_and_column(tmp_path, capsys):
    import pyarrow as pa

    pq.write_table(pa.table({"question": ["q"], "response_a": ["a"]}), tmp_path / "bad.parquet")
    code = main(["run", "--config", str(DEMO_CONFIG), "--input", str(tmp_path), "--output", str(tmp_path / "o")])
    assert code == ExitCode.REJECTED
    err = capsys.readouterr().err
    assert "bad.parquet" in err and "response_b" in err


def test_demo_rows_cover_every_modality():
    kinds = {row["kind"] for row in demo_rows(24)}
    assert {"text", "image", "audio", "video", "image+audio", "broken-image", "not-audio"} <= kinds


def test_every_modality_reached_the_engine_in_both_orders(finished_run):
    _, root, output = finished_run
    kind_of = {r["id"]: r["kind"] for r in pq.read_table(root / "input", columns=["id", "kind"]).to_pylist()}
    judged = {}
    for j in pq.read_table(output / "judgments", columns=["id", "order", "parsed"]).to_pylist():
        judged.setdefault(kind_of[j["id"]], set()).add((j["order"], j["parsed"]))
    for kind in ("text", "image", "audio", "video", "image+audio"):
        assert {("ab", True), ("ba", True)} <= judged.get(kind, set()), kind


def test_python_dash_m_jobs_is_the_same_command():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "jobs", "run", "--help"], capture_output=True, text=True, check=True)
    for option in ("--config", "--input", "--output", "--set", "--overwrite", "--skip-bad-shards"):
        assert option in done.stdout


def test_preference_images_load_as_pil_images(finished_run):
    datasets = pytest.importorskip("datasets")
    _, _, output = finished_run
    loaded = datasets.load_dataset("parquet", data_dir=str(output / "preferences"), split="train")
    with_images = [row for row in loaded if row["images"]]
    assert with_images, "no kept pair had an image"
    assert with_images[0]["images"][0].size[0] > 0  # decoded to a PIL image, as TRL's vision DPO expects


def test_an_unusable_output_path_is_one_line(tmp_path, ray_session, capsys):
    write_demo_shards(tmp_path / "input", 4, shards=1)
    (tmp_path / "a-file").write_text("not a directory")
    code = main(["run", "--config", str(DEMO_CONFIG), "--input", str(tmp_path / "input"),
                 "--output", str(tmp_path / "a-file" / "out"), "--set", "judge.engine.backend=simulated"])
    assert code == ExitCode.REJECTED
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"flexcurate: cannot use {tmp_path / 'a-file' / 'out'} as the output")


def test_a_run_with_the_engine_core_in_its_own_process_judges_every_row(tmp_path, ray_session):
    """`judge.engine.core_process: true` (the default on a GPU): vLLM spawns its engine core from
    inside the judge's Ray actor; rows are judged and accounted for as with the in-process core."""
    write_demo_shards(tmp_path / "input", 8)
    output = tmp_path / "output"
    code = main(["run", "--config", str(DEMO_CONFIG), "--input", str(tmp_path / "input"), "--output", str(output),
                 "--set", "judge.engine.core_process=true"])
    assert code == ExitCode.OK
    report = json.loads((output / "report.json").read_text())
    assert report["config"]["judge"]["engine"]["core_process"] is True
    landed = ids(output / "kept") + ids(output / "dropped") + ids(output / "errors")
    assert sorted(landed) == sorted(ids(tmp_path / "input"))
    judgments = pq.read_table(output / "judgments", columns=["order", "parsed", "finish_reason"]).to_pylist()
    assert {j["order"] for j in judgments} == {"ab", "ba"}
    assert all(j["parsed"] for j in judgments if j["finish_reason"] == "stop")
