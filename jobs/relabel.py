"""`flexcurate relabel`: a finished run's outputs under new `filter` settings, from its stored verdicts.

No engine, no GPU, no model download and no Ray: the label and write stages run in this process over
the run's committed batches. Settings outside `filter` and `output` decided the verdicts; changing
them is refused (exit 2) naming the field.
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from jobs.runtime import exit_code, resolve_model
from pipelines.config import load_config


def add_relabel_parser(subparsers: Any) -> argparse.ArgumentParser:
    relabel = subparsers.add_parser(
        "relabel", help="rebuild kept/, dropped/, preferences/ and report.json of a finished run under new "
        "filter settings, without an engine")
    relabel.add_argument("--from", dest="source", required=True, metavar="RUN_DIR",
                         help="a finished run's output directory or URI (it must hold _SUCCESS)")
    relabel.add_argument("--output", required=True, help="directory or URI for the relabelled run")
    relabel.add_argument("--config", default=None,
                         help="YAML whose filter (and output) settings apply; its other settings must match the run's")
    relabel.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="a filter or output setting, e.g. --set filter.min_margin=3 (repeatable)")
    relabel.add_argument("--overwrite", action="store_true", default=None,
                         help="replace a finished run in the output directory")
    return relabel


def run_relabel(args: argparse.Namespace) -> int:
    from pipelines.finished_run import FinishedRun
    from pipelines.relabel import relabel_run

    source = FinishedRun(args.source)
    base = source.config.model_dump(mode="json")
    cfg = load_config(args.config, args.overrides, base=base,
                      **{"output.path": args.output, "output.overwrite": args.overwrite})
    resolve_model(cfg, build=False)  # the demo config's alias names the model the run used
    result = relabel_run(source, cfg)
    print(json.dumps({k: result.report[k] for k in ("status", "input_rows", "counts", "relabeled_from")}))
    print(f"outputs: {result.output}")
    return exit_code(result)
