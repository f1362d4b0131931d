"""The KubeRay manifests and the cron line: well-formed, and running real commands of the project."""
from __future__ import annotations

import argparse
import re
import shlex

import pytest
import yaml

from jobs.cli import build_parser
from jobs.runtime import RAY_SYSTEM_CONFIG
from jobs.submit import build_entrypoint
from tests.cluster.helpers import REPO, pinned_ray_version, submit_parser

MANIFESTS = REPO / "jobs" / "manifests"
IMAGE_CHECKOUT = "/app/"  # where the manifests' image holds the repo


def load(name: str) -> dict:
    return yaml.safe_load((MANIFESTS / name).read_text())


def job_spec(name: str) -> dict:
    doc = load(name)
    return doc["spec"]["jobTemplate"] if doc["kind"] == "RayCronJob" else doc["spec"]


def entrypoint_argv(name: str) -> list[str]:
    argv = shlex.split(job_spec(name)["entrypoint"])
    assert argv[:3] == ["python", "-m", "jobs"], argv
    return argv[3:]


def parse_known_run(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    args, unknown = build_parser().parse_known_args(argv)
    assert args.command == "run"
    return args, unknown


def repo_config(path: str) -> None:
    relative = path[len(IMAGE_CHECKOUT):] if path.startswith(IMAGE_CHECKOUT) else path
    assert (REPO / relative).is_file(), f"--config {path} is not a config of this repo"


@pytest.mark.parametrize("name,kind", [("rayjob.yaml", "RayJob"), ("raycronjob.yaml", "RayCronJob")])
def test_kuberay_manifest_shape(name, kind):
    doc = load(name)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == kind
    assert doc["metadata"]["name"]
    spec = job_spec(name)
    assert spec["entrypoint"] and spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == pinned_ray_version()
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"], "the head should be a CPU node"
    gpu_groups = [
        group for group in cluster["workerGroupSpecs"]
        if int(group["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0)) > 0
    ]
    assert gpu_groups, "no GPU worker group"
    assert all(group["maxReplicas"] >= max(1, group["minReplicas"]) for group in gpu_groups)
    if kind == "RayCronJob":
        fields = doc["spec"]["schedule"].split()
        assert len(fields) == 5


@pytest.mark.parametrize("name", ["rayjob.yaml", "raycronjob.yaml"])
def test_every_ray_node_starts_with_the_embedded_rays_system_config(name):
    cluster = job_spec(name)["rayClusterSpec"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        env = {item["name"]: item["value"] for item in group["template"]["spec"]["containers"][0]["env"]}
        for setting, value in RAY_SYSTEM_CONFIG.items():
            assert env.get(f"RAY_{setting}") == str(value), (group.get("groupName", "head"), setting)


def test_cron_template_is_the_rayjob():
    assert job_spec("raycronjob.yaml") == job_spec("rayjob.yaml")


@pytest.mark.parametrize("name", ["rayjob.yaml", "raycronjob.yaml"])
def test_entrypoint_is_a_real_run(name):
    args, unknown = parse_known_run(entrypoint_argv(name))
    repo_config(args.config)
    assert args.inputs and args.output
    assert "--incremental" in unknown + entrypoint_argv(name), "nightly runs are incremental"


@pytest.mark.parametrize("name", ["rayjob.yaml", "raycronjob.yaml"])
def test_entrypoint_incremental_options_exist(name):
    args = build_parser().parse_args(entrypoint_argv(name))
    assert args.incremental and args.state


def cron_lines() -> list[str]:
    return [line for line in (MANIFESTS / "crontab.txt").read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def cron_submit_argv() -> list[str]:
    (line,) = cron_lines()
    command = line.split(None, 5)[5]
    command = re.split(r"\s(?:>>?|2>)", command)[0]  # drop the log redirection
    part = next(p for p in command.split("&&") if " submit " in p)
    argv = shlex.split(part)
    assert argv[0].endswith("/flexcurate"), argv
    return argv[1:]


def test_cron_line_is_a_real_submit():
    (line,) = cron_lines()
    assert len(line.split(None, 5)[:5]) == 5
    args = submit_parser().parse_args(cron_submit_argv())
    assert args.command == "submit" and args.wait and args.address
    repo_config(args.config)
    assert args.inputs and args.output
    assert "--incremental" in args.run_args and "--state" in args.run_args


def test_cron_submit_forwards_a_valid_run():
    args = submit_parser().parse_args(cron_submit_argv())
    argv = shlex.split(build_entrypoint(args, args.config))[3:]
    run = build_parser().parse_args(argv)
    assert run.incremental and run.state
