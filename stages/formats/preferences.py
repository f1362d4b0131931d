"""Preference pairs in TRL's conversational format, the rows of preferences/.

The schema is built from Hugging Face `datasets` features, so its Parquet files carry the features
metadata: `load_dataset("parquet", ...)` yields `images` as PIL images (what TRL's vision DPO
trainer takes) and `audios` / `videos` as `Audio` / `Video` values (torchcodec decoders). Audio and
video follow the layout Qwen2.5-Omni trainers read: a `{"type": "audio"}` / `{"type": "video"}`
content item in the user turn, in media order, and the media in the `audios` / `videos` column.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

import pyarrow as pa

from stages.rows import MODALITIES

_MEDIA_LISTS = {"image": "images", "audio": "audios", "video": "videos"}


@lru_cache(maxsize=1)
def preference_schema() -> pa.Schema:
    """The Arrow schema of preferences/, with its `datasets` features metadata."""
    from datasets import Audio, Features, Image, List, Value, Video  # half a second to import: only when rows are written

    messages = List({"role": Value("string"), "content": List({"type": Value("string"), "text": Value("string")})})
    features = Features(
        {
            "id": Value("string"),
            "prompt": messages,
            "chosen": messages,
            "rejected": messages,
            "images": List(Image()),
            "audios": List(Audio()),
            "videos": List(Video()),
            "score_chosen": Value("float64"),
            "score_rejected": Value("float64"),
            "margin": Value("float64"),
            "judge_model": Value("string"),
        }
    )
    return features.arrow_schema


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


def _assistant(text: str) -> list[dict[str, Any]]:
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def preference_row(
    row: dict[str, Any], chosen: str, rejected: str, score_chosen: float, score_rejected: float
) -> dict[str, Any]:
    """One DPO row: `row` (a kept row: id, question, its media, judge_model) preferring `chosen` to
    `rejected`, with their scores."""
    media = [m for m in MODALITIES if row.get(m) is not None]
    return {
        "id": row["id"],
        "prompt": [trl_user_message(row["question"], media)],
        "chosen": _assistant(chosen),
        "rejected": _assistant(rejected),
        **{_MEDIA_LISTS[m]: [row[m]] if row.get(m) else [] for m in MODALITIES},
        "score_chosen": score_chosen,
        "score_rejected": score_rejected,
        "margin": score_chosen - score_rejected,
        "judge_model": row["judge_model"],
    }


def preference_table(rows: list[dict[str, Any]]) -> pa.Table:
    """preferences/ rows (from `preference_row`) as a table with the schema and its features."""
    return pa.Table.from_pylist(rows, schema=preference_schema())
