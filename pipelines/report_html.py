"""report.html: the run report for a person, one self-contained file beside report.json.

Everything is inline (SVG charts, JPEG thumbnails and WAV clips as data: URIs, one style sheet, no
script), so the page opens offline, from a bucket or an e-mail: outcome counts, drop and error
reasons, score and margin histograms, order agreement and first-position win rate when the report
has them, keep rate against the format's threshold rule, per-stage rows/s over time, and a sample
of kept and dropped rows with their media, both answers and the judge's reasoning.
Every value that comes from the data is HTML-escaped.
"""
from __future__ import annotations

import base64
import html
import io
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from pyarrow import fs as pafs

from pipelines.config import RunConfig
from stages.formats.base import JudgingFormat
from stages.media.config import MediaConfig
from stages.rows import DEFAULT_MEDIA, DROPPED, KEPT
from stages.storage.files import write_atomically

log = logging.getLogger(__name__)
SAMPLE_ROWS = 6  # kept and dropped rows shown, each
SAMPLE_POOL = 200  # rows of each outcome they are chosen from (each media kind shown where there is one)
THUMBNAIL = 192  # longest side of an image thumbnail, pixels
AUDIO_CLIP_SECONDS = 10.0
REASONING_CHARS = 1500
COLOURS = ("#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#be185d")
OUTCOME_COLOURS = {"kept": "#16a34a", "dropped": "#d97706", "errors": "#dc2626"}
MediaReader = Callable[[Any], "bytes | None"]


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _number(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


# -- charts (inline SVG) --------------------------------------------------------------------------

def bar_chart(name: str, items: Sequence[tuple[str, float]], colours: dict[str, str] | None = None) -> str:
    """Horizontal bars, one per (label, value), longest first as given."""
    if not items:
        return '<p class="empty">none</p>'
    width, label_width, row = 640, 230, 26
    biggest = max(value for _, value in items) or 1
    total = sum(value for _, value in items) or 1
    height = row * len(items) + 8
    bars = []
    for index, (label, value) in enumerate(items):
        y = 4 + index * row
        length = (width - label_width - 120) * value / biggest
        colour = (colours or {}).get(label, COLOURS[0])
        bars.append(
            f'<text x="{label_width - 8}" y="{y + 16}" text-anchor="end">{esc(label)}</text>'
            f'<rect x="{label_width}" y="{y + 3}" width="{max(length, 1):.1f}" height="{row - 8}" fill="{colour}"/>'
            f'<text x="{label_width + length + 6:.1f}" y="{y + 16}">{_number(value)} ({100 * value / total:.1f}%)</text>'
        )
    return (f'<svg class="chart" data-chart="{esc(name)}" viewBox="0 0 {width} {height}" width="{width}" '
            f'height="{height}" role="img" aria-label="{esc(name)}">{"".join(bars)}</svg>')


def column_chart(name: str, bins: Sequence[tuple[str, float]], x_label: str) -> str:
    """Vertical bars: a histogram's bins in order."""
    if not bins:
        return '<p class="empty">no values</p>'
    width, height, left, bottom, top = 420, 220, 44, 36, 12
    plot_w, plot_h = width - left - 10, height - top - bottom
    biggest = max(value for _, value in bins) or 1
    step = plot_w / len(bins)
    parts = [f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 10}" y2="{top + plot_h}" class="axis"/>',
             f'<text x="{left - 6}" y="{top + 10}" text-anchor="end">{_number(biggest)}</text>',
             f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end">0</text>',
             f'<text x="{left + plot_w / 2}" y="{height - 4}" text-anchor="middle">{esc(x_label)}</text>']
    for index, (label, value) in enumerate(bins):
        bar_h = plot_h * value / biggest
        x = left + index * step
        parts.append(f'<rect x="{x + 2:.1f}" y="{top + plot_h - bar_h:.1f}" width="{max(step - 4, 1):.1f}" '
                     f'height="{bar_h:.1f}" fill="{COLOURS[0]}"><title>{esc(label)}: {_number(value)}</title></rect>')
        parts.append(f'<text x="{x + step / 2:.1f}" y="{top + plot_h + 14}" text-anchor="middle">{esc(label)}</text>')
    return (f'<svg class="chart" data-chart="{esc(name)}" viewBox="0 0 {width} {height}" width="{width}" '
            f'height="{height}" role="img" aria-label="{esc(name)}">{"".join(parts)}</svg>')


def line_chart(name: str, series: dict[str, Sequence[tuple[float, float]]], x_label: str, y_label: str,
               marker: tuple[float, str] | None = None, y_max: float | None = None) -> str:
    """Lines, one per named series of (x, y) points, with a legend and an optional vertical marker."""
    points = [p for values in series.values() for p in values]
    if not points:
        return '<p class="empty">no values</p>'
    width, height, left, bottom, top = 640, 260, 56, 40, 12
    plot_w, plot_h = width - left - 150, height - top - bottom
    x_lo, x_hi = min(x for x, _ in points), max(x for x, _ in points)
    if marker is not None:
        x_lo, x_hi = min(x_lo, marker[0]), max(x_hi, marker[0])
    x_hi = x_hi if x_hi > x_lo else x_lo + 1
    top_y = y_max if y_max is not None else (max(y for _, y in points) or 1)

    def at(x: float, y: float) -> str:
        return f"{left + plot_w * (x - x_lo) / (x_hi - x_lo):.1f},{top + plot_h * (1 - y / top_y):.1f}"

    parts = [f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" class="axis"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" class="axis"/>',
             f'<text x="{left - 6}" y="{top + 10}" text-anchor="end">{_number(top_y)}</text>',
             f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end">0</text>',
             f'<text x="{left}" y="{top + plot_h + 16}" text-anchor="middle">{_number(x_lo)}</text>',
             f'<text x="{left + plot_w}" y="{top + plot_h + 16}" text-anchor="middle">{_number(x_hi)}</text>',
             f'<text x="{left + plot_w / 2}" y="{height - 4}" text-anchor="middle">{esc(x_label)}</text>',
             f'<text x="12" y="{top + plot_h / 2}" transform="rotate(-90 12 {top + plot_h / 2})" '
             f'text-anchor="middle">{esc(y_label)}</text>']
    if marker is not None:
        x = left + plot_w * (marker[0] - x_lo) / (x_hi - x_lo)
        parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}" class="marker"/>'
                     f'<text x="{x + 4:.1f}" y="{top + 12}">{esc(marker[1])}</text>')
    for index, (label, values) in enumerate(series.items()):
        colour = COLOURS[index % len(COLOURS)]
        path = " ".join(at(x, y) for x, y in values)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        parts.append(f'<rect x="{left + plot_w + 16}" y="{top + index * 18}" width="12" height="12" fill="{colour}"/>'
                     f'<text x="{left + plot_w + 34}" y="{top + index * 18 + 11}">{esc(label)}</text>')
    return (f'<svg class="chart" data-chart="{esc(name)}" viewBox="0 0 {width} {height}" width="{width}" '
            f'height="{height}" role="img" aria-label="{esc(name)}">{"".join(parts)}</svg>')


# -- sample rows ----------------------------------------------------------------------------------

@dataclass
class SampleRow:
    outcome: str
    values: dict[str, Any]
    verdicts: list[dict[str, Any]] = field(default_factory=list)


def _data_uri(kind: str, payload: bytes) -> str:
    return f"data:{kind};base64,{base64.b64encode(payload).decode()}"


def _jpeg(pixels: np.ndarray) -> bytes:
    from PIL import Image

    picture = Image.fromarray(pixels)
    picture.thumbnail((THUMBNAIL, THUMBNAIL))
    out = io.BytesIO()
    picture.save(out, format="JPEG", quality=80)
    return out.getvalue()


def media_html(modality: str, data: bytes, media: MediaConfig) -> str:
    """A thumbnail (image; a strip of frames for video) or an audio player, decoded with the
    pipeline's own bounded decoders."""
    from stages.media.audio import decode_audio
    from stages.media.image import decode_image
    from stages.media.video import decode_video

    if modality == "image":
        return f'<img class="thumb" alt="image" src="{_data_uri("image/jpeg", _jpeg(decode_image(data, media)))}">'
    if modality == "video":
        frames, _ = decode_video(data, media)
        chosen = frames[np.linspace(0, len(frames) - 1, num=min(4, len(frames))).astype(int)]
        return f'<img class="thumb" alt="video frames" src="{_data_uri("image/jpeg", _jpeg(np.concatenate(list(chosen), axis=1)))}">'
    import soundfile

    samples = decode_audio(data, media)[: int(AUDIO_CLIP_SECONDS * media.audio_sample_rate)]
    clip = io.BytesIO()
    soundfile.write(clip, samples, media.audio_sample_rate, format="WAV", subtype="PCM_16")
    return f'<audio controls preload="metadata" src="{_data_uri("audio/wav", clip.getvalue())}"></audio>'


def varied(rows: list[dict[str, Any]], limit: int, media: Mapping[str, str] = DEFAULT_MEDIA) -> list[dict[str, Any]]:
    """Up to `limit` rows, one of each media kind first (image, audio, video, text only), then in order;
    `media`: the format's media columns and their modalities."""
    def kind(row: dict[str, Any]) -> str:
        return next((modality for column, modality in media.items() if row.get(column)), "text")

    firsts = {}
    for index, row in enumerate(rows):
        firsts.setdefault(kind(row), index)
    order = sorted(firsts.values()) + [i for i in range(len(rows)) if i not in firsts.values()]
    return [rows[i] for i in order[:limit]]


def sample_rows(filesystem: pafs.FileSystem, root: str, fmt: JudgingFormat, limit: int = SAMPLE_ROWS) -> list[SampleRow]:
    """The first `limit` kept and dropped rows (file order), with their raw verdicts."""
    samples: list[SampleRow] = []
    for outcome in (KEPT, DROPPED):
        dataset = pads.dataset(f"{root}/{outcome}", filesystem=filesystem, format="parquet",
                               exclude_invalid_files=True)
        if dataset.schema.get_field_index("id") < 0:
            continue
        rows = dataset.head(SAMPLE_POOL).to_pylist()
        samples += [SampleRow(outcome, row) for row in varied(rows, limit, fmt.media)]
    ids = [s.values["id"] for s in samples]
    if ids:
        judgments = pads.dataset(f"{root}/judgments", filesystem=filesystem, format="parquet",
                                 exclude_invalid_files=True)
        if judgments.schema.get_field_index("id") >= 0:
            found = judgments.to_table(filter=pc.field("id").isin(pa.array(ids, pa.string())))
            for verdict in found.to_pylist():
                for sample in samples:
                    if sample.values["id"] == verdict["id"]:
                        sample.verdicts.append(verdict)
    return samples


def _answer_html(label: str, text: Any, chosen: bool, score: Any = None) -> str:
    score_text = f" · {score:.2f}" if isinstance(score, float) else ""
    return (f'<div class="answer{" chosen" if chosen else ""}"><h4>{esc(label)}{score_text}{" (chosen)" if chosen else ""}'
            f'</h4><p>{esc(text)}</p></div>')


def _row_html(sample: SampleRow, fmt: JudgingFormat, media: MediaConfig, read_media: MediaReader) -> str:
    values = sample.values
    shown = []
    for column, modality in fmt.media.items():
        value = values.get(column)
        if not value:
            continue
        caption = "" if column == modality else f"<figcaption>{esc(column)}</figcaption>"
        try:
            data = read_media(value)
            shown.append(f"<figure>{media_html(modality, data, media)}{caption}</figure>" if data else "")
        except Exception as exc:  # a row whose media cannot be shown again still gets its card
            shown.append(f'<p class="empty">{esc(column)} not shown: {esc(type(exc).__name__)}: {esc(exc)}</p>')
    answers = []
    for column in fmt.answer_columns:
        value = values.get(column)
        if isinstance(value, list):  # one column holding every answer (ranking): each with its mean score
            scores = values.get("scores") or [None] * len(value)
            answers += [_answer_html(f"{column}[{i}]", text, text == values.get("chosen"), score)
                        for i, (text, score) in enumerate(zip(value, scores))]
        else:
            answers.append(_answer_html(column, value, values.get("chosen") == value))
    scores = ", ".join(f"{column} {values[column]:.2f}" if isinstance(values[column], float) else f"{column} {values[column]}"
                       for column in fmt.result_columns if isinstance(values.get(column), (float, str)))
    reason = f' <span class="reason">{esc(values.get("drop_reason"))}</span>' if values.get("drop_reason") else ""
    verdicts = "".join(
        f'<details{" open" if index == 0 else ""}><summary>verdict {esc(v.get("order"))} #{esc(v.get("sample"))} (attempt {esc(v.get("attempt"))}): '
        f'{esc(v.get("original_scores"))}</summary><pre>{esc((v.get("text") or "")[:REASONING_CHARS])}</pre></details>'
        for index, v in enumerate(sorted(sample.verdicts, key=lambda v: (v.get("order") or "", v.get("sample") or 0,
                                                                        v.get("attempt") or 0)))
    )
    return (f'<article class="row {esc(sample.outcome)}"><header><b>{esc(sample.outcome)}</b>{reason} '
            f'<code>{esc(values.get("id"))}</code> <span class="scores">{esc(scores)}</span></header>'
            f'<div class="media">{"".join(shown)}</div><p class="question">{esc(values.get("question"))}</p>'
            f'<div class="answers">{"".join(answers)}</div>{verdicts or "<p class=empty>no verdicts</p>"}</article>')


# -- the page -------------------------------------------------------------------------------------

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#111;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.meta{color:#555}.grid{display:flex;flex-wrap:wrap;gap:16px}.figure h3{font-size:14px;margin:4px 0}
svg.chart text{font-size:12px;fill:#222}svg.chart .axis{stroke:#888}svg.chart .marker{stroke:#111;stroke-dasharray:4 3}
.rates{display:flex;gap:24px}.rate{border:1px solid #ddd;border-radius:6px;padding:8px 16px}
.rate b{display:block;font-size:24px}.empty{color:#777}
.row{border:1px solid #ddd;border-radius:6px;padding:10px;margin:10px 0}.row.kept{border-left:5px solid #16a34a}
.row.dropped{border-left:5px solid #d97706}.reason{background:#fef3c7;padding:1px 6px;border-radius:4px}
.media{display:flex;gap:12px;align-items:center;margin:6px 0}.media figure{margin:0}figcaption{color:#555;font-size:12px}.thumb{max-height:192px;border:1px solid #ccc}
.answers{display:flex;gap:12px}.answer{flex:1;background:#f8f8f8;padding:6px 10px;border-radius:4px}
.answer.chosen{background:#ecfdf5}.answer h4{margin:0;font-size:12px;color:#555}
pre{white-space:pre-wrap;background:#f4f4f5;padding:8px;max-height:240px;overflow:auto}
table.stages td,table.stages th{padding:2px 10px;text-align:right}
"""


def histogram_bins(counts: dict[str, int], width: float | None) -> list[tuple[str, float]]:
    """A histogram's bins in order, empty bins between the first and the last filled in."""
    values = {round(float(key), 9): count for key, count in counts.items()}
    if not values:
        return []
    if not width:
        return [(f"{key:g}", values[key]) for key in sorted(values)]
    first, last = min(values), max(values)
    steps = int(round((last - first) / width))
    return [(f"{first + i * width:g}", values.get(round(first + i * width, 9), 0)) for i in range(steps + 1)]


def render(report: dict[str, Any], samples: Sequence[SampleRow], fmt: JudgingFormat, media: MediaConfig,
           read_media: MediaReader) -> str:
    counts = report.get("counts", {})
    sections = [
        f'<h1>flexcurate run: {esc(report.get("status"))}</h1>'
        f'<p class="meta">{esc(report.get("input_rows"))} input rows from {esc(report.get("input_shards"))} shards; '
        f'mode {esc(fmt.mode)}; judge {esc(report.get("judge", {}).get("model"))}; '
        f'{esc(report.get("timings", {}).get("started_at"))} to {esc(report.get("timings", {}).get("finished_at"))} '
        f'({esc(report.get("timings", {}).get("wall_seconds"))} s)</p>',
        "<h2>Outcomes</h2>" + bar_chart("outcomes", [(k, counts.get(k, 0)) for k in ("kept", "dropped", "errors")],
                                         OUTCOME_COLOURS),
        '<div class="grid"><div class="figure"><h2>Drop reasons</h2>'
        + bar_chart("drop_reasons", sorted(report.get("drop_reasons", {}).items(), key=lambda kv: -kv[1]))
        + '</div><div class="figure"><h2>Error reasons</h2>'
        + bar_chart("error_reasons", sorted(report.get("error_reasons", {}).items(), key=lambda kv: -kv[1]))
        + "</div></div>",
    ]
    rates = [(label, report.get(key)) for key, label in (("order_agreement_rate", "order agreement"),
                                                         ("first_position_win_rate", "first-position win rate"))
             if report.get(key) is not None]
    judge = report.get("judge", {})
    sections.append(
        "<h2>Judge</h2>" + '<div class="rates">'
        + "".join(f'<div class="rate" data-rate="{esc(label)}"><b>{100 * float(value):.1f}%</b>{esc(label)}</div>'
                  for label, value in rates)
        + f'<div class="rate"><b>{_number(judge.get("requests", 0))}</b>requests</div>'
        + f'<div class="rate"><b>{_number(judge.get("output_tokens", 0))}</b>output tokens</div></div>'
    )
    histograms = report.get("histograms", {})
    sections.append(
        "<h2>Scores of kept rows</h2>" + '<div class="grid">'
        + "".join(f'<div class="figure"><h3>{esc(column)}</h3>{column_chart("hist_" + column, histogram_bins(bins, fmt.histograms.get(column)), column)}</div>'
                  for column, bins in histograms.items())
        + "</div>" + ("" if histograms else '<p class="empty">no kept rows</p>')
    )
    curve = report.get("keep_rate_by_threshold")
    if curve:
        sections.append(
            f'<h2>Keep rate vs {esc(curve["rule"])}</h2>'
            + line_chart("keep_rate", {"keep rate": [tuple(p) for p in curve["points"]]}, curve["rule"],
                         "kept / (kept + dropped)", marker=(curve["current"], f'this run: {curve["current"]:g}'), y_max=1.0)
            + f'<p class="meta">From this run\'s {esc(curve["labelled_rows"])} labelled rows: a row counts as kept '
            f'at every threshold up to its {esc(curve["column"])}. Rows a later rule dropped count as kept there '
            "too, so the curve is an upper bound below this run's threshold.</p>"
        )
    timings = report.get("timings", {})
    flow = timings.get("throughput", {})
    width = flow.get("bucket_seconds", 1)
    series = {stage: [(i * width, rate) for i, rate in enumerate(rates_)] for stage, rates_ in flow.get("rows_per_second", {}).items()}
    stage_rows = "".join(
        f"<tr><th>{esc(name)}</th><td>{esc(v.get('rows'))}</td><td>{esc(v.get('busy_seconds'))}</td><td>{esc(v.get('errors'))}</td></tr>"
        for name, v in timings.get("stages", {}).items()
    )
    sections.append(
        "<h2>Throughput per stage</h2>"
        + line_chart("throughput", series, f"seconds since start ({width} s buckets)", "rows/s")
        + f'<table class="stages"><tr><th>stage</th><th>rows</th><th>busy s</th><th>errors</th></tr>{stage_rows}</table>'
    )
    cards = "".join(_row_html(sample, fmt, media, read_media) for sample in samples)
    sections.append("<h2>Sample rows</h2>" + (cards or '<p class="empty">no kept or dropped rows</p>'))
    return ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>flexcurate report: {esc(report.get("status"))}</title><style>{STYLE}</style></head>'
            f'<body>{"".join(sections)}</body></html>')


def write_report_html(filesystem: pafs.FileSystem, root: str, report: dict[str, Any], cfg: RunConfig,
                      read_media: MediaReader) -> None:
    """Render report.html beside report.json, with sample rows read from the run's outputs."""
    fmt = cfg.judging_format()
    page = render(report, sample_rows(filesystem, root, fmt), fmt, cfg.media, read_media)
    write_atomically(filesystem, f"{root}/report.html", page.encode("utf-8"))
