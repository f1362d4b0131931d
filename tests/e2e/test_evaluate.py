"""`flexcurate evaluate` on the tiny CPU model: a VL-RewardBench-layout shard, run and scored; every
number in eval.json is recomputed here from judgments/, errors/ and the labels, independently."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from jobs import demo_media
from jobs.cli import main
from jobs.demo import DEMO_CONFIG
from jobs.runtime import ExitCode
from stages.rows import MEDIA_TYPE

pytestmark = [pytest.mark.e2e, pytest.mark.engine]
ROWS = 12
SOURCES = ("mmmu", "povqa", "wildvision")


def vl_rewardbench_shard(path: Path) -> None:
    """The benchmark's layout: query, image, response (two answers), human_ranking, query_source."""
    rows = []
    for i in range(ROWS):
        good, bad = f"The picture shows gradient number {i}.", f"It is a photo of cat number {i}."
        first_good = i % 3 != 0
        rows.append({
            "id": f"vlrb-{i:03d}",
            "query": f"What does image {i} show?",
            "image": {"bytes": demo_media.png(64 + 4 * i, 48, seed=i), "path": None},
            "response": [good, bad] if first_good else [bad, good],
            "human_ranking": [0, 1] if first_good else [1, 0],
            "query_source": SOURCES[i % len(SOURCES)],
        })
    rows[5]["response"] = ["same answer", "same answer"]  # dropped before judging: never a verdict
    schema = pa.schema([("id", pa.string()), ("query", pa.string()), ("image", MEDIA_TYPE),
                        ("response", pa.list_(pa.string())), ("human_ranking", pa.list_(pa.int64())),
                        ("query_source", pa.string())])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("evaluate")
    vl_rewardbench_shard(root / "labelled" / "test.parquet")
    code = main(["evaluate", "--config", str(DEMO_CONFIG), "--input", str(root / "labelled"),
                 "--output", str(root / "run"), "--set", "input.preset=vl_rewardbench"])
    assert code == ExitCode.OK
    return root


def recompute(run: Path, labels: Path) -> dict:
    """The headline numbers from the raw outputs, by the README's definitions."""
    table = pq.read_table(labels).to_pylist()
    human = {r["id"]: ("a" if r["human_ranking"][0] < r["human_ranking"][1] else "b") for r in table}
    group = {r["id"]: r["query_source"] for r in table}
    finals: dict[str, dict] = defaultdict(dict)
    for j in sorted(pq.read_table(run / "judgments").to_pylist(), key=lambda j: j["attempt"]):
        slot = (j["order"], j["sample"])
        if j["parsed"] or slot not in finals[j["id"]] or not finals[j["id"]][slot]["parsed"]:
            finals[j["id"]][slot] = j
    errors = {r["id"]: r["error_reason"] for r in pq.read_table(run / "errors").to_pylist()}
    status, both, agree, with_winner, first_wins = {}, 0, 0, 0, 0
    for row_id, label in human.items():
        slots = finals.get(row_id, {})
        for j in slots.values():
            if j["parsed"] and j["scores"][0] != j["scores"][1]:
                with_winner += 1
                first_wins += j["scores"][0] > j["scores"][1]
        per_order = {}
        for order in ("ab", "ba"):
            parsed = [j["original_scores"] for (o, _), j in slots.items() if o == order and j["parsed"]]
            if parsed:
                a, b = (sum(s[k] for s in parsed) / len(parsed) for k in (0, 1))
                per_order[order] = "a" if a > b else "b" if b > a else "tie"
        if len(per_order) == 2:
            both += 1
            agree += per_order["ab"] == per_order["ba"] != "tie"
        parsed = [j["original_scores"] for j in slots.values() if j["parsed"]]
        if row_id in errors:
            status[row_id] = "unparsed" if errors[row_id] == "unparsed_verdict" else "not_judged"
        elif not parsed:
            status[row_id] = "not_judged"
        else:
            a, b = (sum(s[k] for s in parsed) / len(parsed) for k in (0, 1))
            winner = "a" if a > b + 1e-9 else "b" if b > a + 1e-9 else "tie"
            status[row_id] = "judge_tie" if winner == "tie" else ("correct" if winner == label else "wrong")
    counts = {s: list(status.values()).count(s) for s in ("correct", "judge_tie", "unparsed", "not_judged")}
    n = len(status)
    decided = n - counts["judge_tie"] - counts["unparsed"] - counts["not_judged"]
    by_group = {}
    for name in sorted(set(group.values())):
        members = [i for i in status if group[i] == name]
        by_group[name] = sum(status[i] == "correct" for i in members) / len(members)
    return {
        "n": n, "human_ties": 0, "judge_ties": counts["judge_tie"], "unparsed": counts["unparsed"],
        "not_judged": counts["not_judged"], "accuracy": counts["correct"] / n,
        "accuracy_excluding_ties": counts["correct"] / decided if decided else None,
        "order_agreement_rate": agree / both if both else None,
        "first_position_win_rate": first_wins / with_winner if with_winner else None,
        "by_group": by_group,
    }


def test_eval_json_equals_a_recomputation_from_the_raw_outputs(evaluated):
    scores = json.loads((evaluated / "run" / "eval.json").read_text())
    expected = recompute(evaluated / "run", evaluated / "labelled" / "test.parquet")
    assert scores["not_judged"] >= 1  # the identical pair, dropped before judging
    for key, value in expected.items():
        assert scores[key] == (pytest.approx(value) if isinstance(value, float) else value), key
    assert scores["label_rows"] == scores["labelled_in_run"] == ROWS and scores["missing_from_run"] == 0
    assert scores["macro_accuracy"] == pytest.approx(sum(expected["by_group"].values()) / len(SOURCES))
    assert len(scores["thresholds"]) == 2 * 19 and scores["labels"]["column"] == "human_ranking"


def test_the_run_report_carries_the_same_position_bias_rates(evaluated):
    report = json.loads((evaluated / "run" / "report.json").read_text())
    scores = json.loads((evaluated / "run" / "eval.json").read_text())
    # every row is labelled, so the run's own rates are the evaluation's
    assert report["order_agreement_rate"] == pytest.approx(scores["order_agreement_rate"])
    assert report["first_position_win_rate"] == pytest.approx(scores["first_position_win_rate"])


def assert_rescored_alike(evaluated: Path, labels: Path, out: Path) -> dict:
    """`evaluate --from` the fixture's run against `labels`: eval.json as the run's own (but for where
    the labels came from), returned."""
    code = main(["evaluate", "--from", str(evaluated / "run"), "--labels", str(labels), "--output", str(out)])
    assert code == ExitCode.OK
    first = json.loads((evaluated / "run" / "eval.json").read_text())
    again = json.loads((out / "eval.json").read_text())
    assert {k: v for k, v in again.items() if k != "labels"} == {k: v for k, v in first.items() if k != "labels"}
    return again


def test_scoring_a_finished_run_needs_no_engine_and_agrees(evaluated, monkeypatch):
    import stages.engines.factory as factory

    monkeypatch.setattr(factory.EngineFactory, "__call__", lambda self: pytest.fail("evaluate --from built an engine"))
    out = evaluated / "rescored"
    assert_rescored_alike(evaluated, evaluated / "labelled", out)
    markdown = (out / "eval.md").read_text()
    assert "| accuracy |" in markdown and "## thresholds" in markdown and "## by_group" in markdown


def test_labels_without_the_label_column_are_refused(evaluated, tmp_path, capsys):
    pq.write_table(pa.table({"id": ["vlrb-000"], "verdict": ["a"]}), tmp_path / "wrong.parquet")
    code = main(["evaluate", "--from", str(evaluated / "run"), "--labels", str(tmp_path / "wrong.parquet"),
                 "--output", str(tmp_path / "out")])
    assert code == ExitCode.REJECTED and "labels.column" in capsys.readouterr().err


def test_labels_partitioned_by_their_group_score_as_labels_holding_it(evaluated, tmp_path):
    # Spark's partitionBy("query_source") layout: the group is a key=value directory, not a column.
    table = pq.read_table(evaluated / "labelled" / "test.parquet")
    for source in SOURCES:
        part = table.filter(pc.equal(table.column("query_source"), source)).drop_columns(["query_source"])
        (tmp_path / "labels" / f"query_source={source}").mkdir(parents=True)
        pq.write_table(part, tmp_path / "labels" / f"query_source={source}" / "part-0.parquet")
    again = assert_rescored_alike(evaluated, tmp_path / "labels", tmp_path / "out")
    assert set(again["by_group"]) == set(SOURCES)
