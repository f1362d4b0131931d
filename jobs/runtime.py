"""What every command that runs the pipeline shares: its options, exit codes, rejections, and the
run sequence (resolve the model, start or join Ray, check the judge pool fits, run).

Exit codes: 0 the run succeeded; 1 it finished but failed a check (error budget, accounting);
2 the command, the config, the inputs, the output directory or the cluster were rejected before
anything started; 3 the run started and stopped before finishing (rerun the same command to resume).
"""
from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from enum import IntEnum
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from pipelines.config import ConfigError, RunConfig, load_config
from pipelines.errors import RunInterrupted, first_line
from pipelines.evaluate import LabelError
from pipelines.finished_run import NotAFinishedRun
from pipelines.run_dir import OutputExists, OutputUnusable
from pipelines.shards import ShardError

if TYPE_CHECKING:  # pipelines.curate imports Ray: only the commands that run pay for it
    from pipelines.report import RunResult

TINY_MODEL = "flexcurate/tiny-omni"  # resolved to the locally built random-weight model
CONFIG_DIR = Path(__file__).parent / "configs"
log = logging.getLogger("flexcurate")


class ExitCode(IntEnum):
    OK = 0
    RUN_FAILED = 1  # finished, but failed a check; report.json says which
    REJECTED = 2  # command, config, inputs, output or cluster refused before anything started
    INTERRUPTED = 3  # started, stopped before finishing; committed batches are kept: rerun to resume
    DETACHED = 130  # `submit --wait` stopped following a job that keeps running (Ctrl-C)


class ClusterUnavailable(RuntimeError):
    """The Ray cluster (or its Jobs API) cannot be reached, or refuses our credentials."""


# Errors that mean "rejected before anything started": a one-line message and exit code 2.
REJECTIONS: tuple[type[Exception], ...] = (
    ConfigError, ShardError, OutputExists, OutputUnusable, ClusterUnavailable, NotAFinishedRun, LabelError
)
# Errors that mean "started, then stopped": a one-line message and exit code 3.
INTERRUPTIONS: tuple[type[Exception], ...] = (RunInterrupted,)
TOKEN_HINT = (
    "set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH, a file holding it) to the cluster's "
    "token, as for `ray job submit`"
)


def token_configured() -> bool:
    """Whether this process would present a Ray auth token (RAY_AUTH_MODE=token and a token to send)."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return False
    return bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                or (Path.home() / ".ray" / "auth_token").is_file())


def cluster_unavailable(exc: BaseException, address: str | None, reached: bool = False) -> ClusterUnavailable:
    """A one-line account of a failure to reach or join a cluster, saying what to do."""
    from ray.exceptions import AuthenticationError

    where = f"the Ray cluster at {address}" if address else "a local Ray"
    if isinstance(exc, AuthenticationError):
        return ClusterUnavailable(f"{where} requires an authentication token and none (or a wrong one) was given: {TOKEN_HINT}")
    if address and reached and not token_configured():
        # The GCS took the connection and refused the driver: Ray reports a token it lacks only in its logs.
        return ClusterUnavailable(
            f"{where} is up but refused this driver ({first_line(exc)}); if it requires an authentication token: "
            f"{TOKEN_HINT}"
        )
    if not address:
        return ClusterUnavailable(f"cannot start {where} ({first_line(exc)}); check free memory and disk under /tmp")
    return ClusterUnavailable(
        f"cannot reach {where} ({first_line(exc)}); check the address (--address, RAY_ADDRESS) and that the cluster is up"
    )


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options of every command that runs the pipeline here (run, demo)."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field by its dotted name, e.g. --set judge.replicas=4 (repeatable)")
    parser.add_argument("--overwrite", action="store_true", default=None,
                        help="replace a finished run in the output directory")
    parser.add_argument("--skip-bad-shards", action="store_true", default=None,
                        help="list and skip unreadable or mis-shaped shards instead of failing")
    parser.add_argument("--address", default=None,
                        help="Ray cluster address (default: RAY_ADDRESS, else an embedded local Ray)")
    parser.add_argument("--num-cpus", type=int, default=None,
                        help="logical CPUs for an embedded local Ray (default: max(4, cores))")
    parser.add_argument("--verbose", action="store_true",
                        help="also show Ray Data's per-operator progress and the Ray workers' logs (judge "
                        "engine included); by default only flexcurate's own progress is shown")


def config_from_args(args: argparse.Namespace, config_path: str | Path, **values: Any) -> RunConfig:
    """The run config from a YAML file, the run options' overrides and `values` (dotted keys)."""
    return load_config(
        config_path,
        args.overrides,
        **{"output.overwrite": args.overwrite, "input.skip_bad_shards": args.skip_bad_shards, **values},
    )


def resolve_model(cfg: RunConfig, *, build: bool = True) -> None:
    """Replace the tiny-model alias by its local path, building it once if needed (not for a dry
    run: the simulated engine loads no model; `build=False`: a command that runs no engine only
    names it, as a finished run's config does)."""
    if cfg.judge.engine.model != TINY_MODEL or cfg.judge.engine.backend == "simulated":
        return
    from jobs.tiny_model import build_tiny_omni, default_tiny_model_dir

    cfg.judge.engine.model = str(build_tiny_omni() if build else default_tiny_model_dir())


# Ray's raylet kills a task worker idle for a second while the node runs more worker processes than
# it has CPUs, and starts a fresh one (Python and the stages' imports, 1.3 s of CPU) for the next
# task. Counting the judge's and the run's own actors, a node is over that whenever its decode tasks
# wait on the judge: a 64,000-row scale run started 115 worker processes, and kept for a minute
# its idle workers ran it 1.39x faster (bench/README.md, "Idle workers"). The embedded Ray takes it
# as system config; cluster.yaml and the KubeRay manifests set it for `ray start` (RAY_<name>).
# The GCS keeps the last 100,000 task attempts' events by default, about 3 KiB each, for the
# dashboard and the state API, which flexcurate does not read: a run schedules about 0.3 task
# attempts a row, so a night over 320k rows would hold some 300 MiB there. Capped at 10,000 the
# GCS held 86 MiB against 116 MiB at 64,000 rows and is flat from there (bench/README.md,
# "Task events in the GCS"); Ray drops finished tasks' events first.
# Read-only: ray.init adds the session's spill directory to the dict it is given, which a second
# init in the same process would then inherit. Pass ray.init a copy.
RAY_SYSTEM_CONFIG = MappingProxyType({"idle_worker_killing_time_threshold_ms": 60_000,
                                      "task_events_max_num_task_in_gcs": 10_000})


def embedded_ray_cpus() -> int:
    """Logical CPUs of an embedded local Ray: at least 4, so on a 2-core machine the decode tasks
    and the judge actor do not starve each other of scheduling slots (CPU-ENGINE.md); the OS
    still shares the real cores."""
    return max(4, os.cpu_count() or 1)


def quiet_ray_data(verbose: bool) -> None:
    """Ray Data's per-operator progress (a multi-line dump every few seconds on a non-interactive
    stdout, bars on a terminal) and its INFO lines off, unless `verbose`; its log file
    (ray-data.log in the session's logs) still gets everything."""
    import ray.data  # configures its loggers on import

    if verbose:
        return
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled"
    for handler in logging.getLogger("ray.data").handlers:
        if type(handler).__name__ == "PlainRayHandler":  # its console handler, not its file handlers
            handler.setLevel(logging.WARNING)


def init_ray(address: str | None, num_cpus: int | None, verbose: bool = False) -> None:
    """Join the cluster at `address` (or RAY_ADDRESS), else start an embedded local Ray. The
    workers' output (engine start-up logs, library warnings) reaches this process only with
    `verbose`; it is always in Ray's log files (the dashboard's logs on a cluster). The job's
    workers start with `worker_env()` (pipelines/adapter.py)."""
    import ray

    from pipelines.adapter import worker_env

    quiet_ray_data(verbose)
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    quiet = {} if verbose else {"logging_level": logging.WARNING}
    logical = num_cpus or embedded_ray_cpus()
    workers = {"env_vars": worker_env()}
    reached = False
    try:
        if address:
            _check_reachable(address)
            reached = True
            ray.init(address=address, log_to_driver=verbose, runtime_env=workers, **quiet)
            return
        ray.init(num_cpus=logical, include_dashboard=False, log_to_driver=verbose, runtime_env=workers,
                 _system_config=dict(RAY_SYSTEM_CONFIG), **quiet)
    except Exception as exc:
        raise cluster_unavailable(exc, address, reached) from exc
    log.info("started an embedded local Ray with %d logical CPUs", logical)


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Fail at once when a GCS address (HOST:PORT) takes no connection: ray.init would retry for minutes."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # ray:// (Ray Client), "auto" and the like: ray.init resolves them
    with socket.create_connection((host, int(port)), timeout=timeout_s):
        pass


def run_job(cfg: RunConfig, address: str | None, num_cpus: int | None, verbose: bool = False) -> "RunResult":
    """The run sequence every entrypoint uses; raises one of REJECTIONS before anything starts.

    On a terminal (and not `verbose`, where Ray Data draws its own bars) progress is one bar on
    stdout; otherwise a log line every 30 s."""
    from jobs.placement import check_current_cluster
    from pipelines.curate import run_curation

    resolve_model(cfg)
    init_ray(address, num_cpus, verbose)
    check_current_cluster(cfg)
    return run_curation(cfg, progress_bar=sys.stdout if sys.stdout.isatty() and not verbose else None)


def exit_code(result: "RunResult") -> ExitCode:
    return ExitCode.OK if result.succeeded else ExitCode.RUN_FAILED
