"""Progress as a person reads it: one bar on a terminal, log lines elsewhere."""
from __future__ import annotations

import io
import json
import logging

from pipelines.progress import ProgressLog


def stats(rows: int, **outcomes: int) -> list[str]:
    return [json.dumps({"rows": rows, "outcomes": outcomes})]


def test_on_a_terminal_one_bar_is_redrawn_in_place():
    terminal = io.StringIO()
    progress = ProgressLog(10, metrics=None, bar=terminal)
    progress.last -= 1  # the first batch redraws at once
    progress.batch_written(stats(4, kept=3, errors=1))
    progress.batch_written(stats(6, kept=4, dropped=2))
    drawn = terminal.getvalue()
    assert drawn.count("\n") == 1 and drawn.endswith("\n")  # one line, ended when the run is done
    frames = drawn.rstrip("\n").split("\r")[1:]
    assert frames[0].startswith("[" + "." * 24 + "] 0/10 rows")  # drawn before the first batch is done
    assert frames[1].startswith("[##########") and "4/10 rows" in frames[1] and "kept=3 dropped=0 errors=1" in frames[1]
    assert frames[-1].startswith("[" + "#" * 24 + "]") and "10/10 rows 100%" in frames[-1]
    assert "kept=7 dropped=2 errors=1" in frames[-1] and "rows/s" in frames[-1] and "eta 0s" in frames[-1]


class Snapshot:
    class snapshot:  # noqa: N801 - the metrics actor's method, as `actor.snapshot.remote()` calls it
        @staticmethod
        def remote():
            return {"judge": {"rows": 10, "seconds": 2.0}}


def test_elsewhere_progress_is_logged_every_interval_and_at_the_end(caplog, monkeypatch):
    monkeypatch.setattr("pipelines.progress.ray.get", lambda ref: ref)
    progress = ProgressLog(10, metrics=Snapshot, every_seconds=3600)
    with caplog.at_level(logging.INFO, logger="flexcurate.progress"):
        progress.batch_written(stats(4, kept=4))  # within the interval: nothing
        assert caplog.messages == []
        progress.batch_written(stats(6, kept=6))
    assert caplog.messages[0].startswith("progress: 10/10 rows (100%)") and "kept=10 dropped=0 errors=0" in caplog.messages[0]
    assert caplog.messages[1] == "stages: judge 10 rows 5.0/s busy"


def test_ray_data_progress_and_info_lines_are_off_unless_verbose():
    import ray.data

    from jobs.runtime import quiet_ray_data

    context = ray.data.DataContext.get_current()
    console = [h for h in logging.getLogger("ray.data").handlers if type(h).__name__ == "PlainRayHandler"]
    before = (context.enable_progress_bars, [h.level for h in console])
    try:
        quiet_ray_data(verbose=True)
        assert (context.enable_progress_bars, [h.level for h in console]) == before
        quiet_ray_data(verbose=False)
        assert context.enable_progress_bars is False
        assert console and all(h.level == logging.WARNING for h in console)
    finally:
        context.enable_progress_bars = before[0]
        for handler, level in zip(console, before[1]):
            handler.setLevel(level)
