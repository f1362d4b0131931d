"""Hugging Face `datasets` feature metadata for the output files.

`datasets` reads a Parquet file's features from its schema metadata (key `huggingface`). With the
media columns declared as `Image()`, `Audio()` and `Video()`, `load_dataset("parquet", ...)` on
kept/, dropped/, errors/ or preferences/ yields PIL images and decodable audio and video (decoding
audio and video in `datasets` needs torchcodec), not raw `{bytes, path}` structs.
"""
from __future__ import annotations

import json
from typing import Mapping

import pyarrow as pa

from stages.rows import DEFAULT_MEDIA

HF_METADATA_KEY = b"huggingface"
_cache: dict[tuple[pa.Schema, tuple[tuple[str, str], ...]], bytes] = {}


def media_feature(modality: str):  # -> datasets.Image | datasets.Audio | datasets.Video
    """The `datasets` feature of one modality's `{bytes, path}` values."""
    from datasets import Audio, Image, Video  # half a second to import: only when files are written

    return {"image": Image, "audio": Audio, "video": Video}[modality]()


def hf_features_json(schema: pa.Schema, media: Mapping[str, str] = DEFAULT_MEDIA) -> bytes:
    """The `huggingface` metadata for `schema`: every column's feature from its Arrow type, the
    media columns (struct-typed; `media`: column -> modality) as media features."""
    plain = schema.remove_metadata()
    key = (plain, tuple(sorted(media.items())))
    if key not in _cache:
        from datasets import Features

        features = Features.from_arrow_schema(plain)
        for column, modality in media.items():
            if column in features and pa.types.is_struct(plain.field(column).type):
                features[column] = media_feature(modality)
        _cache[key] = json.dumps({"info": {"features": features.to_dict()}}).encode()
    return _cache[key]


def with_media_features(schema: pa.Schema, media: Mapping[str, str] = DEFAULT_MEDIA) -> pa.Schema:
    """`schema` with its `datasets` feature metadata as its only metadata (a shard writer's own, such
    as pandas' index description, no longer describes the output's columns)."""
    return schema.with_metadata({HF_METADATA_KEY: hf_features_json(schema, media)})
