"""Property tests: random mixes of good and bad rows, and nothing is lost.

Rows are drawn from a fixed menu of pre-generated variants (question text, the answer pair, an
image, an audio clip, a video), each knowing what it does to a row. An oracle combines them into
the row's expected landing: the earliest stage with a problem (normalize -> decode -> judge)
decides, and the error names one of that stage's problems; a row with none is judged.

* `test_stage_chain_*`: the stages' own `process`, chained without Ray on a Parquet-read table, in
  random batch sizes, writing into a temporary run directory: cheap, so many examples.
* `test_pipeline_*` (e2e): the same rows in 1-3 shards through `run_curation` on Ray: few examples.

Both assert on the written files: ids(kept) + ids(dropped) + ids(errors) == ids(input) as
multisets, every row lands as its oracle says, and no good row is lost (judged, never errors).
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from pipelines.curate import run_curation
from tests.robustness import corpus as C

# What a variant does to its row: None (fine), or (stage, reason): "normalize" / "drop" / "decode" / "judge".
Effect = tuple[str, str] | None


@dataclass(frozen=True)
class Variant:
    name: str
    value: Any
    effect: Effect = None


EITHER = "errors or dropped"  # a row with a decode error and a decode drop: its first medium decides

QUESTIONS = [
    Variant("good", "What is shown?"),
    Variant("unicode", "Was ist das? 这是什么？ 🤔"),
    Variant("control", "Which? " + C.CONTROL_CHARS),
    Variant("null", None, ("normalize", "empty_question")),
    Variant("empty", "", ("normalize", "empty_question")),
    Variant("blank", " \t\n ", ("normalize", "empty_question")),
    Variant("nul", "what\x00"),  # readable text: judged as given
    Variant("special", "<|im_start|>system", ("judge", "SpecialTokenInText")),
    Variant("long", C.LONG_TEXT, ("judge", "RequestRejected")),
]
# (response_a, response_b)
PAIRS = [
    Variant("good", ("A gradient.", "A cat.")),
    Variant("good_multiline", ("Line one.\nLine two.", "Only one line.")),
    Variant("control", (C.CONTROL_CHARS, "Plain.")),
    Variant("identical", ("Same.", "Same."), ("drop", "identical_responses")),
    Variant("identical_ws", ("  Same.\n", "Same."), ("drop", "identical_responses")),
    Variant("null_a", (None, "B."), ("normalize", "empty_response_a")),
    Variant("empty_b", ("A.", ""), ("normalize", "empty_response_b")),
    Variant("both_null", (None, None), ("normalize", "empty_response_a")),
    Variant("nul_b", ("A.", "b\x00")),
    Variant("special_a", ("ok<|im_end|>", "B."), ("judge", "SpecialTokenInText")),
    Variant("long_b", ("A.", C.LONG_TEXT), ("judge", "RequestRejected")),
]


def _struct(data: bytes | None = None, path: str | None = None) -> dict[str, Any]:
    return {"bytes": data, "path": path}


@functools.cache
def media_variants() -> dict[str, list[Variant]]:
    """kind -> variants, only small and fast media. Paths say `{root}` / `{outside}`: the media
    root of the run and a directory beside it (see corpus.make_media_tree)."""
    m = C.menu()

    def good(name: str) -> Variant:
        return Variant(name, _struct(m[name][1]))

    def bad(name: str, reason: str, data: bytes | None = None) -> Variant:
        return Variant(name, _struct(m[name][1] if data is None else data), ("decode", reason))

    def dropped(name: str, reason: str) -> Variant:  # readable media a stated rule keeps from judging
        return Variant(name, _struct(m[name][1]), ("decode_drop", reason))

    def path(name: str, text: str, reason: str | None = None) -> Variant:
        return Variant(name, _struct(None, text), ("decode", reason) if reason else None)

    return {
        "image": [
            Variant("none", None),
            good("png_rgb"), good("gif_animated"), good("png16"), good("jpeg_cmyk"), good("jpeg_rotated"),
            path("path_ok", "{root}/img/ok.png"),
            path("path_relative_ok", "img/ok.png"),
            bad("image_truncated_png", "image_undecodable"),
            bad("image_text", "image_undecodable"),
            good("image_1x1"),  # degenerate but readable: resized up to the model's minimum
            bad("image_bomb_81m", "image_too_large"),
            dropped("image_strip", "image_aspect_ratio"),
            bad("image_empty", "media_empty", b""),
            path("path_missing", "{root}/img/missing.png", "media_not_found"),
            path("path_outside", "{outside}/secret.png", "media_path_forbidden"),
            path("path_dotdot", "../outside/secret.png", "media_path_forbidden"),
            path("path_http", "http://example.com/x.png", "media_scheme_forbidden"),
        ],
        "audio": [
            Variant("none", None),
            good("wav"), good("wav_unusual"), good("flac_declared_hours"), good("audio_truncated_wav"), good("mp3"),
            good("audio_silent"),
            dropped("audio_zero_seconds", "audio_too_short"),
            bad("audio_text", "audio_undecodable"),
            bad("audio_truncated_flac", "audio_undecodable"),
            bad("audio_empty", "media_empty", b""),
        ],
        "video": [
            Variant("none", None),
            good("mp4"), good("mp4_one_frame"),
            bad("video_truncated", "video_undecodable"),
            bad("video_no_frames", "video_no_frames"),
            bad("video_declared_hours", "video_too_long"),
            bad("video_text", "video_undecodable"),
        ],
    }


FIELDS = ("question", "pair", "image", "audio", "video")


def options(field: str) -> list[Variant]:
    return {"question": QUESTIONS, "pair": PAIRS}.get(field) or media_variants()[field]


@dataclass(frozen=True)
class Drawn:
    question: Variant
    pair: Variant
    image: Variant
    audio: Variant
    video: Variant

    @property
    def variants(self) -> tuple[Variant, ...]:
        return tuple(getattr(self, f) for f in FIELDS)

    def row(self, row_id: str, root: str, outside: str) -> dict[str, Any]:
        a, b = self.pair.value
        media = {}
        for kind in ("image", "audio", "video"):
            value = getattr(self, kind).value
            if value is not None and value["path"] is not None:
                value = {"bytes": None, "path": value["path"].format(root=root, outside=outside)}
            media[kind] = value
        return {"id": row_id, "question": self.question.value, "response_a": a, "response_b": b, **media,
                "case": self.case}

    @property
    def case(self) -> str:
        return "/".join(f"{f}={v.name}" for f, v in zip(FIELDS, self.variants))

    def expected(self) -> tuple[str, str | None, set[str]]:
        """(outcome, stage, acceptable reasons): the earliest stage with a problem decides. Within the
        decode stage the first medium with a problem decides, an error or a drop: EITHER."""
        effects = [v.effect for v in self.variants if v.effect]
        for stage in ("normalize", "drop", "decode", "judge"):
            reasons = {reason for where, reason in effects if where == stage}
            drops = {reason for where, reason in effects if where == "decode_drop"} if stage == "decode" else set()
            if reasons and drops:
                return EITHER, stage, reasons | drops
            if drops:
                return C.DROPPED, None, drops
            if reasons:
                return (C.DROPPED, None, reasons) if stage == "drop" else (C.ERRORS, stage, reasons)
        return C.JUDGED, None, set()

    @property
    def good(self) -> bool:
        return self.expected()[0] == C.JUDGED


@st.composite
def drawn_row(draw) -> Drawn:
    """A good row, a row with one bad field, or any mix (several problems at once)."""
    kind = draw(st.sampled_from(["good", "one_bad", "one_bad", "any"]))
    bad_field = draw(st.sampled_from(FIELDS)) if kind == "one_bad" else None
    chosen = {}
    for field in FIELDS:
        menu = options(field)
        if kind == "any":
            pool = menu
        elif field == bad_field:
            pool = [v for v in menu if v.effect is not None]
        else:
            pool = [v for v in menu if v.effect is None]
        chosen[field] = draw(st.sampled_from(pool))
    return Drawn(**chosen)


def check_landing(rows: list[Drawn], ids: list[str], output: Path) -> None:
    """The written outputs: the multiset invariant, each row where its oracle says, no good row lost."""
    landing = C.landed(output)
    C.assert_invariant(landing, ids)
    by_id = landing.by_id
    problems = []
    for drawn, row_id in zip(rows, ids):
        outcome, stage, reasons = drawn.expected()
        where, row = by_id[row_id]
        case = drawn.case
        if outcome == C.JUDGED:
            if where == "errors" or (where == "dropped" and row["drop_reason"] not in C.JUDGING_RULES):
                problems.append(f"good row {case} lost: {where} {row}")
            elif landing.judgments[row_id] < 2:
                problems.append(f"good row {case} has {landing.judgments[row_id]} verdicts")
        elif outcome == C.DROPPED or (outcome == EITHER and where == "dropped"):
            if where != "dropped" or row["drop_reason"] not in reasons:
                problems.append(f"{case}: expected dropped {reasons}, got {where} {row}")
        else:
            if where != "errors" or row["error_stage"] != stage or row["error_reason"] not in reasons:
                problems.append(f"{case}: expected errors/{stage} {reasons}, got {where} {row}")
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="module")
def media_tree(tmp_path_factory) -> tuple[str, str]:
    root, outside = C.make_media_tree(tmp_path_factory.mktemp("media"))
    return str(root), str(outside)


_counter = itertools.count()
HEALTH = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]


# --------------------------------------------------------------------------- stages chained without Ray


@settings(max_examples=50, deadline=None, suppress_health_check=HEALTH)
@given(
    rows=st.lists(drawn_row(), min_size=1, max_size=10),
    batch_sizes=st.lists(st.integers(1, 6), min_size=1, max_size=3),
    binary_text=st.booleans(),
)
def test_stage_chain_loses_nothing(tmp_path, media_tree, rows, batch_sizes, binary_text):
    base = tmp_path / f"example-{next(_counter)}"
    ids = [f"row-{i}" for i in range(len(rows))]
    records = [d.row(i, *media_tree) for d, i in zip(rows, ids)]
    C.write_shard(base / "input" / "s.parquet", records, pa.binary() if binary_text else pa.string())
    C.run_chain(pq.read_table(base / "input" / "s.parquet"), C.config(base, Path(media_tree[0])), batch_sizes)
    check_landing(rows, ids, base / "output")


# --------------------------------------------------------------------------- the whole plan on Ray


@pytest.mark.e2e
# No shrinking: each example is a whole run (~10 s); a failure is reported as drawn.
@settings(max_examples=5, deadline=None, suppress_health_check=HEALTH, phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(rows=st.lists(drawn_row(), min_size=1, max_size=16), cuts=st.lists(st.integers(0, 16), max_size=2), data=st.data())
def test_pipeline_loses_nothing(tmp_path, ray_session, media_tree, rows, cuts, data):
    base = tmp_path / f"run-{next(_counter)}"
    ids = [f"row-{i}" for i in range(len(rows))]
    records = [d.row(i, *media_tree) for d, i in zip(rows, ids)]
    bounds = [0, *sorted(min(c, len(records)) for c in cuts), len(records)]
    for shard, (start, stop) in enumerate(zip(bounds, bounds[1:])):  # 1-3 shards, some maybe empty
        text_type = data.draw(st.sampled_from([pa.string(), pa.binary()]), label=f"shard {shard} text type")
        C.write_shard(base / "input" / f"part-{shard}.parquet", records[start:stop], text_type)
    cfg = C.config(base, Path(media_tree[0]), **{"judge.batch_size": data.draw(st.integers(1, 8), label="judge batch")})
    result = run_curation(cfg, engine_factory=C.short_context_engine)
    assert result.report["status"] == "succeeded", result.report["counts"]
    assert result.report["input_rows"] == len(rows)
    check_landing(rows, ids, base / "output")
    good = sum(d.good for d in rows)
    assert result.report["counts"]["kept"] + sum(
        n for reason, n in result.report["drop_reasons"].items() if reason in C.JUDGING_RULES
    ) == good
