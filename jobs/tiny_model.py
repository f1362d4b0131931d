"""Build a tiny random-weight Qwen2.5-Omni judge, fully offline, for tests and the CPU demo.

The model has the real architecture (thinker with vision and audio encoders, mrope, the Omni
placeholder tokens) at toy sizes, so vLLM runs the same code path as for Flex-Omni-7B; its verdicts
are meaningless. Built in about 5 s, about 2 MB, deterministic (fixed seed: the same bytes every
build), cached under `default_tiny_model_dir()` and reused.

    python -m jobs.tiny_model [DEST]    # builds if needed, prints the path
"""
from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

TINY_MODEL_NAME = "tiny-omni-v1"
_COMPLETE_MARKER = ".complete"
_SEED = 0
_VOCAB_SIZE = 2048  # BPE target; the embedding is padded to a multiple of 64

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|AUDIO|>",
    "<|audio_bos|>",
    "<|audio_eos|>",
    "<|IMAGE|>",
    "<|VIDEO|>",
    "<|vision_bos|>",
    "<|vision_eos|>",
)
PLAIN_ADDED_TOKENS = ("<think>", "</think>", "<answer>", "</answer>")

# Qwen2's pre-tokenizer split (transformers' Qwen2Tokenizer.PRETOKENIZE_REGEX).
_QWEN2_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
    r"""\s*[\r\n]+|\s+(?!\S)|\s+"""
)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<|vision_bos|><|IMAGE|><|vision_eos|>' }}"
    "{% elif part['type'] == 'video' %}{{ '<|vision_bos|><|VIDEO|><|vision_eos|>' }}"
    "{% elif part['type'] == 'audio' %}{{ '<|audio_bos|><|AUDIO|><|audio_eos|>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def default_tiny_model_dir() -> Path:
    """$FLEXCURATE_CACHE (or ~/.cache/flexcurate) / tiny-omni-v1."""
    root = os.environ.get("FLEXCURATE_CACHE") or Path.home() / ".cache" / "flexcurate"
    return Path(root) / TINY_MODEL_NAME


def build_tiny_omni(dest: Path | None = None, *, force: bool = False) -> Path:
    """Build (or reuse) the tiny Omni model directory and return its path.

    The directory is written next to `dest` under a temporary name and renamed into place only
    once complete, so a crashed or concurrent build never leaves a half-written model behind.
    """
    dest = Path(dest) if dest is not None else default_tiny_model_dir()
    if (dest / _COMPLETE_MARKER).is_file() and not force:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        _write_model(staging)
        (staging / _COMPLETE_MARKER).write_text("ok\n")
        if dest.exists():
            if (dest / _COMPLETE_MARKER).is_file() and not force:
                return dest  # another builder finished first
            shutil.rmtree(dest)
        try:
            os.rename(staging, dest)
        except OSError:
            if not (dest / _COMPLETE_MARKER).is_file():  # lost a race to a complete build: fine
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def _training_text() -> Iterator[str]:
    from stages.formats.prompts import load_prompts

    prompts = load_prompts()

    def strings(node: Any) -> Iterator[str]:
        if isinstance(node, str):
            yield node
        elif isinstance(node, dict):
            for value in node.values():
                yield from strings(value)
        elif isinstance(node, list):
            for value in node:
                yield from strings(value)

    yield from strings(prompts)
    rng = random.Random(_SEED)
    words = (
        "the a an image video audio clip speech question answer assistant first second better worse "
        "accurate helpful relevant detailed because score reasoning compare both response shows "
        "describes correct incorrect missing object color person sound voice quality natural"
    ).split()
    for i in range(400):
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(5, 20)))
        yield (
            f"<think>{sentence.capitalize()}. Assistant {i % 2 + 1} gets {rng.randint(1, 10)}.</think>"
            f"<answer>{rng.randint(1, 10)}</answer><answer>{rng.randint(1, 10)}</answer>\n"
            f"[Question]\n{sentence}?\n\n[Assistant 1's Answer]\n{sentence}.\n"
        )
    yield " ".join(str(n) for n in range(1000))


def _build_tokenizer() -> Any:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_text(), trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in PLAIN_ADDED_TOKENS])
    return tok


def _write_tokenizer(out: Path) -> dict[str, int]:
    tok = _build_tokenizer()
    tok.save(str(out / "tokenizer.json"))
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS + PLAIN_ADDED_TOKENS}
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "model_max_length": 32768,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "errors": "replace",
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "extra_special_tokens": {
            "image_token": "<|IMAGE|>",
            "audio_token": "<|AUDIO|>",
            "video_token": "<|VIDEO|>",
            "vision_bos_token": "<|vision_bos|>",
            "vision_eos_token": "<|vision_eos|>",
            "audio_bos_token": "<|audio_bos|>",
            "audio_eos_token": "<|audio_eos|>",
        },
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    ids["vocab_size"] = tok.get_vocab_size(with_added_tokens=True)
    ids["user"] = tok.token_to_id("user") if tok.token_to_id("user") is not None else ids["<|im_start|>"]
    return ids


def _write_weights(out: Path, ids: dict[str, int]) -> None:
    import torch
    from transformers import GenerationConfig, Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration

    vocab = -(-ids["vocab_size"] // 64) * 64
    text = dict(
        vocab_size=vocab,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [8, 12, 12]},
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
    )
    vision = dict(
        depth=2,
        hidden_size=64,
        intermediate_size=128,
        num_heads=2,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        out_hidden_size=128,
        fullatt_block_indexes=[1],
    )
    audio = dict(
        num_mel_bins=128,
        encoder_layers=1,
        encoder_attention_heads=2,
        encoder_ffn_dim=128,
        d_model=64,
        output_dim=128,
        n_window=100,
        max_source_positions=1500,
    )
    thinker = dict(
        text_config=text,
        vision_config=vision,
        audio_config=audio,
        audio_token_index=ids["<|AUDIO|>"],
        image_token_index=ids["<|IMAGE|>"],
        video_token_index=ids["<|VIDEO|>"],
        audio_start_token_id=ids["<|audio_bos|>"],
        audio_end_token_id=ids["<|audio_eos|>"],
        vision_start_token_id=ids["<|vision_bos|>"],
        vision_end_token_id=ids["<|vision_eos|>"],
        user_token_id=ids["user"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    config = Qwen2_5OmniConfig(thinker_config=thinker, enable_audio_output=False)
    config.architectures = ["Qwen2_5OmniForConditionalGeneration"]
    torch.manual_seed(_SEED)
    model = Qwen2_5OmniForConditionalGeneration(config).to(torch.bfloat16).eval()
    config.dtype = torch.bfloat16
    model.save_pretrained(out)
    GenerationConfig(
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]], pad_token_id=ids["<|endoftext|>"]
    ).save_pretrained(out)
    torch.save({}, out / "spk_dict.pt")  # the full model's from_pretrained asks for it


def _write_processor(out: Path) -> None:
    from transformers import (
        AutoTokenizer,
        Qwen2_5OmniProcessor,
        Qwen2VLImageProcessorPil,
        Qwen2VLVideoProcessor,
        WhisperFeatureExtractor,
    )

    # Small pixel caps keep the vision encoder's token count (and the CPU test) small.
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": 4 * 28 * 28, "longest_edge": 64 * 28 * 28}, patch_size=14, merge_size=2
    )
    video_processor = Qwen2VLVideoProcessor(
        size={"shortest_edge": 4 * 28 * 28, "longest_edge": 16 * 28 * 28},
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
        cap_pixels_per_frame=True,  # qwen-vl-utils' per-frame pixel cap (transformers' future default)
    )
    processor = Qwen2_5OmniProcessor(
        image_processor=image_processor,
        video_processor=video_processor,
        feature_extractor=WhisperFeatureExtractor(feature_size=128),
        tokenizer=AutoTokenizer.from_pretrained(out),
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)


def _write_model(out: Path) -> None:
    # transformers' Omni processor insists on a video processor, which needs torchvision: beside
    # CPU torch only through the compat shim, which must run before transformers imports it.
    from stages.engines.torchvision_compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    from transformers.utils import logging as hf_logging

    verbosity, bars_on = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    # The unused talker's default config warns about token ids outside the tiny vocabulary.
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        ids = _write_tokenizer(out)
        _write_weights(out, ids)
        _write_processor(out)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars_on:
            hf_logging.enable_progress_bar()
    out.chmod(0o755)  # mkdtemp made it private; the model is a shared cache entry
    for path in out.iterdir():
        path.chmod(0o644)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    print(build_tiny_omni(Path(args[0]) if args else None))


if __name__ == "__main__":
    main()
