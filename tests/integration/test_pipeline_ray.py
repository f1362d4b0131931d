"""The whole plan on a local Ray with a simulated engine: the Ray plumbing without model cost."""
from __future__ import annotations

import json
import os
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.demo import write_demo_shards
from pipelines.config import load_config
from pipelines.curate import OutputExists, run_curation
from stages.engines.simulated import SimulatedEngine
from stages.formats.pairwise import PairwiseFormat


def simulated_engine() -> SimulatedEngine:
    return SimulatedEngine(PairwiseFormat().simulated_verdict)


def config(root, **overrides):
    sets = [f"{k}={v}" for k, v in overrides.items()]
    return load_config(
        overrides=["judge.engine.device=cpu", "max_error_fraction=0.5", "filter.require_order_agreement=false", *sets],
        **{"input.paths": [str(root / "input")], "output.path": str(root / "output")},
    )


def test_pipeline_accounts_for_every_row(tmp_path, ray_session):
    write_demo_shards(tmp_path / "input", 30, shards=3)
    result = run_curation(config(tmp_path, **{"judge.batch_size": 4, "decode_batch_size": 4}), engine_factory=simulated_engine)
    assert result.succeeded, result.report
    out = tmp_path / "output"
    landed = [pq.read_table(out / name, columns=["id"]).column("id").to_pylist() for name in ("kept", "dropped", "errors")]
    flat = [i for part in landed for i in part]
    assert sorted(flat) == sorted(pq.read_table(tmp_path / "input", columns=["id"]).column("id").to_pylist())
    assert len(flat) == len(set(flat)) == 30
    report = json.loads((out / "report.json").read_text())
    assert report["counts"] == {"kept": len(landed[0]), "dropped": len(landed[1]), "errors": len(landed[2])}
    assert report["timings"]["stages"]["judge"]["rows"] == 30


def test_empty_outputs_still_exist_with_schema(tmp_path, ray_session):
    write_demo_shards(tmp_path / "input", 6, shards=1)
    cfg = config(tmp_path, **{"filter.min_margin": 10})  # nothing can pass: kept/ and preferences/ are empty
    assert run_curation(cfg, engine_factory=simulated_engine).succeeded
    kept = pq.read_table(tmp_path / "output" / "kept")
    assert kept.num_rows == 0 and "score_a" in kept.column_names
    assert pq.read_table(tmp_path / "output" / "preferences").num_rows == 0


def test_finished_output_is_not_overwritten_without_consent(tmp_path, ray_session):
    write_demo_shards(tmp_path / "input", 12, shards=1)
    assert run_curation(config(tmp_path), engine_factory=simulated_engine).succeeded
    with pytest.raises(OutputExists):
        run_curation(config(tmp_path), engine_factory=simulated_engine)
    assert run_curation(config(tmp_path, **{"output.overwrite": "true"}), engine_factory=simulated_engine).succeeded


def test_error_budget_fails_the_run_but_writes_the_report(tmp_path, ray_session):
    pq.write_table(
        pa.table({"question": ["q"] * 4, "response_a": ["a"] * 4, "response_b": ["b"] * 4, "image": [b"not an image"] * 4}),
        tmp_path / "bad.parquet",
    )
    cfg = load_config(
        overrides=["judge.engine.device=cpu", "max_error_fraction=0.1"],
        **{"input.paths": [str(tmp_path / "bad.parquet")], "output.path": str(tmp_path / "output")},
    )
    result = run_curation(cfg, engine_factory=simulated_engine)
    assert result.report["status"] == "failed_error_budget"
    assert (tmp_path / "output" / "report.json").exists() and not (tmp_path / "output" / "_SUCCESS").exists()


def test_one_large_shard_is_read_as_batch_sized_blocks(tmp_path, ray_session):
    # Ray Data reads a shard's row groups as one block; a map stage runs one task per block, so
    # without the split one shard's media would decode serially on a single core.
    from pipelines.adapter import read_rows

    write_demo_shards(tmp_path / "input", 40, shards=1)
    blocks = [batch.num_rows for batch in read_rows([str(tmp_path / "input")], None, 8).iter_batches(
        batch_format="pyarrow", batch_size=None)]
    assert sum(blocks) == 40
    assert len(blocks) >= 5 and max(blocks) <= 8


def test_label_and_write_run_in_one_task_after_the_judge(tmp_path, ray_session, capsys):
    # Ray Data reserves CPUs for the plan's operators upstream first: a write operator of its own got
    # none on a 4-CPU node and stalled while the judge's output piled up in the object store.
    from pipelines.adapter import apply_stage, read_rows
    from pipelines.curate import build_stages

    write_demo_shards(tmp_path / "input", 8, shards=1)
    dataset = read_rows([str(tmp_path / "input")], None, 8)
    for stage in build_stages(config(tmp_path), engine_factory=simulated_engine):
        dataset = apply_stage(dataset, stage)
    capsys.readouterr()
    dataset.explain()
    physical = capsys.readouterr().out.split("Physical Plan (Optimized)")[1]
    operators = [line.strip(" +-") for line in physical.splitlines() if "[" in line]
    assert operators[0] == "TaskPoolMapOperator[MapBatches(_run_task)->MapBatches(_run_task)]", physical
    assert operators[1].startswith("ActorPoolMapOperator[") and operators[1].endswith("(_ActorStage)]"), physical


def test_no_task_stage_runs_inside_a_judge_replica(tmp_path, ray_session, capsys):
    # Ray Data fuses a task map into the actor map after it when both ask for the same resources:
    # with the judge's default 1 CPU, the decode stage (1 CPU) ran inside the judge replica.
    from pipelines.adapter import apply_stage, read_rows
    from pipelines.curate import build_stages
    from stages.decode import DecodeStage

    cfg = config(tmp_path)
    assert cfg.judge.cpus_per_replica == DecodeStage.num_cpus and not cfg.judge.resources
    write_demo_shards(tmp_path / "input", 8, shards=1)
    dataset = read_rows([str(tmp_path / "input")], None, 8)
    for stage in build_stages(cfg, engine_factory=simulated_engine):
        dataset = apply_stage(dataset, stage)
    capsys.readouterr()
    dataset.explain()
    physical = capsys.readouterr().out.split("Physical Plan (Optimized)")[1]
    operators = [line.strip(" +-") for line in physical.splitlines() if "[" in line]
    assert operators[1:4] == ["ActorPoolMapOperator[MapBatches(_ActorStage)]",  # the judge, alone
                              "TaskPoolMapOperator[MapBatches(_run_task)]",  # decode
                              "TaskPoolMapOperator[MapBatches(_run_task)]"], physical  # normalize


def test_the_label_and_write_task_runs_while_upstream_stages_hold_every_cpu(ray_session):
    # Ray Data reserves CPUs for the plan's operators upstream first: with the read, repartition,
    # normalize, decode and judge holding all of a 4-CPU node's, a label-and-write task that asked
    # for a quarter of a CPU wrote nothing for the first 100 s of a 32,000-row run.
    import time

    import ray.data

    from stages.label import LabelStage
    from stages.write import WriteStage

    def upstream(batch: dict) -> dict:
        time.sleep(0.5)
        batch["done_at"] = [time.time()] * len(batch["id"])
        return batch

    def sink(batch: dict) -> dict:
        batch["written_at"] = [time.time()] * len(batch["id"])
        return batch

    assert LabelStage.num_cpus == WriteStage.num_cpus  # so that Ray Data fuses them (test above)
    dataset = ray.data.from_items([{"id": i} for i in range(16)], override_num_blocks=16)
    dataset = dataset.map_batches(upstream, batch_size=None, num_cpus=1)
    dataset = dataset.map_batches(upstream, batch_size=None, num_cpus=3)  # with the first: all 4 CPUs
    rows = dataset.map_batches(sink, batch_size=None, num_cpus=WriteStage.num_cpus).take_all()
    upstream_done = sorted(row["done_at"] for row in rows)
    assert min(row["written_at"] for row in rows) < upstream_done[len(rows) // 2]


def test_a_small_read_starts_one_footer_reader_not_rays_32(tmp_path, ray_session, monkeypatch):
    # Ray Data's Parquet footer pool is 32 actors whatever the input: 32 processes for a handful of
    # shards, seconds of start-up and 3 GiB on a small machine, before the first row is decoded.
    from pipelines.adapter import footer_readers_for, read_rows

    def footer_readers() -> set[str]:
        actors = ray_session._private.state.actors().items()
        return {actor_id for actor_id, actor in actors if actor["ActorClassName"] == "FooterReader"}

    monkeypatch.delenv("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", raising=False)
    write_demo_shards(tmp_path / "input", 24, shards=6)
    paths = sorted(str(p) for p in (tmp_path / "input").glob("*.parquet"))
    earlier = footer_readers()
    rows = sum(b.num_rows for b in read_rows(paths, None, 8).iter_batches(batch_format="pyarrow", batch_size=None))
    assert rows == 24 and len(footer_readers() - earlier) == 1
    assert "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS" not in os.environ  # set for the read only
    assert [footer_readers_for(n) for n in (1, 1000, 1001, 5000, 10**6)] == [1, 1, 2, 5, 32]


def test_shards_are_read_in_small_units_the_object_store_budget_can_hold_back(tmp_path, ray_session, monkeypatch):
    # A read task puts its whole unit in the object store: with Ray Data's 128 MiB units the first
    # two tasks held a 32,000-row input there ahead of the decode, whatever its budget.
    import numpy as np

    from pipelines.adapter import READ_UNIT_BYTES, READ_UNIT_VARIABLE, read_rows

    def read_tasks() -> int:
        dataset = read_rows(paths, None, 8)
        assert sum(b.num_rows for b in dataset.iter_batches(batch_format="pyarrow", batch_size=None)) == 6 * 4
        return int(re.search(r"ReadFiles\w*: (\d+) tasks executed", dataset.stats()).group(1))

    rng, paths = np.random.default_rng(0), []
    for shard in range(6):  # 4 incompressible rows of a quarter unit each: a shard is just over a unit
        blobs = [rng.bytes(READ_UNIT_BYTES // 4 + 1) for _ in range(4)]
        paths.append(str(tmp_path / f"part-{shard}.parquet"))
        pq.write_table(pa.table({"id": [f"{shard}-{i}" for i in range(4)], "blob": blobs}), paths[-1])
    monkeypatch.delenv(READ_UNIT_VARIABLE, raising=False)
    assert read_tasks() == 6  # a shard larger than a unit is a unit of its own
    assert READ_UNIT_VARIABLE not in os.environ  # set for the read only
    monkeypatch.setenv(READ_UNIT_VARIABLE, str(128 * 2**20))  # the user's own setting wins: Ray's default
    assert read_tasks() == 1


def test_a_task_hands_the_heap_it_freed_back_before_its_worker_idles():
    # Ray reuses a task's worker process: on a 192-CPU node, heap each worker keeps after decoding
    # (glibc does not return freed holes inside its heap) adds up to the node's memory.
    import psutil

    from pipelines.adapter import release_freed_memory

    def rss_mib() -> int:
        return psutil.Process().memory_info().rss >> 20

    kept, freed = [], []
    for i in range(6000):  # 60 KB buffers: malloc's heap, not mmap; every other one freed leaves holes
        (kept if i % 2 else freed).append(bytearray(60_000))
    freed.clear()
    holding = rss_mib()
    release_freed_memory()
    assert holding - rss_mib() > 100  # of the ~170 MiB freed
    assert len(kept) == 3000


def test_a_task_hands_the_arrow_memory_it_freed_back_before_its_worker_idles():
    # Arrow's pool (mimalloc) keeps freed pages for reuse, and glibc's malloc_trim does not reach it:
    # a worker that built a batch's tables would keep them resident between tasks.
    import psutil
    import pyarrow.compute as pc

    from pipelines.adapter import release_freed_memory

    def private_mib() -> int:
        return psutil.Process().memory_full_info().uss >> 20

    ones = pa.array([1] * (1 << 17), pa.int64())  # 1 MiB
    arrays = [pc.add(ones, i) for i in range(300)]  # 300 MiB allocated by Arrow's pool
    assert pa.total_allocated_bytes() >= 300 * 2**20
    del arrays
    holding = private_mib()
    release_freed_memory()
    assert holding - private_mib() > 150


@pytest.mark.parametrize("user_limit, expected", [(None, 600 * 2**20), (100 * 2**20, 100 * 2**20)])
def test_the_plan_executes_under_the_budget_unless_the_user_set_a_lower_limit(ray_session, user_limit, expected):
    import ray.data

    from pipelines.store_budget import StoreBudget, apply_budget

    dataset = ray.data.from_items([{"x": 1}]).map_batches(lambda batch: batch)
    if user_limit is not None:
        options = dataset.context.execution_options
        options.resource_limits = options.resource_limits.copy(object_store_memory=user_limit)
    apply_budget(dataset, StoreBudget(600 * 2**20, "derived"))
    executor = dataset._create_executor()  # what the streaming executor plans with
    assert executor._options.resource_limits.object_store_memory == expected
    assert ray.data.DataContext.get_current().execution_options.resource_limits.object_store_memory == float("inf")


def test_a_run_reports_the_object_store_budget_it_derived(tmp_path, ray_session):
    from pipelines.store_budget import MIN_BUDGET_BYTES

    write_demo_shards(tmp_path / "input", 12, shards=2)
    cfg = config(tmp_path, **{"judge.batch_size": 4, "judge.batches_in_flight": 2})
    result = run_curation(cfg, engine_factory=simulated_engine)
    assert result.succeeded, result.report
    budget = result.report["object_store_budget"]
    assert budget["source"] == "derived" and budget["bytes"] == MIN_BUDGET_BYTES  # 8 held rows of the demo's media
    assert budget["judge_held_rows"] == 8 and budget["sampled_rows"] == 12 and budget["decoded_bytes_per_row"] > 0


def test_shard_with_a_conflicting_type_is_skipped_and_listed_in_the_report(tmp_path, ray_session):
    write_demo_shards(tmp_path / "input", 8, shards=1)
    rows = {"id": ["x-0"], "question": ["q"], "response_a": ["a"], "response_b": ["b"], "kind": [7.5]}  # float: no type holds it and text
    pq.write_table(pa.table(rows), tmp_path / "input" / "zz-later.parquet")
    cfg = config(tmp_path, **{"input.skip_bad_shards": "true"})
    result = run_curation(cfg, engine_factory=simulated_engine)
    assert result.succeeded and result.report["input_rows"] == 8
    report = json.loads((tmp_path / "output" / "report.json").read_text())
    [(path, reason)] = report["skipped_shards"].items()
    assert path.endswith("zz-later.parquet") and "column 'kind' is string" in reason


def test_driver_knows_the_ids_ray_derives_for_rows_without_one(tmp_path, ray_session):
    """pipelines/shard_ids.py restates Ray Data's row hash; resume trusts that the two agree."""
    from pipelines.adapter import read_rows
    from pipelines.config import InputConfig
    from pipelines.shard_ids import read_shard_ids
    from pipelines.shards import discover
    from stages.normalize import NormalizeStage

    same = {"question": ["q"] * 30, "response_a": ["a"] * 30, "response_b": ["b"] * 30}
    pq.write_table(pa.table(same), tmp_path / "no-ids.parquet", row_group_size=7)  # several row groups
    pq.write_table(pa.table({"id": ["x", None, " "], **{k: v[:3] for k, v in same.items()}}), tmp_path / "some.parquet")
    shards = discover([str(tmp_path)], PairwiseFormat(), InputConfig())
    ids = read_shard_ids(shards, "id")
    assert ids.needs_row_hash
    normalize = NormalizeStage(PairwiseFormat(), InputConfig(), row_hash=True)
    dataset = read_rows(shards.paths, shards.filesystem, 4, row_hash=True).map_batches(
        normalize.process, batch_format="pyarrow")
    got = sorted(dataset.to_pandas()["id"])
    expected = sorted(i for path in shards.paths for i in ids.ids(path).to_pylist())
    assert got == expected and len(set(got)) == 33 and "x" in got


def test_the_read_keeps_a_shards_own_column_under_a_directory_of_its_name(tmp_path, ray_session):
    """Ray Data's default read fills `year` from year=2026/ over the file's own 2025."""
    from pipelines.adapter import read_rows
    from pipelines.config import InputConfig
    from pipelines.shards import discover

    text = {"question": ["q", "q"], "response_a": ["a", "a"], "response_b": ["b", "b"]}
    (tmp_path / "held" / "year=2026").mkdir(parents=True)
    pq.write_table(pa.table({"id": ["a", "b"], **text, "year": [2025, 2026]}), tmp_path / "held" / "year=2026" / "s.parquet")
    (tmp_path / "spark" / "year=2026").mkdir(parents=True)
    pq.write_table(pa.table({"id": ["c", "d"], **text}), tmp_path / "spark" / "year=2026" / "s.parquet")

    def read(directory: str) -> list[dict]:
        shards = discover([str(tmp_path / directory)], PairwiseFormat(), InputConfig())
        dataset = read_rows(shards.paths, shards.filesystem, 4, shards.schema, directories=shards.directories)
        return sorted(dataset.select_columns(["id", "year"]).take_all(), key=lambda row: row["id"])

    assert read("held") == [{"id": "a", "year": 2025}, {"id": "b", "year": 2026}]
    assert read("spark") == [{"id": "c", "year": "2026"}, {"id": "d", "year": "2026"}]
