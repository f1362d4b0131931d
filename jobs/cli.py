"""The `flexcurate` command (also `python -m jobs`): run, demo, config, submit, evaluate, relabel.

Exit codes (jobs/runtime.py): 0 the run succeeded; 1 the run finished but failed a check (error
budget, accounting); 2 the command, the config, the inputs, the output directory or the cluster
were rejected before anything was started; 3 the run started and stopped before finishing (rerun
the same command to resume). Every failure ends in one line on stderr saying what to do.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import NoReturn, Sequence

import yaml

from jobs.evaluate import add_evaluate_parser, run_evaluate
from jobs.relabel import add_relabel_parser, run_relabel
from jobs.runtime import (
    INTERRUPTIONS,
    REJECTIONS,
    ExitCode,
    add_run_options,
    config_from_args,
    exit_code,
    run_job,
)
from jobs.submit import add_submit_parser, run_submit
from pipelines.config import ConfigError, RunConfig, load_config
from pipelines.errors import first_line


class _Parser(argparse.ArgumentParser):
    """argparse, with a wrong command or option reported in one line (exit 2) instead of a usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(ExitCode.REJECTED, f"{self.prog}: {message}; see '{self.prog} --help'\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="flexcurate", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="curate Parquet shards with a Flex-Judge model")
    run.add_argument("--config", required=True, help="YAML run config (see jobs/configs/)")
    run.add_argument("--input", dest="inputs", action="append", default=None, metavar="URI",
                     help="Parquet file, directory or glob; local, s3://, gs:// (repeatable)")
    run.add_argument("--output", default=None, help="output directory or URI for this run")
    add_run_options(run)
    nightly = run.add_argument_group("incremental (nightly) runs")
    nightly.add_argument("--incremental", action="store_true", default=None,
                         help="process only shards not processed before; write OUTPUT/run_date=YYYY-MM-DD")
    nightly.add_argument("--state", default=None, metavar="URI", help="JSON state of processed shards (required with --incremental)")
    nightly.add_argument("--since", default=None, metavar="YYYY-MM-DD", help="backfill: only shards modified on or after this date")
    nightly.add_argument("--reprocess", action="store_true", default=None, help="process every matched shard again")
    nightly.add_argument("--run-date", default=None, metavar="YYYY-MM-DD", help="the night's partition (default: today, UTC)")

    demo = commands.add_parser("demo", help="the whole pipeline on generated data with the CPU engine")
    demo.add_argument("--output", default="out/demo", help="output directory (default: out/demo)")
    demo.add_argument("--rows", type=int, default=24, help="candidate rows to generate")
    add_run_options(demo)

    show = commands.add_parser("config", help="print a config with every default filled in")
    show.add_argument("--config", default=None, help="YAML run config (default: the built-in defaults)")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    show.add_argument("--schema", action="store_true", help="print the JSON schema with field descriptions")
    add_submit_parser(commands)
    add_evaluate_parser(commands)
    add_relabel_parser(commands)
    return parser


def _run(cfg: RunConfig, args: argparse.Namespace) -> int:
    result = run_job(cfg, args.address, args.num_cpus, args.verbose)
    report = result.report
    print(json.dumps({k: report[k] for k in ("status", "input_rows", "counts", "error_fraction") if k in report}))
    print(f"outputs: {result.output}")
    return exit_code(result)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        if args.command == "config":
            cfg = load_config(args.config, args.overrides)
            payload = RunConfig.model_json_schema() if args.schema else cfg.model_dump(mode="json")
            print(json.dumps(payload, indent=2) if args.schema else yaml.safe_dump(payload, sort_keys=False))
            return ExitCode.OK
        if args.command == "submit":
            return run_submit(args)
        if args.command == "evaluate":
            return run_evaluate(args)
        if args.command == "relabel":
            return run_relabel(args)
        if args.command == "demo":
            from jobs.demo import run_demo

            return run_demo(args)
        cfg = config_from_args(
            args,
            args.config,
            **{
                "input.paths": args.inputs,
                "output.path": args.output,
                "incremental.enabled": args.incremental,
                "incremental.state": args.state,
                "incremental.since": args.since,
                "incremental.reprocess": args.reprocess,
                "incremental.run_date": args.run_date,
            },
        )
        if not cfg.output.path:
            raise ConfigError("output.path: no output given (pass --output)")
        return _run(cfg, args)
    except REJECTIONS as exc:
        print(f"flexcurate: {exc}", file=sys.stderr)
        return ExitCode.REJECTED
    except INTERRUPTIONS as exc:
        print(f"flexcurate: {exc}", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except Exception as exc:  # not a failure we know: the traceback for a bug report, then one line
        logging.getLogger("flexcurate").exception("unexpected error")
        print(f"flexcurate: stopped by an unexpected error ({first_line(exc)}; traceback above); "
              "rerun the same command to resume, and report it if it persists", file=sys.stderr)
        return ExitCode.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
