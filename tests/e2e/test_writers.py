"""Shards from the writers users have (`datasets`, polars, DuckDB, pandas, pyarrow with views and
dictionaries) in one directory run as one input, and every output loads with `datasets` as media.

The judge is the simulated engine (seeded verdicts): what is under test is reading, pass-through
and the outputs' feature metadata, which do not depend on the model.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.cli import main
from jobs.demo import DEMO_CONFIG
from jobs.runtime import ExitCode
from tests import synthetic_media as sm

pytestmark = pytest.mark.e2e

PER_MODALITY = 3  # rows per modality per writer: with seeded verdicts some are kept, some dropped
BY_PATH = "av-img-0"  # its image is a path under input.media_roots, not embedded bytes


def media_rows(prefix: str) -> list[dict]:
    """Rows with an image, an audio clip or a video each, and a text-only row."""
    rows = []
    for i in range(PER_MODALITY):
        rows.append({"id": f"{prefix}-img-{i}", "image": {"bytes": sm.png(40 + 8 * i, 32, seed=i), "path": None}})
        rows.append({"id": f"{prefix}-aud-{i}", "audio": {"bytes": sm.wav(1.0 + i / 2), "path": None}})
        rows.append({"id": f"{prefix}-vid-{i}", "video": {"bytes": sm.mp4(), "path": None}})
    rows.append({"id": f"{prefix}-text"})
    for n, row in enumerate(rows):
        row.update(question=f"Question {n} of {prefix}?", response_a=f"Answer A{n}", response_b=f"Answer B{n}",
                   extra=f"{prefix}-extra-{n}")
        for modality in ("image", "audio", "video"):
            row.setdefault(modality, None)
    return rows


def write_datasets_shard(path: Path) -> list[dict]:
    from datasets import Audio, Dataset, Features, Image, Value, Video

    rows = media_rows("hf")
    rows.append({"id": "hf-broken-image", "question": "What is this?", "response_a": "x", "response_b": "y",
                 "extra": "hf-extra-broken", "image": {"bytes": sm.truncated_png(), "path": None},
                 "audio": None, "video": None})
    features = Features({"id": Value("string"), "question": Value("string"), "response_a": Value("string"),
                         "response_b": Value("string"), "image": Image(), "audio": Audio(), "video": Video(),
                         "extra": Value("string")})
    Dataset.from_list(rows, features=features).to_parquet(str(path))
    return rows


def write_polars_shard(path: Path) -> list[dict]:
    import polars as pl

    rows = [r for r in media_rows("pl") if r["audio"] is None and r["video"] is None]  # images and text
    # polars writes large strings and binaries, and a struct `path` of type null when all are None.
    pl.DataFrame(rows).drop("audio", "video").write_parquet(path)
    return rows


def write_duckdb_shard(path: Path) -> list[dict]:
    import duckdb

    rows = [r for r in media_rows("dk") if r["video"] is None and r["image"] is None]  # audio and text
    connection = duckdb.connect()
    connection.execute(
        "CREATE TABLE t (id VARCHAR NOT NULL, question VARCHAR NOT NULL, response_a VARCHAR NOT NULL, "
        "response_b VARCHAR NOT NULL, audio STRUCT(bytes BLOB, path VARCHAR), extra VARCHAR NOT NULL)"
    )
    for r in rows:
        audio = None if r["audio"] is None else {"bytes": r["audio"]["bytes"], "path": None}
        connection.execute("INSERT INTO t VALUES (?, ?, ?, ?, ?, ?)",
                           [r["id"], r["question"], r["response_a"], r["response_b"], audio, r["extra"]])
    connection.execute(f"COPY t TO '{path}' (FORMAT parquet)")
    return rows


def write_pandas_shard(path: Path) -> list[dict]:
    import pandas as pd

    rows = [r for r in media_rows("pd") if r["audio"] is None and r["image"] is None]  # video and text
    rows[0]["response_b"] = rows[0]["response_a"]  # dropped before judging: identical_responses
    for number, row in enumerate(rows):
        row["id"] = 9000 + number  # integer ids beside the other writers' strings
    frame = pd.DataFrame(rows).drop(columns=["image", "audio"])
    frame["extra"] = frame["extra"].astype("category")  # dictionary-encoded strings
    frame.index = [100 + i for i in range(len(frame))]  # a non-default index: stored as a column
    frame.to_parquet(path)
    return rows


def write_arrow_views_shard(path: Path, media_root: Path) -> list[dict]:
    rows = [r for r in media_rows("av") if r["image"] is not None or r["id"].endswith("text")]
    (media_root / "pictures").mkdir(parents=True)
    (media_root / "pictures" / "by-path.png").write_bytes(sm.png(48, 48, seed=7))
    rows[0]["image"] = {"bytes": None, "path": "pictures/by-path.png"}  # read under input.media_roots
    table = pa.table({
        "id": pa.array([r["id"] for r in rows], pa.string_view()),
        "question": pa.array([r["question"] for r in rows], pa.string_view()),
        "response_a": pa.array([r["response_a"] for r in rows], pa.string_view()),
        "response_b": pa.array([r["response_b"] for r in rows], pa.large_string()),
        "image": pa.array([r["image"] for r in rows], pa.struct([("bytes", pa.binary_view()), ("path", pa.string_view())])),
        "extra": pa.array([r["extra"] for r in rows], pa.string()).dictionary_encode(),
    })
    pq.write_table(table, path, store_schema=True)
    return rows


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("writers")
    shards = root / "input"
    shards.mkdir()
    written = {
        "datasets.parquet": write_datasets_shard(shards / "datasets.parquet"),
        "polars.parquet": write_polars_shard(shards / "polars.parquet"),
        "duckdb.parquet": write_duckdb_shard(shards / "duckdb.parquet"),
        "pandas.parquet": write_pandas_shard(shards / "pandas.parquet"),
        "views.parquet": write_arrow_views_shard(shards / "views.parquet", root / "media"),
    }
    output = root / "output"
    code = main([
        "run", "--config", str(DEMO_CONFIG), "--input", str(shards), "--output", str(output),
        "--set", "judge.engine.backend=simulated", "--set", f"input.media_roots=[{root / 'media'}]",
        "--set", "filter.min_margin=0",
    ])
    return code, written, output


def test_the_writers_really_differ(mixed_run):
    _, _, output = mixed_run
    types = {p.name: pq.read_schema(p) for p in (output.parent / "input").iterdir()}
    assert types["polars.parquet"].field("id").type == pa.large_string()
    assert types["polars.parquet"].field("image").type.field("path").type == pa.null()
    assert not types["duckdb.parquet"].field("id").nullable
    assert types["pandas.parquet"].field("id").type == pa.int64()
    assert pa.types.is_dictionary(types["pandas.parquet"].field("extra").type)
    assert "__index_level_0__" in types["pandas.parquet"].names
    assert types["views.parquet"].field("question").type == pa.string_view()


def test_a_directory_mixing_writers_runs_as_one_input(mixed_run):
    code, written, output = mixed_run
    assert code == ExitCode.OK
    landed = {}
    for name in ("kept", "dropped", "errors"):
        for row in pq.read_table(output / name).to_pylist():
            assert row["id"] not in landed
            landed[row["id"]] = row
    given = {str(r["id"]): r for rows in written.values() for r in rows}
    assert set(landed) == set(given)
    assert landed["hf-broken-image"]["error_reason"] == "image_undecodable"


def test_unused_columns_pass_through_untouched(mixed_run):
    _, written, output = mixed_run
    rows = {r["id"]: r for name in ("kept", "dropped", "errors") for r in pq.read_table(output / name).to_pylist()}
    for shard_rows in written.values():
        for given in shard_rows:
            assert rows[str(given["id"])]["extra"] == given["extra"]
    pandas_ids = [str(r["id"]) for r in written["pandas.parquet"]]
    assert [rows[i]["__index_level_0__"] for i in pandas_ids] == [100 + n for n in range(len(pandas_ids))]
    assert rows["hf-text"]["__index_level_0__"] is None


def load(directory: Path):
    from datasets import load_dataset

    return load_dataset("parquet", data_files=str(directory / "*.parquet"), split="train")


@pytest.mark.parametrize("name", ["kept", "dropped", "errors"])
def test_row_outputs_load_as_media(mixed_run, name):
    from datasets import Audio, Image, Video

    _, _, output = mixed_run
    dataset = load(output / name)
    assert dataset.num_rows > 0
    assert isinstance(dataset.features["image"], Image)
    assert isinstance(dataset.features["audio"], Audio) and isinstance(dataset.features["video"], Video)
    # Not decoded here: the broken image, and the image given as a path relative to the media root.
    reasons = dataset["error_reason"] if "error_reason" in dataset.column_names else [None] * dataset.num_rows
    decodable = [i for i, (row_id, reason) in enumerate(zip(dataset["id"], reasons))
                 if row_id != BY_PATH and reason != "image_undecodable"]
    for row in dataset.select(decodable):
        if row["image"] is not None and row["image"] != {}:
            assert row["image"].size[0] > 0  # a PIL image
        if row["audio"] is not None:
            samples = row["audio"].get_all_samples()
            assert samples.sample_rate > 0 and samples.data.shape[-1] > 0
        if row["video"] is not None:
            assert row["video"].metadata.num_frames > 0 and row["video"][0].shape[0] == 3


def test_preferences_load_as_media_with_path_media_embedded(mixed_run):
    _, written, output = mixed_run
    pairs = load(output / "preferences")
    by_id = {row["id"]: row for row in pairs}
    kinds = {m: [i for i, r in by_id.items() if r[m]] for m in ("images", "audios", "videos")}
    assert all(kinds.values()), kinds  # each modality reached preferences/
    for row in by_id.values():
        for image in row["images"]:
            assert image.size[0] > 0
        for audio in row["audios"]:
            assert audio.get_all_samples().data.shape[-1] > 0
        for video in row["videos"]:
            assert video.metadata.num_frames > 0
        content = [item["type"] for item in row["prompt"][0]["content"]]
        expected = ["image"] * len(row["images"]) + ["audio"] * len(row["audios"]) + ["video"] * len(row["videos"])
        assert content == expected + ["text"]
    by_path = pq.read_table(output / "preferences").to_pylist()
    embedded = [r["images"][0] for r in by_path if r["id"] == BY_PATH]
    assert embedded, "the row given by path is kept (seeded verdicts)"
    assert embedded[0]["path"] == "pictures/by-path.png"
    assert embedded[0]["bytes"] == (output.parent / "media" / "pictures" / "by-path.png").read_bytes()
    kept = [r["image"] for r in pq.read_table(output / "kept").to_pylist() if r["id"] == BY_PATH]
    assert kept == [{"bytes": None, "path": "pictures/by-path.png"}]  # kept/ holds the row as given
