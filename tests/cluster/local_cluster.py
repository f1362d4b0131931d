"""A real two-node Ray cluster on loopback, started with `ray start` the way a VM cluster is.

Every port is picked free and the cluster lives under its own temp dir, so it runs beside other Ray
instances on the machine; teardown signals only the processes this cluster started (never `ray stop`,
which would stop every Ray on the machine).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tests.ports import free_port


def _node_ports() -> list[str]:
    return [
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
    ]


class LocalCluster:
    def __init__(self, head_cpus: int = 2, worker_cpus: int = 2, worker_resources: dict[str, float] | None = None):
        # Short path: Ray's unix sockets live under it and must stay under ~107 characters.
        self.root = Path(tempfile.mkdtemp(prefix="fcr-", dir="/tmp"))
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.head_cpus, self.worker_cpus = head_cpus, worker_cpus
        self.worker_resources = worker_resources or {}
        self.processes: list[subprocess.Popen[bytes]] = []  # one `ray start --block` per node; [0] the head
        self.killed: set[int] = set()  # indices of nodes killed on purpose
        bin_dir = str(Path(sys.executable).parent)
        # Token auth (Ray 2.60's `ray start` turns it on whenever a token exists on the machine), with
        # a token of this cluster's own so the test does not depend on ~/.ray/auth_token.
        self.token = secrets.token_hex(32)
        (self.root / "auth_token").write_text(self.token)
        # The job's entrypoint runs `python` from the raylet's PATH: put this venv first.
        self.env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
                    "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
                    "RAY_AUTH_TOKEN_PATH": str(self.root / "auth_token")}
        for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN"):
            self.env.pop(name, None)
        # This interpreter, not the `ray` script, whose shebang may name another venv.
        self.ray = [sys.executable, "-m", "ray.scripts.scripts"]

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, name: str, args: list[str]) -> None:
        log = open(self.root / f"{name}.log", "wb")
        self.processes.append(
            subprocess.Popen(
                [*self.ray, "start", "--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1", *args],
                stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True,
            )
        )

    def start(self, timeout_s: float = 120.0, attempts: int = 3) -> None:
        """Start the head, then the worker; on a loaded machine a node can miss Ray's own 30 s start-up
        deadline, so a failed start is torn down and tried again."""
        for attempt in range(1, attempts + 1):
            try:
                self._start_nodes(timeout_s)
                return
            except RuntimeError:
                self.stop()
                self.processes.clear()
                self.killed.clear()
                if attempt == attempts:
                    raise
                self.gcs_port, self.dashboard_port = free_port(), free_port()

    def _start_nodes(self, timeout_s: float) -> None:
        self._start("head", [
            "--head", f"--port={self.gcs_port}", f"--num-cpus={self.head_cpus}", "--num-gpus=0",
            "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={free_port()}", f"--temp-dir={self.root}",
            "--object-store-memory=300000000", *_node_ports(),
        ])
        self._wait_nodes(1, timeout_s)
        self.add_worker(timeout_s)

    def add_worker(self, timeout_s: float = 120.0, attempts: int = 3) -> None:
        """Start one more worker node (the worker's CPUs and resources) and wait until it is alive; a
        start that misses Ray's own deadline on a loaded machine is torn down and tried again."""
        before = {node["node_id"] for node in self.alive_nodes()}
        for attempt in range(1, attempts + 1):
            self._start(f"worker-{len(self.processes)}", [
                f"--address={self.gcs_address}", f"--num-cpus={self.worker_cpus}", "--num-gpus=0",
                f"--resources={json.dumps(self.worker_resources)}", "--object-store-memory=300000000",
                *_node_ports(),
            ])
            try:
                self._wait_nodes(1, timeout_s, new_besides=before)
                return
            except RuntimeError:
                self.kill_node(len(self.processes) - 1)
                if attempt == attempts:
                    raise

    def kill_node(self, index: int) -> None:
        """SIGKILL node `index` (0: the head) with every process it started, as a vanishing spot node
        dies (what `ray stop --force` does on that machine, without touching other Ray instances)."""
        from tests.processes import kill_tree

        process = self.processes[index]
        kill_tree(process.pid)
        process.wait()
        self.killed.add(index)

    def alive_nodes(self) -> list[dict[str, object]]:
        import requests

        reply = requests.get(f"{self.dashboard_url}/api/v0/nodes", timeout=10,
                             headers={"Authorization": f"Bearer {self.token}"})
        reply.raise_for_status()
        return [n for n in reply.json()["data"]["result"]["result"] if n["state"] == "ALIVE"]

    def _wait_nodes(self, count: int, timeout_s: float, new_besides: set[str] = frozenset()) -> None:
        """Wait for `count` alive nodes other than those in `new_besides`."""
        deadline, last = time.monotonic() + timeout_s, ""
        while time.monotonic() < deadline:
            for index, process in enumerate(self.processes):
                if index not in self.killed and process.poll() is not None:
                    raise RuntimeError(f"ray start exited with {process.returncode}:\n{self.logs()}")
            try:
                if len([n for n in self.alive_nodes() if n["node_id"] not in new_besides]) >= count:
                    return
            except Exception as exc:  # the dashboard is still starting
                last = str(exc)
            time.sleep(1.0)
        raise RuntimeError(f"cluster did not reach {count} node(s) in {timeout_s}s ({last}):\n{self.logs()}")

    def logs(self) -> str:
        """What each `ray start` printed, then what says why a Ray process died: Ray's record of the
        processes that exited and every non-empty .err of the session. Last, since a failing test
        shows the end of this."""
        starts = sorted(self.root.glob("*.log"))
        session = self.root / "session_latest" / "logs"
        deaths = [session / "ray_process_exit.log", *sorted(session.glob("*.err"))]
        parts = [f"== {path.name}\n{path.read_text(errors='replace')[-3000:]}" for path in starts]
        parts += [f"== {path.name}\n{text[-2000:]}" for path in deaths
                  if path.is_file() and (text := path.read_text(errors="replace").strip())]
        return "\n".join(parts)

    def _own_pids(self) -> set[int]:
        """Processes of this cluster that left the `ray start` process groups (workers, job drivers)."""
        marker, pids = str(self.root), set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            if marker in cmdline or cwd.startswith(marker):
                pids.add(int(entry.name))
        return pids

    def stop(self) -> None:
        for process in self.processes:  # --block: SIGTERM makes `ray start` stop its node's processes
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        for process in self.processes:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in self._own_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@contextmanager
def running_cluster(head_cpus: int, worker_cpus: int = 2) -> Iterator[LocalCluster]:
    """A started head and one worker carrying the `judge_node` resource the judge pool asks for
    (standing in for a GPU node); skips the test where Ray's dashboard (Jobs API) is not installed."""
    import pytest
    from ray._private.utils import get_dashboard_dependency_error

    missing = get_dashboard_dependency_error()
    if missing:
        pytest.skip(f"the local cluster needs ray[default] (dashboard): {missing}")
    local = LocalCluster(head_cpus=head_cpus, worker_cpus=worker_cpus, worker_resources={"judge_node": 1})
    try:
        local.start()
        yield local
    finally:
        local.stop()
        shutil.rmtree(local.root, ignore_errors=True)
