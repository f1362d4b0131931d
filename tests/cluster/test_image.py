"""The container image the KubeRay manifests name is the one the Dockerfile builds: the Dockerfile,
`make image`, the manifests and pyproject.toml agree on the image tag, the working dir, the Python
version and the Ray version. (Building it needs Docker and a registry pull; this checks what a
build would use.)"""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml
from packaging.specifiers import SpecifierSet

from tests.cluster.helpers import REPO, pinned_ray_version

DOCKERFILE = (REPO / "Dockerfile").read_text()
MANIFESTS = ("rayjob.yaml", "raycronjob.yaml")
VENV_PYTHON_TAG = f"py{sys.version_info.major}{sys.version_info.minor}"


def project_version() -> str:
    match = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)
    assert match
    return match.group(1)


def dockerfile_arg(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE, re.M)
    assert match, f"Dockerfile has no ARG {name} with a default"
    return match.group(1)


def containers(name: str) -> list[dict]:
    doc = yaml.safe_load((REPO / "jobs" / "manifests" / name).read_text())
    spec = doc["spec"]["jobTemplate"] if doc["kind"] == "RayCronJob" else doc["spec"]
    cluster = spec["rayClusterSpec"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [c for group in groups for c in group["template"]["spec"]["containers"]]


def test_the_base_image_is_rays_gpu_image_of_the_pinned_ray_and_the_venvs_python():
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-\$\{PYTHON_TAG\}-gpu$", DOCKERFILE, re.M)
    assert dockerfile_arg("RAY_VERSION") == pinned_ray_version()
    assert dockerfile_arg("PYTHON_TAG") == VENV_PYTHON_TAG
    requires = re.search(r'^requires-python = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in SpecifierSet(requires)


@pytest.mark.parametrize("name", MANIFESTS)
def test_every_manifest_container_runs_this_image_in_its_working_dir(name):
    workdir = re.findall(r"^WORKDIR (\S+)$", DOCKERFILE, re.M)[-1]
    for container in containers(name):
        assert container["image"] == f"REGISTRY/flexcurate:{project_version()}-gpu"
        assert container["workingDir"] == workdir
    assert yaml.safe_load((REPO / "jobs" / "manifests" / name).read_text())


def test_the_image_holds_the_repo_installed_with_the_gpu_extra():
    assert re.search(r"^COPY (--chown=\S+ )?\. \.$", DOCKERFILE, re.M)
    assert "pip install --no-cache-dir --no-deps '.[gpu]'" in DOCKERFILE
    gpu_extra = re.search(r"^gpu = \[(.*?)\]", (REPO / "pyproject.toml").read_text(), re.M | re.S).group(1)
    assert '"vllm==' in gpu_extra
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", ".git", "out"} <= set(ignored)


def test_make_image_builds_the_tag_the_manifests_name():
    shown = subprocess.run(["make", "-n", "image", "REGISTRY=REGISTRY", f"PYTHON={sys.executable}"],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    (command,) = [line for line in shown.stdout.splitlines() if " build " in line]
    assert f"-t REGISTRY/flexcurate:{project_version()}-gpu" in command
    assert f"--build-arg RAY_VERSION={pinned_ray_version()}" in command
    assert f"--build-arg PYTHON_TAG={VENV_PYTHON_TAG}" in command
