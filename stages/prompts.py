"""Flex-Judge prompt rendering: system prompts, user messages, ChatML, verdict regex.

Pure string work (stdlib only). Every model-facing string comes from the vendored
`stages/flexjudge_prompts.json` (copied verbatim from the authors' code, typos included) or from
the templates of `SPEC.md`; nothing here is retyped from memory.

Decisions:

* Media block. One placeholder per media item, in the order given, concatenated with NO
  separator (`MEDIA_SEPARATOR = ""`). That is what Qwen2.5-VL's and Qwen2.5-Omni's own chat
  templates emit for consecutive media content items, so the model saw exactly this. With no
  media there is no media block at all: a text-only user message starts with `[Question]`, as in
  the text-only training data.
* User text is joined by plain concatenation, never `str.format`, so braces survive untouched.
* User text (question, answers) containing a Qwen special-token literal such as `<|im_end|>` or
  `<|IMAGE|>` is rejected with `SpecialTokenInText` (a ValueError): vLLM tokenizes the prompt
  string with special tokens parsed, so such text would end the user turn early (prompt injection)
  or add a media placeholder that no media item backs. The row becomes an error, never a silently
  altered prompt.
* Verdict regex: see `verdict_regex`.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:  # annotations only: keep this module free of pydantic/yaml at import time
    from pipelines.config import Mode, ModelFamily

PROMPTS_RESOURCE = "flexjudge_prompts.json"

MODES: tuple[str, ...] = ("pairwise", "single")
FAMILIES: tuple[str, ...] = ("omni", "vl")
MODALITIES: tuple[str, ...] = ("image", "audio", "video")

# SPEC.md "Judging formats": system prompt key per mode.
SYSTEM_KEYS: dict[str, str] = {
    "pairwise": "train_pairwise_1_10__judgelrm_generation",
    "single": "mllm_judge_score_1_5",
}
# Score scale (inclusive) and number of <answer> tags per mode.
SCALES: dict[str, tuple[int, int]] = {"pairwise": (1, 10), "single": (1, 5)}
N_SCORES: dict[str, int] = {"pairwise": 2, "single": 1}

# SPEC.md "Media placeholders" table. Flex-VL (Qwen2.5-VL) has no audio encoder.
PLACEHOLDERS: dict[str, dict[str, str]] = {
    "omni": {
        "image": "<|vision_bos|><|IMAGE|><|vision_eos|>",
        "video": "<|vision_bos|><|VIDEO|><|vision_eos|>",
        "audio": "<|audio_bos|><|AUDIO|><|audio_eos|>",
    },
    "vl": {
        "image": "<|vision_start|><|image_pad|><|vision_end|>",
        "video": "<|vision_start|><|video_pad|><|vision_end|>",
    },
}
MEDIA_SEPARATOR = ""

THINK_PREFILL = "<think>\n"

# Qwen special tokens all look like `<|name|>`; such literals must not come from user data.
SPECIAL_TOKEN_RE = re.compile(r"<\|[A-Za-z0-9_]+\|>")


class SpecialTokenInText(ValueError):
    """User-supplied text contains a special-token literal that would alter the prompt's structure."""


@lru_cache(maxsize=1)
def load_prompts() -> dict[str, Any]:
    """The vendored prompts.json, parsed once."""
    text = resources.files("stages").joinpath(PROMPTS_RESOURCE).read_text(encoding="utf-8")
    return json.loads(text)


def system_prompt_text(key: str) -> str:
    """A system prompt from prompts.json by key, verbatim."""
    systems = load_prompts()["system"]
    if key not in systems:
        raise KeyError(f"no system prompt {key!r} in {PROMPTS_RESOURCE}; known: {sorted(systems)}")
    return systems[key]


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown judging mode {mode!r}; expected one of {MODES}")
    return mode


def _check_family(family: str) -> str:
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; expected one of {FAMILIES}")
    return family


def system_prompt_for(mode: "Mode") -> str:
    return system_prompt_text(SYSTEM_KEYS[_check_mode(mode)])


def media_placeholder(modality: str, family: "ModelFamily") -> str:
    """The placeholder string of one media item. ValueError for unknown or unsupported modalities."""
    table = PLACEHOLDERS[_check_family(family)]
    if modality not in MODALITIES:
        raise ValueError(f"unknown media modality {modality!r}; expected one of {MODALITIES}")
    if modality not in table:
        raise ValueError(
            f"model family {family!r} does not support {modality} input "
            f"(Flex-VL-7B takes image and video only; use Flex-Omni-7B for audio)"
        )
    return table[modality]


def media_block(media: Sequence[str], family: "ModelFamily") -> str:
    """Placeholders for `media` in order, joined by MEDIA_SEPARATOR ('' for no media)."""
    if isinstance(media, str):  # a bare "image" would otherwise iterate as characters
        raise TypeError("media must be a sequence of modality names, not a string")
    return MEDIA_SEPARATOR.join(media_placeholder(m, family) for m in media)


def check_user_text(name: str, text: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a string, got {type(text).__name__}")
    found = SPECIAL_TOKEN_RE.search(text)
    if found:
        raise SpecialTokenInText(
            f"{name} contains the special-token literal {found.group(0)!r}, which would change the "
            f"judge prompt's structure"
        )
    return text


def _with_media(body: str, media: Sequence[str], family: "ModelFamily") -> str:
    block = media_block(media, family)
    return block + "\n\n" + body if block else body


def render_pairwise(
    question: str, answer_1: str, answer_2: str, media: Sequence[str], family: "ModelFamily"
) -> str:
    """SPEC pairwise user message: `{media}\\n\\n[Question]\\n{q}\\n\\n[Assistant 1's Answer]\\n{a1}...`."""
    body = (
        "[Question]\n"
        + check_user_text("question", question)
        + "\n\n[Assistant 1's Answer]\n"
        + check_user_text("answer_1", answer_1)
        + "\n\n[Assistant 2's Answer]\n"
        + check_user_text("answer_2", answer_2)
    )
    return _with_media(body, media, family)


def render_single(question: str, answer: str, media: Sequence[str], family: "ModelFamily") -> str:
    """SPEC single-answer user message: `{media}\\n\\n[Question]\\n{q}\\n\\n[Assistant's Answer]\\n{a}`."""
    body = (
        "[Question]\n"
        + check_user_text("question", question)
        + "\n\n[Assistant's Answer]\n"
        + check_user_text("answer", answer)
    )
    return _with_media(body, media, family)


def chat_prompt(system: str, user: str, *, prefill_think: bool) -> str:
    """Qwen ChatML as one string; with prefill_think the assistant turn starts with '<think>\\n'."""
    prompt = (
        "<|im_start|>system\n" + system + "<|im_end|>\n"
        "<|im_start|>user\n" + user + "<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    return (prompt + THINK_PREFILL) if prefill_think else prompt


# Whole-number scores of each mode's scale, as regex alternatives.
SCORE_PATTERNS: dict[str, str] = {"pairwise": "10|[1-9]", "single": "[1-5]"}


def verdict_regex(mode: "Mode", *, reasoning_max_chars: int, prefill_think: bool) -> str:
    """Structured-output regex for the generated text (what follows the prompt).

    pairwise: `<think>[\\s\\S]{0,N}</think>\\s{0,4}<answer>(10|[1-9])</answer><answer>(10|[1-9])</answer>`
    single:   `<think>[\\s\\S]{0,N}</think>\\s{0,4}<answer>([1-5])</answer>`
    With prefill_think the prompt already ends in '<think>\\n', so the leading `<think>` is omitted.

    Why this shape:
    * `[\\s\\S]` instead of `(?s).`: xgrammar's regex converter takes no inline flags, and `.` may
      not cross newlines; `[\\s\\S]` means "any character" in every engine.
    * The bounded `{0,N}` reasoning guarantees termination: after N characters the grammar only
      allows `</think>` and the answer tags, so a constrained verdict always parses (unless it hits
      max_tokens first). Whitespace after `</think>` is bounded too, so the model cannot loop on it.
    * Scores are whole numbers inside the mode's scale, with nothing between or after the tags:
      exactly the trained format, so `verdicts.parse_scores` reads them back unambiguously (the
      tail after the last `</think>` never contains another `</think>`).
    """
    _check_mode(mode)
    if reasoning_max_chars <= 0:
        raise ValueError("reasoning_max_chars must be positive")
    score = "<answer>(" + SCORE_PATTERNS[mode] + ")</answer>"
    head = "" if prefill_think else "<think>"
    return head + "[\\s\\S]{0," + str(int(reasoning_max_chars)) + "}</think>\\s{0,4}" + score * N_SCORES[mode]


def order_answers(response_a: str, response_b: str, order: str) -> tuple[str, str]:
    """The answers as shown to the model: 'ab' original order, 'ba' swapped."""
    if order == "ab":
        return response_a, response_b
    if order == "ba":
        return response_b, response_a
    raise ValueError(f"unknown answer order {order!r}; expected 'ab' or 'ba'")


@dataclass(frozen=True)
class JudgePrompt:
    """Everything fixed for one run's requests: mode, model family, prefill.

    The judge stage builds one of these per run and calls `build` once per request.
    """

    mode: "Mode"
    family: "ModelFamily"
    prefill_think: bool = False

    def __post_init__(self) -> None:
        _check_mode(self.mode)
        _check_family(self.family)

    @property
    def system_key(self) -> str:
        return SYSTEM_KEYS[self.mode]

    @property
    def system(self) -> str:
        return system_prompt_text(self.system_key)

    @property
    def n_scores(self) -> int:
        return N_SCORES[self.mode]

    @property
    def scale(self) -> tuple[int, int]:
        return SCALES[self.mode]

    def user(self, question: str, answers: Sequence[str], media: Sequence[str]) -> str:
        """The user message; `answers` in the order shown (pairwise: 2, single: 1)."""
        if isinstance(answers, str) or len(answers) != self.n_scores:
            raise ValueError(f"{self.mode} judging takes {self.n_scores} answer(s)")
        if self.mode == "pairwise":
            return render_pairwise(question, answers[0], answers[1], media, self.family)
        return render_single(question, answers[0], media, self.family)

    def build(self, question: str, answers: Sequence[str], media: Sequence[str]) -> str:
        """The full ChatML prompt string of one request."""
        return chat_prompt(self.system, self.user(question, answers, media), prefill_think=self.prefill_think)

    def build_pairwise(
        self, question: str, response_a: str, response_b: str, media: Sequence[str], order: str
    ) -> str:
        """Pairwise prompt for one answer order of a row ('ab' original, 'ba' swapped)."""
        return self.build(question, order_answers(response_a, response_b, order), media)

    def regex(self, reasoning_max_chars: int) -> str:
        return verdict_regex(self.mode, reasoning_max_chars=reasoning_max_chars, prefill_think=self.prefill_think)


def trl_user_message(question: str, media: Sequence[str]) -> dict[str, Any]:
    """TRL conversational user turn for the preference output.

    `{"role": "user", "content": [{"type": "image", "text": None}, ..., {"type": "text", "text": q}]}`:
    one item per media entry, in order, then the question. Every item has the same keys (type, text)
    so Arrow stores the content list as one struct type.
    """
    if isinstance(media, str):
        raise TypeError("media must be a sequence of modality names, not a string")
    content: list[dict[str, Any]] = []
    for modality in media:
        if modality not in MODALITIES:
            raise ValueError(f"unknown media modality {modality!r}; expected one of {MODALITIES}")
        content.append({"type": modality, "text": None})
    content.append({"type": "text", "text": question})
    return {"role": "user", "content": content}
