"""The base of every stage's, format's and engine's config section.

Each part of the pipeline owns the pydantic model of its own settings, next to its code;
`pipelines/config.py` composes them into the run config users write as YAML.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigSection(BaseModel):
    """Unknown fields are errors (a typo never passes silently); assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
