"""A nightly Spark job's output as input: part files under partitionBy's key=value directories
(and Spark's __HIVE_DEFAULT_PARTITION__ for a null key), _SUCCESS and .crc files beside them,
Hive's legacy encodings, an empty output, INT96 timestamps, decimals and arrays.

The shards are committed (tests/data/spark, written by its write_shards.py with pyspark 4.3.0):
this environment has no Spark. The judge is the simulated engine; what is under test is reading
and pass-through.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs.cli import main
from jobs.demo import DEMO_CONFIG
from jobs.runtime import ExitCode
from pipelines.shards import HIVE_NULL

pytestmark = pytest.mark.e2e

SPARK_SHARDS = Path(__file__).resolve().parents[1] / "data" / "spark"
PASSED_THROUGH = ("created_at", "tags", "price")


def written_rows() -> list[dict]:
    """Every row as Spark wrote it, `source` from its directory where the file does not hold it."""
    rows = []
    for path in sorted(SPARK_SHARDS.rglob("part-*.parquet")):
        directory = path.parent.name
        for row in pq.read_table(path).to_pylist():  # one file: no directory columns
            if directory.startswith("source="):
                value = directory.split("=", 1)[1]
                row["source"] = None if value == HIVE_NULL else value
            rows.append(row)
    return rows


@pytest.fixture(scope="module")
def spark_run(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("spark")
    shards = root / "input"
    shutil.copytree(SPARK_SHARDS, shards, ignore=shutil.ignore_patterns("*.py"))
    output = root / "output"
    code = main(["run", "--config", str(DEMO_CONFIG), "--input", str(shards), "--output", str(output),
                 "--set", "judge.engine.backend=simulated", "--set", "filter.min_margin=0"])
    landed = [row for name in ("kept", "dropped", "errors") for row in pq.read_table(output / name).to_pylist()]
    return code, landed


def test_the_fixture_is_what_spark_writes():
    names = {p.name for p in SPARK_SHARDS.rglob("*")}
    assert "_SUCCESS" in names and any(n.startswith(".part-") and n.endswith(".crc") for n in names)
    assert {p.name for p in (SPARK_SHARDS / "partitioned").iterdir() if p.is_dir()} == {
        "source=web", "source=app", f"source={HIVE_NULL}"}
    for path in (SPARK_SHARDS / "partitioned").rglob("part-*.parquet"):
        assert "source" not in pq.read_schema(path).names
    legacy = pq.read_schema(next((SPARK_SHARDS / "legacy").glob("part-*.parquet")))
    assert legacy.field("tags").type.value_field.name == "array"  # Hive's list encoding
    assert pq.read_metadata(next((SPARK_SHARDS / "empty").glob("part-*.parquet"))).num_rows == 0


def test_every_spark_row_lands_once(spark_run):
    code, landed = spark_run
    assert code == ExitCode.OK
    assert sorted(row["id"] for row in landed) == sorted(row["id"] for row in written_rows())
    assert [row["error_reason"] for row in landed if row["id"] == "dup"] == ["duplicate_id"] * 2


def test_partition_directories_read_as_their_column(spark_run):
    _, landed = spark_run
    got = sorted((row["id"], row["source"]) for row in landed)
    expected = sorted((row["id"], row["source"]) for row in written_rows())
    assert got == expected
    assert {source for _, source in got} == {"web", "app", None}  # the null key's directory reads as null
    assert {row["source"] for row in landed if row["id"] == "dup"} == {"web", "app"}  # settled on the driver


def test_spark_types_pass_through_untouched(spark_run):
    _, landed = spark_run
    given = {(row["id"], row["source"]): row for row in written_rows()}
    for row in landed:
        original = given[(row["id"], row["source"])]
        assert {c: row[c] for c in PASSED_THROUGH} == {c: original[c] for c in PASSED_THROUGH}
