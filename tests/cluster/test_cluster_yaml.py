"""cluster.yaml against the cluster-config schema that ships inside the ray package."""
from __future__ import annotations

import json
from importlib import resources

import jsonschema
import pytest
import yaml

from jobs.runtime import RAY_SYSTEM_CONFIG
from tests.cluster.helpers import REPO, pinned_ray_version

CLUSTER_YAML = REPO / "cluster.yaml"


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_validates_against_rays_schema(cluster):
    schema = json.loads(resources.files("ray.autoscaler").joinpath("ray-schema.json").read_text())
    jsonschema.validate(cluster, schema)


def test_ray_accepts_it_after_filling_defaults(cluster):
    """What `ray up` does before launching: provider defaults merged in, then Ray's own checks."""
    util = pytest.importorskip("ray.autoscaler._private.util")
    util.validate_config(util.prepare_config(cluster))


def test_cpu_head_and_autoscaling_gpu_group(cluster):
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] > 0
    gpu_groups = {name: t for name, t in types.items() if t["resources"].get("GPU", 0) > 0}
    assert gpu_groups, "no GPU worker group"
    for group in gpu_groups.values():
        assert group["min_workers"] < group["max_workers"], "the GPU group should autoscale"
        assert group["resources"]["CPU"] > 0, "GPU nodes should offer their CPUs to decode tasks"
        assert group["node_config"]["InstanceType"].startswith("p5.")
    assert cluster["provider"]["type"] == "aws"


def test_setup_installs_the_gpu_extra_and_matching_ray(cluster):
    commands = " ".join(cluster["setup_commands"])
    assert "flexcurate[gpu]" in commands
    assert f"ray[default]=={pinned_ray_version()}" in commands, "cluster Ray must match the project's pinned Ray"


def test_every_ray_start_takes_the_embedded_rays_system_config(cluster):
    starts = [command for key in ("head_start_ray_commands", "worker_start_ray_commands")
              for command in cluster[key] if "ray start" in command]
    assert len(starts) == 2
    expected = {f"RAY_{setting}": str(value) for setting, value in RAY_SYSTEM_CONFIG.items()}
    for command in starts:
        # The assignments that prefix `ray start`, in the shell's `A=1 B=2 ray start` form.
        prefix = command.split("ray start")[0].split(";")[-1].split()
        assignments = dict(word.split("=", 1) for word in prefix)
        assert {name: assignments.get(name) for name in expected} == expected, command
