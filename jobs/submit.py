"""`flexcurate submit`: run `flexcurate run` as a Ray job on a cluster, through the Ray Jobs API.

`ray job submit` semantics: the working directory (the repo, by default) is uploaded as the job's
runtime env, the entrypoint `python -m jobs run ...` gets the same options as a local run, and
`--wait` streams the job's logs. Options after `--` are passed to `run` unchanged
(e.g. `-- --incremental --state s3://bucket/state`).

Exit codes: without --wait, 0 once the job is accepted. With --wait, the job's own exit code, so a
cluster run exits like a local one (0 ok, 1 run failed, 2 rejected, 3 interrupted); 1 when the job
failed or was stopped without one. 2 when the config is rejected here, or the cluster cannot be
reached, refuses our token or refuses the submission.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from jobs.placement import SKIP_ENV
from jobs.runtime import ExitCode, cluster_unavailable
from pipelines.config import ConfigError, load_config
from pipelines.errors import first_line

REPO_ROOT = Path(__file__).resolve().parent.parent
# gitignore-style, relative to the working dir: what never needs to travel with a job.
EXCLUDES = [".git", ".venv", "out", "**/__pycache__", ".pytest_cache", ".hypothesis", ".cache", "build", "*.egg-info"]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def add_submit_parser(subparsers: Any) -> argparse.ArgumentParser:
    submit = subparsers.add_parser(
        "submit",
        help="run `flexcurate run` as a job on a Ray cluster (Ray Jobs API)",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    submit.add_argument("--address", default=None,
                        help="the cluster's dashboard (Jobs API) address, e.g. http://HEAD:8265 "
                        "(default: RAY_API_SERVER_ADDRESS, else RAY_ADDRESS). A cluster with token auth "
                        "also needs RAY_AUTH_MODE=token and RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH, as for `ray job submit`")
    submit.add_argument("--config", required=True,
                        help="YAML run config; a path inside --working-dir, validated here before submitting")
    submit.add_argument("--input", dest="inputs", action="append", default=None, metavar="URI",
                        help="Parquet file, directory or glob (repeatable); local paths are made absolute "
                        "and must be visible to the cluster's nodes")
    submit.add_argument("--output", default=None, help="output directory or URI for this run")
    submit.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, forwarded to the job (repeatable)")
    submit.add_argument("--overwrite", action="store_true", help="replace a finished run in the output directory")
    submit.add_argument("--skip-bad-shards", action="store_true", help="list and skip unreadable shards")
    submit.add_argument("--wait", action="store_true",
                        help="stream the job's logs and exit with the job's exit code")
    submit.add_argument("--working-dir", default=None,
                        help="directory uploaded as the job's working dir (default: this checkout, "
                        "else the current directory)")
    submit.add_argument("--python", default="python",
                        help="interpreter of the entrypoint on the cluster (default: python)")
    submit.add_argument("--submission-id", default=None, help="job id to use (default: generated)")
    submit.add_argument("--runtime-env-json", type=json.loads, default=None, metavar="JSON",
                        help="further runtime env fields (pip, env_vars, ...), merged over the defaults")
    submit.add_argument("--entrypoint-num-cpus", type=float, default=None, help="CPUs reserved for the driver")
    submit.add_argument("--entrypoint-num-gpus", type=float, default=None, help="GPUs reserved for the driver")
    submit.add_argument("--entrypoint-memory", type=int, default=None, help="memory (bytes) reserved for the driver")
    submit.add_argument("--entrypoint-resources", type=json.loads, default=None, metavar="JSON",
                        help='custom resources reserved for the driver, e.g. \'{"head": 1}\'')
    submit.add_argument("--skip-placement-check", action="store_true",
                        help="do not check the judge pool against the cluster's resources before the run")
    submit.add_argument("run_args", nargs="*", metavar="-- RUN_ARGS",
                        help="further `flexcurate run` options, after `--`")
    return submit


def default_working_dir() -> str:
    """A checkout (source or editable install) uploads itself; an installed package, the cwd."""
    return str(REPO_ROOT if (REPO_ROOT / "pyproject.toml").is_file() else Path.cwd())


def _is_uri(text: str) -> bool:
    return "://" in text


def _cluster_path(text: str) -> str:
    return text if _is_uri(text) else os.path.abspath(text)


def build_entrypoint(args: argparse.Namespace, config: str) -> str:
    argv = [args.python, "-m", "jobs", "run", "--config", config]
    for uri in args.inputs or []:
        argv += ["--input", _cluster_path(uri)]
    if args.output:
        argv += ["--output", _cluster_path(args.output)]
    for override in args.overrides:
        argv += ["--set", override]
    if args.overwrite:
        argv.append("--overwrite")
    if args.skip_bad_shards:
        argv.append("--skip-bad-shards")
    return shlex.join(argv + list(args.run_args))


def build_runtime_env(args: argparse.Namespace) -> dict[str, Any]:
    env_vars = {"PYTHONUNBUFFERED": "1"}
    if args.skip_placement_check:
        env_vars[SKIP_ENV] = "1"
    runtime_env: dict[str, Any] = {"working_dir": args.working_dir, "excludes": list(EXCLUDES), "env_vars": env_vars}
    extra = dict(args.runtime_env_json or {})
    runtime_env["env_vars"] = {**env_vars, **extra.pop("env_vars", {})}
    runtime_env.update(extra)
    return runtime_env


def _config_in_working_dir(config: str, working_dir: str) -> str:
    """The config's path relative to the working dir: that is where the job finds it."""
    path, root = Path(config).resolve(), Path(working_dir).resolve()
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        raise ConfigError(
            f"--config {config} is outside --working-dir {working_dir}, so the job would not find it; "
            "move it into the working dir or pass a --working-dir that holds it"
        ) from None


def job_exit_code(status: str, driver_exit_code: int | None) -> int:
    if status == "SUCCEEDED":
        return ExitCode.OK
    if driver_exit_code is None or driver_exit_code == 0:
        return ExitCode.RUN_FAILED
    return driver_exit_code if driver_exit_code > 0 else 128 - driver_exit_code  # -N: killed by signal N


async def _stream_logs(client: Any, job_id: str) -> None:
    async for chunk in client.tail_job_logs(job_id):
        sys.stdout.write(chunk)
        sys.stdout.flush()


def _wait(client: Any, job_id: str, poll_s: float = 1.0) -> int:
    try:
        asyncio.run(_stream_logs(client, job_id))
    except KeyboardInterrupt:
        print(f"flexcurate: stopped following; the job keeps running (ray job stop {job_id})", file=sys.stderr)
        return ExitCode.DETACHED
    except Exception as exc:  # a dropped log stream must not lose the job's result
        print(f"flexcurate: log stream ended early ({exc}); waiting for the job to finish", file=sys.stderr)
    while True:
        try:
            info = client.get_job_info(job_id)
        except Exception as exc:  # the cluster went away: the run's outcome is unknown, not a success
            print(f"flexcurate: lost the cluster while waiting for job {job_id}: {exc}", file=sys.stderr)
            return ExitCode.RUN_FAILED
        status = str(getattr(info.status, "value", info.status))
        if status in TERMINAL:
            break
        time.sleep(poll_s)
    code = job_exit_code(status, info.driver_exit_code)
    reason = failure_reason(info.message, info.error_type) if status != "SUCCEEDED" else ""
    print(f"flexcurate: job {job_id} {status} (exit code {code}){f': {reason}' if reason else ''}",
          file=sys.stderr, flush=True)
    return code


def failure_reason(message: str | None, error_type: str | None) -> str:
    """What to say of a job that did not succeed. When its entrypoint ran, Ray appends the driver's
    last logs to the message, and they were streamed already: the first line says it. Otherwise (the
    runtime env could not be set up, the supervisor could not start) nothing was streamed and Ray's
    cause is on the lines after the first, so all of it is the reason."""
    from ray.job_submission import JobErrorType

    lines = (message or "").strip().splitlines()
    if error_type == JobErrorType.JOB_ENTRYPOINT_COMMAND_ERROR:
        return lines[0] if lines else ""
    return "\n".join(lines)


def run_submit(args: argparse.Namespace) -> int:
    args.working_dir = args.working_dir or default_working_dir()
    try:
        # Validate here, with the job's own values, so a bad config fails before the cluster sees it.
        cfg = load_config(
            args.config,
            args.overrides,
            **{
                "input.paths": args.inputs,
                "output.path": args.output,
                "output.overwrite": args.overwrite or None,
                "input.skip_bad_shards": args.skip_bad_shards or None,
            },
        )
        if not cfg.output.path:
            raise ConfigError("output.path: no output given (pass --output)")
        entrypoint = build_entrypoint(args, _config_in_working_dir(args.config, args.working_dir))
    except ConfigError as exc:
        print(f"flexcurate: {exc}", file=sys.stderr)
        return ExitCode.REJECTED

    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        client = JobSubmissionClient(args.address)
        job_id = client.submit_job(
            entrypoint=entrypoint,
            runtime_env=build_runtime_env(args),
            submission_id=args.submission_id,
            metadata={"flexcurate_config": args.config, "flexcurate_output": _cluster_path(cfg.output.path)},
            entrypoint_num_cpus=args.entrypoint_num_cpus,
            entrypoint_num_gpus=args.entrypoint_num_gpus,
            entrypoint_memory=args.entrypoint_memory,
            entrypoint_resources=args.entrypoint_resources,
        )
    except (AuthenticationError, ConnectionError, OSError) as exc:  # unreachable, or refused credentials
        print(f"flexcurate: {cluster_unavailable(exc, args.address or 'RAY_ADDRESS')}", file=sys.stderr)
        return ExitCode.REJECTED
    except (RuntimeError, ValueError) as exc:
        print(f"flexcurate: the cluster did not accept the job ({first_line(exc)})", file=sys.stderr)
        return ExitCode.REJECTED
    print(job_id, flush=True)
    print(f"flexcurate: submitted {entrypoint}", file=sys.stderr, flush=True)
    if not args.wait:
        address = f" --address {args.address}" if args.address else ""
        print(f"flexcurate: follow it with: ray job logs --follow{address} {job_id}", file=sys.stderr)
        return ExitCode.OK
    return _wait(client, job_id)
