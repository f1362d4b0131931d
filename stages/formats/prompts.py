"""The prompt pieces every judging format shares: system prompts, media block, ChatML, verdict regex.

Pure string work (stdlib only). Every model-facing string comes from the vendored
`flexjudge_prompts.json` (copied verbatim from the authors' code, typos included) or from the
templates of `SPEC.md`; nothing here is retyped from memory.

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
* Verdict regex: see `score_verdict_regex`.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib import resources
from typing import Any, Sequence

from stages.engines.families import placeholder

PROMPTS_RESOURCE = "flexjudge_prompts.json"
MEDIA_SEPARATOR = ""
THINK_PREFILL = "<think>\n"

# Qwen special tokens all look like `<|name|>`; such literals must not come from user data.
SPECIAL_TOKEN_RE = re.compile(r"<\|[A-Za-z0-9_]+\|>")


class SpecialTokenInText(ValueError):
    """User-supplied text contains a special-token literal that would alter the prompt's structure."""


@lru_cache(maxsize=1)
def load_prompts() -> dict[str, Any]:
    """The vendored prompts.json, parsed once."""
    text = resources.files("stages.formats").joinpath(PROMPTS_RESOURCE).read_text(encoding="utf-8")
    return json.loads(text)


def system_prompt_text(key: str) -> str:
    """A system prompt from prompts.json by key, verbatim."""
    systems = load_prompts()["system"]
    if key not in systems:
        raise KeyError(f"no system prompt {key!r} in {PROMPTS_RESOURCE}; known: {sorted(systems)}")
    return systems[key]


def media_block(media: Sequence[str], family: str) -> str:
    """Placeholders for `media` in order, joined by MEDIA_SEPARATOR ('' for no media)."""
    if isinstance(media, str):  # a bare "image" would otherwise iterate as characters
        raise TypeError("media must be a sequence of modality names, not a string")
    return MEDIA_SEPARATOR.join(placeholder(m, family).text for m in media)


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


def with_media(body: str, media: Sequence[str], family: str) -> str:
    """`{media}\\n\\n{body}`, or the body alone when there is no media (SPEC's user templates)."""
    block = media_block(media, family)
    return block + "\n\n" + body if block else body


def chat_prompt(system: str, user: str, *, prefill_think: bool) -> str:
    """Qwen ChatML as one string; with prefill_think the assistant turn starts with '<think>\\n'."""
    prompt = (
        "<|im_start|>system\n" + system + "<|im_end|>\n"
        "<|im_start|>user\n" + user + "<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    return (prompt + THINK_PREFILL) if prefill_think else prompt


def score_verdict_regex(score_pattern: str, n_scores: int, *, reasoning_max_chars: int, prefill_think: bool) -> str:
    """Structured-output regex for a verdict of `n_scores` `<answer>` tags (what follows the prompt).

    `<think>[\\s\\S]{0,N}</think>\\s{0,4}<answer>(SCORE)</answer>` with the answer tag repeated
    `n_scores` times. With prefill_think the prompt already ends in '<think>\\n', so the leading
    `<think>` is omitted.

    Why this shape:
    * `[\\s\\S]` instead of `(?s).`: xgrammar's regex converter takes no inline flags, and `.` may
      not cross newlines; `[\\s\\S]` means "any character" in every engine.
    * The bounded `{0,N}` reasoning guarantees termination: after N characters the grammar only
      allows `</think>` and the answer tags, so a constrained verdict always parses (unless it hits
      max_tokens first). Whitespace after `</think>` is bounded too, so the model cannot loop on it.
    * Scores are whole numbers inside the format's scale (`score_pattern`), with nothing between or
      after the tags: exactly the trained format, so `verdicts.parse_scores` reads them back
      unambiguously (the tail after the last `</think>` never contains another `</think>`).
    """
    if reasoning_max_chars <= 0:
        raise ValueError("reasoning_max_chars must be positive")
    score = "<answer>(" + score_pattern + ")</answer>"
    head = "" if prefill_think else "<think>"
    return head + "[\\s\\S]{0," + str(int(reasoning_max_chars)) + "}</think>\\s{0,4}" + score * n_scores
