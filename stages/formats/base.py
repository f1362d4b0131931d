"""The interface of a judging format, and what every format shares.

A judging format is everything about one way of asking the judge: the columns a row holds (text,
answer lists, media), the requests it makes (answer orders x samples), the prompt and media of each
request per model family, the verdict regex for structured output, the parser, how a swapped order
maps back, how a row's verdicts aggregate (mean, or `judge.aggregate: vote`), the label rules it
offers, where it has them its preference rows, and how its verdicts are scored against human labels
(evaluation.py). Its request settings are fields of the `judge` section (`options`), its rules fields
of the `filter` section (`rules`). The normalize, judge, label and write stages, the simulated
engine, the run report, evaluation and the run config ask the format; nothing else branches on
the mode. Adding a format is adding one module beside this one (and to `registry.FORMATS`).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar, Mapping, Optional, Protocol, Sequence

import pyarrow as pa

from stages.config import ConfigSection
from stages.engines.api import JudgeRequest
from stages.formats.evaluation import LabelledRow
from stages.formats.prompts import chat_prompt, score_verdict_regex, system_prompt_text
from stages.formats.verdicts import ORDERS, Verdict, parse_scores, verdict_text
from stages.rows import DEFAULT_MEDIA, MEDIA_TYPE, MODALITIES, RowError

REASON_UNPARSED = "unparsed_verdict"

# One raw verdict (`Verdict.to_dict`); judgments/ holds these flattened, with the row's id.
JUDGMENT_FIELDS = [
    pa.field("order", pa.string()),
    pa.field("sample", pa.int32()),
    pa.field("attempt", pa.int32()),
    pa.field("seed", pa.int64()),
    pa.field("text", pa.string()),
    pa.field("scores", pa.list_(pa.float64())),
    pa.field("original_scores", pa.list_(pa.float64())),
    pa.field("prompt_tokens", pa.int32()),
    pa.field("output_tokens", pa.int32()),
    pa.field("finish_reason", pa.string()),
    pa.field("parsed", pa.bool_()),
]
JUDGMENT_TYPE = pa.struct(JUDGMENT_FIELDS)


@dataclass(frozen=True)
class ThresholdRule:
    """A label rule that keeps a row when `column` is at least the `filter.<field>` threshold; a row
    it rejects is dropped with `reason`. The run report sweeps it: the keep rate at each threshold."""

    field: str
    column: str
    reason: str


class UnparsedVerdict(RowError):
    """A slot still without a parsable verdict after every retry; never counted as a tie."""


class Result(Protocol):
    """A row's verdicts aggregated by its format."""

    n_parsed: int
    unparsed_slots: tuple[tuple[str, int], ...]

    def columns(self) -> dict[str, Any]:
        """The values of the format's `result_columns` for this row."""
        ...


class JudgingFormat(ABC):
    mode: ClassVar[str]  # the run config's `mode` value
    summary: ClassVar[str]  # one line for the config's documentation
    texts: ClassVar[tuple[str, ...]] = ("question",)  # canonical text columns besides the answers
    answer_columns: ClassVar[tuple[str, ...]]  # canonical columns holding the answers judged
    answer_types: ClassVar[dict[str, pa.DataType]] = {}  # answer columns that are not plain text
    media: ClassVar[dict[str, str]] = DEFAULT_MEDIA  # media column -> modality
    system_key: ClassVar[str]  # prompts.json system prompt
    scale: ClassVar[tuple[float, float]]  # inclusive score range of one <answer> tag
    n_scores: ClassVar[int]  # <answer> tags in one verdict
    score_pattern: ClassVar[str]  # one score of the scale, as regex alternatives
    rules: ClassVar[type[ConfigSection]]  # its label rules; the run config's `filter` section holds them
    options: ClassVar[type[ConfigSection] | None] = None  # its request settings, in the `judge` section
    required_modalities: ClassVar[frozenset[str]] = frozenset()  # media the judge model must take
    drop_reasons: ClassVar[dict[str, str]]  # the rules' drop reasons, in the order they apply
    result_columns: ClassVar[dict[str, pa.DataType]]  # per-row aggregate the judge stage adds
    label_columns: ClassVar[dict[str, pa.DataType]] = {}  # what the label stage adds to kept rows
    histograms: ClassVar[dict[str, float]] = {}  # kept rows' column -> bin width, for the run report
    threshold_rule: ClassVar[ThresholdRule | None] = None  # the rule the report's keep-rate curve sweeps
    headline_metrics: ClassVar[tuple[str, ...]]  # eval.json's numbers `flexcurate evaluate` prints

    def __init__(self, settings: Any = None) -> None:
        """`settings`: the run's `judge` section (its `aggregate` and this format's options); None: defaults."""
        self.settings = settings

    @property
    def vote(self) -> bool:
        """`judge.aggregate: vote`: a row's winner is its samples' majority, not its mean scores'."""
        return getattr(self.settings, "aggregate", "mean") == "vote"

    def option(self, name: str) -> Any:
        """One of this format's `judge` options, its default when the run gave none."""
        source = self.settings if self.settings is not None and hasattr(self.settings, name) else self.options()
        return getattr(source, name)

    # -- columns ---------------------------------------------------------------------------------

    @classmethod
    def columns(cls) -> dict[str, pa.DataType]:
        """The canonical columns a row of this format holds besides its id, in output order."""
        answers = {column: cls.answer_types.get(column, pa.string()) for column in cls.answer_columns}
        return {**{column: pa.string() for column in cls.texts}, **answers, **{c: MEDIA_TYPE for c in cls.media}}

    @classmethod
    def media_per_prompt(cls) -> dict[str, int]:
        """The most items of each modality one request shows (one per media column); 0: none."""
        return {modality: list(cls.media.values()).count(modality) for modality in MODALITIES}

    def required_columns(self, mapping: Mapping[str, str], present: Sequence[str]) -> list[str]:
        """The user's column names a shard must hold (after the column mapping); `present` are the
        shard's, for formats whose rows come in more than one layout."""
        return [mapping.get(name, name) for name in (*self.texts, *self.answer_columns)]

    def answers(self, get: Callable[[str], Any], mapping: Mapping[str, str]) -> dict[str, Any]:
        """The canonical answer columns of one row; `get` reads a canonical name from the user's row
        (`mapping` is the run's column mapping)."""
        return {column: get(column) for column in self.answer_columns}

    def check_row(self, row: Mapping[str, Any]) -> None:
        """RowRejected when the row's content cannot make a request of this format (e.g. missing media)."""

    def check_answers(self, row: dict[str, Any], check: Callable[[Any, str], str]) -> None:
        """Check (and convert) answers that are not plain text columns with `check(value, column)`."""

    def judged_texts(self, row: Mapping[str, Any]) -> tuple[str, ...]:
        """The text columns of this row the judge reads: each must be non-empty text."""
        return (*self.texts, *(c for c in self.answer_columns if c not in self.answer_types))

    def drop_before_judging(self, row: Mapping[str, Any]) -> str | None:
        """A drop reason for a row whose (checked) content cannot make a verdict worth its GPU time."""
        return None

    # -- requests --------------------------------------------------------------------------------

    def orders(self, swap_order: bool) -> tuple[str, ...]:
        """The answer orders each row is judged in."""
        return ("ab",)

    def shown_answers(self, row: Mapping[str, Any], order: str) -> list[str]:
        """The answers in the order one request shows them."""
        if order != "ab":
            raise ValueError(f"{self.mode} judging has only the 'ab' order, not {order!r}")
        return [row[column] for column in self.answer_columns]

    @abstractmethod
    def user_message(self, question: str, answers: Sequence[str], media: Sequence[str], family: str) -> str:
        """SPEC's user message for these answers (in the order shown) and media."""

    def system_prompt(self, row: Mapping[str, Any]) -> str:
        return system_prompt_text(self.system_key)

    def request(
        self, row: Mapping[str, Any], order: str, media: Mapping[str, Any], family: str, *, prefill_think: bool
    ) -> tuple[str, dict[str, Any]]:
        """One request's ChatML prompt and its media (`JudgeRequest.multi_modal_data`), from the row and
        its decoded media by column. Here: the row's media first, one item per modality, in MODALITIES
        order, then the question and the answers in the order shown."""
        present = [column for column in self.media if column in media]
        data = {self.media[column]: media[column] for column in present}
        user = self.user_message(row["question"], self.shown_answers(row, order), list(data), family)
        return chat_prompt(self.system_prompt(row), user, prefill_think=prefill_think), data

    def score_count(self, row: Mapping[str, Any] | None) -> int | None:
        """<answer> tags in a verdict on `row` (None: not known without the row)."""
        return self.n_scores

    def verdict_regex(self, row: Mapping[str, Any] | None = None, *, reasoning_max_chars: int, prefill_think: bool) -> str:
        """The structured-output regex of a verdict on `row`."""
        count = self.score_count(row)
        if count is None:
            raise ValueError(f"a {self.mode} verdict's regex depends on the row")
        return score_verdict_regex(
            self.score_pattern, count, reasoning_max_chars=reasoning_max_chars, prefill_think=prefill_think
        )

    # -- verdicts --------------------------------------------------------------------------------

    def parse(
        self, text: str, *, row: Mapping[str, Any] | None = None, think_prefilled: bool = False
    ) -> tuple[float, ...] | None:
        count = self.score_count(row)
        if count is None:
            raise ValueError(f"a {self.mode} verdict is read against its row")
        return parse_scores(text, count, scale=self.scale, think_prefilled=think_prefilled)

    def to_original(self, scores: Sequence[float], order: str) -> tuple[float, ...]:
        """Scores as shown -> scores in the row's own answer order."""
        if order != "ab":
            raise ValueError(f"{self.mode} judging has only the 'ab' order, not {order!r}")
        return tuple(scores)

    def verdict(
        self, order: str, scores: Sequence[float] | None, *, row: Mapping[str, Any] | None = None, **fields: Any
    ) -> Verdict:
        """A Verdict of this format: scores checked against its shape and mapped back to the row's order."""
        if order not in ORDERS:
            raise ValueError(f"unknown answer order {order!r}; expected one of {ORDERS}")
        shown = None if scores is None else tuple(float(s) for s in scores)
        count = self.score_count(row)
        if shown is not None and count is not None and len(shown) != count:
            raise ValueError(f"a {self.mode} verdict holds {count} score(s), not {len(shown)}")
        original = None if shown is None else self.to_original(shown, order)
        return Verdict(order=order, scores=shown, original_scores=original, **fields)  # type: ignore[arg-type]

    def read(
        self,
        text: str,
        *,
        row: Mapping[str, Any] | None = None,
        order: str = "ab",
        think_prefilled: bool = False,
        **fields: Any,
    ) -> Verdict:
        """Parse one completion's text (a verdict on `row`) into a Verdict."""
        scores = self.parse(text, row=row, think_prefilled=think_prefilled)
        return self.verdict(order, scores, row=row, text=text, **fields)

    @abstractmethod
    def aggregate(self, verdicts: Sequence[Verdict]) -> Result:
        """Aggregate a row's verdicts (every attempt of every slot)."""

    def unparsed_error(self, result: Result, attempts: int) -> UnparsedVerdict | None:
        """The row's error when a slot never parsed (or nothing did)."""
        if not result.unparsed_slots and result.n_parsed:
            return None
        slots = ", ".join(f"{order}:{sample}" for order, sample in result.unparsed_slots)
        return UnparsedVerdict(REASON_UNPARSED, f"no parsable verdict after {attempts} attempts (slots {slots})")

    # -- labels ----------------------------------------------------------------------------------

    @abstractmethod
    def decide(self, result: Any, rules: Any) -> tuple[str, str | None]:
        """(outcome, reason) by the format's rules, in the order of `drop_reasons`; kept rows: reason None."""

    def labels(self, row: Mapping[str, Any], result: Any, rules: Any) -> dict[str, Any]:
        """The `label_columns` of a kept row."""
        return {}

    # -- what the run report and evaluation read -------------------------------------------------

    def tally(self, verdicts: Sequence[Verdict]) -> dict[str, int]:
        """Counts over one row's verdicts that the run report sums (e.g. position-bias evidence)."""
        return {}

    def rates(self, tallies: Mapping[str, int]) -> dict[str, Optional[float]]:
        """The report's rates from the summed `tally` counts."""
        return {}

    @abstractmethod
    def canonical_label(self, raw: Any) -> Any:
        """A human label in this format's terms; ValueError when `raw` is not one."""

    @abstractmethod
    def evaluate(self, rows: Sequence[LabelledRow], rules: Any) -> dict[str, Any]:
        """eval.json's metrics for labelled rows; `rules` are the run's (thresholds vary from them)."""

    # -- dry runs and outputs --------------------------------------------------------------------

    def simulated_verdict(self, request: JudgeRequest) -> str:
        """A well-formed verdict drawn from the request's seed: what a dry run's engine answers."""
        rng = random.Random(request.seed)
        low, high = (int(bound) for bound in self.scale)
        return verdict_text(*(rng.randint(low, high) for _ in range(self.simulated_count(request))))

    def simulated_count(self, request: JudgeRequest) -> int:
        """<answer> tags a simulated verdict on this request holds."""
        count = self.score_count(None)
        if count is None:
            raise NotImplementedError(f"{self.mode} must say how many scores a request wants")
        return count

    def preference_schema(self) -> pa.Schema | None:
        """The schema of preferences/, for formats that make preference rows."""
        return None

    def preference_rows(self, kept: pa.Table) -> pa.Table | None:
        """preferences/ rows for kept rows (None for formats without them)."""
        return None
