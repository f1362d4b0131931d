"""The `flexcurate` command (also `python -m jobs`): run, demo, config.

Exit codes: 0 the run succeeded; 1 the run finished but failed a check (error budget, accounting);
2 the config, the inputs or the output directory were rejected before anything was started.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

from jobs.submit import add_submit_parser, run_submit
from pipelines.config import ConfigError, RunConfig, load_config

EXIT_OK, EXIT_RUN_FAILED, EXIT_REJECTED = 0, 1, 2
CONFIG_DIR = Path(__file__).parent / "configs"
log = logging.getLogger("flexcurate")


def _add_run_options(parser: argparse.ArgumentParser) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flexcurate", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="curate Parquet shards with a Flex-Judge model")
    run.add_argument("--config", required=True, help="YAML run config (see jobs/configs/)")
    run.add_argument("--input", dest="inputs", action="append", default=None, metavar="URI",
                     help="Parquet file, directory or glob; local, s3://, gs:// (repeatable)")
    run.add_argument("--output", default=None, help="output directory or URI for this run")
    _add_run_options(run)
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
    _add_run_options(demo)

    show = commands.add_parser("config", help="print a config with every default filled in")
    show.add_argument("--config", default=None, help="YAML run config (default: the built-in defaults)")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    show.add_argument("--schema", action="store_true", help="print the JSON schema with field descriptions")
    add_submit_parser(commands)
    return parser


def _load(args: argparse.Namespace, config_path: str | Path, **extra: Any) -> RunConfig:
    return load_config(
        config_path,
        args.overrides,
        **{"output.overwrite": args.overwrite, "input.skip_bad_shards": args.skip_bad_shards, **extra},
    )


def _execute(cfg: RunConfig, args: argparse.Namespace) -> int:
    from jobs.placement import check_current_cluster
    from jobs.runtime import init_ray, resolve_model
    from pipelines.curate import run_curation

    resolve_model(cfg)
    init_ray(args.address, args.num_cpus)
    check_current_cluster(cfg)
    result = run_curation(cfg)
    report = result.report
    print(json.dumps({k: report[k] for k in ("status", "input_rows", "counts", "error_fraction") if k in report}))
    print(f"outputs: {result.output}")
    return EXIT_OK if result.succeeded else EXIT_RUN_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        if args.command == "config":
            cfg = load_config(args.config, args.overrides)
            payload = RunConfig.model_json_schema() if args.schema else cfg.model_dump(mode="json")
            print(json.dumps(payload, indent=2) if args.schema else yaml.safe_dump(payload, sort_keys=False))
            return EXIT_OK
        if args.command == "submit":
            return run_submit(args)
        if args.command == "demo":
            from jobs.demo import run_demo

            return run_demo(args)
        cfg = _load(
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
        return _execute(cfg, args)
    except ConfigError as exc:
        print(f"flexcurate: {exc}", file=sys.stderr)
        return EXIT_REJECTED
    except Exception as exc:
        from jobs.runtime import REJECTIONS

        if isinstance(exc, REJECTIONS):
            print(f"flexcurate: {exc}", file=sys.stderr)
            return EXIT_REJECTED
        raise


if __name__ == "__main__":
    sys.exit(main())
