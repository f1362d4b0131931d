"""Reading a judge's text into scores, and the record of one verdict.

Pure Python (stdlib only). A judging format calls `parse_scores` with its own count and scale;
the judge stage keeps every `Verdict` (the raw text included) and aggregates them by slot.

Parsing rules (`parse_scores`):
* Only the text after the LAST `</think>` is read: the reasoning may quote example tags such as
  the system prompt's `<answer>3</answer><answer>5</answer>`.
* Reasoning that was opened and never closed is unparsed: a text with `<think>` but no `</think>`,
  a `<think>` re-opened after the last `</think>`, or (with `think_prefilled=True`, the prompt
  ended in `<think>\\n`) a text without `</think>`. Tags found there are reasoning, not a verdict.
  A text with no think tags at all is read whole (the model skipped reasoning).
* Every `<answer>...</answer>` tag in the answer region counts. The number of tags must equal
  `expected` exactly; more or fewer is unparsed, since the model's intent is then ambiguous. Each
  tag must hold one number `\\d+(\\.\\d+)?` (whitespace around it tolerated); any other content
  makes the whole verdict unparsed.
* Scores outside the scale (inclusive; decimals allowed inside it) make the verdict unparsed: the
  model did not follow the format, so its numbers are not trusted.
* Unparsed is `None`, never a tie (SPEC): the judge retries with a new seed, then records it.

Slots: a row's requests form slots (order, sample). A slot's final verdict is its latest parsed
attempt; a slot with no parsed attempt is unparsed (its latest attempt keeps the raw text).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Optional, Sequence

Order = Literal["ab", "ba"]
ORDERS: tuple[str, ...] = ("ab", "ba")  # as given; swapped (the answers shown in reverse)
EPS = 1e-9  # float tolerance of threshold comparisons and of ties between means

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
_TAG_RE = re.compile(r"<answer>([\s\S]*?)</answer>")
_NUMBER_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*")


def answer_region(text: str, *, think_prefilled: bool = False) -> str | None:
    """The part of `text` that may hold the verdict, or None while reasoning is still open."""
    cut = text.rfind(THINK_CLOSE)
    if cut < 0:
        if think_prefilled or THINK_OPEN in text:
            return None
        return text
    region = text[cut + len(THINK_CLOSE):]
    if THINK_OPEN in region:
        return None
    return region


def answer_tags(text: str, *, think_prefilled: bool = False) -> list[str] | None:
    """The contents of every `<answer>` tag in the answer region, or None while reasoning is open."""
    if not isinstance(text, str):
        return None
    region = answer_region(text, think_prefilled=think_prefilled)
    return None if region is None else _TAG_RE.findall(region)


def parse_scores(
    text: str, expected: int, *, scale: tuple[float, float], think_prefilled: bool = False
) -> tuple[float, ...] | None:
    """Scores in the order written, or None when the text is not a well-formed verdict."""
    if expected < 1:
        raise ValueError("expected must be at least 1")
    tags = answer_tags(text, think_prefilled=think_prefilled)
    if tags is None or len(tags) != expected:
        return None
    low, high = scale
    scores = []
    for content in tags:
        number = _NUMBER_RE.fullmatch(content)
        if number is None:
            return None
        value = float(number.group(1))
        if not low <= value <= high:
            return None
        scores.append(value)
    return tuple(scores)


def verdict_text(*scores: int | float, reasoning: str = "simulated") -> str:
    """A verdict in the trained shape: `<think>...</think><answer>s1</answer>...` (scripted engines)."""
    return f"<think>{reasoning}</think>" + "".join(f"<answer>{s:g}</answer>" for s in scores)


@dataclass(frozen=True)
class Verdict:
    """One judge request's result. `scores` are as shown to the model; `original_scores` in the
    row's own answer order (the format maps a swapped order back). Both None: unparsed."""

    order: Order
    sample: int
    attempt: int
    seed: Optional[int]
    text: str
    scores: Optional[tuple[float, ...]]
    original_scores: Optional[tuple[float, ...]] = None
    prompt_tokens: int = 0
    output_tokens: int = 0
    finish_reason: Optional[str] = None

    @property
    def parsed(self) -> bool:
        return self.scores is not None

    @property
    def slot(self) -> tuple[str, int]:
        return (self.order, self.sample)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for the `judgments` struct column (scores as lists, `parsed` included)."""
        return {
            "order": self.order,
            "sample": self.sample,
            "attempt": self.attempt,
            "seed": self.seed,
            "text": self.text,
            "scores": None if self.scores is None else list(self.scores),
            "original_scores": None if self.original_scores is None else list(self.original_scores),
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
            "finish_reason": self.finish_reason,
            "parsed": self.parsed,
        }

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> "Verdict":
        """A verdict back from its `judgments` record (as written by `to_dict`)."""
        def scores(key: str) -> Optional[tuple[float, ...]]:
            return None if record.get(key) is None else tuple(float(s) for s in record[key])

        return cls(
            order=record["order"],
            sample=record["sample"],
            attempt=record["attempt"],
            seed=record["seed"],
            text=record["text"],
            scores=scores("scores"),
            original_scores=scores("original_scores"),
            prompt_tokens=record["prompt_tokens"] or 0,
            output_tokens=record["output_tokens"] or 0,
            finish_reason=record["finish_reason"],
        )


def final_verdicts(verdicts: Iterable[Verdict]) -> dict[tuple[str, int], Verdict]:
    """Per (order, sample) slot: the latest parsed attempt, else the latest attempt (unparsed)."""
    best: dict[tuple[str, int], Verdict] = {}
    for verdict in verdicts:
        current = best.get(verdict.slot)
        if current is None or (verdict.parsed, verdict.attempt) > (current.parsed, current.attempt):
            best[verdict.slot] = verdict
    return dict(sorted(best.items()))


def mean(values: Sequence[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None


def plurality(votes: Sequence[Any], tie: Any) -> Any:
    """The vote cast most often; `tie` when two or more share the most votes; None without votes."""
    if not votes:
        return None
    counts: dict[Any, int] = {}
    for vote in votes:
        counts[vote] = counts.get(vote, 0) + 1
    most = max(counts.values())
    leaders = [vote for vote, count in counts.items() if count == most]
    return leaders[0] if len(leaders) == 1 else tie
