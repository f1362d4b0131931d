from __future__ import annotations

import pytest

from jobs.placement import MIN_FREE_CPUS, check_cluster_fits, replica_demand
from pipelines.config import ConfigError, load_config


def gpu_cfg(replicas: int, tp: int = 1, cpus: float = 4):
    return load_config(None, [f"judge.replicas={replicas}", f"judge.tensor_parallel_size={tp}",
                              f"judge.cpus_per_replica={cpus}", "judge.engine.device=cuda"])


def cpu_cfg(replicas: int, cpus: float = 1):
    return load_config(None, [f"judge.replicas={replicas}", f"judge.cpus_per_replica={cpus}",
                              "judge.engine.device=cpu"])


def test_demand_follows_the_config():
    assert replica_demand(gpu_cfg(8, tp=2, cpus=4)) == {"CPU": 4.0, "GPU": 2.0}
    assert replica_demand(cpu_cfg(2, cpus=3)) == {"CPU": 3.0}


def test_gpu_pool_that_fits_passes():
    check_cluster_fits(gpu_cfg(8, tp=1), {"CPU": 192.0, "GPU": 8.0})
    check_cluster_fits(gpu_cfg(4, tp=4), {"CPU": 400.0, "GPU": 16.0}, nodes=[{"CPU": 192, "GPU": 8}] * 2)


def test_too_few_gpus_names_the_fields_and_numbers():
    with pytest.raises(ConfigError) as info:
        check_cluster_fits(gpu_cfg(8, tp=2), {"CPU": 192.0, "GPU": 8.0})
    message = str(info.value)
    assert "judge.replicas=8" in message and "judge.tensor_parallel_size=2" in message
    assert "needs 16 GPUs, the cluster has 8" in message


def test_no_gpus_at_all_is_rejected():
    with pytest.raises(ConfigError, match="needs 1 GPUs, the cluster has 0"):
        check_cluster_fits(gpu_cfg(1), {"CPU": 4.0})


def test_tensor_parallel_group_must_fit_one_node():
    # 16 GPUs in total, but no node has the 16 one replica needs: Ray would wait forever.
    with pytest.raises(ConfigError, match="single node"):
        check_cluster_fits(gpu_cfg(1, tp=16), {"CPU": 384.0, "GPU": 16.0}, nodes=[{"CPU": 192, "GPU": 8}] * 2)


def test_replica_cpus_must_sit_beside_its_gpus():
    with pytest.raises(ConfigError, match="single node"):
        check_cluster_fits(gpu_cfg(1, tp=1, cpus=8), {"CPU": 64.0, "GPU": 1.0},
                           nodes=[{"CPU": 64.0}, {"CPU": 4.0, "GPU": 1.0}])


def test_cpu_pool_counts_cpus_and_leaves_room_for_decode():
    check_cluster_fits(cpu_cfg(1, cpus=1), {"CPU": 1.0 + MIN_FREE_CPUS})
    with pytest.raises(ConfigError, match="needs 4 CPUs plus 1 for the decode and write tasks, the cluster has 4"):
        check_cluster_fits(cpu_cfg(2, cpus=2), {"CPU": 4.0})


def test_cpu_engine_needs_no_gpu():
    check_cluster_fits(cpu_cfg(2, cpus=1), {"CPU": 4.0, "GPU": 0.0}, nodes=[{"CPU": 2.0}, {"CPU": 2.0}])


def test_autoscaler_maximums_count(monkeypatch):
    """cluster_capacity folds the autoscaler's published node groups into totals and nodes."""
    import types

    import ray

    from jobs import placement

    group = types.SimpleNamespace(resources={"CPU": 192, "GPU": 8}, max_count=4, name="gpu_h100")
    state = types.SimpleNamespace(
        get_cluster_config=lambda: types.SimpleNamespace(node_group_configs=[group]),
        get_max_resources_from_cluster_config=lambda: {"CPU": 768, "GPU": 32},
    )
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 32.0})
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 32.0}}])
    monkeypatch.setattr("ray._private.state.state", state)
    totals, nodes = placement.cluster_capacity()
    assert totals["GPU"] == 32 and totals["CPU"] == 768
    assert {"CPU": 192.0, "GPU": 8.0} in nodes
    check_cluster_fits(gpu_cfg(8, tp=4), totals, nodes)


def test_skip_env_skips(monkeypatch):
    from jobs import placement

    monkeypatch.setenv(placement.SKIP_ENV, "1")
    monkeypatch.setattr(placement, "cluster_capacity", lambda: pytest.fail("must not look at the cluster"))
    placement.check_current_cluster(gpu_cfg(64, tp=8))


def test_live_local_ray():
    """Against a real (embedded) Ray: a CPU demo pool fits, a GPU pool on a GPU-less cluster does not."""
    import ray

    from jobs import placement

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=3, num_gpus=0, include_dashboard=False)
    try:
        placement.check_current_cluster(cpu_cfg(1))
        with pytest.raises(ConfigError, match="GPUs"):
            placement.check_current_cluster(gpu_cfg(1))
    finally:
        if started:
            ray.shutdown()
