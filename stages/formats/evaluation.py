"""Judging the judge: a labelled row as the formats score it, and the statistics they share.

Each format turns a human label into its own terms and scores its verdicts against it
(`JudgingFormat.evaluate`); the verdicts are the pipeline's own (both orders, samples, retries),
so evaluation scores what curation does. Undefined statistics (a single class, no rows) are None,
never a crash and never a number that means nothing.
"""
from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Optional, Sequence

from stages.formats.verdicts import Verdict

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class LabelledRow:
    """One labelled row of a run: where it landed, its verdicts, and the human's label."""

    id: str
    outcome: str  # kept, dropped or errors
    error_reason: Optional[str]
    verdicts: tuple[Verdict, ...]
    label: Any  # in the format's terms (pairwise: "a" / "b" / "tie"; single: a float)
    group: Optional[str] = None


def ratio(numerator: float, denominator: float) -> Optional[float]:
    return numerator / denominator if denominator else None


def cohen_kappa(pairs: Sequence[tuple[Hashable, Hashable]]) -> Optional[float]:
    """Cohen's kappa of two raters' labels; None when undefined (no pairs, or chance agreement 1)."""
    if not pairs:
        return None
    n = len(pairs)
    observed = sum(a == b for a, b in pairs) / n
    first, second = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    expected = sum(first[c] * second[c] for c in first) / (n * n)
    return None if expected >= 1.0 else (observed - expected) / (1.0 - expected)


def finite(value: float) -> Optional[float]:
    return None if value is None or math.isnan(value) or math.isinf(value) else float(value)


def correlations(judge: Sequence[float], human: Sequence[float]) -> dict[str, Optional[float]]:
    """Pearson, Spearman, Kendall's tau and the mean squared error; None where undefined."""
    from scipy import stats

    if len(judge) < 2 or len(set(judge)) < 2 or len(set(human)) < 2:
        undefined = None
        return {"pearson": undefined, "spearman": undefined, "kendall_tau": undefined,
                "mse": ratio(sum((j - h) ** 2 for j, h in zip(judge, human)), len(judge))}
    return {
        "pearson": finite(stats.pearsonr(judge, human).statistic),
        "spearman": finite(stats.spearmanr(judge, human).statistic),
        "kendall_tau": finite(stats.kendalltau(judge, human).statistic),
        "mse": sum((j - h) ** 2 for j, h in zip(judge, human)) / len(judge),
    }


def bootstrap_ci(
    items: Sequence[Any], statistic: Callable[[Sequence[Any]], Optional[float]]
) -> Optional[list[float]]:
    """95% percentile interval of `statistic` over BOOTSTRAP_RESAMPLES resamples (fixed seed)."""
    if len(items) < 2:
        return None
    rng = random.Random(BOOTSTRAP_SEED)
    values = []
    for _ in range(BOOTSTRAP_RESAMPLES):
        value = statistic([items[rng.randrange(len(items))] for _ in items])
        if value is not None:
            values.append(value)
    if len(values) < BOOTSTRAP_RESAMPLES // 2:  # undefined on most resamples: no honest interval
        return None
    values.sort()
    return [values[int(0.025 * (len(values) - 1))], values[int(0.975 * (len(values) - 1))]]


def grid(low: float, high: float, step: float) -> list[float]:
    """low, low + step, ..., high (inclusive), without float drift."""
    count = int(round((high - low) / step))
    return [round(low + i * step, 6) for i in range(count + 1)]


def by_group(rows: Sequence[LabelledRow], correct: Sequence[bool]) -> dict[str, Any]:
    """Accuracy per label group (`by_group`) and their unweighted mean (`macro_accuracy`); empty and
    None when the rows have no groups."""
    groups = sorted({row.group for row in rows if row.group is not None})
    accuracy = {
        group: ratio(sum(ok for row, ok in zip(rows, correct) if row.group == group), sum(row.group == group for row in rows))
        for group in groups
    }
    defined = [value for value in accuracy.values() if value is not None]
    return {"by_group": accuracy, "macro_accuracy": ratio(sum(defined), len(defined)) if groups else None}
