"""`flexcurate evaluate`: score the judge against human labels (eval.json, eval.md).

Two forms: with `--config` and `--input`, run the ordinary pipeline on labelled rows into OUTPUT (same
stages, same outputs) and score it; with `--from RUN_DIR`, score a finished run, with no engine and no
GPU. Labels are joined on id; the `labels` config section (or `--labels`) says where they are.
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from jobs.runtime import add_run_options, config_from_args, exit_code, run_job
from pipelines.config import ConfigError, load_config


def add_evaluate_parser(subparsers: Any) -> argparse.ArgumentParser:
    evaluate = subparsers.add_parser("evaluate", help="score the judge's verdicts against human labels")
    evaluate.add_argument("--from", dest="source", default=None, metavar="RUN_DIR",
                          help="score this finished run (no engine); otherwise run --config on --input first")
    evaluate.add_argument("--config", default=None, help="YAML run config (required without --from)")
    evaluate.add_argument("--input", dest="inputs", action="append", default=None, metavar="URI",
                          help="labelled Parquet shards to run on (without --from; repeatable)")
    evaluate.add_argument("--labels", action="append", default=None, metavar="URI",
                          help="label shards joined on id (default: labels.paths, else the run's input shards)")
    evaluate.add_argument("--output", required=True,
                          help="where eval.json and eval.md go (without --from: also the run's outputs)")
    add_run_options(evaluate)
    return evaluate


def run_evaluate(args: argparse.Namespace) -> int:
    from pipelines.evaluate import evaluate_run
    from pipelines.finished_run import FinishedRun

    if args.source is None:
        if args.config is None or not args.inputs:
            raise ConfigError("evaluate: pass --config and --input to run and score, or --from RUN_DIR to score a run")
        cfg = config_from_args(args, args.config, **{"input.paths": args.inputs, "output.path": args.output,
                                                      "labels.paths": args.labels})
        result = run_job(cfg, args.address, args.num_cpus)
        code = exit_code(result)
        run = FinishedRun(args.output, require_success=False)
    else:
        run = FinishedRun(args.source, require_success=False)
        cfg = load_config(args.config, args.overrides, base=run.config.model_dump(mode="json"),
                          **{"labels.paths": args.labels})
        code = 0
    scores = evaluate_run(run, cfg, args.output)
    print(json.dumps({k: scores[k] for k in ("n", *cfg.judging_format().headline_metrics)}))
    print(f"evaluation: {args.output}/eval.json, {args.output}/eval.md")
    return code
