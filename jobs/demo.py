"""`flexcurate demo`: the real pipeline on generated data, an embedded local Ray and the CPU engine.

It generates a small dataset for the run's judging mode (pairwise by default: text-only, image,
audio, video and image+audio rows plus a few deliberately broken ones; `--set mode=single|ranking|
choice|mos` generates rows of that mode), builds the tiny random-weight Qwen2.5-Omni model once,
runs `jobs/configs/demo.yaml` over it and prints what happened to every row.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from jobs import demo_media as media
from jobs.runtime import CONFIG_DIR, config_from_args, exit_code, run_job
from stages.rows import MEDIA_TYPE

DEMO_CONFIG = CONFIG_DIR / "demo.yaml"
MEDIA_COLUMNS = ("image", "audio", "video", "left_image", "right_image", "source_image", "left_video", "right_video")
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


def single_rows(count: int) -> list[dict[str, Any]]:
    """One answer per row (mode single), half good and half bad; `label` a person's 1-5 score."""
    return [
        {"id": row["id"], "question": row["question"], "response": row["response_a"], "image": row["image"],
         "audio": row["audio"], "video": row["video"], "kind": row["kind"], "label": 5.0 if row["label"] == "a" else 1.0}
        for row in demo_rows(count)
        if row["kind"] != "identical-answers"
    ]


RANKING_EXTRA = ("It is hard to say.", "Something else entirely.")


def ranking_rows(count: int) -> list[dict[str, Any]]:
    """Three or four answers per row (mode ranking), the good one first or last; `label` a person's
    ranks (lower is better)."""
    rows = []
    for index in range(count):
        question, good, bad = QUESTIONS[index % len(QUESTIONS)]
        kind = KINDS[index % len(KINDS)]
        answers = [good, bad, *RANKING_EXTRA[: 1 + index % 2]]
        ranks = list(range(len(answers)))
        if index % 2:
            answers, ranks = answers[::-1], ranks[::-1]
        rows.append({"id": f"demo-{index:04d}", "question": question, "responses": answers, "image": None,
                     "audio": None, "video": None, "kind": kind, "label": ranks, **_media_for(kind, index)})
    rows[min(1, count - 1)]["image"] = {"bytes": media.truncated_png(), "path": None}
    rows[min(1, count - 1)]["kind"] = "broken-image"
    return rows


CHOICE_KINDS = ("image", "video", "edit", "image")


def choice_rows(count: int) -> list[dict[str, Any]]:
    """Two generated images, two generated videos, or two edits of one source image, answering one
    prompt (mode choice); `label` a GenAI-Bench vote."""
    rows = []
    for index in range(count):
        kind = CHOICE_KINDS[index % len(CHOICE_KINDS)]
        row: dict[str, Any] = {"id": f"demo-{index:04d}", "question": f"A smooth colour gradient, number {index}.",
                               **dict.fromkeys(("source_prompt", "target_prompt", "instruct_prompt")),
                               **dict.fromkeys(("left_image", "right_image", "source_image", "left_video", "right_video")),
                               "kind": kind, "label": ("leftvote", "rightvote", "tievote", "bothbad_vote")[index % 4]}
        if kind == "video":
            row["left_video"] = {"bytes": media.mp4(2.0, 4, 64, 48), "path": None}
            row["right_video"] = {"bytes": media.mp4(1.0, 4, 48, 48), "path": None}
        else:
            row["left_image"] = {"bytes": media.png(96, 64, seed=index), "path": None}
            row["right_image"] = {"bytes": media.png(64, 96, seed=index + 1000), "path": None}
        if kind == "edit":
            row.update(question=None, source_image={"bytes": media.png(80, 80, seed=index + 2000), "path": None},
                       source_prompt="a colour gradient", target_prompt="a darker colour gradient",
                       instruct_prompt="make it darker")
        rows.append(row)
    rows[min(1, count - 1)].update(left_image={"bytes": media.truncated_png(), "path": None}, left_video=None,
                                   right_image={"bytes": media.png(64, 64), "path": None}, right_video=None,
                                   kind="broken-image")
    return rows


def mos_rows(count: int) -> list[dict[str, Any]]:
    """One speech-like clip per row (mode mos); `label` a person's mean opinion score."""
    rows = [
        {"id": f"demo-{index:04d}", "audio": {"bytes": media.wav(1.0 + index % 3, 16_000), "path": None},
         "kind": "audio", "label": 1.0 + (index * 7 % 40) / 10}
        for index in range(count)
    ]
    rows[min(1, count - 1)].update(audio={"bytes": b"this is not a sound file", "path": None}, kind="not-audio")
    return rows


# Each judging mode's GPU config under jobs/configs, and a threshold to try with `relabel`.
GPU_CONFIGS = {"pairwise": "preference.yaml", "single": "filter.yaml", "ranking": "ranking.yaml",
               "choice": "choice.yaml", "mos": "mos.yaml"}
RELABEL_EXAMPLE = {"min_margin": 3, "min_score": 4, "min_mos": 3.5}

# Each judging mode's demo rows and their columns' types (the rest inferred).
DEMO_ROWS = {"pairwise": demo_rows, "single": single_rows, "ranking": ranking_rows, "choice": choice_rows,
             "mos": mos_rows}


def demo_table(rows: list[dict[str, Any]], mode: str = "pairwise") -> pa.Table:
    """Demo rows of `mode` as a table: media columns in `datasets`' struct layout, the rest inferred."""
    inferred = pa.Table.from_pylist(rows).schema
    schema = SCHEMA if mode == "pairwise" else pa.schema(
        [(name, MEDIA_TYPE if name in MEDIA_COLUMNS else inferred.field(name).type) for name in rows[0]]
    )
    return pa.Table.from_pylist(rows, schema=schema)


def write_demo_shards(directory: Path, rows: int, shards: int = 2, mode: str = "pairwise") -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    table = demo_table(DEMO_ROWS[mode](rows), mode)
    paths = []
    for shard in range(shards):
        path = directory / f"candidates-{shard:05d}.parquet"
        pq.write_table(table.take(list(range(shard, table.num_rows, shards))), path)
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
    cfg = config_from_args(args, DEMO_CONFIG, **{"input.paths": [str(input_dir)], "output.path": str(output.resolve())})
    shutil.rmtree(input_dir, ignore_errors=True)  # the demo's own input: a rerun (perhaps of another mode) replaces it
    write_demo_shards(input_dir, args.rows, mode=cfg.mode)
    if args.overwrite is None:
        cfg.output.overwrite = True  # the demo's own directory: re-running it replaces it
    print("building (or reusing) the tiny random-weight Flex-Omni-architecture model ...", flush=True)
    result = run_job(cfg, args.address, args.num_cpus, args.verbose)
    print()
    print(summary_table(result.report))
    print()
    outputs = ["kept/", "preferences/", "dropped/", "errors/", "judgments/", "report.json", "report.html", "_SUCCESS"]
    if cfg.judging_format().preference_schema() is None:
        outputs.remove("preferences/")
    print(f"outputs in {output}/: {' '.join(outputs)}")
    print(f"score the judge against the rows' `label` column, per kind of row:  flexcurate evaluate --from {output} "
          f"--output {output}-eval --set labels.group_column=kind")
    rule = cfg.judging_format().threshold_rule
    change = f"filter.{rule.field}={RELABEL_EXAMPLE[rule.field]}" if rule else "filter.require_order_agreement=true"
    print(f"new rules without the engine:  flexcurate relabel --from {output} --output {output}-relabel --set {change}")
    print(
        "NOTE: the demo judge is a tiny model with RANDOM weights, so its verdicts are noise; only the\n"
        "pipeline around it is real. On GPUs, judge with the real model:\n"
        f"  flexcurate run --config jobs/configs/{GPU_CONFIGS[cfg.mode]} --input YOUR_SHARDS --output OUT\n"
        "  (or this config with --set judge.engine.model=jongwooko/Flex-Omni-7B --set judge.engine.device=cuda)"
    )
    return exit_code(result)
