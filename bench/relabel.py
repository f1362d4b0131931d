"""5. Relabel throughput: a finished run of N judged rows, relabelled under new filter settings.

The run is generated in this process with the pipeline's own label and write stages (the real output
layout: batches of `output.rows_per_file` rows, manifests, judgments/ with both answer orders), its
verdicts seeded random; then `pipelines.relabel.relabel_run` rebuilds it with a stricter margin and
the order-agreement rule. Reported: relabel rows/s and seconds for the N rows (no engine, no Ray).
"""
from __future__ import annotations

import random
import shutil
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipelines.config import RunConfig, load_config
from pipelines.finished_run import FinishedRun
from pipelines.relabel import relabel_run
from pipelines.report import InputSummary, build_report, merge_batch_stats, write_report
from pipelines.run_dir import open_run_directory
from stages.formats.base import JudgingFormat
from stages.formats.verdicts import verdict_text
from stages.judge import JUDGE_COLUMNS
from stages.label import LabelStage
from stages.normalize import canonical_types
from stages.write import WriteStage, complete_outputs

RELABEL_TO = ["filter.min_margin=3", "filter.require_order_agreement=true"]


def judged_batch(start: int, count: int, fmt: JudgingFormat, rng: random.Random) -> pa.Table:
    """`count` rows as they leave the judge stage: canonical columns, result columns, both orders' verdicts."""
    rows = []
    for index in range(start, start + count):
        verdicts = [fmt.read(verdict_text(rng.randint(1, 10), rng.randint(1, 10)), order=order, sample=0,
                             attempt=0, seed=index, prompt_tokens=300, output_tokens=rng.randint(50, 600),
                             finish_reason="stop") for order in fmt.orders(swap_order=True)]
        row: dict[str, Any] = {column: None for column in canonical_types(fmt)}
        row.update(id=f"row-{index:08d}", question=f"Question {index}: which answer is better?",
                   response_a=f"The first answer to question {index}.", response_b=f"The second answer to {index}.")
        row.update(fmt.aggregate(verdicts).columns())
        row.update(judge_model="bench/generated", judgments=[v.to_dict() for v in verdicts])
        rows.append(row)
    schema = pa.schema([*canonical_types(fmt).items(), *fmt.result_columns.items(), *JUDGE_COLUMNS.items()])
    return pa.Table.from_pylist(rows, schema=schema)


def generate_run(output: Path, rows: int) -> RunConfig:
    cfg = load_config(overrides=["max_error_fraction=1", "filter.require_order_agreement=false"],
                      **{"output.path": str(output), "output.overwrite": True})
    fmt = cfg.judging_format()
    run_dir = open_run_directory(cfg, ["bench:generated"])
    label, write = LabelStage(fmt, cfg.filter), WriteStage(cfg.output.path, fmt)
    rng = random.Random(0)
    for start in range(0, rows, cfg.output.rows_per_file):
        write.process(label.process(judged_batch(start, min(cfg.output.rows_per_file, rows - start), fmt, rng)))
    totals: dict[str, Any] = {}
    merge_batch_stats(totals, run_dir.batch_stats())
    complete_outputs(run_dir.filesystem, run_dir.root, fmt)
    now = time.time()
    report = build_report(cfg=cfg, inputs=InputSummary(rows, 1, {}), totals=totals, stage_metrics={}, started=now,
                          finished=now)
    write_report(run_dir.filesystem, f"{run_dir.root}/report.json", report)
    run_dir.mark_success()
    return cfg


def run(args: Any, work: Path) -> dict[str, Any]:
    rows = args.relabel_rows
    source, target = work / "run", work / "relabelled"
    started = time.perf_counter()
    cfg = generate_run(source, rows)
    generated_s = time.perf_counter() - started
    finished = FinishedRun(str(source))
    relabelled_cfg = load_config(overrides=RELABEL_TO, base=cfg.model_dump(mode="json"),
                                 **{"output.path": str(target)})
    started = time.perf_counter()
    result = relabel_run(finished, relabelled_cfg)
    seconds = time.perf_counter() - started
    if not result.succeeded:
        raise RuntimeError(f"relabel failed: {result.report['status']}")
    shutil.rmtree(source, ignore_errors=True)
    shutil.rmtree(target, ignore_errors=True)
    return {
        "rows": rows,
        "relabel_s": round(seconds, 2),
        "relabel_rows_per_s": rows / seconds,
        "generate_s": round(generated_s, 2),
        "counts_before": finished.report["counts"],
        "counts_after": result.report["counts"],
        "rows_per_file": cfg.output.rows_per_file,
        "relabel_to": RELABEL_TO,
    }
