"""Writes the Spark-written input that tests/e2e/test_spark_input.py reads (committed beside this
file, since the test environment has no Spark). Rerun after changing it:

    pip install pyspark==4.3.0 pillow numpy   # and a Java 17 runtime
    python tests/data/spark/write_shards.py tests/data/spark

Three outputs, as a nightly Spark job leaves them (part-*.snappy.parquet, _SUCCESS, .crc files):
- partitioned/: `partitionBy("source")`, so source=web/, source=app/ and, for a null source, Spark's
  source=__HIVE_DEFAULT_PARTITION__/; no file holds `source`. Two rows share the id `dup` (in
  source=web and source=app).
- legacy/: `spark.sql.parquet.writeLegacyFormat` (Hive's list and decimal encodings), not
  partitioned: its files hold `source` themselves.
- empty/: an empty DataFrame: one part file with the schema and no rows.
Every file has a timestamp (INT96, Spark's default), an array of strings and a decimal.
"""
from __future__ import annotations

import datetime
import decimal
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from pyspark.sql import SparkSession  # noqa: E402
from pyspark.sql.types import (  # noqa: E402
    ArrayType, BinaryType, DecimalType, StringType, StructField, StructType, TimestampType,
)

from tests import synthetic_media as sm  # noqa: E402

MEDIA = StructType([StructField("bytes", BinaryType()), StructField("path", StringType())])
SCHEMA = StructType([
    StructField("id", StringType()), StructField("question", StringType()),
    StructField("response_a", StringType()), StructField("response_b", StringType()),
    StructField("image", MEDIA), StructField("audio", MEDIA),
    StructField("created_at", TimestampType()), StructField("tags", ArrayType(StringType())),
    StructField("price", DecimalType(10, 2)), StructField("source", StringType()),
])
SOURCES = ("web", "app", None)


def rows(prefix: str, n: int) -> list[tuple]:
    made = []
    for i in range(n):
        image = {"bytes": bytearray(sm.png(40 + 8 * i, 32, seed=i)), "path": None} if i % 2 == 0 else None
        audio = {"bytes": bytearray(sm.wav(1.0)), "path": None} if i % 3 == 1 else None
        made.append((f"{prefix}-{i}", f"Question {i} of {prefix}?", f"Answer A{i}", f"Answer B{i}", image, audio,
                     datetime.datetime(2026, 11, 30, 1, 2, i), ["night", str(i)], decimal.Decimal(f"{i}.25"),
                     SOURCES[i % len(SOURCES)]))
    return made


def main(out: Path) -> None:
    spark = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false").getOrCreate()
    for name in ("partitioned", "legacy", "empty"):
        shutil.rmtree(out / name, ignore_errors=True)
    duplicated = [("dup", "Question dup?", "A", "B", None, None, datetime.datetime(2026, 11, 30), [], None, source)
                  for source in ("web", "app")]
    partitioned = spark.createDataFrame(rows("part", 6) + duplicated, SCHEMA).repartition(2)
    partitioned.write.partitionBy("source").parquet(str(out / "partitioned"))
    spark.conf.set("spark.sql.parquet.writeLegacyFormat", "true")
    spark.createDataFrame(rows("legacy", 4), SCHEMA).repartition(2).write.parquet(str(out / "legacy"))
    spark.conf.set("spark.sql.parquet.writeLegacyFormat", "false")
    spark.createDataFrame([], SCHEMA).write.parquet(str(out / "empty"))
    spark.stop()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
