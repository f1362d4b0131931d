"""Nothing lost: a corpus of bad inputs, mixed with good rows, through the whole plan on Ray.

One run (module fixture) reads four readable shards (two with string text, one with binary text,
one empty) and three bad ones (skipped with `skip_bad_shards`), with the simulated engine; every
row is then looked up by id: where it landed, its `error_stage` and the reason code in its error
text. The fail-fast checks on bad shards need no Ray: they raise before any worker or engine exists.
"""
from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.config import InputConfig
from pipelines.curate import run_curation
from pipelines.shards import ShardError, discover
from stages.engines.simulated import SimulatedEngine
from stages.formats.pairwise import PairwiseFormat
from stages.normalize import NormalizeStage
from tests.robustness import corpus as C
from tests.robustness.corpus import config

# --------------------------------------------------------------------------- the corpus run


@dataclass
class CorpusRun:
    base: Path
    cases: dict[str, tuple[C.Case, str]]  # case name -> (case, row id)
    input_ids: list[str]
    skipped: dict[str, str]  # bad shard file name -> the column its problem names ("" for unreadable)
    report: dict
    landing: C.Landing


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory, ray_session) -> CorpusRun:
    base = tmp_path_factory.mktemp("corpus")
    root, outside = C.make_media_tree(base)
    shard_cases = {
        "media.parquet": C.media_cases() + [C.enormous_video_case()] + C.good_cases(6, "good_media_shard"),
        "paths_text.parquet": C.path_cases(root, outside) + C.text_cases() + C.good_cases(6, "good_text_shard"),
        "binary_text.parquet": C.binary_text_cases() + C.good_cases(3, "good_binary_shard"),
    }
    cases: dict[str, tuple[C.Case, str]] = {}
    input_ids: list[str] = []
    for shard, shard_list in shard_cases.items():
        # Interleave good rows among the bad ones so every batch holds both.
        ordered = sorted(shard_list, key=lambda c: (zlib.crc32(c.name.encode()) % 7, c.name))
        rows = [case.row(i) for i, case in enumerate(ordered)]
        if shard == "paths_text.parquet":
            for id_case, given in C.id_cases():
                rows.append(id_case.row(len(rows), id_=given))
                ordered.append(id_case)
        for position, (case, row) in enumerate(zip(ordered, rows)):
            cases[case.name] = (case, C.expected_id(row, base / "input" / shard, position))
            input_ids.append(cases[case.name][1])
        C.write_shard(base / "input" / shard, rows, pa.binary() if shard.startswith("binary") else pa.string())
    C.write_shard(base / "input" / "empty.parquet", [])  # 0 rows: fine, contributes nothing
    skipped = write_bad_shards(base / "input")

    cfg = config(base, root, **{"input.skip_bad_shards": "true"})
    result = run_curation(cfg, engine_factory=C.short_context_engine)
    return CorpusRun(base, cases, input_ids, skipped, result.report, C.landed(base / "output"))


def write_bad_shards(directory: Path) -> dict[str, str]:
    """Shards that cannot be this run's input: file name -> the column the problem names."""
    (directory / "junk.parquet").write_bytes(b"PAR1 this is not a parquet file at all")
    good = C.good_cases(1, "never_read")[0].row(0)
    missing = {k: v for k, v in good.items() if k != "response_b"}
    pq.write_table(pa.Table.from_pylist([missing]), directory / "missing_response_b.parquet")
    pq.write_table(
        pa.table({"id": ["mistyped-0"], "question": [7], "response_a": ["a"], "response_b": ["b"]}),
        directory / "question_int64.parquet",
    )
    return {"junk.parquet": "", "missing_response_b.parquet": "response_b", "question_int64.parquet": "question"}


@pytest.mark.e2e
def test_corpus_run_succeeds_and_skips_only_the_bad_shards(corpus_run):
    report = corpus_run.report
    assert report["status"] == "succeeded", {k: report[k] for k in ("status", "counts", "input_rows")}
    skipped = {Path(path).name: problem for path, problem in report["skipped_shards"].items()}
    assert set(skipped) == set(corpus_run.skipped)
    for name, column in corpus_run.skipped.items():
        assert name in skipped[name] and (f"'{column}'" in skipped[name] if column else "unreadable" in skipped[name])
    assert report["input_shards"] == 4  # three with rows and the empty one
    assert report["input_rows"] == len(corpus_run.input_ids)


@pytest.mark.e2e
def test_ids_in_equal_ids_out_as_multisets(corpus_run):
    C.assert_invariant(corpus_run.landing, corpus_run.input_ids)
    report = corpus_run.report
    landing = corpus_run.landing
    assert report["counts"] == {"kept": len(landing.kept), "dropped": len(landing.dropped), "errors": len(landing.errors)}


@pytest.mark.e2e
def test_every_case_lands_with_its_documented_stage_and_reason(corpus_run):
    problems = [p for case, row_id in corpus_run.cases.values() for p in C.check_case(case, row_id, corpus_run.landing)]
    assert not problems, "\n".join(problems)


@pytest.mark.e2e
def test_good_rows_of_the_same_shards_are_judged(corpus_run):
    landing = corpus_run.landing
    judged = [(case, row_id) for case, row_id in corpus_run.cases.values() if case.outcome == C.JUDGED]
    assert sum(case.name.startswith("good_") for case, _ in judged) == 15
    for case, row_id in judged:
        outcome, row = landing.by_id[row_id]
        assert outcome in ("kept", "dropped"), (case.name, row)
        assert outcome == "kept" or row["drop_reason"] in C.JUDGING_RULES, (case.name, row)
        assert landing.judgments[row_id] >= 2, case.name  # both answer orders were asked
    # Only judged rows have verdicts; errors and pre-judging drops have none.
    judged_ids = {row_id for _, row_id in judged}
    assert set(landing.judgments) == judged_ids


@pytest.mark.e2e
def test_report_tallies_the_same_reasons(corpus_run):
    expected_errors = Counter(c.reason for c, _ in corpus_run.cases.values() if c.outcome == C.ERRORS)
    expected_stages = Counter(c.stage for c, _ in corpus_run.cases.values() if c.outcome == C.ERRORS)
    assert corpus_run.report["error_reasons"] == dict(expected_errors)
    assert corpus_run.report["error_stages"] == dict(expected_stages)
    assert corpus_run.report["drop_reasons"]["identical_responses"] == 4
    assert Counter(r["error_reason"] for r in corpus_run.landing.errors) == expected_errors


# --------------------------------------------------------------------------- duplicate ids


@pytest.mark.e2e
def test_duplicate_ids_within_and_across_shards_all_go_to_errors(tmp_path, ray_session):
    good = C.good_cases(6, "dup")
    first = [good[0].row(0, "dup-within"), good[1].row(1, "dup-within"), good[2].row(2, "dup-across"), good[3].row(3, "unique-1")]
    second = [good[4].row(4, "dup-across"), good[5].row(5, "unique-2"), good[5].row(6, "dup-within")]
    C.write_shard(tmp_path / "input" / "a.parquet", first)
    C.write_shard(tmp_path / "input" / "b.parquet", second)
    result = run_curation(config(tmp_path), engine_factory=C.short_context_engine)
    landing = C.landed(tmp_path / "output")
    C.assert_invariant(landing, [r["id"] for r in first + second])
    errors = Counter(r["id"] for r in landing.errors if r["error_stage"] == "read" and "[duplicate_id]" in r["error"])
    assert errors == {"dup-within": 3, "dup-across": 2}
    assert {r["id"] for r in landing.kept + landing.dropped} == {"unique-1", "unique-2"}
    assert result.report["error_reasons"].get("duplicate_id") == 5


# --------------------------------------------------------------------------- bad shards fail fast


@dataclass
class RecordingFactory:
    """An engine factory that leaves a trace when called (in any process): it must never be."""

    trace: str

    def __call__(self) -> SimulatedEngine:
        with open(self.trace, "a") as handle:
            handle.write("called\n")
        return SimulatedEngine(PairwiseFormat().simulated_verdict)


@pytest.mark.parametrize(
    "shard, table, match",
    [
        ("junk.parquet", None, r"junk\.parquet: unreadable"),
        ("no_resp_b.parquet", pa.table({"question": ["q"], "response_a": ["a"]}), r"no_resp_b\.parquet: missing required column 'response_b'"),
        ("no_question.parquet", pa.table({"response_a": ["a"], "response_b": ["b"]}), r"no_question\.parquet: missing required column 'question'"),
        ("q_int.parquet", pa.table({"question": [1], "response_a": ["a"], "response_b": ["b"]}), r"q_int\.parquet: column 'question' has type int64"),
        ("a_list.parquet", pa.table({"question": ["q"], "response_a": [["a"]], "response_b": ["b"]}), r"a_list\.parquet: column 'response_a' has type list"),
    ],
)
def test_bad_shard_fails_fast_before_any_engine_starts(tmp_path, shard, table, match):
    C.write_shard(tmp_path / "input" / "good.parquet", [c.row(i) for i, c in enumerate(C.good_cases(2))])
    if table is None:
        (tmp_path / "input" / shard).write_bytes(b"not parquet")
    else:
        pq.write_table(table, tmp_path / "input" / shard)
    trace = tmp_path / "engine-calls"
    with pytest.raises(ShardError, match=match):
        run_curation(config(tmp_path), engine_factory=RecordingFactory(str(trace)))
    assert not trace.exists(), "an engine was built for a run that had to fail fast"
    assert not (tmp_path / "output").exists(), "the output directory was touched before the shards were checked"


@pytest.mark.parametrize(
    "image_type, value",
    [
        (pa.int64(), 7),
        (pa.struct([("data", pa.binary())]), {"data": b"\x89PNG"}),  # bytes under a name nobody reads
        (pa.list_(pa.binary()), [b"\x89PNG"]),
    ],
    ids=["int64", "struct_without_bytes_or_path", "list_of_binary"],
)
def test_mistyped_media_column_fails_fast_naming_shard_and_column(tmp_path, image_type, value):
    table = pa.table(
        {"question": ["q"], "response_a": ["a"], "response_b": ["b"], "image": pa.array([value], image_type)}
    )
    pq.write_table(table, tmp_path / "img.parquet")
    with pytest.raises(ShardError, match=r"img\.parquet.*'image'"):
        discover([str(tmp_path / "img.parquet")], PairwiseFormat(), InputConfig())


# --------------------------------------------------------------------------- invalid UTF-8 in a STRING column


def test_invalid_utf8_in_a_string_column_is_a_row_error(tmp_path):
    question = pa.array([b"fine question", b"bad \xff\xfe question"], pa.binary()).view(pa.string())
    table = pa.table({"id": ["ok", "bad"], "question": question, "response_a": ["a", "a"], "response_b": ["b", "b"]})
    pq.write_table(table, tmp_path / "s.parquet")  # pyarrow writes it unvalidated, as Spark/Hive may
    normalized = NormalizeStage(PairwiseFormat(), InputConfig()).process(pq.read_table(tmp_path / "s.parquet"))
    rows = {r["id"]: r for r in normalized.to_pylist()}
    assert rows["ok"]["error_stage"] is None
    assert rows["bad"]["error_stage"] == "normalize"
    assert rows["bad"]["error_reason"] == "invalid_text_question"


# --------------------------------------------------------------------------- invalid UTF-8 in a BINARY column


def test_invalid_utf8_in_a_binary_column_is_a_row_error_and_the_shard_goes_on(tmp_path):
    cases = C.binary_invalid_utf8_cases() + C.good_cases(3, "good_binary")
    rows = [case.row(i) for i, case in enumerate(cases)]
    C.write_shard(tmp_path / "input" / "binary.parquet", rows, pa.binary())
    C.run_chain(pq.read_table(tmp_path / "input" / "binary.parquet"), config(tmp_path))
    landing = C.landed(tmp_path / "output")
    C.assert_invariant(landing, [r["id"] for r in rows])
    problems = [p for case, row in zip(cases, rows) for p in C.check_case(case, row["id"], landing)]
    assert not problems, "\n".join(problems)


@pytest.mark.e2e
def test_control_characters_are_judged_and_kept_as_is(corpus_run):
    case, row_id = corpus_run.cases["txt_control_chars_kept"]
    found = [
        row
        for name in ("kept", "dropped")
        for row in pq.read_table(corpus_run.base / "output" / name, columns=["id", "question", "response_a"]).to_pylist()
        if row["id"] == row_id
    ]
    assert len(found) == 1
    assert found[0]["question"] == case.fields["question"] and found[0]["response_a"] == C.CONTROL_CHARS


# --------------------------------------------------------------------------- shards whose schemas differ


@pytest.mark.e2e
def test_shards_with_differing_column_types_are_read_or_rejected_up_front(tmp_path, ray_session):
    good = C.good_cases(8, "mixed")
    rows = [case.row(i) for i, case in enumerate(good)]
    C.write_shard(tmp_path / "input" / "a_baseline.parquet", rows[:2])
    b = pa.Table.from_pylist(rows[2:4], schema=C.schema())
    b = b.set_column(0, "id", pa.array([1002, 1003], pa.int64()))
    c = pa.Table.from_pylist(rows[4:6], schema=C.schema())
    c = c.set_column(c.schema.get_field_index("image"), "image", pa.array([C.menu()["png_rgb"][1]] * 2, pa.binary()))
    d = pa.Table.from_pylist(rows[6:8], schema=C.schema())
    d = d.set_column(d.schema.get_field_index("case"), "case", pa.array([6, 7], pa.int64()))
    for name, table in (("b_int_id", b), ("c_binary_image", c), ("d_int_passthrough", d)):
        pq.write_table(table, tmp_path / "input" / f"{name}.parquet")
    trace = tmp_path / "engine-calls"
    try:
        result = run_curation(config(tmp_path), engine_factory=RecordingFactory(str(trace)))
    except ShardError as exc:  # acceptable fix: refuse up front, naming a differing column
        assert any(f"'{column}'" in str(exc) for column in ("id", "image", "case")), str(exc)
        assert not trace.exists() and not (tmp_path / "output").exists()
        return
    assert result.succeeded, result.report
    landing = C.landed(tmp_path / "output")
    C.assert_invariant(landing, [r["id"] for r in rows[:2]] + ["1002", "1003"] + [r["id"] for r in rows[4:]])
