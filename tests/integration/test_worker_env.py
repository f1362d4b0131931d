"""The job's Ray workers start with the pipeline's settings (pipelines/adapter.py WORKER_ENV)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
POOL_VARIABLE = "ARROW_DEFAULT_MEMORY_POOL"

# A job's own process: an embedded Ray started as every command starts it, and the Arrow pool a
# worker of that Ray allocates from.
WORKER_POOL = """
import pyarrow as pa
import ray

from jobs.runtime import init_ray

init_ray(None, 1)
print(ray.get(ray.remote(lambda: pa.default_memory_pool().backend_name).remote()))
"""


@pytest.mark.parametrize("users_pool, workers_pool", [(None, "system"), ("jemalloc", "jemalloc")])
def test_workers_allocate_arrow_memory_from_the_c_heap_unless_the_user_chose_a_pool(users_pool, workers_pool):
    # mimalloc, the wheels' default, kept 110-230 MiB of freed buffers in each idle worker.
    env = {name: value for name, value in os.environ.items() if name not in (POOL_VARIABLE, "RAY_ADDRESS")}
    env["PYTHONPATH"] = str(ROOT)
    if users_pool:
        env[POOL_VARIABLE] = users_pool
    done = subprocess.run([sys.executable, "-c", WORKER_POOL], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == workers_pool
