"""The job's Ray workers start with the pipeline's settings (pipelines/adapter.py WORKER_ENV), and an
embedded Ray keeps them between tasks and caps what its GCS holds (jobs/runtime.py RAY_SYSTEM_CONFIG)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench.paths import ROOT, checkout_pythonpath

POOL_VARIABLE = "ARROW_DEFAULT_MEMORY_POOL"
ARENA_VARIABLE = "MALLOC_ARENA_MAX"


def last_word_of_job(script: str, users_env: dict[str, str | None]) -> str:
    """Runs `script` as a job's own process with the user's environment changed as `users_env` says
    (None unsets a variable), and gives back the last word it printed."""
    env = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}
    env["PYTHONPATH"] = checkout_pythonpath(env)
    for name, value in users_env.items():
        env.pop(name, None)
        if value is not None:
            env[name] = value
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()[-1]


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
    assert last_word_of_job(WORKER_POOL, {POOL_VARIABLE: users_pool}) == workers_pool


# A worker's threads allocating at once (ctypes lets go of the GIL), then the arenas glibc made
# for them, from its own report (malloc_info).
WORKER_ARENAS = """
import ctypes
import ctypes.util
import tempfile
import threading

import ray

from jobs.runtime import init_ray


def arenas_after_threads_allocate(threads=8):
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.fopen.restype, libc.fopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    start = threading.Barrier(threads)

    def allocate():
        start.wait()
        for _ in range(200):
            libc.free(libc.malloc(4096))

    running = [threading.Thread(target=allocate) for _ in range(threads)]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join()
    with tempfile.NamedTemporaryFile(suffix=".xml") as report:
        stream = libc.fopen(report.name.encode(), b"w")
        libc.malloc_info(0, stream)
        libc.fclose(stream)
        return open(report.name).read().count("<heap nr=")


init_ray(None, 1)
print(ray.get(ray.remote(arenas_after_threads_allocate).remote()))
"""


@pytest.mark.parametrize("users_arenas, workers_arenas", [(None, 2), ("4", 4)])
def test_workers_threads_share_two_malloc_arenas_unless_the_user_chose_a_number(users_arenas, workers_arenas):
    # With glibc's default (8 per core) a kept task worker grew 300-354 MiB private, half of it in
    # its threads' arenas.
    assert int(last_word_of_job(WORKER_ARENAS, {ARENA_VARIABLE: users_arenas})) == workers_arenas


# A node whose CPUs are all taken (here by an actor, in a run by the judge and the decode tasks):
# Ray's default kills a task worker idle for a second, and the next task starts a new process.
IDLE_WORKER = """
import json
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
    assert last_word_of_job(IDLE_WORKER, {}) == "kept"


# The pipeline's settings as the embedded Ray's GCS reports them to a driver.
SYSTEM_CONFIG = """
import json

import ray

from jobs.runtime import RAY_SYSTEM_CONFIG, init_ray

init_ray(None, 1)
running = ray._private.state.state.get_system_config()
print(json.dumps({setting: running.get(setting) for setting in RAY_SYSTEM_CONFIG}, separators=(",", ":")))
"""


def test_the_embedded_ray_runs_with_the_pipelines_system_config():
    # The task-events cap keeps the GCS at 86 MiB, not 116 and growing, over a 64,000-row night. The
    # script reads the settings' names after init: ray.init adds its spill directory to the dict it
    # is given, and a second init in the process would take the first session's.
    from jobs.runtime import RAY_SYSTEM_CONFIG

    assert json.loads(last_word_of_job(SYSTEM_CONFIG, {})) == RAY_SYSTEM_CONFIG
