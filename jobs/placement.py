"""Check that the judge pool can be placed on the cluster before the pipeline starts.

Ray does not fail an actor that no node can ever host: it waits. A pool asking for GPUs the cluster
does not have would hang the run silently, so the pool's demand (from `judge.*`) is checked against
what the cluster has now plus, when an autoscaler publishes its node types (autoscaler v2: the
default for `ray up` and KubeRay since Ray 2.50), what it can scale up to. A cluster whose autoscaler
publishes nothing (a static cluster, autoscaler v1) is judged on the nodes it has now; set
FLEXCURATE_SKIP_PLACEMENT_CHECK=1 to skip the check there.
"""
from __future__ import annotations

import logging
import os
from typing import Mapping, Sequence

from pipelines.config import ConfigError, RunConfig

SKIP_ENV = "FLEXCURATE_SKIP_PLACEMENT_CHECK"
# The read, decode, label and write tasks need CPUs beside the pool; a pool holding every CPU starves
# the stages that feed it, which hangs the run just like missing GPUs.
MIN_FREE_CPUS = 1.0
_EPS = 1e-9
log = logging.getLogger("flexcurate")


def replica_demand(cfg: RunConfig) -> dict[str, float]:
    """Resources one judge actor requests: the judge stage's own, as the pipeline will ask Ray."""
    from pipelines.curate import build_stages  # imports Ray: not needed by `submit`, which reads SKIP_ENV
    from stages.judge import JudgeStage

    judge = next(stage for stage in build_stages(cfg) if isinstance(stage, JudgeStage))
    return judge.resources()


def _fits(node: Mapping[str, float], demand: Mapping[str, float]) -> bool:
    return all(node.get(name, 0.0) + _EPS >= amount for name, amount in demand.items())


def _fmt(amount: float) -> str:
    return f"{amount:g}"


def check_cluster_fits(
    cfg: RunConfig,
    resources: Mapping[str, float],
    nodes: Sequence[Mapping[str, float]] | None = None,
) -> None:
    """Raise ConfigError when the judge pool cannot fit `resources` (the cluster's totals).

    `nodes`, when given, are the per-node totals (current nodes and autoscaler node types): one
    replica must fit on a single node, because an actor and its tensor-parallel GPUs cannot span
    nodes.
    """
    judge = cfg.judge
    per_replica = replica_demand(cfg)
    problems: list[str] = []
    if "GPU" in per_replica:
        need, have = per_replica["GPU"] * judge.replicas, float(resources.get("GPU", 0.0))
        if need > have + _EPS:
            problems.append(
                f"judge.replicas={judge.replicas} x judge.tensor_parallel_size={judge.tensor_parallel_size} "
                f"needs {_fmt(need)} GPUs, the cluster has {_fmt(have)}"
            )
    need_cpu, have_cpu = per_replica["CPU"] * judge.replicas, float(resources.get("CPU", 0.0))
    if need_cpu + MIN_FREE_CPUS > have_cpu + _EPS:
        problems.append(
            f"judge.replicas={judge.replicas} x judge.cpus_per_replica={_fmt(judge.cpus_per_replica)} "
            f"needs {_fmt(need_cpu)} CPUs plus {_fmt(MIN_FREE_CPUS)} for the decode and write tasks, "
            f"the cluster has {_fmt(have_cpu)}"
        )
    for name, amount in per_replica.items():
        if name in ("CPU", "GPU"):
            continue
        need, have = amount * judge.replicas, float(resources.get(name, 0.0))
        if need > have + _EPS:
            problems.append(
                f"judge.replicas={judge.replicas} x judge.resources.{name}={_fmt(amount)} needs {_fmt(need)} "
                f"{name}, the cluster has {_fmt(have)}"
            )
    if not problems and nodes is not None and not any(_fits(node, per_replica) for node in nodes):
        wanted = ", ".join(f"{_fmt(v)} {k}" for k, v in per_replica.items())
        problems.append(f"one judge replica needs {wanted} on a single node, and no node has that")
    if problems:
        where = "GPU nodes" if "GPU" in per_replica else "CPUs"
        raise ConfigError(
            "the judge pool cannot fit the cluster: " + "; ".join(problems)
            + f". Lower judge.replicas / judge.tensor_parallel_size / judge.cpus_per_replica, or add {where}"
            + f" (counted: current nodes plus autoscaler maximums; {SKIP_ENV}=1 skips this check)"
        )


def cluster_capacity() -> tuple[dict[str, float], list[dict[str, float]]]:
    """(totals, per-node totals) of the connected cluster, autoscaler maximums included when published."""
    import ray

    totals = {name: float(value) for name, value in ray.cluster_resources().items()}
    nodes = [
        {name: float(value) for name, value in node["Resources"].items()}
        for node in ray.nodes()
        if node.get("Alive")
    ]
    try:  # private API, the one Ray Data and Ray Train use for the same question
        from ray._private.state import state

        config = state.get_cluster_config()
        maximums = state.get_max_resources_from_cluster_config() or {}
    except Exception as exc:  # an older or stripped-down Ray: current resources only
        log.debug("autoscaler limits unavailable: %s", exc)
        config, maximums = None, {}
    for name, value in maximums.items():
        totals[name] = max(totals.get(name, 0.0), float(value))
    if config is not None:
        nodes += [
            {name: float(value) for name, value in group.resources.items()}
            for group in config.node_group_configs
            if group.max_count != 0
        ]
    return totals, nodes


def check_current_cluster(cfg: RunConfig) -> None:
    """check_cluster_fits against the connected Ray cluster (call after ray.init)."""
    if os.environ.get(SKIP_ENV, "").strip().lower() in ("1", "true", "yes"):
        log.warning("%s is set: the judge pool is not checked against the cluster", SKIP_ENV)
        return
    totals, nodes = cluster_capacity()
    check_cluster_fits(cfg, totals, nodes)
    log.info(
        "judge pool fits the cluster: %d x %s (cluster: %s)",
        cfg.judge.replicas,
        replica_demand(cfg),
        {k: totals[k] for k in ("CPU", "GPU") if k in totals},
    )
