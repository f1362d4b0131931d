"""`flexcurate demo`: the real pipeline on generated data, an embedded local Ray and the CPU engine.

It generates a small mixed dataset (text-only, image, audio, video and image+audio rows, plus a few
deliberately broken ones), builds the tiny random-weight Qwen2.5-Omni model once, runs
`jobs/configs/demo.yaml` over it and prints what happened to every row.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from jobs import demo_media as media
from jobs.runtime import CONFIG_DIR, config_from_args, exit_code, run_job
from stages.rows import MEDIA_TYPE

DEMO_CONFIG = CONFIG_DIR / "demo.yaml"
QUESTIONS = [
    ("What is shown here, and what colour dominates?", "A smooth colour gradient, mostly blue.", "A cat."),
    ("Describe the sound.", "A steady pure tone at a single pitch.", "Loud rock music with drums."),
    ("Summarise the clip in one sentence.", "Coloured frames change gradually over a few seconds.", "Nothing happens."),
    ("What is 17 times 3?", "17 x 3 = 51.", "17 x 3 = 41."),
    ("Name a prime number greater than 10.", "11 is prime.", "12 is prime."),
    ("Translate 'good morning' into French.", "Bonjour.", "Bonsoir."),
]
KINDS = ("text", "image", "audio", "video", "image+audio", "text")
BROKEN = {
    "broken-image": {"image": media.truncated_png()},
    "not-audio": {"audio": b"this is not a sound file"},
    "identical-answers": {"response_b": None},  # filled with response_a below
    "empty-question": {"question": "   "},
}


def _media_for(kind: str, index: int) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if "image" in kind:
        values["image"] = {"bytes": media.png(96 + 8 * (index % 4), 64, seed=index), "path": None}
    if "audio" in kind:
        values["audio"] = {"bytes": media.wav(1.0 + index % 3, 22_050), "path": None}
    if kind == "video":
        values["video"] = {"bytes": media.mp4(2.0, 4, 64, 48), "path": None}
    return values


def demo_rows(count: int) -> list[dict[str, Any]]:
    rows = []
    for index in range(count):
        question, good, bad = QUESTIONS[index % len(QUESTIONS)]
        kind = KINDS[index % len(KINDS)]
        first_good = index % 2 == 0
        row: dict[str, Any] = {
            "id": f"demo-{index:04d}",
            "question": question,
            "response_a": good if first_good else bad,
            "response_b": bad if first_good else good,
            "image": None,
            "audio": None,
            "video": None,
            "kind": kind,
            "label": "a" if first_good else "b",  # the human preference `flexcurate evaluate` scores against
            **_media_for(kind, index),
        }
        rows.append(row)
    for offset, (name, change) in enumerate(BROKEN.items()):
        row = rows[(offset * 5 + 1) % len(rows)]
        row.update({k: ({"bytes": v, "path": None} if k in ("image", "audio") else v) for k, v in change.items()})
        if name == "identical-answers":
            row["response_b"], row["label"] = row["response_a"], "tie"
        row["kind"] = name
    return rows


SCHEMA = pa.schema(
    [("id", pa.string()), ("question", pa.string()), ("response_a", pa.string()), ("response_b", pa.string()),
     ("image", MEDIA_TYPE), ("audio", MEDIA_TYPE), ("video", MEDIA_TYPE), ("kind", pa.string()), ("label", pa.string())]
)


def write_demo_shards(directory: Path, rows: int, shards: int = 2) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    data = demo_rows(rows)
    paths = []
    for shard in range(shards):
        path = directory / f"candidates-{shard:05d}.parquet"
        pq.write_table(pa.Table.from_pylist(data[shard::shards], schema=SCHEMA), path)
        paths.append(path)
    return paths


def summary_table(report: dict[str, Any]) -> str:
    entries: list[tuple[str, int]] = list(report["counts"].items())
    entries += [(f"  dropped: {reason}", n) for reason, n in sorted(report["drop_reasons"].items())]
    entries += [(f"  error: {reason}", n) for reason, n in sorted(report["error_reasons"].items())]
    entries.append(("input rows", report["input_rows"]))
    width = max(len(label) for label, _ in entries) + 2
    rule = "-" * (width + 6)
    lines = [f"{'outcome':<{width}}{'rows':>6}", rule]
    lines += [f"{label:<{width}}{count:>6}" for label, count in entries[:-1]]
    lines += [rule, f"{entries[-1][0]:<{width}}{entries[-1][1]:>6}", ""]
    lines.append(f"{'stage':<12}{'rows':>6}{'busy s':>10}{'errors':>8}")
    for name, values in report["timings"]["stages"].items():
        lines.append(f"{name:<12}{values['rows']:>6}{values['busy_seconds']:>10.2f}{values['errors']:>8}")
    lines.append(f"wall time {report['timings']['wall_seconds']:.1f} s, judge requests {report['judge']['requests']}")
    return "\n".join(lines)


def run_demo(args: argparse.Namespace) -> int:
    """`flexcurate demo`: generate the input beside `args.output`, run the demo config, summarise."""
    output = Path(args.output)
    input_dir = output.parent / f"{output.name}-input"
    write_demo_shards(input_dir, args.rows)
    cfg = config_from_args(args, DEMO_CONFIG, **{"input.paths": [str(input_dir)], "output.path": str(output.resolve())})
    if args.overwrite is None:
        cfg.output.overwrite = True  # the demo's own directory: re-running it replaces it
    print("building (or reusing) the tiny random-weight Flex-Omni-architecture model ...", flush=True)
    result = run_job(cfg, args.address, args.num_cpus, args.verbose)
    print()
    print(summary_table(result.report))
    print()
    print(f"outputs in {output}/: kept/ preferences/ dropped/ errors/ judgments/ report.json _SUCCESS")
    print(f"score the judge against the rows' `label` column, per kind of row:  flexcurate evaluate --from {output} "
          f"--output {output}-eval --set labels.group_column=kind")
    print(f"new thresholds without the engine:  flexcurate relabel --from {output} --output {output}-relabel "
          "--set filter.min_margin=3")
    print(
        "NOTE: the demo judge is a tiny model with RANDOM weights, so its verdicts are noise; only the\n"
        "pipeline around it is real. On GPUs, judge with the real model:\n"
        "  flexcurate run --config jobs/configs/preference.yaml --input YOUR_SHARDS --output OUT\n"
        "  (or this config with --set judge.engine.model=jongwooko/Flex-Omni-7B --set judge.engine.device=cuda)"
    )
    return exit_code(result)
