"""Where this checkout is, for the processes and Ray workers the benchmarks and the tests start. Kept
apart from `bench.common` so that modules Ray workers import (`bench.ray_data_llm`) need nothing heavier."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

ROOT = Path(__file__).resolve().parents[1]


def checkout_pythonpath(env: Mapping[str, str] = os.environ) -> str:
    """`env`'s PYTHONPATH with this checkout first."""
    return os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
