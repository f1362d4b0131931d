import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.config import InputConfig
from pipelines.shards import ShardError, discover
from stages.formats.pairwise import PairwiseFormat

PAIRWISE = PairwiseFormat()

GOOD = pa.table({"question": ["q", "q2"], "response_a": ["a", "a"], "response_b": ["b", "b"]})


@pytest.fixture
def shards(tmp_path):
    (tmp_path / "day=1").mkdir()
    pq.write_table(GOOD, tmp_path / "day=1" / "a.parquet")
    pq.write_table(GOOD, tmp_path / "b.parquet")
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / ".c.parquet.inprogress").write_text("partial")
    return tmp_path


def test_directory_is_expanded_recursively_skipping_hidden_files(shards):
    found = discover([str(shards)], PAIRWISE, InputConfig())
    assert [p.rsplit("/", 1)[1] for p in found.paths] == ["b.parquet", "a.parquet"]
    assert found.rows == 4


@pytest.mark.parametrize("pattern", ["*.parquet", "day=*/*.parquet", "**/a.parquet"])
def test_globs_match_files(shards, pattern, monkeypatch):
    monkeypatch.chdir(shards)
    found = discover([pattern], PAIRWISE, InputConfig())
    assert found.paths and all(p.endswith(".parquet") for p in found.paths)


def test_file_uri_and_glob_uri(shards):
    assert discover([f"file://{shards}/b.parquet"], PAIRWISE, InputConfig()).rows == 2
    assert len(discover([f"file://{shards}/*/*.parquet"], PAIRWISE, InputConfig()).paths) == 1


def test_missing_input_and_empty_glob_are_named(tmp_path):
    with pytest.raises(ShardError, match="does not exist"):
        discover([str(tmp_path / "nope")], PAIRWISE, InputConfig())
    with pytest.raises(ShardError, match="matched no Parquet files"):
        discover([str(tmp_path / "*.parquet")], PAIRWISE, InputConfig())


def test_missing_or_mistyped_column_names_shard_and_column(tmp_path):
    pq.write_table(pa.table({"question": ["q"], "response_a": ["a"]}), tmp_path / "missing.parquet")
    with pytest.raises(ShardError, match=r"missing\.parquet.*'response_b'"):
        discover([str(tmp_path / "missing.parquet")], PAIRWISE, InputConfig())
    pq.write_table(pa.table({"question": [1], "response_a": ["a"], "response_b": ["b"]}), tmp_path / "typed.parquet")
    with pytest.raises(ShardError, match=r"typed\.parquet.*'question' has type int64"):
        discover([str(tmp_path / "typed.parquet")], PAIRWISE, InputConfig())


def test_unreadable_shard_fails_or_is_skipped(tmp_path):
    pq.write_table(GOOD, tmp_path / "good.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ShardError, match=r"junk\.parquet: unreadable"):
        discover([str(tmp_path)], PAIRWISE, InputConfig())
    found = discover([str(tmp_path)], PAIRWISE, InputConfig(skip_bad_shards=True))
    assert [p.rsplit("/", 1)[1] for p in found.paths] == ["good.parquet"]
    assert list(found.skipped) == [str(tmp_path / "junk.parquet")]


def test_mapped_and_list_columns_are_checked_by_their_user_names(tmp_path):
    pq.write_table(pa.table({"query": ["q"], "response": [["a", "b"]]}), tmp_path / "vlrb.parquet")
    assert discover([str(tmp_path)], PAIRWISE, InputConfig(preset="vl_rewardbench")).rows == 1
    pq.write_table(pa.table({"query": ["q"], "response": ["a"]}), tmp_path / "vlrb.parquet")
    with pytest.raises(ShardError, match="expected a list of strings"):
        discover([str(tmp_path)], PAIRWISE, InputConfig(preset="vl_rewardbench"))


MEDIA = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def test_one_logical_type_whatever_the_writer_spelling():
    from pipelines.shards import logical_type

    assert logical_type(pa.string_view()) == pa.string() and logical_type(pa.binary_view()) == pa.binary()
    assert logical_type(pa.dictionary(pa.int32(), pa.large_string())) == pa.large_string()
    non_null = pa.struct([pa.field("bytes", pa.binary(), nullable=False), pa.field("path", pa.string_view())])
    assert logical_type(non_null) == MEDIA
    assert logical_type(pa.list_(pa.string_view())) == pa.list_(pa.string())


@pytest.mark.parametrize(
    "a, b, read_as",
    [
        (pa.string(), pa.large_string(), pa.large_string()),
        (pa.string(), pa.string_view(), pa.string()),
        (pa.dictionary(pa.int8(), pa.string()), pa.string(), pa.string()),
        (pa.binary(), pa.large_binary(), pa.large_binary()),
        (pa.int64(), pa.string(), pa.string()),  # ids: numbers in one shard, text in another
        (pa.int32(), pa.int64(), pa.int64()),
        (pa.null(), MEDIA, MEDIA),
        (MEDIA, pa.struct([("bytes", pa.large_binary()), ("path", pa.null())]),
         pa.struct([("bytes", pa.large_binary()), ("path", pa.string())])),
    ],
)
def test_shards_from_different_writers_read_as_one_schema(tmp_path, a, b, read_as):
    from pipelines.shards import read_schema

    schemas = {"one.parquet": pa.schema([pa.field("c", a, nullable=pa.types.is_null(a))]), "two.parquet": pa.schema([("c", b)])}
    assert read_schema(schemas) == pa.schema([("c", read_as)])
    assert read_schema(dict(reversed(schemas.items()))) == pa.schema([("c", read_as)])


def test_types_no_single_type_holds_are_refused_naming_both_shards(tmp_path):
    pq.write_table(GOOD, tmp_path / "a.parquet")
    pq.write_table(GOOD.append_column("extra", pa.array([1.5, 2.5])), tmp_path / "b.parquet")
    pq.write_table(GOOD.append_column("extra", pa.array([[1], [2]])), tmp_path / "c.parquet")
    with pytest.raises(ShardError, match=r"column 'extra' is double in shard .*b\.parquet but list<.*: int64> in shard .*c\.parquet"):
        discover([str(tmp_path)], PAIRWISE, InputConfig())


def test_footer_checks_accept_views_dictionaries_and_null_typed_paths(tmp_path):
    table = pa.table({
        "question": pa.array(["q"], pa.string_view()),
        "response_a": pa.array(["a"]).dictionary_encode(),
        "response_b": pa.array(["b"], pa.large_string()),
        "image": pa.array([{"bytes": b"x", "path": None}], pa.struct([("bytes", pa.binary_view()), ("path", pa.null())])),
    })
    pq.write_table(table, tmp_path / "views.parquet", store_schema=True)
    pq.write_table(GOOD, tmp_path / "plain.parquet")
    found = discover([str(tmp_path)], PAIRWISE, InputConfig())
    assert found.rows == 3
    schema = found.schema
    assert schema.field("question").type == pa.string() and schema.field("response_a").type == pa.string()
    read = pq.read_table(tmp_path / "views.parquet", schema=schema)
    assert read.to_pylist() == [{"question": "q", "response_a": "a", "response_b": "b",
                                 "image": {"bytes": b"x", "path": None}}]


def test_a_nights_subset_reads_as_its_own_shards_schema(tmp_path):
    pq.write_table(GOOD, tmp_path / "a.parquet")
    pq.write_table(GOOD.append_column("extra", pa.array(["x", "y"])), tmp_path / "b.parquet")
    found = discover([str(tmp_path)], PAIRWISE, InputConfig())
    assert "extra" in found.schema.names
    assert "extra" not in found.only([str(tmp_path / "a.parquet")]).schema.names


def test_shard_disagreeing_on_a_column_type_fails_or_the_later_one_is_skipped(tmp_path):
    pq.write_table(GOOD.append_column("score", pa.array([1, 2])), tmp_path / "a.parquet")
    pq.write_table(GOOD.append_column("score", pa.array([[1], [2]])), tmp_path / "b.parquet")  # no type holds both
    pq.write_table(GOOD.append_column("score", pa.array([None, None], pa.null())), tmp_path / "c.parquet")
    pq.write_table(GOOD.append_column("score", pa.array([3, 4])), tmp_path / "d.parquet")
    with pytest.raises(ShardError, match=r"column 'score' is int64 in shard .*a\.parquet but list<.*> in shard .*b\.parquet"):
        discover([str(tmp_path)], PAIRWISE, InputConfig())
    found = discover([str(tmp_path)], PAIRWISE, InputConfig(skip_bad_shards=True))
    assert [p.rsplit("/", 1)[1] for p in found.paths] == ["a.parquet", "c.parquet", "d.parquet"]
    assert list(found.skipped) == [str(tmp_path / "b.parquet")]
    assert "'score' is int64" in found.skipped[str(tmp_path / "b.parquet")]
    assert found.rows == 6


def test_ids_for_duplicates_and_rows_without_one(tmp_path):
    from pipelines.shard_ids import read_shard_ids

    pq.write_table(pa.table({"id": ["a", "b", "a"], **{k: GOOD[k].to_pylist() + ["x"] for k in GOOD.column_names}}),
                   tmp_path / "ids.parquet")
    pq.write_table(GOOD, tmp_path / "no-ids.parquet")
    ids = read_shard_ids(discover([str(tmp_path)], PAIRWISE, InputConfig()), "id")
    assert ids.duplicates() == {"a": 2} and ids.needs_row_hash
    pq.write_table(GOOD.append_column("row_hash", pa.array(["mine", "mine"])), tmp_path / "no-ids.parquet")
    with pytest.raises(ShardError, match=r"no-ids\.parquet has a column 'row_hash'"):
        read_shard_ids(discover([str(tmp_path)], PAIRWISE, InputConfig()), "id")
    (tmp_path / "no-ids.parquet").unlink()  # every row has an id: a row_hash column of the user's is fine
    pq.write_table(pa.table({"id": ["c"], "row_hash": ["mine"], **{k: GOOD[k].to_pylist()[:1] for k in GOOD.column_names}}),
                   tmp_path / "other.parquet")
    assert not read_shard_ids(discover([str(tmp_path)], PAIRWISE, InputConfig()), "id").needs_row_hash


def test_a_resume_reads_only_unfinished_shards_and_ships_only_their_done_ids(tmp_path):
    from pipelines.shard_ids import plan_resume, read_shard_ids

    def rows(prefix, n):
        return pa.table({"id": [f"{prefix}{i}" for i in range(n)], "question": ["q"] * n,
                         "response_a": ["a"] * n, "response_b": ["b"] * n},
                        schema=pa.schema([(c, pa.string()) for c in ("id", "question", "response_a", "response_b")]))

    pq.write_table(rows("a", 3), tmp_path / "a.parquet")
    pq.write_table(rows("b", 4), tmp_path / "b.parquet")
    pq.write_table(rows("c", 2), tmp_path / "c.parquet")
    pq.write_table(rows("d", 0), tmp_path / "d.parquet")
    pq.write_table(rows("x", 2).drop_columns(["id"]), tmp_path / "e-no-ids.parquet")
    shards = discover([str(tmp_path)], PAIRWISE, InputConfig())
    ids = read_shard_ids(shards, "id")
    no_ids = ids.ids(str(tmp_path / "e-no-ids.parquet")).to_pylist()
    done = pa.array(["a0", "a1", "a2", "b1", "b3", no_ids[0], no_ids[1], "gone"], pa.string())
    plan = plan_resume(ids, done)
    assert [p.rsplit("/", 1)[1] for p in plan.unfinished] == ["b.parquet", "c.parquet"]
    assert plan.skip_ids == {"b1", "b3"}
    fresh = plan_resume(ids, pa.array([], pa.string()))
    assert len(fresh.unfinished) == 4 and not fresh.skip_ids


def test_key_value_directories_below_the_input_become_columns(shards):
    found = discover([str(shards)], PAIRWISE, InputConfig())
    assert found.directories is not None and found.directories.keys == ("day",)
    assert [found.directories.values(p) for p in found.paths] == [{}, {"day": "1"}]


def test_key_value_directories_above_the_input_are_not_columns(shards):
    assert discover([str(shards / "day=1")], PAIRWISE, InputConfig()).directories is None
    assert discover([str(shards / "day=1" / "a.parquet")], PAIRWISE, InputConfig()).directories is None


def test_inputs_side_by_side_read_the_keys_below_their_common_directory(tmp_path):
    for night in ("dt=2026-11-30", "dt=2026-12-01"):
        (tmp_path / "nights" / night).mkdir(parents=True)
        pq.write_table(GOOD, tmp_path / "nights" / night / "part-0.parquet")
    found = discover([str(tmp_path / "nights" / "dt=2026-11-30"), str(tmp_path / "nights" / "dt=2026-12-01")],
                     PAIRWISE, InputConfig())
    assert [found.directories.values(p) for p in found.paths] == [{"dt": "2026-11-30"}, {"dt": "2026-12-01"}]


def test_a_shard_holding_the_key_it_lies_under_keeps_its_values(tmp_path, caplog):
    """Ray Data would overwrite the file's `day` with the directory's: no directory is read then."""
    for day in ("1", "2"):
        (tmp_path / f"day={day}").mkdir()
    pq.write_table(GOOD.append_column("day", pa.array([7, 8])), tmp_path / "day=1" / "a.parquet")
    pq.write_table(GOOD, tmp_path / "day=2" / "b.parquet")
    with caplog.at_level("WARNING", logger="pipelines.shards"):
        found = discover([str(tmp_path)], PAIRWISE, InputConfig())
    assert found.directories is None
    assert "day=1/a.parquet holds a column 'day'" in caplog.text


def test_a_shard_outside_the_directories_may_hold_their_key(tmp_path):
    (tmp_path / "day=2").mkdir()
    pq.write_table(GOOD.append_column("day", pa.array(["1", "1"])), tmp_path / "flat.parquet")
    pq.write_table(GOOD, tmp_path / "day=2" / "b.parquet")
    found = discover([str(tmp_path)], PAIRWISE, InputConfig())
    assert found.directories is not None and found.directories.keys == ("day",)


def test_directory_columns_can_be_turned_off(shards):
    assert discover([str(shards)], PAIRWISE, InputConfig(directory_columns=False)).directories is None


def test_a_null_keys_directory_reads_as_null(tmp_path):
    from pipelines.shards import HIVE_NULL

    for value in ("web", HIVE_NULL):
        (tmp_path / f"source={value}").mkdir()
        pq.write_table(GOOD, tmp_path / f"source={value}" / "part-0.parquet")
    found = discover([str(tmp_path)], PAIRWISE, InputConfig())
    assert [found.directories.values(p) for p in found.paths] == [{"source": None}, {"source": "web"}]
    read = pa.table({"source": ["web", HIVE_NULL, None], "other": [HIVE_NULL] * 3})
    assert found.directories.restore_nulls(read).to_pydict() == {"source": ["web", None, None], "other": [HIVE_NULL] * 3}
