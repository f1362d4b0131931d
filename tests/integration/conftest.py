"""Fixtures shared by the integration tests (real engine on the tiny model, CPU)."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The tiny random-weight Omni model, built once into the default cache ($FLEXCURATE_CACHE)."""
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    from jobs.tiny_model import build_tiny_omni

    return build_tiny_omni()
