"""Cluster concerns the entrypoints own: connecting to Ray, resolving the model, rejections."""
from __future__ import annotations

import logging
import os

from pipelines.config import ConfigError, RunConfig
from pipelines.curate import OutputExists
from pipelines.shards import ShardError

TINY_MODEL = "flexcurate/tiny-omni"  # resolved to the locally built random-weight model
REJECTIONS: tuple[type[Exception], ...] = (ConfigError, ShardError, OutputExists)
log = logging.getLogger("flexcurate")


def resolve_model(cfg: RunConfig) -> None:
    """Replace the tiny-model alias by its local path, building it once if needed."""
    if cfg.judge.engine.model != TINY_MODEL:
        return
    from jobs.tiny_model import build_tiny_omni

    cfg.judge.engine.model = str(build_tiny_omni())


def embedded_ray_cpus() -> int:
    """Logical CPUs of an embedded local Ray: at least 4, so on a 2-core machine the decode tasks
    and the judge actor do not starve each other of scheduling slots (CPU-ENGINE.md); the OS
    still shares the real cores."""
    return max(4, os.cpu_count() or 1)


def init_ray(address: str | None, num_cpus: int | None) -> None:
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    logical = num_cpus or embedded_ray_cpus()
    ray.init(num_cpus=logical, include_dashboard=False, log_to_driver=True)
    log.info("started an embedded local Ray with %d logical CPUs", logical)
