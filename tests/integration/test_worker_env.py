"""The job's Ray workers start with the pipeline's settings (pipelines/adapter.py WORKER_ENV), and an
embedded Ray keeps them between tasks (jobs/runtime.py RAY_SYSTEM_CONFIG)."""
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


# A node whose CPUs are all taken (here by an actor, in a run by the judge and the decode tasks):
# Ray's default kills a task worker idle for a second, and the next task starts a new process.
IDLE_WORKER = """
import os
import time

import ray

from jobs.runtime import init_ray

init_ray(None, 1)
busy = ray.remote(num_cpus=1)(type("Busy", (), {"ping": lambda self: os.getpid()})).remote()
ray.get(busy.ping.remote())
worker = ray.get(ray.remote(num_cpus=0)(lambda: os.getpid()).remote())
time.sleep(4)
try:
    os.kill(worker, 0)
    print("kept")
except ProcessLookupError:
    print("killed")
"""


def test_an_idle_task_worker_is_kept_for_the_next_task_while_the_cpus_are_taken():
    env = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "-c", IDLE_WORKER], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "kept"
