"""This checkout, for the processes and Ray workers the tests start: they import the project (and the
tests' scripted engines) from here, whatever else is installed."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

ROOT = Path(__file__).resolve().parents[1]


def checkout_pythonpath(env: Mapping[str, str] = os.environ) -> str:
    """`env`'s PYTHONPATH with this checkout first."""
    return os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
