"""The judge model families: which media each takes and how a prompt marks one media item.

SPEC.md "Media placeholders": one placeholder per media item, a start tag, the special token the
model's processor expands into the item's embeddings, an end tag. The prompt formats write the
whole placeholder; the engine counts the token to check the media match the prompt. Flex-VL
(Qwen2.5-VL) has no audio encoder.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ModelFamily = Literal["omni", "vl"]


@dataclass(frozen=True)
class Placeholder:
    start: str
    token: str
    end: str

    @property
    def text(self) -> str:
        return self.start + self.token + self.end


PLACEHOLDERS: dict[str, dict[str, Placeholder]] = {
    "omni": {
        "image": Placeholder("<|vision_bos|>", "<|IMAGE|>", "<|vision_eos|>"),
        "video": Placeholder("<|vision_bos|>", "<|VIDEO|>", "<|vision_eos|>"),
        "audio": Placeholder("<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"),
    },
    "vl": {
        "image": Placeholder("<|vision_start|>", "<|image_pad|>", "<|vision_end|>"),
        "video": Placeholder("<|vision_start|>", "<|video_pad|>", "<|vision_end|>"),
    },
}
FAMILIES: tuple[str, ...] = tuple(PLACEHOLDERS)


def family_of(model: str) -> ModelFamily:
    """The family a model name or path belongs to: Flex-VL-* (Qwen2.5-VL) or else Omni."""
    return "vl" if "vl" in Path(model.rstrip("/")).name.lower() else "omni"


def modalities_of(family: str) -> tuple[str, ...]:
    return tuple(PLACEHOLDERS[check_family(family)])


def check_family(family: str) -> str:
    if family not in PLACEHOLDERS:
        raise ValueError(f"unknown model family {family!r}; expected one of {FAMILIES}")
    return family


def placeholder(modality: str, family: str) -> Placeholder:
    """The placeholder of one media item; ValueError for a modality the family cannot take."""
    table = PLACEHOLDERS[check_family(family)]
    known = {name for placeholders in PLACEHOLDERS.values() for name in placeholders}
    if modality not in known:
        raise ValueError(f"unknown media modality {modality!r}; expected one of {sorted(known)}")
    if modality not in table:
        raise ValueError(
            f"model family {family!r} does not support {modality} input "
            f"(Flex-VL-7B takes image and video only; use Flex-Omni-7B for audio)"
        )
    return table[modality]
