"""Where this checkout is, for the processes and Ray workers the benchmarks start. Kept apart from
`bench.common` so that modules Ray workers import (`bench.ray_data_llm`) need nothing heavier."""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def checkout_pythonpath() -> str:
    """PYTHONPATH that puts this checkout first, for processes the benchmarks start."""
    return os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
