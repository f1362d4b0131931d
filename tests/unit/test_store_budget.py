"""The object-store budget a run's plan gets: twice what the judge replicas hold, at the decoded size
of a few sampled rows, never below the floor; a sample that cannot be taken leaves Ray Data's own."""
from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipelines.store_budget as store_budget_module
from jobs.demo import write_demo_shards
from pipelines.config import load_config
from pipelines.curate import build_stages
from pipelines.shards import discover
from pipelines.store_budget import (
    MIN_BUDGET_BYTES,
    SAMPLE_ROWS_PER_SHARD,
    StoreBudget,
    derived_budget,
    judge_held_rows,
    store_budget,
)
from stages.judge import JudgeStage
from tests.synthetic_media import jpeg

pytestmark = pytest.mark.usefixtures("ray_session")  # the sample is decoded in a Ray worker


def config(tmp_path, *sets):
    return load_config(overrides=["judge.engine.device=cpu", *sets],
                       **{"input.paths": [str(tmp_path / "input")], "output.path": str(tmp_path / "output")})


def budget_for(cfg, setting="auto"):
    shards = discover(cfg.input.paths, cfg.judging_format(), cfg.input)
    return store_budget(setting, build_stages(cfg), shards.paths, shards.filesystem, shards.schema, row_hash=False)


def image_shard(path, rows, side):
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(rows)], "question": ["What is shown?"] * rows,
                             "response_a": ["a"] * rows, "response_b": ["b"] * rows,
                             "image": [jpeg(side, side) for _ in range(rows)]}), path)


def test_the_replicas_hold_replicas_times_batches_in_flight_times_batch_size_rows(tmp_path):
    cfg = config(tmp_path, "judge.replicas=3", "judge.batch_size=8", "judge.batches_in_flight=5")
    judge = next(s for s in build_stages(cfg) if isinstance(s, JudgeStage))
    assert judge_held_rows(judge) == 3 * 5 * 8


def test_the_budget_is_twice_the_held_rows_decoded_and_never_below_the_floor():
    assert derived_budget(1024, 1000.0) == MIN_BUDGET_BYTES
    assert derived_budget(1024, 3_000_000.0) == 2 * 1024 * 3_000_000


def test_larger_media_get_a_larger_budget_measured_from_the_shards(tmp_path):
    (tmp_path / "input").mkdir()
    image_shard(tmp_path / "input" / "small.parquet", 12, 32)
    small = budget_for(config(tmp_path, "media.image_max_pixels=1000000"))
    image_shard(tmp_path / "input" / "small.parquet", 12, 900)
    large = budget_for(config(tmp_path, "media.image_max_pixels=1000000"))
    assert small.source == large.source == "derived"
    assert small.sampled_rows == large.sampled_rows == SAMPLE_ROWS_PER_SHARD
    # 900x900 RGB pixels decoded (smart_resize to a multiple of 28 keeps about as many) per row
    assert large.decoded_bytes_per_row > 800 * 800 * 3 > 50 * small.decoded_bytes_per_row
    assert large.bytes == pytest.approx(2 * large.judge_held_rows * large.decoded_bytes_per_row)
    assert large.bytes > MIN_BUDGET_BYTES
    assert small.bytes == MIN_BUDGET_BYTES
    assert large.describe().startswith(f"object-store budget: {large.bytes / 2**20:.0f} MiB: 2 x 1024 rows")


def test_a_set_budget_or_rays_own_is_taken_as_given(tmp_path):
    write_demo_shards(tmp_path / "input", 8, shards=1)
    cfg = config(tmp_path)
    assert budget_for(cfg, 2048) == StoreBudget(2048 * 2**20, "set")
    assert budget_for(cfg, "ray") == StoreBudget(None, "ray")


def test_a_sample_that_cannot_be_read_leaves_ray_datas_budget_and_says_so(tmp_path, caplog):
    write_demo_shards(tmp_path / "input", 8, shards=1)
    cfg = config(tmp_path)
    shards = discover(cfg.input.paths, cfg.judging_format(), cfg.input)
    (tmp_path / "input" / "candidates-00000.parquet").write_bytes(b"not parquet any more")
    with caplog.at_level(logging.WARNING, logger="pipelines.store_budget"):
        budget = store_budget("auto", build_stages(cfg), shards.paths, shards.filesystem, shards.schema, False)
    assert budget.bytes is None and budget.source == "ray"
    assert "could not sample the shards" in caplog.text


def test_the_sample_reaches_the_last_shards_of_an_input_sorted_by_media_size(tmp_path):
    (tmp_path / "input").mkdir()
    for index in range(9):  # eight shards of thumbnails, then one of large images
        image_shard(tmp_path / "input" / f"part-{index}.parquet", 4, 900 if index == 8 else 32)
    budget = budget_for(config(tmp_path, "media.image_max_pixels=1000000"))
    assert budget.sampled_rows == 4 * 4
    assert budget.decoded_bytes_per_row > 800 * 800 * 3 / 4  # one sampled shard in four is large


def test_the_sample_is_read_in_a_worker_not_in_the_driver(tmp_path, monkeypatch):
    # Sampled rows can carry large inline media (videos as bytes): reading them is the worker's job.
    def read_in_the_driver(*args, **kwargs):
        raise AssertionError("the driver read the sample")

    monkeypatch.setattr(store_budget_module, "sample_rows", read_in_the_driver)  # this process's copy only
    (tmp_path / "input").mkdir()
    image_shard(tmp_path / "input" / "part-0.parquet", 12, 64)
    budget = budget_for(config(tmp_path))
    assert budget.source == "derived" and budget.sampled_rows == SAMPLE_ROWS_PER_SHARD
