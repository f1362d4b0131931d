"""Arrow types shared by the stages and the outputs.

The preference schema is built from Hugging Face `datasets` features, so its Parquet files carry the
features metadata: `load_dataset("parquet", ...)` then yields `images` as PIL images, the form TRL's
vision DPO trainer takes. Audio and video stay plain `{bytes, path}` structs: decoding them in
`datasets` needs torchcodec, which a CPU install does not have.
"""
from __future__ import annotations

import pyarrow as pa
from datasets import Features, Image, List, Value

MEDIA_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

# One raw verdict (stages/judge.py); judgments/ holds these flattened, with the row's id.
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

_MEDIA_FEATURE = {"bytes": Value("binary"), "path": Value("string")}
_MESSAGES_FEATURE = List({"role": Value("string"), "content": List({"type": Value("string"), "text": Value("string")})})
PREFERENCE_FEATURES = Features(
    {
        "id": Value("string"),
        "prompt": _MESSAGES_FEATURE,
        "chosen": _MESSAGES_FEATURE,
        "rejected": _MESSAGES_FEATURE,
        "images": List(Image()),
        "audios": List(_MEDIA_FEATURE),
        "videos": List(_MEDIA_FEATURE),
        "score_chosen": Value("float64"),
        "score_rejected": Value("float64"),
        "margin": Value("float64"),
        "judge_model": Value("string"),
    }
)
PREFERENCE_SCHEMA: pa.Schema = PREFERENCE_FEATURES.arrow_schema
