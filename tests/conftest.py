"""One local Ray per test session, shared by every test that needs it."""
from __future__ import annotations

import pytest

from bench.paths import checkout_pythonpath


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from jobs.runtime import RAY_SYSTEM_CONFIG
    from pipelines.adapter import worker_env

    if not ray.is_initialized():
        # Workers import the project (and tests' scripted engines) from the checkout.
        env = {**worker_env(), "PYTHONPATH": checkout_pythonpath()}  # the job's workers' settings (jobs/runtime.py init_ray)
        ray.init(num_cpus=4, include_dashboard=False, runtime_env={"env_vars": env}, _system_config=dict(RAY_SYSTEM_CONFIG))
    yield ray
    ray.shutdown()
