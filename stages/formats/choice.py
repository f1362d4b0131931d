"""Choice between two generated media: which of two images or videos (or two edits of one image)
answers a prompt better, GenAI-Bench's four options.

A row holds a `question` (the generation prompt) with `left_image` / `right_image` or `left_video` /
`right_video`, or an edit: `source_image`, `left_image` / `right_image` and the three editing prompts
(`source_prompt`, `target_prompt`, `instruct_prompt`). The prompt is `genai_bench_image`,
`genai_bench_video` or `genai_bench_editing` with its user template, verbatim (the editing template's
"Assistant Edited B's" typo included); the verdict one of `[[A>B]]`, `[[B>A]]`, `[[A=B=Good]]`,
`[[A=B=Bad]]`. With `judge.swap_order` each row is also judged with left and right swapped ('ba': the
right medium shown as A), the verdict mapped back. A verdict is stored as the two sides' marks in
the row's order (left, right): A>B (1, 0), B>A (0, 1), A=B=Good (1, 1), A=B=Bad (0, 0).

A row's winner: the side with the higher mean mark; equal means are a good tie (`tie`) when at least
half good, else `both_bad`. With `judge.aggregate: vote`: the option most verdicts chose (a tie among
options is `tie`).

Decision rules, applied in this order:
  1. errors  `unparsed_verdict`    any slot unparsed after retries, or no slot at all.
  2. dropped `both_bad`            neither medium is acceptable.
  3. dropped `tie`                 both are acceptable and neither is better.
  4. dropped `order_disagreement`  filter.require_order_agreement and the verdicts do not all pick
                                    the same side.
  otherwise kept, with its winner; preferences/ gets a media preference row in the layout diffusion
  DPO trainers read (Pick-a-Pic's: `caption`, `jpg_0` the chosen image, `jpg_1` the rejected one,
  `label_0` = 1; videos in `video_0` / `video_1`; an edit's `source_image` and `instruct_prompt`).
"""
from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, Mapping, Optional, Sequence

import pyarrow as pa

from stages.engines.api import JudgeRequest
from stages.engines.families import placeholder
from stages.formats import position_bias
from stages.formats.base import REASON_UNPARSED, JudgingFormat
from stages.formats.evaluation import LabelledRow, bootstrap_ci, by_group, ratio
from stages.formats.pairwise import OrderAgreementRule
from stages.formats.prompts import chat_prompt, check_user_text, load_prompts, score_verdict_regex, system_prompt_text
from stages.formats.verdicts import ORDERS, Verdict, answer_tags, final_verdicts, mean, plurality
from stages.rows import DROPPED, ERRORS, KEPT, RowRejected

Side = Literal["a", "b", "tie", "both_bad"]
OPTIONS: dict[str, tuple[float, float]] = {"A>B": (1.0, 0.0), "B>A": (0.0, 1.0), "A=B=Good": (1.0, 1.0), "A=B=Bad": (0.0, 0.0)}
_OPTION_RE = re.compile(r"\s*\[\[(A>B|B>A|A=B=Good|A=B=Bad)\]\]\s*")
REASON_BOTH_BAD = "both_bad"
REASON_TIE = "tie"
REASON_ORDER_DISAGREEMENT = "order_disagreement"
_TEMPLATES = {"image": "genai_image_or_video (VL)", "video": "genai_image_or_video (VL)",
              "editing": "genai_editing (VL; note 'Assistant Edited B's' typo)"}
_SYSTEM_KEYS = {"image": "genai_bench_image", "video": "genai_bench_video", "editing": "genai_bench_editing"}
_TEMPLATE_PLACEHOLDER = "<|vision_start|>{placeholder}<|vision_end|>"
_FIELDS = re.compile(r"\{(prompt|source_prompt|target_prompt|instruct_prompt|input_type)\}")
_EDIT_TEXTS = ("source_prompt", "target_prompt", "instruct_prompt")


class ChoiceRules(OrderAgreementRule):
    """Choice mode's rules: the order-agreement rule it shares with pairwise and ranking judging."""


def side_of(marks: Sequence[float]) -> Side:
    """One verdict's option from its two marks in the row's order."""
    left, right = marks
    return "a" if left > right else "b" if right > left else ("tie" if left else "both_bad")


@dataclass(frozen=True)
class ChoiceResult:
    """`winner` a (left), b (right), tie or both_bad (None: nothing parsed); `votes` per option;
    `order_agreement` every parsed verdict picks the same side (a or b)."""

    winner: Optional[Side]
    votes: dict[str, int]
    order_agreement: bool
    n_slots: int
    n_parsed: int
    unparsed_slots: tuple[tuple[str, int], ...]

    def columns(self) -> dict[str, Any]:
        return {
            "winner": self.winner,
            **{f"votes_{option}": self.votes.get(option, 0) for option in ("a", "b", "tie", "both_bad")},
            "order_agreement": self.order_agreement,
        }


@lru_cache(maxsize=1)
def _preference_schema() -> pa.Schema:
    from datasets import Features, Image, Value, Video  # half a second to import: only when rows are written

    return Features({
        "id": Value("string"),
        "caption": Value("string"),
        "jpg_0": Image(),
        "jpg_1": Image(),
        "video_0": Video(),
        "video_1": Video(),
        "label_0": Value("float64"),
        "source_image": Image(),
        "instruct_prompt": Value("string"),
        "votes": Value("int32"),
        "judge_model": Value("string"),
    }).arrow_schema


class ChoiceFormat(JudgingFormat):
    mode = "choice"
    summary = "two generated images or videos -> which is better (GenAI-Bench's four options)"
    texts = ("question", *_EDIT_TEXTS)
    answer_columns = ()
    media = {"left_image": "image", "right_image": "image", "source_image": "image",
             "left_video": "video", "right_video": "video"}
    system_key = "genai_bench_image"
    scale = (0.0, 1.0)
    n_scores = 2
    score_pattern = ""  # the verdict is an option, not scores: see verdict_regex
    rules = ChoiceRules
    drop_reasons = {
        REASON_BOTH_BAD: "choice mode: neither medium is acceptable ([[A=B=Bad]])",
        REASON_TIE: "choice mode: both are acceptable and neither is better ([[A=B=Good]])",
        REASON_ORDER_DISAGREEMENT: "choice mode: the verdicts picked different sides",
    }
    result_columns = {
        "winner": pa.string(),
        "votes_a": pa.int32(),
        "votes_b": pa.int32(),
        "votes_tie": pa.int32(),
        "votes_both_bad": pa.int32(),
        "order_agreement": pa.bool_(),
    }
    headline_metrics = ("accuracy_with_ties", "accuracy_without_ties")

    # -- columns ---------------------------------------------------------------------------------

    @staticmethod
    def kind(row: Mapping[str, Any]) -> str:
        """image, video or editing, by the media the row holds."""
        if row.get("source_image") is not None:
            return "editing"
        return "video" if row.get("left_video") is not None or row.get("right_video") is not None else "image"

    def required_columns(self, mapping: Mapping[str, str], present: Sequence[str]) -> list[str]:
        named = {name: mapping.get(name, name) for name in (*self.media, *self.texts)}
        if named["source_image"] in present:
            names = ("source_image", "left_image", "right_image", *_EDIT_TEXTS)
        elif named["left_video"] in present or named["right_video"] in present:
            names = ("question", "left_video", "right_video")
        else:
            names = ("question", "left_image", "right_image")
        return [named[name] for name in names]

    def check_row(self, row: Mapping[str, Any]) -> None:
        kind = self.kind(row)
        modality = "video" if kind == "video" else "image"
        missing = [side for side in (f"left_{modality}", f"right_{modality}") if row.get(side) is None]
        if missing:
            raise RowRejected("missing_media", f"a {kind} choice needs both media; {' and '.join(missing)} missing")
        other = "image" if modality == "video" else "video"
        if row.get(f"left_{other}") is not None or row.get(f"right_{other}") is not None:
            raise RowRejected("invalid_media", "a choice row compares two images or two videos, not both")

    def judged_texts(self, row: Mapping[str, Any]) -> tuple[str, ...]:
        return _EDIT_TEXTS if self.kind(row) == "editing" else ("question",)

    # -- requests --------------------------------------------------------------------------------

    def orders(self, swap_order: bool) -> tuple[str, ...]:
        return ORDERS if swap_order else ("ab",)

    def shown_answers(self, row: Mapping[str, Any], order: str) -> list[str]:
        return []

    def system_prompt(self, row: Mapping[str, Any]) -> str:
        return system_prompt_text(_SYSTEM_KEYS[self.kind(row)])

    def user_message(self, question: str, answers: Sequence[str], media: Sequence[str], family: str) -> str:
        raise NotImplementedError("a choice prompt is built from its row: see request()")

    def choice_message(self, row: Mapping[str, Any], family: str) -> str:
        """The user template of the row's kind, verbatim: the family's placeholder for each medium, the
        medium's name, then the row's texts (one pass, so text never substitutes into other text)."""
        kind = self.kind(row)
        modality = "video" if kind == "video" else "image"
        template = load_prompts()["user_templates"][_TEMPLATES[kind]]
        template = template.replace(_TEMPLATE_PLACEHOLDER, placeholder(modality, family).text)
        values = {"input_type": modality.capitalize()}
        for name in self.judged_texts(row):
            values["prompt" if name == "question" else name] = check_user_text(name, row[name])
        return _FIELDS.sub(lambda m: values[m.group(1)], template)

    def request(
        self, row: Mapping[str, Any], order: str, media: Mapping[str, Any], family: str, *, prefill_think: bool
    ) -> tuple[str, dict[str, Any]]:
        """The template's media in the order it shows them: the edit's source first, then A and B (left
        and right as given; right and left in the swapped order)."""
        if order not in ORDERS:
            raise ValueError(f"unknown answer order {order!r}; expected one of {ORDERS}")
        kind = self.kind(row)
        modality = "video" if kind == "video" else "image"
        sides = [media[f"left_{modality}"], media[f"right_{modality}"]]
        items = ([media["source_image"]] if kind == "editing" else []) + (sides if order == "ab" else sides[::-1])
        prompt = chat_prompt(self.system_prompt(row), self.choice_message(row, family), prefill_think=prefill_think)
        return prompt, {modality: items}

    def verdict_regex(self, row: Mapping[str, Any] | None = None, *, reasoning_max_chars: int, prefill_think: bool) -> str:
        """One `<answer>` tag holding one of the four options."""
        option = "\\[\\[(?:" + "|".join(re.escape(option) for option in OPTIONS) + ")\\]\\]"
        return score_verdict_regex(option, 1, reasoning_max_chars=reasoning_max_chars, prefill_think=prefill_think)

    def simulated_verdict(self, request: JudgeRequest) -> str:
        option = random.Random(request.seed).choice(list(OPTIONS))
        return f"<think>simulated</think><answer>[[{option}]]</answer>"

    # -- verdicts --------------------------------------------------------------------------------

    def parse(
        self, text: str, *, row: Mapping[str, Any] | None = None, think_prefilled: bool = False
    ) -> tuple[float, ...] | None:
        """The two marks of the one option in the answer region (read like a score: only after the last
        `</think>`, exactly one `<answer>` tag, nothing else in it)."""
        tags = answer_tags(text, think_prefilled=think_prefilled)
        if tags is None or len(tags) != 1:
            return None
        option = _OPTION_RE.fullmatch(tags[0])
        return OPTIONS[option.group(1)] if option else None

    def to_original(self, scores: Sequence[float], order: str) -> tuple[float, ...]:
        """'ba' showed the right medium as A: swapping the marks maps them back (its own inverse)."""
        if order not in ORDERS:
            raise ValueError(f"unknown answer order {order!r}; expected one of {ORDERS}")
        return tuple(scores) if order == "ab" else (scores[1], scores[0])

    def aggregate(self, verdicts: Sequence[Verdict]) -> ChoiceResult:
        slots = final_verdicts(verdicts)
        marks = [v.original_scores for v in slots.values() if v.original_scores is not None]
        sides = [side_of(m) for m in marks]
        unparsed = tuple(slot for slot, v in slots.items() if not v.parsed)
        winner: Optional[Side] = None
        if marks and self.vote:
            winner = plurality(sides, tie="tie")
        elif marks:
            left, right = mean([m[0] for m in marks]), mean([m[1] for m in marks])
            if left != right:
                winner = "a" if left > right else "b"  # type: ignore[operator]
            else:
                winner = "tie" if (left or 0.0) >= 0.5 else "both_bad"
        agreement = bool(sides) and sides[0] in ("a", "b") and all(side == sides[0] for side in sides)
        return ChoiceResult(winner, dict(Counter(sides)), agreement, len(slots), len(marks), unparsed)

    # -- labels ----------------------------------------------------------------------------------

    def decide(self, result: ChoiceResult, rules: ChoiceRules) -> tuple[str, Optional[str]]:
        if result.unparsed_slots or result.winner is None:
            return ERRORS, REASON_UNPARSED
        if result.winner == "both_bad":
            return DROPPED, REASON_BOTH_BAD
        if result.winner == "tie":
            return DROPPED, REASON_TIE
        if rules.require_order_agreement and not result.order_agreement:
            return DROPPED, REASON_ORDER_DISAGREEMENT
        return KEPT, None

    # -- what the run report and evaluation read -------------------------------------------------

    def tally(self, verdicts: Sequence[Verdict]) -> dict[str, int]:
        return position_bias.tally(verdicts, self._order_side, position_bias.first_of_two_wins)

    def _order_side(self, verdicts: list[Verdict]) -> Optional[Side]:
        """The side one order's verdicts pick (None: a tie, both bad, or none)."""
        winner = self.aggregate(verdicts).winner
        return winner if winner in ("a", "b") else None

    def rates(self, tallies: Mapping[str, int]) -> dict[str, Optional[float]]:
        return position_bias.rates(tallies)

    # -- evaluation ------------------------------------------------------------------------------

    def canonical_label(self, raw: Any) -> Side:
        """GenAI-Bench's `vote_type` (leftvote, rightvote, tievote, bothbad_vote) or a, b, tie, both_bad."""
        votes = {"leftvote": "a", "rightvote": "b", "tievote": "tie", "bothbad_vote": "both_bad",
                 "a": "a", "b": "b", "tie": "tie", "both_bad": "both_bad"}
        if isinstance(raw, str) and raw.strip().lower() in votes:
            return votes[raw.strip().lower()]  # type: ignore[return-value]
        raise ValueError(f"not a choice label: {raw!r} (expected leftvote, rightvote, tievote or bothbad_vote)")

    def evaluate(self, rows: Sequence[LabelledRow], rules: ChoiceRules) -> dict[str, Any]:
        """GenAI-Bench's two accuracies: with ties (all four options, over every row) and without (rows a
        person gave a side; the judge must pick that side). An unparsed verdict or a row without a verdict
        counts as wrong. Per group: accuracy with ties; `order_agreement`: keep rate and the kept rows'
        accuracy with and without the order-agreement rule."""
        results = [self.aggregate(row.verdicts) for row in rows]
        winners = [result.winner if row.outcome != ERRORS else None for row, result in zip(rows, results)]
        correct = [row.label == winner for row, winner in zip(rows, winners)]
        sided = [ok for row, ok in zip(rows, correct) if row.label in ("a", "b")]
        missing = [row.error_reason == REASON_UNPARSED for row, winner in zip(rows, winners) if winner is None]
        return {
            "n": len(rows),
            "human_ties": len(rows) - len(sided),
            "unparsed": sum(missing),
            "not_judged": len(missing) - sum(missing),
            "accuracy_with_ties": ratio(sum(correct), len(rows)),
            "accuracy_with_ties_ci": bootstrap_ci(correct, lambda sample: ratio(sum(sample), len(sample))),
            "accuracy_without_ties": ratio(sum(sided), len(sided)),
            "judge_options": dict(Counter(winner or "none" for winner in winners)),
            **position_bias.summed_rates(self.tally(row.verdicts) for row in rows if row.verdicts),
            **by_group(rows, correct),
            "order_agreement": [self._kept(rows, results, correct, rules, agreement) for agreement in (False, True)],
        }

    def _kept(
        self, rows: Sequence[LabelledRow], results: Sequence[ChoiceResult], correct: Sequence[bool],
        rules: ChoiceRules, agreement: bool,
    ) -> dict[str, Any]:
        variant = rules.model_copy(update={"require_order_agreement": agreement})
        kept = [ok for row, result, ok in zip(rows, results, correct)
                if row.outcome != ERRORS and result.n_parsed and self.decide(result, variant)[0] == KEPT]
        return {"require_order_agreement": agreement, "keep_rate": ratio(len(kept), len(rows)),
                "kept_accuracy": ratio(sum(kept), len(kept))}

    # -- outputs ---------------------------------------------------------------------------------

    def preference_schema(self) -> pa.Schema:
        return _preference_schema()

    def preference_rows(self, kept: pa.Table) -> pa.Table:
        rows = []
        for row in kept.to_pylist():
            kind = self.kind(row)
            modality = "video" if kind == "video" else "image"
            left, right = row[f"left_{modality}"], row[f"right_{modality}"]
            chosen, rejected = (left, right) if row["winner"] == "a" else (right, left)
            column = "jpg" if modality == "image" else "video"
            rows.append({
                "id": row["id"],
                "caption": row["instruct_prompt"] if kind == "editing" else row["question"],
                f"{column}_0": chosen,
                f"{column}_1": rejected,
                "label_0": 1.0,
                "source_image": row.get("source_image"),
                "instruct_prompt": row.get("instruct_prompt"),
                "votes": row[f"votes_{row['winner']}"],
                "judge_model": row["judge_model"],
            })
        return pa.Table.from_pylist(rows, schema=_preference_schema())
